"""A minimal asyncio XMPP client for benchmarks: cheap enough to run hundreds at once.

slixmpp costs tens of milliseconds per login and a lot of Python per stanza; a
benchmark that needs 500 room occupants, or receivers that must never be the
bottleneck, uses this instead. It does only what the benchmarks need: stream
open, optional STARTTLS, SASL PLAIN (over TLS, or in clear text where the test
Prosody allows it), resource binding, then raw XML out and lxml elements in.

It quacks like ``support.clients.Client`` where the room helpers look
(``received``, ``send_xml``, ``wait_for``), so ``support.muc.create_room`` and
``support.muc.join`` work with it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable
from xml.sax.saxutils import escape

from lxml import etree
from support.prosody import client_ssl_context

Element = etree._Element
StanzaHandler = Callable[[Element, float], None]  # (stanza, monotonic time its bytes were read)
DataHandler = Callable[[bytes, float], None]  # (bytes as read, monotonic time), unparsed

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
READ_SIZE = 65536
TLS_HANDSHAKE_TIMEOUT = 5.0


class XmppError(Exception):
    """Negotiation did not go as a well-behaved server would have it."""


class StreamParser:
    """Incremental parser of one XML stream: bytes in, detached depth-1 elements out."""

    def __init__(self) -> None:
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False, no_network=True)
        self._depth = 0
        self._root: Element | None = None

    def feed(self, data: bytes) -> list[Element]:
        self._parser.feed(data)
        out: list[Element] = []
        for event, el in self._parser.read_events():
            if event == "start":
                if self._depth == 0:
                    self._root = el
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 1 and self._root is not None:
                self._root.remove(el)  # detached: the stream's tree never grows
                out.append(el)
        return out


def _stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='{NS_STREAMS}' to='{domain}' version='1.0'>"
    ).encode()


def _plain_auth(username: str, password: str) -> str:
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>"


class RawClient:
    """One logged-in, bound session. Build it with :meth:`login`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str) -> None:
        self.reader = reader
        self.writer = writer
        self.domain = domain
        self.jid: str | None = None
        self.received: list[Element] = []
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._parser = StreamParser()
        self._backlog: list[Element] = []  # parsed during negotiation, not yet consumed
        self._handler: StanzaHandler = self._collect
        self._data_handler: DataHandler | None = None  # set: bytes skip the XML parser
        self._task: asyncio.Task | None = None

    # ---- login ---------------------------------------------------------------------
    @classmethod
    async def login(
        cls, host: str, port: int, jid: str, password: str, *,
        resource: str | None = None, tls: bool = True, presence: bool = True,
    ) -> RawClient:
        """Connect to ``host:port`` and log in as bare ``jid``; returns once bound."""
        username, domain = jid.split("@", 1)
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer, domain)
        try:
            await client._negotiate(username, password, resource, tls)
        except BaseException:
            writer.transport.abort()
            raise
        if presence:
            client.send_xml("<presence/>")
        client._task = asyncio.create_task(client._read_loop())
        return client

    async def _negotiate(self, username: str, password: str, resource: str | None, tls: bool) -> None:
        features = await self._open_stream()
        if tls:
            if features.find(f"{{{NS_TLS}}}starttls") is None:
                raise XmppError("STARTTLS not offered")
            self.send_xml(f"<starttls xmlns='{NS_TLS}'/>")
            self._expect(await self._next(), f"{{{NS_TLS}}}proceed")
            await self._start_tls()
            await self._open_stream()
        self.send_xml(_plain_auth(username, password))
        self._expect(await self._next(), f"{{{NS_SASL}}}success")
        await self._open_stream()
        wanted = f"<resource>{escape(resource)}</resource>" if resource else ""
        self.send_xml(f"<iq type='set' id='bind-1'><bind xmlns='{NS_BIND}'>{wanted}</bind></iq>")
        reply = await self._next()
        self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if reply.get("type") != "result" or not self.jid:
            raise XmppError(f"bind failed: {etree.tostring(reply)!r}")

    async def _start_tls(self) -> None:
        try:
            await self.writer.start_tls(client_ssl_context(), server_hostname=self.domain,
                                        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except ConnectionError as exc:  # asyncio reports the handshake timeout as a reset
            raise XmppError(f"TLS handshake failed (server lost the ClientHello?): {exc!r}") from exc

    async def _open_stream(self) -> Element:
        """(Re)start the stream; returns the server's features."""
        self._parser = StreamParser()
        self.writer.write(_stream_header(self.domain))
        features = await self._next()
        self._expect(features, f"{{{NS_STREAMS}}}features")
        return features

    async def _next(self) -> Element:
        while not self._backlog:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise XmppError("connection closed during negotiation")
            self._backlog.extend(self._parser.feed(data))
        return self._backlog.pop(0)

    @staticmethod
    def _expect(el: Element, tag: str) -> None:
        if el.tag != tag:
            raise XmppError(f"expected {tag}, got {etree.tostring(el)!r}")

    # ---- receiving -----------------------------------------------------------------
    async def _read_loop(self) -> None:
        now = time.monotonic()
        for el in self._backlog:
            self._handler(el, now)
        self._backlog.clear()
        try:
            while data := await self.reader.read(READ_SIZE):
                now = time.monotonic()
                if self._data_handler is not None:
                    self._data_handler(data, now)
                    continue
                for el in self._parser.feed(data):
                    self._handler(el, now)
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            self._arrived.set()  # wake waiters: nothing more will come

    def _collect(self, el: Element, _now: float) -> None:
        self.received.append(el)
        self._arrived.set()

    def on_stanza(self, handler: StanzaHandler) -> None:
        """Hand every further stanza to ``handler`` instead of keeping it in ``received``."""
        self._handler = handler

    def on_data(self, handler: DataHandler) -> None:
        """Hand every further chunk of bytes to ``handler`` unparsed (the cheapest receiver).

        The XML parser is left behind: this is for the rest of the connection.
        """
        self._data_handler = handler

    def discard(self) -> None:
        """Read and drop everything from now on, without parsing (a silent occupant)."""
        self.on_data(lambda _data, _now: None)

    async def wait_for(self, pred: Callable[[Element], bool], timeout: float = 10.0, *, start: int = 0) -> Element:
        """The first received stanza (from index ``start``) matching ``pred``."""

        async def look() -> Element:
            i = start
            while True:
                for el in self.received[i:]:
                    if pred(el):
                        return el
                i = len(self.received)
                if self.closed.is_set():
                    raise XmppError("connection closed while waiting")
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(look(), timeout)

    # ---- sending and closing -------------------------------------------------------
    def send_xml(self, xml: str | bytes) -> None:
        self.writer.write(xml.encode() if isinstance(xml, str) else xml)

    async def drain(self) -> None:
        await self.writer.drain()

    def abort(self) -> None:
        """Drop the TCP connection without closing the stream (a phone losing its network)."""
        self.writer.transport.abort()

    async def close(self, timeout: float = 5.0) -> None:
        """End the stream and wait until the server has closed its side."""
        if not self.closed.is_set():
            try:
                self.send_xml("</stream:stream>")
                await asyncio.wait_for(self.closed.wait(), timeout)
            except (TimeoutError, ConnectionError, OSError):
                pass
        self.writer.transport.abort()
