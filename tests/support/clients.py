"""slixmpp clients for integration tests, recording every stanza they receive.

Tests talk raw XML where the infoset matters (``send_xml``) and wait for
stanzas with predicates over lxml elements instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xml.etree import ElementTree

import slixmpp
from lxml import etree

from support.prosody import client_ssl_context

Predicate = Callable[[etree._Element], bool]


class Client(slixmpp.ClientXMPP):
    def __init__(
        self, jid: str, password: str, *, presence: bool = True, show: str | None = None, direct_tls: bool = False
    ) -> None:
        super().__init__(jid, password)
        self.ssl_context = client_ssl_context()
        # One way in per test, so that a test means the path it names.
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.received: list[etree._Element] = []
        self.auth_failed = asyncio.Event()
        self.started = asyncio.Event()
        self.disconnected_event = asyncio.Event()
        self.stream_errors: list[str] = []
        self._changed = asyncio.Condition()
        self._initial_presence = presence
        self._show = show
        self.add_filter("in", self._record)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_all_auth", lambda _e: self.auth_failed.set())
        self.add_event_handler("disconnected", lambda _e: self.disconnected_event.set())
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))

    def _record(self, stanza):
        # ElementTree renames prefixes (ns0:...); namespaces and everything else survive.
        self.received.append(etree.fromstring(ElementTree.tostring(stanza.xml)))
        asyncio.ensure_future(self._notify())
        return stanza

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _on_start(self, _event) -> None:
        if self._initial_presence:
            self.send_presence(pshow=self._show)
        self.started.set()

    async def wait_for(self, pred: Predicate, timeout: float = 10.0, *, start: int = 0) -> etree._Element:
        """The first received stanza (from index ``start``) matching ``pred``."""

        async def look() -> etree._Element:
            async with self._changed:
                while True:
                    for el in self.received[start:]:
                        if pred(el):
                            return el
                    await self._changed.wait()

        return await asyncio.wait_for(look(), timeout)

    def matching(self, pred: Predicate) -> list[etree._Element]:
        return [el for el in self.received if pred(el)]

    def send_xml(self, xml: str) -> None:
        self.send_raw(xml)


async def connect(jid: str, password: str, port: int, *, timeout: float = 15, **kw) -> Client:
    """A client logged in (session started) to 127.0.0.1:port."""
    client = Client(jid, password, **kw)
    client.connect(host="127.0.0.1", port=port)
    started = asyncio.ensure_future(client.started.wait())
    failed = asyncio.ensure_future(client.auth_failed.wait())
    done, pending = await asyncio.wait({started, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if started not in done:
        client.disconnect()
        raise AssertionError(f"{jid} could not log in on port {port}")
    return client


async def close(*clients: Client) -> None:
    for c in clients:
        c.disconnect()
    for c in clients:
        await asyncio.wait_for(c.disconnected_event.wait(), 10)


def body_is(text: str) -> Predicate:
    def pred(el: etree._Element) -> bool:
        return el.tag == "{jabber:client}message" and el.findtext("{jabber:client}body") == text

    return pred


def numbers(client, prefix: str = "n") -> list[int]:
    """The numbered messages ``client`` received (bodies ``<prefix><n>``, then anything after
    a space), in the order it got them, repeats kept: what "each once, in order" is checked on."""
    out = []
    for el in client.received:
        body = el.findtext("{jabber:client}body") if el.tag == "{jabber:client}message" else None
        if body and body.startswith(prefix):
            out.append(int(body[len(prefix):].split(" ", 1)[0]))
    return out


async def until(predicate: Callable[[], bool], timeout: float = 15.0, *, seen: Callable[[], object] | None = None) -> None:
    """Poll ``predicate``; on timeout, fail saying what ``seen()`` (the state waited on) is."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"still not there after {timeout} s: {seen() if seen else ''}") from None
