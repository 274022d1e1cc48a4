"""The upstream link: one XMPP client session to the user's real server.

This is the only module that touches aioxmpp (pinned to 0.13.3; see
/work/shared/notes/aioxmpp.md for the measurements behind every choice here).
aioxmpp provides the connection, TLS, SASL, resource binding and XEP-0198
(counting, acks, resumption); the bouncer gets and gives *raw* stanzas:

* Inbound, a raw parser sits in the XML stream's tag map for message, presence
  and iq and turns each stanza into a detached lxml element (full infoset,
  namespaces clean), wrapped in :class:`RawStanza` (a ``StanzaBase``). The
  stream counts it for stream management as it is parsed and hands it to
  ``on_event``; aioxmpp never dispatches it. Only IQ results and errors
  answering IQs that aioxmpp itself sent (bind, its pings) are parsed by
  aioxmpp; IQ get/set from the server reach the bouncer, aioxmpp never answers
  them.
* Outbound, the caller's element is serialised once (lxml) and enqueued as a
  :class:`RawStanza`, whose serialiser writes those bytes straight into
  aioxmpp's stream writer; SM counting and resending after resumption work as
  for aioxmpp's own stanzas.

aioxmpp 0.13.3 bugs worked around here (all reproduced, each has a test in
tests/integration/test_upstream.py):

1. SM counter race at enable: stanzas parsed between the bind result and
   ``<enabled/>`` were counted after SM started, so the client over-acked and
   Prosody closed the stream. Raw stanzas are now counted (and delivered) when
   they are parsed; aioxmpp's own carry the SM state at parse time.
2. ``RuntimeError`` from aioopenssl when ``<r/>``/``<a/>`` is written to a dead
   TLS transport killed the Client: converted to ``ConnectionError``.
3. A local ``transport.abort()`` or a peer EOF without ``</stream>`` closes the
   XML stream with no exception, which aioxmpp treats as a normal stop, so
   nothing reconnected: turned into ``ConnectionError`` unless we close.
4. ``InvalidStateError`` (TLS handshake failure during reconnect), 5. non-conflict
   stream errors reconnecting at once without backoff, 6. giving up for good on
   conflict / negotiation failure / SASL errors / after 4 failed first attempts:
   the Client's main loop is replaced by ours, which treats every error alike,
   backs off exponentially with jitter, and never gives up; ``on_failure`` (the
   main task dying anyway) restarts it.
7. After a failed resumption aioxmpp silently starts a new session and marks
   unacknowledged stanzas DISCONNECTED: reported as
   ``UpstreamEstablished(resumed=False)``, and the stanzas are sent again.
8. Certificate verification: aioxmpp's PKIX name check calls
   ``X509.get_extension``, which current pyOpenSSL no longer has, so every
   verified TLS connection failed; our own verifier checks the name with
   ``cryptography``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Literal

import aiosasl
import lxml.sax
import structlog
from cryptography import x509
from lxml import etree

import aioxmpp
import aioxmpp.connector
import aioxmpp.errors
import aioxmpp.node
import aioxmpp.protocol
import aioxmpp.security_layer
import aioxmpp.stanza
import aioxmpp.stream
import aioxmpp.xml
from aioxmpp.stream import StanzaState

__all__ = [
    "UpstreamEstablished",
    "UpstreamDown",
    "UpstreamStanza",
    "UpstreamEvent",
    "UpstreamSettings",
    "UpstreamLink",
    "BOUNCER_ID_PREFIX",
]

# The bouncer prefixes the ids of all IQs it sends upstream with this; results
# and errors carrying such an id are always the bouncer's, never aioxmpp's.
BOUNCER_ID_PREFIX = "bnc-"

_CLIENT_NS = "jabber:client"
_MESSAGE = f"{{{_CLIENT_NS}}}message"
_PRESENCE = f"{{{_CLIENT_NS}}}presence"
_IQ = f"{{{_CLIENT_NS}}}iq"
_STANZA_TAGS = frozenset((_MESSAGE, _PRESENCE, _IQ))

_log = structlog.get_logger("bouncer.upstream")

_DEFAULT_RESOURCE = "bouncer"
_DEFAULT_PORTS = {"starttls": 5222, "plain": 5222, "direct": 5223}


# --------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamEstablished:
    """A stream is up. ``resumed=False`` means a NEW session: the caller must
    send its presence again, rejoin rooms, refresh the roster."""

    jid: str
    resumed: bool


@dataclass(frozen=True)
class UpstreamDown:
    """The stream that was up is gone (the link keeps reconnecting)."""

    reason: str


@dataclass(frozen=True)
class UpstreamStanza:
    """A ``{jabber:client}`` message/presence/iq, full infoset, detached, with
    clean namespaces (the root declares ``jabber:client`` as default)."""

    element: etree._Element


UpstreamEvent = UpstreamEstablished | UpstreamDown | UpstreamStanza


@dataclass(frozen=True)
class UpstreamSettings:
    """How to reach the upstream server.

    ``jid`` may be bare (the resource ``bouncer`` is then used) or full.
    ``host``/``port`` absent: SRV/A lookup of the JID's domain.
    ``tls``: ``starttls`` (default), ``direct`` (XEP-0368, TLS from the first
    byte) or ``plain`` (no TLS at all; only to a loopback host).
    ``verify=False`` disables certificate checks; ``ca_file`` adds a trusted CA
    (or a self-signed certificate) to the system's.
    """

    jid: str
    password: str
    host: str | None = None
    port: int | None = None
    tls: Literal["starttls", "direct", "plain"] = "starttls"
    verify: bool = True
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.tls not in _DEFAULT_PORTS:
            raise ValueError(f"tls must be starttls, direct or plain, not {self.tls!r}")
        if self.tls == "plain" and not _is_loopback(self.host):
            raise ValueError("tls='plain' (no encryption) is only allowed to a loopback host")
        aioxmpp.JID.fromstr(self.jid)  # raises ValueError when malformed

    def __repr__(self) -> str:  # never show the password
        return (
            f"UpstreamSettings(jid={self.jid!r}, host={self.host!r}, port={self.port!r}, "
            f"tls={self.tls!r}, verify={self.verify!r}, ca_file={self.ca_file!r})"
        )


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UpstreamLink:
    """Keeps one upstream XMPP session alive and moves raw stanzas through it.

    ``on_event`` is called synchronously on the event loop with
    :class:`UpstreamEstablished`, :class:`UpstreamDown` (only after an
    Established, including once for :meth:`stop`) and :class:`UpstreamStanza`
    (only while connected: stanzas parsed during (re-)establishment, such as
    retransmissions on resumption, follow right after the Established).

    Reconnection: exponential backoff ``backoff_base * backoff_factor**n``
    capped at ``backoff_cap`` seconds, with jitter (each delay is drawn from
    [d/2, d]); ``n`` restarts at 0 once a session stayed up ``stable_after``
    seconds. The first attempt is immediate. It never gives up.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        on_event: Callable[[UpstreamEvent], None],
        *,
        log=None,
        backoff_base: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_cap: float = 60.0,
        stable_after: float = 10.0,
        negotiation_timeout: float = 60.0,
        ping_interval: float = 60.0,
        ping_timeout: float = 60.0,
        close_timeout: float = 5.0,
    ):
        self.settings = settings
        self._on_event = on_event
        jid = aioxmpp.JID.fromstr(settings.jid)
        if jid.resource is None:
            jid = jid.replace(resource=_DEFAULT_RESOURCE)
        self._local_jid = jid
        self.log = (log or _log).bind(account=str(jid.bare()))

        self._backoff_base = backoff_base
        self._backoff_factor = backoff_factor
        self._backoff_cap = backoff_cap
        self._stable_after = stable_after
        self._negotiation_timeout = negotiation_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout

        self._security_layer = _make_security_layer(settings)
        self._options = _explicit_options(settings)

        self._client: _Client | None = None
        self._stopping = False
        self._restart_handle: asyncio.TimerHandle | None = None
        self._connected = False
        self._up_since_mono = 0.0
        self._backoff_exp = 0
        self._ever_connected = False
        # Tokens of stanzas we enqueued whose fate is still open, in send order,
        # mapped to their last state; _RESCUE marks those to send again.
        self._tracked: dict[aioxmpp.stream.StanzaToken, object] = {}
        self._held: list[etree._Element] = []  # inbound, waiting for Established

        self.jid: str | None = None
        self.reconnects = 0
        self.connected_since: float | None = None
        self.server: str | None = None
        self.failures = 0  # failed attempts since the last established stream
        self.last_error: str | None = None

    # -- public API -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if self._client is not None:
            raise RuntimeError("UpstreamLink already started")
        self._stopping = False
        client = _Client(
            self,
            self._local_jid,
            self._security_layer,
            negotiation_timeout=timedelta(seconds=self._negotiation_timeout),
        )
        client.stream.soft_timeout = timedelta(seconds=self._ping_interval)
        client.stream.round_trip_time = timedelta(seconds=self._ping_timeout)
        client.on_failure.connect(self._on_client_failure)
        self._client = client
        self.log.info("upstream starting", **self._target_info())
        client.start()

    async def stop(self) -> None:
        """Close the stream cleanly (``</stream>``) and stop reconnecting."""
        self._stopping = True
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        client, self._client = self._client, None
        if client is None:
            return
        task = client._main_task
        if task is not None and not task.done():
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=self._close_timeout)
            if not done:
                # The server never answered our </stream>: drop the connection.
                self.log.warning("upstream close timed out, aborting")
                xmlstream = client.stream._xmlstream
                if xmlstream is not None:
                    with contextlib.suppress(Exception):
                        xmlstream.abort()
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
        self._tracked.clear()
        self._held.clear()
        self._mark_down("stopped")
        self.log.info("upstream stopped")

    def send(self, element: etree._Element) -> bool:
        """Enqueue a ``{jabber:client}`` message/presence/iq for sending.

        Returns False (and sends nothing) when no stream is established; the
        caller then answers with an error. The element is serialised now, so
        the caller may reuse it. Never waits.
        """
        if element.tag not in _STANZA_TAGS:
            raise ValueError(f"not a jabber:client stanza: {element.tag!r}")
        if not self._connected or self._client is None:
            return False
        return self._enqueue(RawStanza.outbound(element))

    # -- internals: sending and the resend book-keeping --------------------------

    def _enqueue(self, raw: "RawStanza") -> bool:
        try:
            token = self._client.stream._enqueue(raw, on_state_change=self._on_token_state)
        except Exception as exc:  # the stream was closed under us
            self.log.debug("upstream enqueue refused", error=repr(exc))
            return False
        self._tracked[token] = StanzaState.ACTIVE
        return True

    def _on_token_state(self, token, state) -> None:
        """Keep, forget or rescue a stanza according to its new token state.

        Rescued: DISCONNECTED (dropped from the queue or unacked after a failed
        resumption), FAILED (written to a dead stream), and SENT_WITHOUT_SM after
        SENT (SM was stopped while it was unacknowledged). They are enqueued
        again once a stream is established.
        """
        previous = self._tracked.get(token)
        if previous is None:
            return
        if state is StanzaState.SENT:
            self._tracked[token] = state
        elif state is StanzaState.SENT_WITHOUT_SM:
            if previous is StanzaState.SENT:
                self._tracked[token] = _RESCUE
            else:  # no stream management on this stream: nothing we can know
                del self._tracked[token]
        elif state in (StanzaState.DISCONNECTED, StanzaState.FAILED):
            self._tracked[token] = _RESCUE
        else:  # ACKED, ABORTED, DROPPED
            del self._tracked[token]

    def _resend_rescued(self, resumed: bool) -> None:
        rescued = [token for token, state in self._tracked.items() if state is _RESCUE]
        if not rescued:
            return
        # When the broker dies while handling a token, aioxmpp puts that token
        # back into its queue (even if it was marked FAILED): after a
        # resumption it sends it itself.
        requeued = set(self._client.stream._active_queue._data)
        count = 0
        for token in rescued:
            if token in requeued:
                self._tracked[token] = StanzaState.ACTIVE
                continue
            del self._tracked[token]
            raw = token.stanza
            # On a new session the caller restores its presence state itself.
            if resumed or raw.resend_on_new_session:
                self._enqueue(raw)
                count += 1
        self.log.info("upstream resending stanzas", count=count, resumed=resumed)

    # -- internals: events ----------------------------------------------------------

    def _emit(self, event) -> None:
        try:
            self._on_event(event)
        except Exception:
            self.log.exception("upstream on_event handler failed", event=type(event).__name__)

    def _deliver(self, element: etree._Element) -> None:
        if self._connected:
            self._emit(UpstreamStanza(element))
        else:
            # Parsed while the stream is being (re-)established, e.g. stanzas
            # retransmitted on resumption: delivered right after Established.
            self._held.append(element)

    def _stream_up(self, client: "_Client", resumed: bool, transport) -> None:
        if self._stopping:
            return  # stop() raced with the negotiation: it is closing this stream
        self._connected = True
        self._up_since_mono = time.monotonic()
        self.connected_since = time.time()
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.failures = 0
        self.jid = str(client.local_jid)
        self.server = _describe_peer(transport)
        self.log.info("upstream established", jid=self.jid, resumed=resumed, server=self.server)
        self._emit(UpstreamEstablished(self.jid, resumed))
        held, self._held = self._held, []
        for element in held:
            self._emit(UpstreamStanza(element))
        if self._client is client:
            self._resend_rescued(resumed)

    def _mark_down(self, reason: str) -> None:
        if not self._connected:
            return
        self._connected = False
        self.connected_since = None
        if time.monotonic() - self._up_since_mono >= self._stable_after:
            self._backoff_exp = 0
        self.log.info("upstream down", reason=reason)
        self._emit(UpstreamDown(reason))

    def _attempt_failed(self, exc: BaseException) -> float:
        """Record a failed attempt or a lost stream; return the delay to wait."""
        reason = _describe_error(exc)
        self.last_error = reason
        was_up = self._connected
        self._mark_down(reason)
        if not was_up:
            self.failures += 1
        delay = self._next_delay()
        self.log.warning(
            "upstream connection failed" if not was_up else "upstream connection lost",
            error=reason,
            retry_in=round(delay, 3),
            failures=self.failures,
        )
        return delay

    def _next_delay(self) -> float:
        full = self._backoff_base * self._backoff_factor ** self._backoff_exp
        if full < self._backoff_cap:
            self._backoff_exp += 1
        else:
            full = self._backoff_cap
        return full / 2 + random.uniform(0, full / 2)

    def _on_client_failure(self, exc) -> None:
        """The Client's main task died despite our loop (a bug): restart it."""
        if self._stopping or self._client is None:
            return
        delay = self._attempt_failed(exc)
        self.log.error("upstream client task died, restarting", error=_describe_error(exc))
        loop = asyncio.get_running_loop()
        self._restart_handle = loop.call_later(delay, self._restart_client)

    def _restart_client(self) -> None:
        self._restart_handle = None
        client = self._client
        if self._stopping or client is None or client.running:
            return
        client.start()

    # -- internals: connecting ----------------------------------------------------------

    def _target_info(self) -> dict:
        s = self.settings
        return {"host": s.host, "port": s.port, "tls": s.tls, "verify": s.verify}

    async def _connect(self, client: "_Client"):
        """Open an authenticated XML stream: ``(transport, xmlstream, features)``."""
        loop = asyncio.get_running_loop()
        jid = client.local_jid
        metadata = self._security_layer
        timeout = client.negotiation_timeout.total_seconds()
        if self._options is None and self.settings.tls == "starttls":
            # aioxmpp's own discovery: SRV (xmpp-client and xmpps-client), then A.
            return await aioxmpp.node.connect_xmlstream(
                jid, metadata, negotiation_timeout=timeout, loop=loop, logger=client.logger
            )
        options = self._options
        if options is None:  # direct TLS without a host: xmpps-client SRV, or domain:5223
            discovered = await aioxmpp.node.discover_connectors(jid.domain, loop=loop)
            options = [
                option for option in discovered
                if isinstance(option[2], aioxmpp.connector.XMPPOverTLSConnector)
            ] or [(jid.domain, 5223, aioxmpp.connector.XMPPOverTLSConnector())]
        exceptions: list[Exception] = []
        # Unlike connect_xmlstream, do not fall back to DNS discovery when an
        # explicitly configured host fails.
        result = await aioxmpp.node._try_options(
            options, exceptions, jid, metadata, timeout, loop, client.logger
        )
        if result is None:
            if len(exceptions) == 1:
                raise exceptions[0]
            raise aioxmpp.errors.MultiOSError(
                f"failed to connect to XMPP domain {jid.domain!r}", exceptions
            )
        return result


# Marker in UpstreamLink._tracked: send this stanza again.
_RESCUE = object()


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_peer(transport) -> str | None:
    try:
        peer = transport.get_extra_info("peername")
        host = transport.get_extra_info("peer_hostname") or (peer[0] if peer else None)
        return f"{host}:{peer[1]}" if peer else host
    except Exception:
        return None


# --------------------------------------------------------------------------
# Raw stanzas
# --------------------------------------------------------------------------


class RawStanza(aioxmpp.stanza.StanzaBase):
    """A stanza aioxmpp carries without understanding it.

    Inbound it holds the parsed lxml element (``el``); outbound the serialised
    bytes (``data``), which are written verbatim into aioxmpp's XML writer.
    Being a ``StanzaBase`` is what makes the StanzaStream count it for XEP-0198
    and keep it for resending.
    """

    TAG = ("urn:x-bouncer:raw", "raw")  # never matched: not in any tag map
    __slots__ = ("el", "data", "resend_on_new_session")

    def __init__(self, el=None, data: bytes | None = None, resend_on_new_session: bool = True):
        super().__init__()
        self.el = el
        self.data = data
        self.resend_on_new_session = resend_on_new_session

    @classmethod
    def outbound(cls, element: etree._Element) -> "RawStanza":
        if element.prefix is not None:
            # A prefixed root (e.g. lxml's ns0: for detached elements): rebuild
            # it with jabber:client as default namespace.
            root = etree.Element(element.tag, attrib=dict(element.attrib), nsmap={None: _CLIENT_NS})
            root.text = element.text
            for child in element:
                root.append(copy.deepcopy(child))
            etree.cleanup_namespaces(root)
            element = root
        state_presence = element.tag == _PRESENCE and element.get("type") in (None, "unavailable")
        return cls(
            data=etree.tostring(element, with_tail=False),
            resend_on_new_session=not state_presence,
        )

    # aioxmpp calls these on enqueue; a raw stanza is taken as it is.
    def validate(self):
        pass

    def autoset_id(self):
        pass

    def xso_serialise_to_sax(self, dest):
        if self.data is None:
            self.data = etree.tostring(self.el, with_tail=False)
        if isinstance(dest, aioxmpp.xml.XMPPXMLGenerator):
            # Fast path: the generator sits between two stanzas, so closing any
            # pending start tag and appending the bytes is well-formed.
            dest._finish_pending_start_element()
            dest._write(self.data)
        else:
            lxml.sax.saxify(etree.fromstring(self.data), _NoDocument(dest))

    def __repr__(self) -> str:
        return f"<RawStanza {(self.data or b'')[:60]!r}>"


class _NoDocument:
    """Forward SAX events except start/endDocument (for saxify into a stream)."""

    def __init__(self, dest):
        self._dest = dest

    def startDocument(self):
        pass

    def endDocument(self):
        pass

    def __getattr__(self, name):
        return getattr(self._dest, name)


def _clark(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}" if ns else local


def _attrs(attrs: dict) -> dict:
    return {(_clark(ns, name) if ns else name): value for (ns, name), value in attrs.items()}


def _build_element(ev_args):
    """Generator: aioxmpp's SAX-ish events for one stanza -> detached lxml element.

    Every element whose namespace differs from its parent's declares it as the
    default namespace (``xmlns=''`` for no namespace), so the result serialises
    without ``ns0:`` prefixes and reparses to the same infoset.
    """
    ns, local, attrs = ev_args
    ns = ns or ""
    builder = etree.TreeBuilder()
    tag = _clark(ns, local)
    builder.start(tag, _attrs(attrs), {None: ns})
    ns_stack = [ns]
    tag_stack = [tag]
    while tag_stack:
        ev = yield
        kind = ev[0]
        if kind == "text":
            builder.data(ev[1])
        elif kind == "start":
            _, ns, local, attrs = ev
            ns = ns or ""
            tag = _clark(ns, local)
            builder.start(tag, _attrs(attrs), {None: ns} if ns != ns_stack[-1] else None)
            ns_stack.append(ns)
            tag_stack.append(tag)
        else:  # "end"
            builder.end(tag_stack.pop())
            ns_stack.pop()
    return builder.close()


class _RawParser:
    """Stands in for Message/Presence/IQ in the XML stream's tag map."""

    def __init__(self, stream: "_RawStanzaStream"):
        self._stream = stream

    def parse_events(self, ev_args, ctx):
        _, local, attrs = ev_args
        if local == "iq" and attrs.get((None, "type")) in ("result", "error"):
            iq_id = attrs.get((None, "id"))
            if (
                iq_id is not None
                and not iq_id.startswith(BOUNCER_ID_PREFIX)
                and self._stream._bnc_awaits_iq(iq_id)
            ):
                # An answer to aioxmpp's own IQ (bind, ping): its business.
                return (yield from aioxmpp.stanza.IQ.parse_events(ev_args, ctx))
        return RawStanza((yield from _build_element(ev_args)))


class _RawStanzaStream(aioxmpp.stream.StanzaStream):
    """aioxmpp's StanzaStream with raw stanzas and the workarounds 1-3.

    Installed by swapping ``__class__`` of the stream the Client created; see
    :meth:`_bnc_setup` for the extra state.
    """

    def _bnc_setup(self, link: UpstreamLink) -> None:
        self._bnc_deliver = link._deliver
        self._bnc_parser = _RawParser(self)
        self._bnc_closing = False

    def _bnc_awaits_iq(self, iq_id: str) -> bool:
        return any(key[1] == iq_id for key in self._iq_response_map._listeners)

    def _start_prepare(self, xmlstream, receiver):
        super()._start_prepare(xmlstream, receiver)
        self._bnc_closing = False
        tag_map = xmlstream.stanza_parser.get_tag_map()
        for cls in (aioxmpp.stanza.IQ, aioxmpp.stanza.Message, aioxmpp.stanza.Presence):
            tag_map[cls.TAG] = (self._bnc_parser, receiver)

    # Workaround 1 (SM counter race at enable). XEP-0198 counts the stanzas
    # received after <enabled/>, and <enabled/> is handled synchronously when
    # it is parsed; but start_sm() holds the broker lock while waiting for it,
    # so stock aioxmpp processed (and counted) stanzas parsed earlier only
    # afterwards. Raw stanzas are therefore counted and delivered right here,
    # when parsed; the others carry the SM state at parse time in the queue.
    # Delivering at parse time also means that stanzas received just before
    # the connection dies are not lost (stock aioxmpp drops its unprocessed
    # queue when the stream stops).
    def recv_stanza(self, stanza):
        if type(stanza) is RawStanza:
            if self._sm_enabled:
                self._sm_inbound_ctr = (self._sm_inbound_ctr + 1) & 0xFFFFFFFF
            self._bnc_deliver(stanza.el)
            return
        self._incoming_queue.put_nowait((stanza, None, self._sm_enabled))

    def recv_erroneous_stanza(self, partial_obj, exc):
        self._incoming_queue.put_nowait((partial_obj, exc, self._sm_enabled))

    def _process_incoming(self, xmlstream, queue_entry):
        stanza_obj, exc, counted = queue_entry
        try:
            if (
                not counted
                and self._sm_enabled
                and isinstance(stanza_obj, aioxmpp.stanza.StanzaBase)
            ):
                # super() will count it; it arrived before <enabled/>: undo.
                self._sm_inbound_ctr = (self._sm_inbound_ctr - 1) & 0xFFFFFFFF
            super()._process_incoming(xmlstream, (stanza_obj, exc))
        except (RuntimeError, ConnectionError) as err:
            self._bnc_transport_failed(err)  # e.g. an <a/> to a dead TLS transport

    def _process_outgoing(self, xmlstream, token):
        try:
            super()._process_outgoing(xmlstream, token)
        except (RuntimeError, ConnectionError) as err:
            self._bnc_transport_failed(err)  # e.g. the <r/> after each batch

    def _bnc_transport_failed(self, err):
        """Workaround 2: aioopenssl raises RuntimeError when writing to a dead
        TLS transport, which the Client does not take for a connection error."""
        if self._bnc_closing:
            return  # close() in progress: the stream is going away anyway
        if isinstance(err, ConnectionError):
            raise err
        raise ConnectionError(f"transport failed: {err}") from err

    # Workaround 3: a stream that closes without an exception and without our
    # asking is a lost connection, not a clean stop.
    def _xmlstream_failed(self, exc):
        if exc is None and not self._bnc_closing:
            exc = ConnectionError("connection closed (local abort or EOF without </stream>)")
        super()._xmlstream_failed(exc)

    async def close(self):
        self._bnc_closing = True
        await super().close()


# --------------------------------------------------------------------------
# The Client with our reconnect loop
# --------------------------------------------------------------------------

# After these the SM session cannot be resumed: start a new one next time.
_DISCARD_SM_ERRORS = (
    aioxmpp.errors.StreamError,
    aioxmpp.errors.StreamNegotiationFailure,
    aiosasl.SASLError,
)


class _Client(aioxmpp.Client):
    """``aioxmpp.Client`` whose main loop retries every error (workarounds 4-6)
    and reports stream establishment to the link."""

    def __init__(self, link: UpstreamLink, local_jid, security_layer, **kwargs):
        super().__init__(local_jid, security_layer, **kwargs)
        self._bnc_link = link
        self.stream.__class__ = _RawStanzaStream
        self.stream._bnc_setup(link)

    async def _main(self):
        link = self._bnc_link
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.stream.on_failure.context_connect(self._stream_failure))
            stack.enter_context(
                self.stream.on_stream_destroyed.context_connect(self._stream_destroyed)
            )
            while True:
                self._nattempt += 1
                self._failure_future = asyncio.Future()
                try:
                    await self._main_impl()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if link._stopping:
                        return
                    await self._bnc_halt_stream()
                    if isinstance(exc, _DISCARD_SM_ERRORS) and self.stream.sm_enabled:
                        self.stream.stop_sm()
                    delay = link._attempt_failed(exc)
                    await asyncio.sleep(delay)

    async def _main_impl(self):
        failure_future = self._failure_future
        link = self._bnc_link
        transport, xmlstream, features = await link._connect(self)
        self._had_connection = True
        try:
            features, resumed = await self._negotiate_stream(xmlstream, features)
            self._is_suspended = False
            link._stream_up(self, resumed, transport)
            exc = await failure_future
            raise exc
        except asyncio.CancelledError:
            # stop(): final SM ack and </stream>, then wait for the server's.
            with contextlib.suppress(Exception):
                await self.stream.close()
            raise
        finally:
            self.stream.stop()

    async def _bnc_halt_stream(self):
        """Wait for the broker task to end, so that the stream can be started
        again and its SM state may be changed."""
        task = self.stream._task
        if task is not None and not task.done():
            self.stream.stop()
            await asyncio.wait([task])


# --------------------------------------------------------------------------
# Security layer and connectors
# --------------------------------------------------------------------------


_XMPP_ADDR_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # id-on-xmppAddr


class _PKIXVerifier(aioxmpp.security_layer.CertificateVerifier):
    """OpenSSL chain verification plus an RFC 6125 name check.

    Replaces aioxmpp's PKIXCertificateVerifier, whose name check calls
    ``X509.get_extension``, removed from recent pyOpenSSL (AttributeError ->
    every verified connection fails). ``ca_file`` adds trusted certificates
    (a private CA, or the server's self-signed certificate) to the system's.
    """

    def __init__(self, ca_file: str | None = None):
        super().__init__()
        self._ca_file = ca_file

    def setup_context(self, ctx, transport):
        super().setup_context(ctx, transport)  # VERIFY_PEER with our callback
        ctx.set_default_verify_paths()
        if self._ca_file:
            ctx.load_verify_locations(self._ca_file)

    def verify_callback(self, conn, cert, errno, errdepth, returncode):
        if not returncode:
            _log.warning("upstream certificate not trusted", errno=errno, depth=errdepth)
            return False
        if errdepth == 0:
            hostname = self.transport.get_extra_info("server_hostname")
            if not _cert_matches_domain(cert.to_cryptography(), hostname):
                _log.warning("upstream certificate does not match the domain", domain=hostname)
                return False
        return True

    async def post_handshake(self, transport):
        pass


def _cert_matches_domain(cert: x509.Certificate, domain: str | None) -> bool:
    """Does ``cert`` name the XMPP ``domain``? (DNS-ID with a leftmost
    wildcard, XmppAddr, or - only without any SAN DNS-ID - the subject CN.)"""
    if not domain:
        return False
    domain = domain.rstrip(".").lower()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        dns_names = san.get_values_for_type(x509.DNSName)
        if any(_dns_name_matches(name, domain) for name in dns_names):
            return True
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id == _XMPP_ADDR_OID and _der_utf8(other.value) == domain:
                return True
        if dns_names:
            return False
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return any(_dns_name_matches(str(attr.value), domain) for attr in names)


def _dns_name_matches(pattern: str, domain: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == domain


def _der_utf8(value: bytes) -> str | None:
    """Decode a DER UTF8String (the XmppAddr value); None if it is not one."""
    if len(value) < 2 or value[0] != 0x0C:
        return None
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(value[2:2 + count], "big")
        offset = 2 + count
    try:
        return value[offset:offset + length].decode("utf-8").lower()
    except UnicodeDecodeError:
        return None


class _PlainConnector(aioxmpp.connector.BaseConnector):
    """A TCP connection without any TLS (only for loopback, e.g. tests)."""

    @property
    def tls_supported(self):
        return False

    @property
    def dane_supported(self):
        return False

    async def connect(self, loop, metadata, domain, host, port, negotiation_timeout,
                      base_logger=None):
        features_future = asyncio.Future()
        stream = aioxmpp.protocol.XMLStream(
            to=domain, features_future=features_future, base_logger=base_logger
        )
        try:
            transport, _ = await loop.create_connection(lambda: stream, host, port)
        except BaseException:
            stream.abort()
            raise
        stream.deadtime_hard_limit = timedelta(seconds=negotiation_timeout)
        try:
            features = await features_future
        except BaseException:
            transport.abort()
            raise
        return transport, stream, features


def _make_security_layer(settings: UpstreamSettings):
    password = settings.password

    async def password_provider(jid, nattempt):
        return password if nattempt == 0 else None

    if not settings.verify:
        verifier_factory = aioxmpp.security_layer._NullVerifier
    else:
        ca_file = settings.ca_file

        def verifier_factory():
            return _PKIXVerifier(ca_file)
    return aioxmpp.security_layer.SecurityLayer(
        aioxmpp.security_layer.default_ssl_context,
        verifier_factory,
        settings.tls != "plain",
        (aioxmpp.security_layer.PasswordSASLProvider(password_provider),),
    )


def _explicit_options(settings: UpstreamSettings):
    """Connection options for an explicit host, or None for DNS discovery."""
    if settings.host is None:
        return None
    port = settings.port or _DEFAULT_PORTS[settings.tls]
    connector = {
        "starttls": aioxmpp.connector.STARTTLSConnector,
        "direct": aioxmpp.connector.XMPPOverTLSConnector,
        "plain": _PlainConnector,
    }[settings.tls]()
    return [(settings.host, port, connector)]
