"""Sans-IO core of the upstream client stream: negotiation, SM, keepalive.

The client role of the same XMPP layer the downstream server role uses (one
parser, one serialiser, one XEP-0198 module). In h11's shape: the edge feeds
bytes with ``receive_data(data, now)`` and gets typed events; what the core
wants written collects until ``data_to_send()``; time is passed in and
``next_timer()`` says when ``handle_timer(now)`` is due (aioquic's style), so
every path is unit-tested without sockets or clocks.

Negotiation (RFC 6120, XEP-0198): header and features; STARTTLS (the edge
wraps the transport and calls ``tls_started``); SASL; then either ``<resume/>``
of the previous stream (resumption: nothing re-bound, nothing lost) or bind and
``<enable resume='true'/>``. The table ``_HANDLERS`` says which element each
phase accepts; anything else ends the attempt.

Stanzas the server sends before ``<enabled/>`` are not counted (the server
counts from ``<enabled/>`` on too) and are handed over right after the
``Established`` event, so that the account sees a session before its traffic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Callable, Literal

from lxml import etree

from bouncer.upstream import sasl
from bouncer.upstream.events import Ended, Established, Event, TlsRequired
from bouncer.xmpp import framing, ids, jid, ns, sm, stanza
from bouncer.xmpp.events import StanzaReceived
from bouncer.xmpp.ns import q
from bouncer.xmpp.parser import ElementReceived, StreamEnded, StreamOpened, StreamParser, XmlRefused

TlsMode = Literal["starttls", "direct", "plain"]
_SUBSCRIPTIONS = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")


@dataclass(frozen=True)
class ClientSettings:
    jid: str  # full JID: the resource to bind (and to resume)
    password: str
    tls: TlsMode = "starttls"
    max_stanza_size: int = 16 * 1024 * 1024  # the server is trusted more than clients, not blindly
    keepalive: float = 60.0  # silence (s) before we probe the server with <r/> or a ping
    keepalive_timeout: float = 30.0  # no byte within this after a probe: the server is gone
    negotiation_timeout: float = 60.0


@dataclass(frozen=True)
class Outgoing:
    """A stanza as sent, kept until acknowledged (XEP-0198)."""

    data: bytes
    renew: bool  # send again on a NEW session after a failed resume (see ``renews``)


def renews(el: etree._Element) -> bool:
    """Whether a stanza lost with a failed resumption is sent again on the new session.

    Messages and subscription requests are. Presence state, room joins and IQs
    are not: on a new session the account restores its presence and rooms
    itself, and has answered the IQs with errors.
    """
    if el.tag == stanza.MESSAGE:
        return True
    return el.tag == stanza.PRESENCE and el.get("type") in _SUBSCRIPTIONS


class UpstreamPhase(Enum):
    FEATURES = auto()  # header sent, waiting for the server's features
    STARTTLS = auto()  # <starttls/> sent, waiting for <proceed/>
    TLS = auto()  # the edge is doing the handshake
    SASL = auto()  # <auth/> sent
    RESUME = auto()  # <resume/> sent
    BIND = auto()  # bind IQ sent
    SESSION = auto()  # legacy session IQ sent (RFC 3921, only when not optional)
    ENABLE = auto()  # <enable/> sent
    OPEN = auto()
    CLOSING = auto()  # our </stream:stream> sent
    CLOSED = auto()


@dataclass
class _Features:
    starttls: bool = False
    mechanisms: tuple[str, ...] = ()
    binding_types: tuple[str, ...] | None = None
    bind: bool = False
    session_required: bool = False
    sm: bool = False


@dataclass
class ClientStream:
    """One upstream connection attempt, from the first byte to its end.

    ``previous``: the XEP-0198 state of the last stream, to resume it.
    """

    settings: ClientSettings
    previous: sm.StreamManagement[Outgoing] | None = None
    nonce: str | None = None  # SCRAM client nonce (tests fix it to replay transcripts)
    phase: UpstreamPhase = UpstreamPhase.FEATURES
    tls_active: bool = False
    sm: sm.StreamManagement[Outgoing] | None = None  # set once SM is on for this stream
    bound_jid: str | None = None
    _out: list[bytes] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    _held: list[etree._Element] = field(default_factory=list)  # before Established
    _lost: list[Outgoing] = field(default_factory=list)  # a failed resume's stanzas to renew
    _features: _Features = field(default_factory=_Features)
    _bindings: dict[str, bytes] = field(default_factory=dict)
    _sasl: sasl.ClientSasl | None = None
    _authenticated: bool = False
    _iq_id: str | None = None  # our bind/session IQ in flight
    _heard: float = 0.0  # last time anything arrived
    _probe: str | None = None  # the keepalive probe in flight: "r" (XEP-0198) or "ping" (XEP-0199)
    _probed_at: float = 0.0

    def __post_init__(self) -> None:
        self._domain = jid.domain(self.settings.jid)
        self._parser = StreamParser(self.settings.max_stanza_size)

    # ---- input ------------------------------------------------------------------
    def start(self, now: float, bindings: dict[str, bytes] | None = None) -> None:
        """Open the stream once connected; ``bindings`` when direct TLS already wraps it."""
        self._heard = now
        if bindings is not None:
            self.tls_started(bindings)
        else:
            self._open()

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the socket; return what they completed."""
        self._heard = now
        self._probe = None  # anything at all proves the server alive
        if self.phase is UpstreamPhase.CLOSED:
            return []
        try:
            for ev in self._parser.feed(data):
                if self.phase is UpstreamPhase.CLOSED:
                    break
                if isinstance(ev, StreamOpened):
                    self._on_header(ev)
                elif isinstance(ev, StreamEnded):
                    self._end("the server closed the stream", retry_later=self.phase is not UpstreamPhase.CLOSING)
                elif isinstance(ev, ElementReceived):
                    self._on_element(ev.element, now)
                if self.phase is UpstreamPhase.TLS:
                    break  # bytes after <proceed/> belong to the TLS layer
        except XmlRefused as exc:
            self._fail(exc.condition, exc.text)
        except sm.SmViolation as exc:
            self._fail(exc.condition, exc.text, exc.detail)
        except sasl.SaslError as exc:
            self._end(f"SASL: {exc}")
        return self._take_events()

    def tls_started(self, bindings: dict[str, bytes]) -> None:
        """The transport is TLS now; ``bindings``: the channel-binding data the edge computed."""
        self.tls_active = True
        self._bindings = dict(bindings)
        self._open()

    def connection_lost(self, reason: str) -> list[Event]:
        """The transport closed under us."""
        if self.phase is not UpstreamPhase.CLOSED:
            self._end(reason, retry_later=self.phase is not UpstreamPhase.CLOSING)
        return self._take_events()

    # ---- time -------------------------------------------------------------------
    def next_timer(self) -> float:
        """When ``handle_timer`` must run next (monotonic seconds, as passed in)."""
        s = self.settings
        if self.phase is not UpstreamPhase.OPEN:
            return self._heard + s.negotiation_timeout
        if self._probe is not None:
            return self._probed_at + s.keepalive_timeout
        return self._heard + s.keepalive

    def handle_timer(self, now: float) -> list[Event]:
        """Probe a silent server; end the stream when the probe goes unanswered."""
        if self.phase is UpstreamPhase.CLOSED or now < self.next_timer():
            return []
        if self.phase is not UpstreamPhase.OPEN:
            self._end(f"negotiation timed out in phase {self.phase.name.lower()}")
        elif self._probe is not None:
            self._end(f"no answer from the server within {self.settings.keepalive_timeout:g} s of a keepalive")
        else:
            self._probed_at = now
            if self.sm is not None:
                self._probe = "r"
                self._out.append(self.sm.request(now))
            else:
                self._probe = "ping"
                probe = stanza.make("iq", type="get", id=ids.new("keepalive"), to=self._domain)
                stanza.child(probe, ns.PING, "ping")
                self._out.append(stanza.serialize(probe))
        return self._take_events()

    # ---- output -----------------------------------------------------------------
    def send_stanza(self, el: etree._Element) -> None:
        """Write a stanza (only once established); counted and kept when SM is on."""
        assert self.phase is UpstreamPhase.OPEN, self.phase
        data = stanza.serialize(el)
        self._out.append(data)
        if self.sm is not None:
            self.sm.on_sent(Outgoing(data, renews(el)))

    def data_to_send(self, now: float) -> bytes:
        """Everything to write; one ``<r/>`` closes a batch that left stanzas unacknowledged."""
        if self.sm is not None and self.phase is UpstreamPhase.OPEN and self.sm.wants_request():
            self._out.append(self.sm.request(now))
        out, self._out = b"".join(self._out), []
        return out

    def close(self) -> None:
        """End the stream cleanly: the server ends the session (no resumption)."""
        if self.phase in (UpstreamPhase.CLOSED, UpstreamPhase.CLOSING):
            return
        self._out.append(framing.CLOSE)
        self.phase = UpstreamPhase.CLOSING

    def carry_over(self) -> sm.StreamManagement[Outgoing] | None:
        """What the next attempt starts from, once this one ended.

        The SM state to resume; or, without a resumption id, a state whose
        unacknowledged stanzas the next session renews; or None.
        """
        if self.sm is not None:
            if self.sm.id is not None:
                return self.sm
            return sm.StreamManagement(unacked=self.sm.unacked) if self.sm.unacked else None
        if self._lost:  # resumption failed, and this attempt ended before the new session
            return sm.StreamManagement(unacked=deque(self._lost))
        return self.previous  # never got as far as resuming it: still worth a try

    # ---- negotiation ------------------------------------------------------------
    def _open(self) -> None:
        self._parser = StreamParser(self.settings.max_stanza_size)
        self.phase = UpstreamPhase.FEATURES
        from_ = jid.bare(self.settings.jid) if self.tls_active else None
        self._out.append(framing.header(to=self._domain, from_=from_))

    def _on_header(self, ev: StreamOpened) -> None:
        if ev.tag != q(ns.STREAMS, "stream") or ev.default_ns != ns.CLIENT:
            self._fail("invalid-namespace", "expected a jabber:client stream")

    def _on_element(self, el: etree._Element, now: float) -> None:
        if el.tag == q(ns.STREAMS, "error"):
            return self._end(f"stream error: {_stream_error_text(el)}")
        if self.phase in (UpstreamPhase.OPEN, UpstreamPhase.CLOSING):
            return self._on_open(el, now)
        handler = _HANDLERS.get((self.phase, el.tag))
        if handler is None and el.tag in stanza.STANZA_TAGS and self.phase in (UpstreamPhase.SESSION, UpstreamPhase.ENABLE):
            handler = ClientStream._on_early_stanza
        if handler is None and el.tag == q(ns.SM, "r"):
            return  # asked before <enabled/> came: nothing counted yet
        if handler is None:
            return self._fail("unsupported-stanza-type", f"unexpected {el.tag} in phase {self.phase.name.lower()}")
        handler(self, el)

    def _on_features(self, el: etree._Element) -> None:
        f = _Features()
        f.starttls = el.find(q(ns.TLS, "starttls")) is not None
        mechs = el.find(q(ns.SASL, "mechanisms"))
        f.mechanisms = tuple((m.text or "").strip() for m in mechs.iter(q(ns.SASL, "mechanism"))) if mechs is not None else ()
        cb = el.find(q(ns.SASL_CB, "sasl-channel-binding"))
        if cb is not None:
            f.binding_types = tuple(c.get("type", "") for c in cb.iter(q(ns.SASL_CB, "channel-binding")))
        f.bind = el.find(q(ns.BIND, "bind")) is not None
        session = el.find(q(ns.SESSION, "session"))
        f.session_required = session is not None and session.find(q(ns.SESSION, "optional")) is None
        f.sm = el.find(q(ns.SM, "sm")) is not None
        self._features = f
        if not self.tls_active and self.settings.tls == "starttls":
            if not f.starttls:
                return self._end("the server offers no STARTTLS")
            self._out.append(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.phase = UpstreamPhase.STARTTLS
        elif self._authenticated:
            self._after_auth(f)
        elif f.mechanisms:
            self._authenticate(f)
        else:
            self._end("the server offers no SASL mechanism")

    def _on_proceed(self, _el: etree._Element) -> None:
        self.phase = UpstreamPhase.TLS
        self._events.append(TlsRequired())

    def _on_tls_failure(self, _el: etree._Element) -> None:
        self._end("the server refused STARTTLS")

    def _authenticate(self, f: _Features) -> None:
        user = jid.localpart(self.settings.jid) or ""
        offer = sasl.Offer(f.mechanisms, f.binding_types)
        self._sasl = sasl.ClientSasl(offer, user, self.settings.password, tls=self.tls_active,
                                     bindings=self._bindings, nonce=self.nonce)
        initial = sasl.encode(self._sasl.initial())
        self._out.append(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{self._sasl.mechanism}'>"
                         f"{initial}</auth>".encode())
        self.phase = UpstreamPhase.SASL

    def _on_challenge(self, el: etree._Element) -> None:
        assert self._sasl is not None
        answer = sasl.encode(self._sasl.challenge(sasl.decode(el.text)))
        self._out.append(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{answer}</response>".encode())

    def _on_sasl_success(self, el: etree._Element) -> None:
        assert self._sasl is not None
        self._sasl.success(sasl.decode(el.text))
        self._sasl = None
        self._authenticated = True
        self._open()  # RFC 6120 §6.4.6: a new stream; its features tell what follows

    def _on_sasl_failure(self, el: etree._Element) -> None:
        condition = next((etree.QName(c).localname for c in el if isinstance(c.tag, str)
                          and c.tag != q(ns.SASL, "text")), "failure")
        text = el.findtext(q(ns.SASL, "text"))
        self._end(f"SASL {self._sasl.mechanism if self._sasl else ''} failed: {condition}"
                  + (f" ({text})" if text else ""))

    def _after_auth(self, f: _Features) -> None:
        """Post-authentication features: resume the previous stream, or bind a new one."""
        previous = self.previous
        if f.sm and previous is not None and previous.id is not None:
            self._out.append(sm.resume(previous.id, previous.inbound))
            self.phase = UpstreamPhase.RESUME
        else:
            if previous is not None:
                self._lost = [o for o in previous.fail(None) if o.renew]
            self._bind()

    def _on_resumed(self, el: etree._Element) -> None:
        previous = self.previous
        assert previous is not None
        resend = previous.resume(sm.parse_h(el))
        self.sm, self.bound_jid = previous, self.settings.jid
        self.phase = UpstreamPhase.OPEN
        self._out.extend(o.data for o in resend)
        self._established(resumed=True)

    def _on_resume_failed(self, el: etree._Element) -> None:
        previous = self.previous
        assert previous is not None
        self._lost = [o for o in previous.fail(sm.optional_h(el)) if o.renew]
        self._bind()

    def _bind(self) -> None:
        if not self._features.bind:
            return self._end("the server offers no resource binding")
        self._iq_id = ids.new("bind")
        iq = stanza.make("iq", type="set", id=self._iq_id)
        bind = stanza.child(iq, ns.BIND, "bind")
        resource = jid.resource(self.settings.jid)
        if resource:
            etree.SubElement(bind, q(ns.BIND, "resource")).text = resource
        self._out.append(stanza.serialize(iq))
        self.phase = UpstreamPhase.BIND

    def _on_bind_result(self, el: etree._Element) -> None:
        if el.get("id") != self._iq_id:
            return self._fail("unsupported-stanza-type", "a stanza before the bind result")
        if el.get("type") != "result":
            return self._end(f"bind failed: {_stanza_error_text(el)}")
        self.bound_jid = el.findtext(f"{q(ns.BIND, 'bind')}/{q(ns.BIND, 'jid')}") or self.settings.jid
        if self._features.session_required:
            self._iq_id = ids.new("session")
            iq = stanza.make("iq", type="set", id=self._iq_id)
            stanza.child(iq, ns.SESSION, "session")
            self._out.append(stanza.serialize(iq))
            self.phase = UpstreamPhase.SESSION
        else:
            self._enable()

    def _on_session_result(self, el: etree._Element) -> None:
        if el.get("id") != self._iq_id:
            return self._on_early_stanza(el)
        if el.get("type") != "result":
            return self._end(f"session establishment failed: {_stanza_error_text(el)}")
        self._enable()

    def _enable(self) -> None:
        if self._features.sm:
            self._out.append(sm.enable(resume=True))
            self.phase = UpstreamPhase.ENABLE
        else:
            self._open_new_session()

    def _on_enabled(self, el: etree._Element) -> None:
        self.sm = sm.StreamManagement()
        sm.parse_enabled(el, self.sm)
        self._open_new_session()

    def _on_enable_failed(self, _el: etree._Element) -> None:
        self._open_new_session()  # a session without SM: still a session

    def _open_new_session(self) -> None:
        self.phase = UpstreamPhase.OPEN
        lost, self._lost = self._lost, []
        for item in lost:  # counted anew on this stream
            self._out.append(item.data)
            if self.sm is not None:
                self.sm.on_sent(item)
        self._established(resumed=False)

    def _established(self, resumed: bool) -> None:
        assert self.bound_jid is not None
        self._events.append(Established(self.bound_jid, resumed))
        held, self._held = self._held, []
        self._events.extend(StanzaReceived(el) for el in held)

    def _on_early_stanza(self, el: etree._Element) -> None:
        self._held.append(el)  # before <enabled/>: not counted by either side

    # ---- the open stream --------------------------------------------------------
    def _on_open(self, el: etree._Element, now: float) -> None:
        if el.tag in stanza.STANZA_TAGS:
            if self.sm is not None:
                self.sm.on_received()
            if el.tag == stanza.IQ and ids.is_ours(el.get("id"), "keepalive"):
                return  # the answer to our keepalive ping
            self._events.append(StanzaReceived(el))
        elif self.sm is not None and el.tag == q(ns.SM, "r"):
            self._out.append(self.sm.answer())
        elif self.sm is not None and el.tag == q(ns.SM, "a"):
            self.sm.on_ack(sm.parse_h(el))
        else:
            self._fail("unsupported-stanza-type", f"unexpected {el.tag}")

    # ---- ending -----------------------------------------------------------------
    def _fail(self, condition: str, text: str, detail: bytes = b"") -> None:
        """We end the stream with a stream error (the server broke the protocol)."""
        if self.phase is UpstreamPhase.CLOSED:
            return
        self._out.append(framing.stream_error(condition, text, detail) + framing.CLOSE)
        self._end(f"{condition}: {text}")

    def _end(self, reason: str, retry_later: bool = True) -> None:
        if self.phase is UpstreamPhase.CLOSED:
            return
        self.phase = UpstreamPhase.CLOSED
        self._events.append(Ended(reason, retry_later))

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _stream_error_text(el: etree._Element) -> str:
    condition = next((etree.QName(c).localname for c in el
                      if isinstance(c.tag, str) and c.tag != q(ns.STREAM_ERRORS, "text")), "undefined-condition")
    text = el.findtext(q(ns.STREAM_ERRORS, "text"))
    return condition + (f" ({text})" if text else "")


def _stanza_error_text(el: etree._Element) -> str:
    error = el.find(q(ns.CLIENT, "error"))
    if error is None:
        return "no error given"
    return next((etree.QName(c).localname for c in error if isinstance(c.tag, str)), "undefined-condition")


Handler = Callable[[ClientStream, etree._Element], None]
_HANDLERS: dict[tuple[UpstreamPhase, str], Handler] = {
    (UpstreamPhase.FEATURES, q(ns.STREAMS, "features")): ClientStream._on_features,
    (UpstreamPhase.STARTTLS, q(ns.TLS, "proceed")): ClientStream._on_proceed,
    (UpstreamPhase.STARTTLS, q(ns.TLS, "failure")): ClientStream._on_tls_failure,
    (UpstreamPhase.SASL, q(ns.SASL, "challenge")): ClientStream._on_challenge,
    (UpstreamPhase.SASL, q(ns.SASL, "success")): ClientStream._on_sasl_success,
    (UpstreamPhase.SASL, q(ns.SASL, "failure")): ClientStream._on_sasl_failure,
    (UpstreamPhase.RESUME, q(ns.SM, "resumed")): ClientStream._on_resumed,
    (UpstreamPhase.RESUME, q(ns.SM, "failed")): ClientStream._on_resume_failed,
    (UpstreamPhase.BIND, stanza.IQ): ClientStream._on_bind_result,
    (UpstreamPhase.SESSION, stanza.IQ): ClientStream._on_session_result,
    (UpstreamPhase.ENABLE, q(ns.SM, "enabled")): ClientStream._on_enabled,
    (UpstreamPhase.ENABLE, q(ns.SM, "failed")): ClientStream._on_enable_failed,
}
