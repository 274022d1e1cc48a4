"""Helpers for tests of the upstream link against real servers (Prosody, ejabberd).

Peers are slixmpp clients ("bob"), which see exactly what the server sends.
Stanzas are compared by infoset (C14N 2.0 with prefixes rewritten), after
removing what servers add on the way (``from``, ``xml:lang``, ``stanza-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import xml.etree.ElementTree as ET

import slixmpp
from lxml import etree

from bouncer.core.events import UpstreamDown, UpstreamStanza, UpstreamUp
from bouncer.upstream.link import UpstreamLink, UpstreamSettings
from support.prosody import client_ssl_context

CLIENT = "jabber:client"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Servers mark archived messages: stanza-id (both), archived (ejabberd, urn:xmpp:mam:tmp).
SERVER_CHILDREN = {"{urn:xmpp:sid:0}stanza-id", "{urn:xmpp:mam:tmp}archived"}

# Short backoff so that reconnect tests take milliseconds, not seconds.
FAST = dict(backoff_base=0.02, backoff_cap=0.1, stable_after=3600.0)
WAIT = 10.0  # upper bound for any single expected event


class Inbox:
    """A list whose items can be awaited (no polling)."""

    def __init__(self):
        self.items: list = []
        self._waiters: list[tuple] = []

    def append(self, item) -> None:
        self.items.append(item)
        for waiter in list(self._waiters):
            check, fut = waiter
            if not fut.done() and check(item):
                fut.set_result(item)
                self._waiters.remove(waiter)

    async def _park(self, check, timeout: float):
        fut = asyncio.get_running_loop().create_future()
        waiter = (check, fut)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait(self, pred, *, start: int = 0, timeout: float = WAIT):
        """The first item from index ``start`` on that satisfies ``pred``."""
        for item in self.items[start:]:
            if pred(item):
                return item
        return await self._park(pred, timeout)

    async def until(self, condition, timeout: float = WAIT) -> None:
        """Wait until ``condition(self)`` holds (checked at each new item)."""
        if not condition(self):
            await self._park(lambda _item: condition(self), timeout)

    def count(self, pred) -> int:
        return sum(1 for i in self.items if pred(i))


def established(ev) -> bool:
    return isinstance(ev, UpstreamUp)


def down(ev) -> bool:
    return isinstance(ev, UpstreamDown)


def stanza(pred=lambda el: True):
    return lambda ev: isinstance(ev, UpstreamStanza) and pred(ev.element)


def has_id(value):
    return lambda el: el.get("id") == value


def body_is(text):
    return lambda el: el.findtext(f"{{{CLIENT}}}body") == text


def make_link(server, jid: str, password: str, *, tls="plain", port=None, **kwargs):
    """A link to ``server`` plus the Inbox its events go to."""
    events = Inbox()
    port = port or (server.direct_tls_port if tls == "direct" else server.port)
    settings_kw = {k: kwargs.pop(k) for k in ("verify", "ca_file") if k in kwargs}
    if tls != "plain" and not settings_kw:
        settings_kw["ca_file"] = str(server.cert_path)
    settings = UpstreamSettings(jid, password, host="127.0.0.1", port=port, tls=tls, **settings_kw)
    link = UpstreamLink(settings, events.append, **{**FAST, **kwargs})
    return link, events


@contextlib.asynccontextmanager
async def link_and_peers(server, *names: str, **link_kw):
    """An established link for a fresh account, plus a logged-in Peer for each of
    ``names`` (fresh accounts too): ``(link, events, *peers)``; all closed afterwards."""
    alice, password = server.new_user("alice")
    link, events = make_link(server, alice, password, **link_kw)
    await link.start()
    await events.wait(established)
    peers = []
    try:
        for name in names:
            peers.append(await Peer.connect(server, *server.new_user(name)))
        yield (link, events, *peers)
    finally:
        for peer in peers:
            peer.close()
        await link.stop()


class Peer:
    """A slixmpp client that records every stanza it receives as lxml."""

    def __init__(self, jid: str, password: str):
        client = slixmpp.ClientXMPP(
            jid, password, sasl_mech="PLAIN", ssl_context=client_ssl_context()
        )
        client.enable_direct_tls = False
        client.add_filter("in", self._capture)
        self.client = client
        self.inbox = Inbox()

    def _capture(self, st):
        self.inbox.append(etree.fromstring(ET.tostring(st.xml)))
        return st

    @classmethod
    async def connect(cls, server, jid: str, password: str, *, presence=False):
        peer = cls(jid, password)
        ready = asyncio.Event()
        peer.client.add_event_handler("session_start", lambda _: ready.set())
        peer.client.connect("127.0.0.1", server.port)
        await asyncio.wait_for(ready.wait(), WAIT)
        if presence:
            peer.client.send_presence()
        return peer

    @property
    def jid(self) -> str:
        return self.client.boundjid.full

    def send(self, xml: str | etree._Element) -> None:
        if not isinstance(xml, str):
            xml = etree.tostring(xml, encoding="unicode")
        self.client.send_raw(xml)

    async def wait(self, pred, **kwargs):
        return await self.inbox.wait(pred, **kwargs)

    def close(self) -> None:
        self.client.abort()


def infoset(el: etree._Element, *, strip: tuple[str, ...] = ("from", XML_LANG)) -> str:
    """C14N 2.0 with rewritten prefixes: equal strings <=> equal infosets.

    ``strip``: attributes of the stanza to ignore; children servers add are removed.
    """
    el = copy.deepcopy(el)
    for name in strip:
        el.attrib.pop(name, None)
    for child in list(el):
        if child.tag in SERVER_CHILDREN:
            el.remove(child)  # keeps the text layout: what a server appended has no tail of ours
    return ET.canonicalize(etree.tostring(el), rewrite_prefixes=True)


# An OMEMO-like payload with nested elements and attributes, custom attributes
# on the stanza, a hint, mixed content, prefixed elements/attributes, an
# element in no namespace, non-ASCII text and escaped characters.
PAYLOAD = """\
<message xmlns='jabber:client' to='{to}' id='{id}' type='chat'
         xmlns:x='urn:x-test:attrs' x:custom='yes' foo='bar'>
  <body>h\u00e9llo &lt;world&gt; &amp; \u2713</body>
  <encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'><key rid='31415' prekey='true'>TWFu</key><key rid='27'>QUJD</key><iv>aXY=</iv></header><payload>cGF5bG9hZA==</payload></encrypted>
  <store xmlns='urn:xmpp:hints'/>
  <note xmlns='urn:x-test:note' level='3'>mixed <b>bold</b> tail &amp; <i xmlns='urn:x-test:other' xmlns:o='urn:x-test:o' o:a='1'/> end</note>
  <p:wrapped xmlns:p='urn:x-test:prefixed'><p:inner p:attr='v'>t</p:inner></p:wrapped>
  <plain xmlns=''><deeper k='v'/></plain>
</message>"""


def payload(to: str, id_: str) -> etree._Element:
    return etree.fromstring(PAYLOAD.format(to=to, id=id_))


def message(to: str, body: str, *, type_="chat", id_=None) -> etree._Element:
    el = etree.Element(f"{{{CLIENT}}}message", nsmap={None: CLIENT}, to=to, type=type_)
    if id_:
        el.set("id", id_)
    etree.SubElement(el, f"{{{CLIENT}}}body").text = body
    return el


def ping(id_: str, to: str = "localhost") -> etree._Element:
    el = etree.Element(f"{{{CLIENT}}}iq", nsmap={None: CLIENT}, type="get", id=id_, to=to)
    etree.SubElement(el, "{urn:xmpp:ping}ping")
    return el


async def eventually(condition, timeout: float = WAIT) -> None:
    """Poll ``condition`` (only for states that fire no event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def ping_roundtrip(link: UpstreamLink, events: Inbox, id_: str) -> etree._Element:
    assert link.send(ping(id_))
    ev = await events.wait(stanza(has_id(id_)))
    return ev.element


class Blackhole:
    """A TCP relay between the link and the server that can go silent.

    ``cut()`` stops relaying in both directions without closing anything: to
    both ends the connection looks alive while nothing gets through, as when a
    phone's NAT entry expires or a cable is pulled (no FIN, no RST). New
    connections relay normally again. ``close()`` ends every relayed connection.
    """

    def __init__(self, port: int) -> None:
        self._target = port
        self._server: asyncio.Server | None = None
        self._live: list[list[bool]] = []  # one flag per relayed connection still relaying
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> "Blackhole":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
        alive = [True]
        self._live.append(alive)
        self._writers += [client_w, server_w]
        await asyncio.gather(self._pump(client_r, server_w, alive), self._pump(server_r, client_w, alive),
                             return_exceptions=True)

    @staticmethod
    async def _pump(reader, writer, alive) -> None:
        while data := await reader.read(65536):
            if alive[0]:
                writer.write(data)
        if alive[0]:
            writer.close()

    def cut(self) -> None:
        for alive in self._live:
            alive[0] = False
        self._live = []

    async def close(self) -> None:
        self.cut()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
