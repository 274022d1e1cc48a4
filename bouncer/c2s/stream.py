"""Sans-IO core of one downstream C2S stream (RFC 6120 negotiation, then stanzas).

In the shape of h11: the I/O edge feeds bytes with ``receive_data`` and gets
typed events back; whatever the core wants to write accumulates until
``data_to_send``. No socket, clock or task lives here, so every negotiation
path is unit-tested by feeding bytes.

Negotiation runs through phases (the table below says what each accepts):
TLS (when required or asked), SASL, resource binding, then stanzas. Every
stream restart (after STARTTLS and SASL success) gets a fresh parser.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from enum import Enum, auto

from lxml import etree

from bouncer.xmpp import framing, ns, sm, stanza
from bouncer.xmpp.events import StanzaReceived
from bouncer.c2s import sasl
from bouncer.xmpp.parser import ElementReceived, StreamEnded, StreamOpened, StreamParser, XmlRefused
from bouncer.xmpp.ns import q


class NegotiationPhase(Enum):
    TLS = auto()  # TLS is required and not active yet
    AUTH = auto()  # SASL (STARTTLS may still be offered)
    BIND = auto()  # authenticated; only resource binding allowed
    OPEN = auto()  # bound: stanzas flow
    CLOSED = auto()


# Every phase change, as h11's ``_state.py`` keeps them: (phase, what happened) -> next
# phase. Anything else is a bug of ours, raised as one. Which elements each phase
# accepts is the ``_HANDLERS`` table at the end of this file.
_TRANSITIONS: dict[tuple[NegotiationPhase, str], NegotiationPhase] = {
    (NegotiationPhase.TLS, "tls started"): NegotiationPhase.AUTH,
    (NegotiationPhase.AUTH, "tls started"): NegotiationPhase.AUTH,
    (NegotiationPhase.AUTH, "authenticated"): NegotiationPhase.BIND,
    (NegotiationPhase.BIND, "bound"): NegotiationPhase.OPEN,
    (NegotiationPhase.BIND, "resumed"): NegotiationPhase.OPEN,
    **{(phase, "closed"): NegotiationPhase.CLOSED for phase in NegotiationPhase if phase is not NegotiationPhase.CLOSED},
}


@dataclass(frozen=True)
class StreamSettings:
    domain: str
    username: str  # the account's localpart: the only one that may log in
    credentials: sasl.AccountCredentials
    tls_available: bool
    tls_required: bool
    max_stanza_size: int
    # XEP-0198 offered with resumption for this many seconds; None: not offered. The
    # core speaks the protocol; keeping sessions for resumption is the account's job.
    sm_max: int | None = None


# Events handed to the I/O edge.
@dataclass(frozen=True)
class StartTls:
    """Flush output, wrap the transport in TLS, then call ``tls_started``."""


@dataclass(frozen=True)
class AuthSucceeded:
    username: str


@dataclass(frozen=True)
class AuthFailed:
    username: str | None
    reason: str


@dataclass(frozen=True)
class BindRequested:
    """The client asks for a resource (None: pick one). Answer with ``bind``."""

    resource: str | None


@dataclass(frozen=True)
class NonzaReceived:
    """A depth-1 element that is not a stanza (CSI, SM), once bound."""

    element: etree._Element


@dataclass(frozen=True)
class Closed:
    """The stream is over; ``error`` is the stream error condition we sent, if any."""

    error: str | None


@dataclass(frozen=True)
class SmEnabled:
    """The client enabled XEP-0198; ``id`` names the session for a later resume."""

    id: str


@dataclass(frozen=True)
class ResumeRequested:
    """The client asks to resume ``previd`` (it had ``h``). Answer with ``resume``
    (the hibernated session's SM state and JID) or ``resume_failed``."""

    previd: str
    h: int


@dataclass(frozen=True)
class Acked:
    """The client acknowledged stanzas (XEP-0198 ``<a/>``): ``h`` of them in all."""

    h: int


Event = (StartTls | AuthSucceeded | AuthFailed | BindRequested | StanzaReceived | NonzaReceived
         | SmEnabled | ResumeRequested | Acked | Closed)


class ServerStream:
    """One client connection's protocol state."""

    def __init__(self, settings: StreamSettings, *, tls_active: bool = False) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.phase = NegotiationPhase.TLS if settings.tls_required and not tls_active else NegotiationPhase.AUTH
        self.jid: str | None = None
        self.username: str | None = None
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._parser = StreamParser(settings.max_stanza_size)
        self._header_sent = False
        self._sasl: sasl.SaslExchange | None = None
        self._bind_id: str | None = None
        self.sm: sm.StreamManagement[bytes] | None = None
        self._resume_h: int | None = None
        self.ended_by_client = False

    # ---- input -------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; return what they completed."""
        if self.phase is NegotiationPhase.CLOSED:
            return []
        try:
            for ev in self._parser.feed(data):
                if self.phase is NegotiationPhase.CLOSED:
                    break
                if isinstance(ev, StreamOpened):
                    self._on_header(ev)
                elif isinstance(ev, StreamEnded):
                    self.ended_by_client = True  # XEP-0198: a clean close ends the session too
                    self._close(None)
                elif isinstance(ev, ElementReceived):
                    self._on_element(ev.element)
                if self._events and isinstance(self._events[-1], StartTls):
                    break  # bytes after <starttls/> belong to the TLS layer
        except XmlRefused as exc:
            self.stream_error(exc.condition, exc.text)
        events, self._events = self._events, []
        return events

    def tls_started(self) -> None:
        """The transport is now TLS: expect a new stream header."""
        self.tls_active = True
        self._transition("tls started")
        self._restart()

    def connection_lost(self) -> list[Event]:
        """The socket closed under us."""
        if self.phase is NegotiationPhase.CLOSED:
            return []
        self._transition("closed")
        return [Closed(None)]

    def holding(self) -> int:
        """Bytes of a stanza received only in part (what a connection that ends now leaves)."""
        return self._parser.holding()

    # ---- output ------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def send_stanza(self, el: etree._Element) -> None:
        self.send_serialized(stanza.serialize(el))

    def send_serialized(self, wire: bytes) -> None:
        """A stanza already serialised (fan-out serialises once for many sessions)."""
        self._out.append(wire)
        if self.sm is not None:
            self.sm.on_sent(wire)

    # ---- XEP-0198 (server role) -------------------------------------------------------
    def request_ack(self, now: float) -> None:
        """Ask the client for an ``<a/>`` (when, is the edge's policy)."""
        if self.sm is not None and self.phase is NegotiationPhase.OPEN:
            self._out.append(self.sm.request(now))

    def resume(self, state: sm.StreamManagement[bytes], full_jid: str) -> None:
        """Answer a ``ResumeRequested``: the session ``state`` lives on in this stream."""
        assert self._resume_h is not None and state.id is not None
        try:
            resend = state.resume(self._resume_h)
        except sm.SmViolation as exc:
            return self._sm_violation(exc)
        self.sm, self.jid, self._resume_h = state, full_jid, None
        self._out.append(sm.resumed(state.id, state.inbound))
        self._out.extend(resend)
        self._transition("resumed")

    def resume_failed(self, h: int | None = None) -> None:
        """No such session (any more): the client binds a new one. ``h``: what the
        session had received of the client's, when it is known."""
        self._resume_h = None
        self._out.append(sm.failed("item-not-found", h))

    def bind(self, resource: str) -> None:
        """Answer the pending bind request with ``account@domain/resource``."""
        self.jid = f"{self.username}@{self.settings.domain}/{resource}"
        reply = stanza.make("iq", type="result", id=self._bind_id)
        b = stanza.child(reply, ns.BIND, "bind")
        etree.SubElement(b, q(ns.BIND, "jid")).text = self.jid
        self.send_stanza(reply)
        self._transition("bound")

    def close(self) -> None:
        """End the stream politely."""
        if self.phase is not NegotiationPhase.CLOSED:
            self._ensure_header()
            self._close(None)

    def stream_error(self, condition: str, text: str | None = None, detail: bytes = b"") -> None:
        """Send a stream error and close; only this session ends (SPEC §11)."""
        if self.phase is NegotiationPhase.CLOSED:
            return
        self._ensure_header()
        self._out.append(framing.stream_error(condition, text, detail))
        self._close(condition)

    # ---- negotiation -------------------------------------------------------
    def _transition(self, trigger: str) -> None:
        try:
            self.phase = _TRANSITIONS[(self.phase, trigger)]
        except KeyError:
            raise RuntimeError(f"{trigger!r} cannot happen in phase {self.phase.name}") from None

    def _close(self, error: str | None) -> None:
        self._out.append(framing.CLOSE)
        self._transition("closed")
        self._events.append(Closed(error))

    def _restart(self) -> None:
        self._parser = StreamParser(self.settings.max_stanza_size)
        self._header_sent = False

    def _ensure_header(self) -> None:
        if not self._header_sent:
            self._header_sent = True
            self._out.append(framing.header(from_=self.settings.domain, id_=secrets.token_hex(8)))

    def _on_header(self, ev: StreamOpened) -> None:
        self._ensure_header()
        if ev.tag != q(ns.STREAMS, "stream"):
            return self.stream_error("invalid-namespace", "expected stream:stream")
        if ev.default_ns != ns.CLIENT:
            return self.stream_error("invalid-namespace", "default namespace must be jabber:client")
        if ev.attrs.get("to", "").lower() != self.settings.domain.lower():
            return self.stream_error("host-unknown", f"this server serves {self.settings.domain}")
        if ev.attrs.get("version") != "1.0":
            return self.stream_error("unsupported-version")
        self._out.append(etree.tostring(self._features()))

    def _features(self) -> etree._Element:
        feats = etree.Element(q(ns.STREAMS, "features"), nsmap={"stream": ns.STREAMS})
        if self.phase in (NegotiationPhase.TLS, NegotiationPhase.AUTH):
            if self.settings.tls_available and not self.tls_active:
                tls = stanza.child(feats, ns.TLS, "starttls")
                if self.settings.tls_required:
                    etree.SubElement(tls, q(ns.TLS, "required"))
            if self.phase is NegotiationPhase.AUTH:
                mechs = stanza.child(feats, ns.SASL, "mechanisms")
                for name in sasl.offered_mechanisms(self.settings.credentials, self.tls_active):
                    etree.SubElement(mechs, q(ns.SASL, "mechanism")).text = name
        elif self.phase is NegotiationPhase.BIND:
            stanza.child(feats, ns.BIND, "bind")
            sess = stanza.child(feats, ns.SESSION, "session")
            etree.SubElement(sess, q(ns.SESSION, "optional"))
            stanza.child(feats, ns.CSI, "csi")
            if self.settings.sm_max is not None:
                stanza.child(feats, ns.SM, "sm")
        return feats

    def _on_element(self, el: etree._Element) -> None:
        handler = _HANDLERS.get((self.phase, el.tag))
        if handler is not None:
            handler(self, el)
        elif self.phase is NegotiationPhase.OPEN and el.tag in stanza.STANZA_TAGS:
            self._on_stanza(el)
        elif self.phase is NegotiationPhase.OPEN:
            self._events.append(NonzaReceived(el))
        elif self.phase is NegotiationPhase.TLS:
            self.stream_error("policy-violation", "STARTTLS is required")
        else:
            self.stream_error("not-authorized", "authenticate and bind first")

    def _on_starttls(self, _el: etree._Element) -> None:
        if not self.settings.tls_available or self.tls_active:
            self._out.append(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            return self._close(None)
        self._out.append(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self._events.append(StartTls())

    def _on_auth(self, el: etree._Element) -> None:
        self._sasl = sasl.SaslExchange(self.settings.credentials, self.settings.username)
        data = _b64(el.text)
        if data is None:
            return self._sasl_step(sasl.Failure("incorrect-encoding", None, "bad base64"))
        self._sasl_step(self._sasl.start(el.get("mechanism", ""), data, self.tls_active))

    def _on_response(self, el: etree._Element) -> None:
        data = _b64(el.text)
        if self._sasl is None or data is None:
            return self._sasl_step(sasl.Failure("malformed-request", None, "unexpected response"))
        self._sasl_step(self._sasl.respond(data))

    def _on_abort(self, _el: etree._Element) -> None:
        self._sasl = None
        self._out.append(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><aborted/></failure>")

    def _sasl_step(self, step: sasl.Step) -> None:
        if isinstance(step, sasl.Challenge):
            self._out.append(_sasl_element("challenge", step.data))
        elif isinstance(step, sasl.Success):
            self._sasl = None
            self.username = self.settings.username
            self._out.append(_sasl_element("success", step.data))
            self._transition("authenticated")
            self._restart()
            self._events.append(AuthSucceeded(step.username))
        else:
            self._sasl = None
            self._out.append(
                f"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{step.condition}/></failure>".encode()
            )
            self._events.append(AuthFailed(step.username, step.reason))

    def _on_bind_phase_iq(self, el: etree._Element) -> None:
        body = stanza.payload(el)
        if el.get("type") == "set" and body is not None and body.tag == q(ns.BIND, "bind"):
            self._bind_id = el.get("id")
            res = body.findtext(q(ns.BIND, "resource"))
            self._events.append(BindRequested(res.strip() if res and res.strip() else None))
        else:
            self.send_stanza(stanza.error_reply(el, "not-authorized"))

    def _on_resume(self, el: etree._Element) -> None:
        if self.settings.sm_max is None or not el.get("previd"):
            return self._out.append(sm.failed("feature-not-implemented" if self.settings.sm_max is None
                                              else "bad-request"))
        try:
            self._resume_h = sm.parse_h(el)
        except sm.SmViolation as exc:
            return self._sm_violation(exc)
        self._events.append(ResumeRequested(el.get("previd", ""), self._resume_h))

    def _on_enable(self, el: etree._Element) -> None:
        if self.settings.sm_max is None or self.sm is not None:
            return self._out.append(sm.failed("unexpected-request"))
        resumable = el.get("resume", "").lower() in ("true", "1")
        self.sm = sm.StreamManagement(id=secrets.token_urlsafe(12) if resumable else None,
                                      max=self.settings.sm_max if resumable else None)
        self._out.append(sm.enabled(self.sm.id, self.sm.max))
        self._events.append(SmEnabled(self.sm.id or ""))

    def _on_sm_request(self, _el: etree._Element) -> None:
        if self.sm is None:
            return self.stream_error("unsupported-stanza-type", "stream management is not enabled")
        self._out.append(self.sm.answer())

    def _on_sm_ack(self, el: etree._Element) -> None:
        if self.sm is None:
            return self.stream_error("unsupported-stanza-type", "stream management is not enabled")
        try:
            h = sm.parse_h(el)
            self.sm.on_ack(h)
        except sm.SmViolation as exc:
            return self._sm_violation(exc)
        self._events.append(Acked(h))

    def _sm_violation(self, exc: sm.SmViolation) -> None:
        self.stream_error(exc.condition, exc.text, exc.detail)

    def _on_stanza(self, el: etree._Element) -> None:
        if self.sm is not None:
            self.sm.on_received()
        el.set("from", self.jid or "")  # SPEC §11: a client's own from is never trusted
        body = stanza.payload(el) if el.tag == stanza.IQ else None
        if body is not None and body.tag == q(ns.SESSION, "session") and el.get("type") == "set":
            # RFC 3921 legacy session establishment: a no-op that must succeed.
            return self.send_stanza(stanza.iq_result(el))
        if body is not None and body.tag == q(ns.BIND, "bind"):
            return self.send_stanza(stanza.error_reply(el, "not-allowed", "already bound"))
        self._events.append(StanzaReceived(el))


_HANDLERS = {
    (NegotiationPhase.TLS, q(ns.TLS, "starttls")): ServerStream._on_starttls,
    (NegotiationPhase.AUTH, q(ns.TLS, "starttls")): ServerStream._on_starttls,
    (NegotiationPhase.AUTH, q(ns.SASL, "auth")): ServerStream._on_auth,
    (NegotiationPhase.AUTH, q(ns.SASL, "response")): ServerStream._on_response,
    (NegotiationPhase.AUTH, q(ns.SASL, "abort")): ServerStream._on_abort,
    (NegotiationPhase.BIND, stanza.IQ): ServerStream._on_bind_phase_iq,
    (NegotiationPhase.BIND, q(ns.SM, "resume")): ServerStream._on_resume,
    (NegotiationPhase.OPEN, q(ns.SM, "enable")): ServerStream._on_enable,
    (NegotiationPhase.OPEN, q(ns.SM, "r")): ServerStream._on_sm_request,
    (NegotiationPhase.OPEN, q(ns.SM, "a")): ServerStream._on_sm_ack,
}


def _b64(text: str | None) -> bytes | None:
    """SASL payloads: base64, where ``=`` alone means empty (RFC 6120 §6.4.2)."""
    text = (text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _sasl_element(name: str, data: bytes) -> bytes:
    payload = base64.b64encode(data).decode() if data else "="
    return f"<{name} xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{payload}</{name}>".encode()
