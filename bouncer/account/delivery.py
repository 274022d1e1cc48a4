"""Writing to the account's sessions: the executor of Deliver, DeliverSeries, Mail,
FlushStored and FlushHeld.

A stanza for several sessions is serialised once and only its ``to`` swapped per
session (soju's ``produce()``). An inactive client's session holds back what can
wait (XEP-0352, ``held.py``) and gets it in one write before the next urgent stanza
or when it becomes active. A stanza from the mailbox counts as received by the
session's device once it is on the socket, or, on an XEP-0198 stream, once the
client acknowledged it (SPEC §14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from lxml import etree

from bouncer.account.devices import DeviceBook
from bouncer.account.mam_catchup import account_stanza_id
from bouncer.account.router import Router, Session
from bouncer import metrics
from bouncer.xmpp import csi, jid, stanza, wire
from bouncer.xmpp.sm import MOD
from bouncer.xmpp.wire import Prepared

log = structlog.get_logger("bouncer.account")

Element = etree._Element


CATCHUP_MARK = "account-mam"  # the archive id of the last message the account took
RESOURCES_MARK = "upstream-resources"  # the upstream resources the bouncer bound (JSON list)
TAKEN_KEPT = 10_000  # archive ids remembered to recognise repeats


@dataclass
class Delivery:
    router: Router
    devices: DeviceBook
    clock: Callable[[], float]
    # Archive ids of the last messages taken: a repeat (offline storage and the catch-up
    # bring the same ones, close together) is recognised; across a restart the catch-up
    # starts after the last one, so no older repeat comes back.
    _taken: dict[str, None] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return jid.domain(self.router.account)

    def deliver(self, resources: tuple[str, ...], el: Element | Prepared) -> None:
        """To each of these sessions; an inactive client's may hold it back."""
        sessions = [s for s in map(self.router.sessions.get, resources) if s is not None and s.port.jid]
        if not sessions:
            return
        if isinstance(el, etree._Element) and el.get("type") == "groupchat" and el.tag == stanza.MESSAGE:
            metrics.COUNTS.fanout_deliveries += len(sessions)
        out: bytes | Prepared | None = None  # serialised once, when a session takes it now
        urgent: bool | None = None
        for session in sessions:
            if not session.csi_active or session.hibernated_at is not None:
                # An inactive client, or one away (hibernating: it is sent nothing until it
                # resumes), gets the latest presence of each sender, not every one.
                urgent = urgent if urgent is not None else (not isinstance(el, etree._Element) or csi.urgent(el))
                if not urgent:
                    if session.held.hold(el, self.clock()):
                        self.flush_held(session.resource)
                    continue
            out = out if out is not None else self._writable(el)
            self._send(session, [out if isinstance(out, bytes) else out.to(session.port.jid)])  # type: ignore[arg-type]

    def series(self, resource: str, stanzas: tuple[Element | Prepared, ...]) -> None:
        """Stanzas in order to one session, in one write (a local join's answer)."""
        session = self.router.sessions.get(resource)
        to = None if session is None else session.port.jid
        if session is None or to is None:
            return
        outs = (self._writable(el) for el in stanzas)
        self._send(session, [out if isinstance(out, bytes) else out.to(to) for out in outs])

    def mail(self, el: Element, resources: tuple[str, ...]) -> None:
        """Into the mailbox first (committed with the upstream read), then to the sessions.
        A message the server numbered is taken once, however often it comes (live, from
        offline storage, from the account's MAM), and marks where a catch-up starts."""
        archive_id = account_stanza_id(el, self.router.account)
        if archive_id is not None:
            if archive_id in self._taken:
                log.debug("already taken", stanza_id=archive_id)
                return
            self._taken[archive_id] = None
            if len(self._taken) > TAKEN_KEPT:
                del self._taken[next(iter(self._taken))]  # the oldest
            self.router.catchup.after = archive_id
            self.devices.mailbox.set_mark(CATCHUP_MARK, archive_id)
        stored_id = self.devices.mailbox.add(stanza.serialize(el), self.clock())
        out = self._writable(el)
        for resource in resources:
            session = self.router.sessions.get(resource)
            if session is not None and session.port.jid is not None:
                self._send_stored(session, [out if isinstance(out, bytes) else out.to(session.port.jid)], stored_id)
        if not resources:
            log.info("stored for later", id=stored_id, kind=stanza.kind(el), sender=el.get("from"))

    def flush_stored(self, resource: str) -> None:
        """What the session's device missed, with its delay, in order (SPEC §14)."""
        session = self.router.sessions.get(resource)
        if session is None or session.port.jid is None:
            return
        missed = self.devices.missed(resource)
        if not missed:
            return
        wires = []
        for item in missed:
            el = stanza.parse_stored(item.stanza)
            stanza.add_delay(el, item.received, self.domain)
            out = self._writable(el)
            wires.append(out if isinstance(out, bytes) else out.to(session.port.jid))
        self._send_stored(session, wires, missed[-1].id)
        log.info("delivered stored stanzas", session=resource, count=len(missed))

    def flush_held(self, resource: str) -> None:
        """What an inactive client's session held back, in one write."""
        session = self.router.sessions.get(resource)
        if session is not None and session.held:
            self._send(session, [])

    def confirm_acked(self, session: Session) -> None:
        """The client's ``<a/>``: its device has the mailbox stanzas it acknowledged."""
        state = session.sm
        while state is not None and session.unconfirmed and _covers(state.acked, session.unconfirmed[0][0]):
            _, stored_id = session.unconfirmed.popleft()
            self.devices.received(session.resource, stored_id, self.clock())

    # ---- writing -----------------------------------------------------------------------
    def _send(self, session: Session, wires: list[bytes]) -> None:
        """Write ``wires`` after whatever the session held back (in the same write). A
        hibernating session's held stanzas wait for its resume (or for its held queue to
        fill): nothing wakes a phone that is away, and they keep coalescing meanwhile."""
        if session.held and (session.hibernated_at is None or not wires):
            held = [self._writable(el) for el in session.held.take(self.domain)]
            to = session.port.jid or ""
            wires = [out if isinstance(out, bytes) else out.to(to) for out in held] + wires
        if len(wires) == 1:
            session.port.send_serialized(wires[0])
        elif wires:
            session.port.send_series(wires)

    def _send_stored(self, session: Session, wires: list[bytes], stored_id: int) -> None:
        """Send mailbox stanzas; the device has them (up to ``stored_id``) once they are on
        the socket, or, on an XEP-0198 stream, once the client acknowledged them."""
        state, port, resource = session.sm, session.port, session.resource
        sent_before = None if state is None else state.sent
        self._send(session, wires)
        if state is None:
            port.after_flush(lambda: self.devices.received(resource, stored_id, self.clock()))
        elif state.sent != sent_before:  # a full hibernation queue takes nothing more
            session.unconfirmed.append((state.sent, stored_id))

    def _writable(self, el: Element | Prepared) -> bytes | Prepared:
        """The bytes every session gets, or bytes to address to each: a ``to`` naming a full
        JID of the account becomes each recipient's own full JID."""
        if isinstance(el, Prepared):
            return el
        to = el.get("to")
        if to is None or jid.resource(to) is None or not jid.same_bare(to, self.router.account):
            return wire.in_stream(stanza.serialize(el))
        return wire.prepare(el)


def _covers(acked: int, marker: int) -> bool:
    """Whether an SM ``h`` of ``acked`` includes the stanza that made the count ``marker``."""
    return (acked - marker) % MOD < MOD // 2
