"""A minimal asyncio XMPP client for benchmarks and tests: cheap enough to run hundreds at once,
and exact where bytes and counts matter (XEP-0198).

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
import socket
import ssl
import struct
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
        await self._authenticate(username, password, tls)
        await self.bind_resource(resource)

    async def _authenticate(self, username: str, password: str, tls: bool) -> Element:
        """Optional STARTTLS, SASL PLAIN, stream restart; returns the features after it."""
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
        return await self._open_stream()

    async def bind_resource(self, resource: str | None) -> str:
        """Resource binding (negotiation phase); returns the full JID."""
        wanted = f"<resource>{escape(resource)}</resource>" if resource else ""
        self.send_xml(f"<iq type='set' id='bind-1'><bind xmlns='{NS_BIND}'>{wanted}</bind></iq>")
        reply = await self._next()
        self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if reply.get("type") != "result" or not self.jid:
            raise XmppError(f"bind failed: {etree.tostring(reply)!r}")
        return self.jid

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


# ---- XEP-0198 (stream management) and XEP-0352 (client state) ----------------------------
NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
_STANZAS = frozenset(f"{{jabber:client}}{name}" for name in ("message", "presence", "iq"))
_SM_R, _SM_A = f"{{{NS_SM}}}r", f"{{{NS_SM}}}a"
_SM_ENABLED, _SM_RESUMED, _SM_FAILED = f"{{{NS_SM}}}enabled", f"{{{NS_SM}}}resumed", f"{{{NS_SM}}}failed"
ReadHook = Callable[[int, float], None]  # (bytes in one read, monotonic time of the read)


class SmClient(RawClient):
    """A :class:`RawClient` with XEP-0198 on its side of the stream, like a phone's client.

    It counts the stanzas it receives (``h``; nonzas are not counted), answers every
    ``<r/>`` at once with ``<a h=.../>``, and can resume a dropped stream on a new
    connection (after SASL, ``<resume previd h/>`` instead of bind). It always parses
    what it receives (``on_data`` would bypass the count: do not use it here); every
    read of the socket can be reported to a hook (wake-up counting).
    The stanzas it sends are not kept for resending (the benchmarks do not need it).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str) -> None:
        super().__init__(reader, writer, domain)
        self.h = 0  # stanzas received since <enable/> (or carried over by a resume)
        self.sm_id: str | None = None  # the resumption id from <enabled/>, if resumable
        self.sm_max: int | None = None  # seconds the server keeps a dropped session (<enabled max=/>)
        self.sm_enabled = False
        self.server_h = 0  # the server's last <a h=/> (stanzas of ours it handled)
        self.requests = 0  # <r/> received (and answered)
        self.resumed: Element | None = None  # the <resumed/> a resume got
        self.failed: Element | None = None  # the <failed/> a resume (or enable) got
        self.resume_error: str | None = None  # how a resume failed, when not with a <failed/> condition
        self.features: Element | None = None  # the stream features after authentication
        self._read_hook: ReadHook | None = None

    # ---- login and resumption ---------------------------------------------------------
    @classmethod
    async def login(  # type: ignore[override]
        cls, host: str, port: int, jid: str, password: str, *,
        resource: str | None = None, tls: bool = True, presence: bool = True,
        sm: bool = True, resume: bool = True, handler: StanzaHandler | None = None,
    ) -> SmClient:
        """Log in as :meth:`RawClient.login` does, then ``<enable/>`` (``resume``: resumable)
        before the initial presence, as a phone does; ``handler`` gets every stanza from the
        first one on (else they are kept in ``received``)."""
        client = await cls.connect_and_authenticate(host, port, jid, password, tls=tls)
        try:
            await client.bind_resource(resource)
            if sm:
                await client.enable_sm(resume)
        except BaseException:
            client.writer.transport.abort()
            raise
        client.start(presence=presence, handler=handler)
        return client

    @classmethod
    async def connect_and_authenticate(cls, host: str, port: int, jid: str, password: str, *,
                                       tls: bool = True) -> SmClient:
        """TCP, optional STARTTLS, SASL PLAIN, stream restart: ready to bind or resume.
        The post-authentication features are in ``features``."""
        username, domain = jid.split("@", 1)
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer, domain)
        try:
            client.features = await client._authenticate(username, password, tls)
        except BaseException:
            writer.transport.abort()
            raise
        return client

    async def enable_sm(self, resume: bool = True) -> None:
        """``<enable/>`` and its ``<enabled/>`` (negotiation phase: before :meth:`start`)."""
        self.send_xml(f"<enable xmlns='{NS_SM}' resume='true'/>" if resume else f"<enable xmlns='{NS_SM}'/>")
        reply = await self._next()
        if reply.tag != _SM_ENABLED:
            self.failed = reply
            raise XmppError(f"enable failed: {etree.tostring(reply)!r}")
        self.sm_enabled, self.h = True, 0
        self.sm_id = reply.get("id") if reply.get("resume", "").lower() in ("true", "1") else None
        max_ = reply.get("max", "")
        self.sm_max = int(max_) if max_.isdigit() else None

    @classmethod
    async def resume_session(cls, host: str, port: int, jid: str, password: str, previd: str, h: int, *,
                             tls: bool = True, handler: StanzaHandler | None = None) -> SmClient:
        """A new connection resuming ``previd``, where ``h`` stanzas had been received.

        On ``<resumed/>`` the client is started (``handler`` gets every stanza, the resent
        ones first; it counts and answers from then on) and ``resumed`` is set. On
        ``<failed/>``, ``failed`` is set and the client is left in the negotiation phase: a
        client binds on the same stream then (:meth:`bind_resource`, :meth:`enable_sm`,
        :meth:`start`; XEP-0198 §5), or connects anew if the server closed it. A connection
        closed instead of an answer counts as failed (``resume_error`` says so).
        """
        client = await cls.connect_and_authenticate(host, port, jid, password, tls=tls)
        try:
            client.send_xml(f"<resume xmlns='{NS_SM}' previd='{escape(previd)}' h='{h}'/>")
            reply = await client._next()
        except XmppError:  # closed without a word (Prosody 0.12 does so when its queue overflowed)
            client.writer.transport.abort()
            client.failed = etree.Element(_SM_FAILED)
            client.resume_error = "connection closed without <failed/>"
            return client
        except BaseException:
            client.writer.transport.abort()
            raise
        if reply.tag == _SM_RESUMED:
            client.resumed, client.sm_enabled, client.sm_id, client.h = reply, True, previd, h
            client.server_h = int(reply.get("h", "0"))
            client.start(presence=False, handler=handler)
        elif reply.tag == _SM_FAILED:
            client.failed = reply
        else:
            client.writer.transport.abort()
            raise XmppError(f"expected resumed or failed, got {etree.tostring(reply)!r}")
        return client

    def start(self, presence: bool = True, handler: StanzaHandler | None = None) -> None:
        """Leave the negotiation phase: stanzas go to ``handler`` (if given), the initial
        presence goes out (``presence``), reading starts."""
        if handler is not None:
            self.on_stanza(handler)
        if presence:
            self.send_xml("<presence/>")
        self._task = asyncio.create_task(self._read_loop())

    # ---- receiving ----------------------------------------------------------------------
    def on_read(self, hook: ReadHook | None) -> None:
        """Report the size and time of every further read of the socket (decrypted bytes)."""
        self._read_hook = hook

    def on_data(self, handler: DataHandler) -> None:
        raise TypeError("SmClient parses everything it receives (it counts stanzas): use on_stanza/on_read")

    async def _read_loop(self) -> None:
        now = time.monotonic()
        backlog, self._backlog = self._backlog, []
        for el in backlog:
            self._sm_dispatch(el, now)
        try:
            while data := await self.reader.read(READ_SIZE):
                now = time.monotonic()
                if self._read_hook is not None:
                    self._read_hook(len(data), now)
                for el in self._parser.feed(data):
                    self._sm_dispatch(el, now)
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            self._arrived.set()

    def _sm_dispatch(self, el: Element, now: float) -> None:
        tag = el.tag
        if tag in _STANZAS:
            if self.sm_enabled:
                self.h = (self.h + 1) % (1 << 32)
            self._handler(el, now)
        elif tag == _SM_R:
            self.requests += 1
            if not self.closed.is_set():
                self.send_xml(f"<a xmlns='{NS_SM}' h='{self.h}'/>")
        elif tag == _SM_A:
            self.server_h = int(el.get("h", "0"))
        else:
            self._handler(el, now)  # stream errors and other nonzas: whoever listens decides

    # ---- XEP-0352 -----------------------------------------------------------------------
    def set_inactive(self) -> None:
        self.send_xml(f"<inactive xmlns='{NS_CSI}'/>")

    def set_active(self) -> None:
        self.send_xml(f"<active xmlns='{NS_CSI}'/>")

    # ---- the socket as the kernel counts it ---------------------------------------------
    def tcp_counters(self) -> tuple[int, int, int]:
        """``(bytes received, bytes sent and acknowledged, segments received)`` on this TCP
        connection so far, TLS included (Linux TCP_INFO: tcpi_bytes_received, tcpi_bytes_acked,
        tcpi_segs_in)."""
        sock = self.writer.get_extra_info("socket")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
        bytes_acked, bytes_received = struct.unpack_from("=QQ", info, 120)
        (segs_in,) = struct.unpack_from("=I", info, 140)
        return bytes_received, bytes_acked, segs_in


async def raw(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the listener from ``source`` (any 127/8 address is ours)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def plain_login(s, password: str, *, bind: bool = False):
    """STARTTLS, then SASL PLAIN for the account: (accepted?, seconds until the answer),
    and with ``bind`` the bound stream's (reader, writer) too, left open."""
    reader, writer = await raw(s.port)
    header = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              f"xmlns:stream='http://etherx.jabber.org/streams' to='{s.server.domain}' version='1.0'>").encode()
    writer.write(header + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await reader.readuntil(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await writer.start_tls(client_ssl_context())
    writer.write(header)
    await reader.readuntil(b"</stream:features>")
    user = s.alice.split("@")[0]
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    started = time.monotonic()
    writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    answer = await reader.readuntil(b">")
    elapsed = time.monotonic() - started
    if not bind:
        writer.close()
        return answer.startswith(b"<success"), elapsed
    await reader.readuntil(b"</success>")
    writer.write(header + b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          b"<resource>silent</resource></bind></iq>")
    await reader.readuntil(b"</iq>")
    return reader, writer
