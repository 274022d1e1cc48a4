"""XEP-0198 stream management: one sans-IO module for both roles.

The counting is symmetric (XEP-0198 §4): each side counts the stanzas it
received (``h``, reported in ``<a/>``) and keeps the ones it sent until the
peer's ``h`` acknowledges them. So the upstream client role and the downstream
server role use the same :class:`StreamManagement` and differ only in who sends
``<enable/>``, ``<resume/>`` and who answers them; the nonza builders and
parsers for both sides live here too.

Counters wrap modulo 2^32 (``h`` is an xs:unsignedInt). An ``h`` that
acknowledges more than was sent, or goes backwards, is a protocol violation
(XEP-0198 §4: ``undefined-condition`` with ``<handled-count-too-high/>``).

Nothing here reads a clock: the times of requests are passed in, so tests and
the edges decide what "now" is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lxml import etree

from bouncer.xmpp import ns
from bouncer.xmpp.ns import q

MOD = 1 << 32

T = TypeVar("T")


def tag(local: str) -> str:
    """``{urn:xmpp:sm:3}local``."""
    return q(ns.SM, local)


class SmViolation(Exception):
    """The peer broke XEP-0198; end the stream with ``condition`` (plus ``detail``)."""

    def __init__(self, text: str, detail: bytes = b"", condition: str = "undefined-condition") -> None:
        super().__init__(text)
        self.text = text
        self.detail = detail  # an application-specific error element, serialised
        self.condition = condition


@dataclass
class StreamManagement(Generic[T]):
    """The counters and the unacknowledged queue of one SM-enabled stream.

    ``unacked`` holds what was sent and not yet acknowledged, oldest first;
    ``acked`` is the peer's last ``h``, so ``acked + len(unacked) == sent``
    (mod 2^32) always holds.
    """

    inbound: int = 0  # stanzas received: our h
    sent: int = 0  # stanzas sent since enable
    acked: int = 0  # the peer's last h
    unacked: deque[T] = field(default_factory=deque)
    id: str | None = None  # the resumption id (None: not resumable)
    max: int | None = None  # seconds the peer keeps the session for resumption
    location: str | None = None  # where to resume (XEP-0198 §5), when given
    requested_at: float | None = None  # when our outstanding <r/> went out

    # ---- counting ------------------------------------------------------------
    def on_sent(self, item: T) -> None:
        """A stanza went out: it is counted and kept until acknowledged."""
        self.sent = (self.sent + 1) % MOD
        self.unacked.append(item)

    def on_received(self) -> None:
        """A stanza came in (nonzas are not counted)."""
        self.inbound = (self.inbound + 1) % MOD

    def on_ack(self, h: int) -> list[T]:
        """The peer's ``<a h=.../>``: drop and return what it acknowledges.

        Raises :class:`SmViolation` when ``h`` acknowledges more than was sent.
        """
        count = (h - self.acked) % MOD
        if count > len(self.unacked):
            raise SmViolation(
                f"acknowledged {h} stanzas, {self.sent} were sent",
                handled_count_too_high(h, self.sent),
            )
        self.acked = h
        self.requested_at = None
        return [self.unacked.popleft() for _ in range(count)]

    # ---- requests and answers ------------------------------------------------------
    def request(self, now: float) -> bytes:
        """An ``<r/>``, remembered as outstanding from ``now``."""
        self.requested_at = now
        return b"<r xmlns='urn:xmpp:sm:3'/>"

    def wants_request(self) -> bool:
        """Something is unacknowledged and no ``<r/>`` is outstanding."""
        return bool(self.unacked) and self.requested_at is None

    def overdue(self, now: float, timeout: float) -> bool:
        """Our ``<r/>`` went unanswered for ``timeout`` seconds: the peer is gone."""
        return self.requested_at is not None and now - self.requested_at >= timeout

    def answer(self) -> bytes:
        """The ``<a/>`` for the peer's ``<r/>``."""
        return f"<a xmlns='urn:xmpp:sm:3' h='{self.inbound}'/>".encode()

    # ---- resumption ----------------------------------------------------------------
    def resume(self, h: int) -> list[T]:
        """The stream was resumed and the peer had ``h``: what to send again, in order.

        The stanzas stay unacknowledged (and counted once): sending them again
        is part of the same stream.
        """
        self.on_ack(h)
        return list(self.unacked)

    def fail(self, h: int | None) -> list[T]:
        """Resumption failed: what the peer never got, in order; the counters end.

        ``h`` is the ``h`` the peer may give in ``<failed/>``: what it
        acknowledges was received and is not returned. An impossible ``h`` is
        ignored (the peer's count is not trusted then: everything is returned).
        """
        if h is not None:
            try:
                self.on_ack(h)
            except SmViolation:
                pass
        lost = list(self.unacked)
        self.unacked.clear()
        self.acked, self.requested_at = self.sent, None  # nothing is outstanding any more
        return lost


# ---- nonzas: parsing ---------------------------------------------------------------
def parse_h(el: etree._Element) -> int:
    """The ``h`` attribute of ``<a/>``, ``<resume/>``, ``<resumed/>``, ``<failed/>``."""
    value = el.get("h", "")
    number = _decimal(value)
    if number is None or number >= MOD:
        raise SmViolation(f"h={value!r} is not an unsigned 32-bit integer", condition="invalid-xml")
    return number


def optional_h(el: etree._Element) -> int | None:
    """``h`` where it may be absent (``<failed/>``)."""
    return parse_h(el) if el.get("h") is not None else None


def parse_enabled(el: etree._Element, sm: StreamManagement) -> None:
    """Record an ``<enabled/>``'s resumption id, ``max`` and ``location`` in ``sm``."""
    resumable = el.get("resume", "").lower() in ("true", "1") and el.get("id")
    sm.id = el.get("id") if resumable else None
    max_ = el.get("max", "")
    sm.max = _decimal(max_)
    sm.location = el.get("location")


def _decimal(value: str) -> int | None:
    """``value`` as an integer if it is ASCII decimal digits only, else None.

    ``str.isdigit`` alone also accepts e.g. ``'²'`` (``int`` raises) and ``'١'``;
    ``int`` raises on strings longer than ``sys.get_int_max_str_digits()``.
    """
    if not (value.isascii() and value.isdigit()):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def failure_condition(el: etree._Element) -> str:
    """The defined condition inside a ``<failed/>`` (``undefined-condition`` if none)."""
    for child in el:
        if isinstance(child.tag, str):
            return etree.QName(child).localname
    return "undefined-condition"


# ---- nonzas: building ----------------------------------------------------------------
def _attrs(**values: object) -> str:
    return "".join(f" {k}='{_quote(str(v))}'" for k, v in values.items() if v is not None)


def _quote(value: str) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
    # literal tabs and line ends would be normalised to spaces by the parser
    return value.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


def enable(resume: bool, max_: int | None = None) -> bytes:
    """The client's ``<enable/>``."""
    return f"<enable xmlns='urn:xmpp:sm:3'{_attrs(resume='true' if resume else None, max=max_)}/>".encode()


def enabled(id_: str | None, max_: int | None = None, location: str | None = None) -> bytes:
    """The server's ``<enabled/>``; resumable when it has an id."""
    resume = "true" if id_ is not None else None
    return f"<enabled xmlns='urn:xmpp:sm:3'{_attrs(id=id_, resume=resume, max=max_, location=location)}/>".encode()


def resume(previd: str, h: int) -> bytes:
    """The client's ``<resume/>``."""
    return f"<resume xmlns='urn:xmpp:sm:3'{_attrs(previd=previd, h=h)}/>".encode()


def resumed(previd: str, h: int) -> bytes:
    """The server's ``<resumed/>``."""
    return f"<resumed xmlns='urn:xmpp:sm:3'{_attrs(previd=previd, h=h)}/>".encode()


def failed(condition: str, h: int | None = None) -> bytes:
    """``<failed/>`` with a stanza error condition (and ``h`` after a failed resume)."""
    return (
        f"<failed xmlns='urn:xmpp:sm:3'{_attrs(h=h)}>"
        f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    ).encode()


def handled_count_too_high(h: int, send_count: int) -> bytes:
    """The application error of a stream ended for over-acknowledging (XEP-0198 §4)."""
    return f"<handled-count-too-high xmlns='urn:xmpp:sm:3'{_attrs(h=h, **{'send-count': send_count})}/>".encode()
