"""The Account: the one owner of the bouncer's state, and the one entrance for events.

Socket read loops, the upstream link and the process's timer and SIGHUP handler
turn what happens into ``core.events`` and call ``handle``; the Router (and its
MUC part) decides and returns ``core.effects``; ``_execute`` carries them out
through the ports (sessions, the upstream link, the stores). Everything runs on
the one event loop, so no locks. A bug in a decision is logged with its traceback
and costs only that event: the bouncer carries on, and an IQ that caused it is
answered ``internal-server-error`` so its sender does not wait forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from lxml import etree

from bouncer.account import resumption
from bouncer.account.devices import DeviceBook, Retention
from bouncer.account.resumption import HibernationLimits
from bouncer.account.router import Router, RouterSettings, Session
from bouncer.core.effects import (
    Bound, CloseSession, Deliver, DeliverSeries, Effect, FlushStored, HoldRoom, Mail, ReleaseRoom, Resumed,
    ResumeFailed, ToUpstream,
)
from bouncer.core.events import (
    Event, Reconfigure, SessionAcked, SessionBind, SessionClosed, SessionNonza, SessionResume, SessionSmEnabled,
    SessionStanza, Shutdown, Tick,
    UpstreamDown, UpstreamReadHandled, UpstreamStanza, UpstreamUp,
)
from bouncer.core.ports import Mailbox, RoomArchive, SessionPort, Transaction, UpstreamPort
from bouncer.muc.routing import MucRouter
from bouncer.muc.state import MucSettings
from bouncer.xmpp import jid, stanza, wire
from bouncer.xmpp.sm import MOD
from bouncer.xmpp.wire import Prepared

if TYPE_CHECKING:
    from bouncer.config import Config

log = structlog.get_logger("bouncer.account")

PRUNE_EVERY = 300.0  # seconds between applications of the archive's retention


@dataclass
class Account:
    router: Router
    devices: DeviceBook
    transaction: Transaction
    upstream: UpstreamPort | None = None
    retention: Retention = field(default_factory=lambda: Retention(30 * 86400.0, 90 * 86400.0))
    hibernation: HibernationLimits = field(default_factory=HibernationLimits)
    clock: Callable[[], float] = time.time  # wall clock: it stamps archived and stored stanzas
    _shutting_down: bool = False
    _pruned_at: float | None = None

    @property
    def muc(self) -> MucRouter:
        return self.router.muc

    # ---- the one entrance -------------------------------------------------------
    def handle(self, event: Event) -> None:
        """Decide on one event and carry the decision out; a bug costs only this event."""
        try:
            self._execute(self._decide(event))
        except Exception:
            log.exception("event handler failed", input=type(event).__name__)
            self._answer_failed(event)

    def _decide(self, event: Event) -> list[Effect]:
        match event:
            case SessionStanza(port, element):
                session = self.router.session_of(port)
                return [] if session is None else self.router.from_session(session.resource, element, self.clock())
            case UpstreamStanza(element):
                self.transaction.begin()
                return self.router.from_upstream(element, self.clock())
            case UpstreamReadHandled():
                self.transaction.commit()
            case SessionBind(port, requested):
                return self.router.bind(port, requested)
            case SessionNonza(port, element):
                return self.router.nonza(port, element)
            case SessionSmEnabled(port, state):
                session = self.router.session_of(port)
                if session is not None:
                    session.sm = state
            case SessionAcked(port):
                session = self.router.session_of(port)
                if session is not None:
                    self._confirm_acked(session)
            case SessionResume(port, previd, h):
                return resumption.resume(self.router, port, previd, h)
            case SessionClosed(port, by_client):
                return self._session_closed(port, by_client)
            case UpstreamUp(full_jid, resumed):
                return self.router.upstream_established(full_jid, resumed)
            case UpstreamDown():
                self.router.upstream_down()
            case Tick(now):
                return self._tick(now)
            case Reconfigure(config):
                return self._reconfigure(config)
            case Shutdown():
                self._shutting_down = True
                return [CloseSession(s.port, "system-shutdown") for s in self.router.sessions.values()]
        return []

    def _session_closed(self, port: SessionPort, by_client: bool) -> list[Effect]:
        session = self.router.session_of(port)
        if session is None:
            return []
        self.devices.seen(session.resource, self.clock())
        if self._shutting_down:
            return []  # the process ends, the clients did not leave: rooms and presence stay as they are
        if resumption.resumable(session) and not by_client:
            resumption.hibernate(session, self.hibernation, self.clock())
            return []
        log.info("session closed", session=session.resource, sessions=len(self.router.sessions) - 1)
        return self.router.session_gone(port)

    def _tick(self, now: float) -> list[Effect]:
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self.muc.prune(now)
            self.devices.prune(now, self.retention, live=set(self.router.sessions))
        return resumption.expired(self.router, self.hibernation, now) + self.router.tick(now)

    def _reconfigure(self, config: Config) -> list[Effect]:
        self.router.reconfigure(router_settings(config))
        self.muc.reconfigure(muc_settings(config))
        self.retention = retention(config)
        self.hibernation = hibernation(config)
        return self.router.refresh_presence()  # a new idle presence shows at once

    def _answer_failed(self, event: Event) -> None:
        """Whoever waits on the failed event hears of it: an IQ gets ``internal-server-error``
        (RFC 6120 §8.3.3.8), a bind that failed ends its stream the same way."""
        try:
            match event:
                case SessionStanza(port, el) if el.tag == stanza.IQ and el.get("type") in ("get", "set"):
                    port.send_serialized(stanza.serialize(stanza.error_reply(el, "internal-server-error")))
                case SessionBind(port) if port.jid is None:
                    port.stream_error("internal-server-error")
        except Exception:
            log.exception("error reply failed")

    # ---- what ``bouncer status`` shows ---------------------------------------------
    def status(self) -> dict:
        """Sessions, rooms, stored stanzas and the upstream queue (JSON-ready)."""
        return {
            "account": self.router.account,
            "upstream": {"queued": len(self.router.queue)},
            "sessions": [
                {
                    "resource": s.resource,
                    "client": s.port.address,
                    "since": s.port.since,
                    "available": s.presence is not None,
                    "csi": "active" if s.csi_active else "inactive",
                    "sm": _sm_status(s),
                    "rooms": self.muc.joined_by(s.resource),
                }
                for s in self.router.sessions.values()
            ],
            "rooms": self.muc.status(),
            "devices": self.devices.status(),
            "stored": self.devices.mailbox.count(),
        }

    # ---- the executor ----------------------------------------------------------------
    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Deliver(resources, element):
                    self._deliver(resources, element)
                case DeliverSeries(resource, stanzas):
                    self._deliver_series(resource, stanzas)
                case ToUpstream(element):
                    if self.upstream is None or not self.upstream.send(element):
                        self.router.upstream_refused(element)
                case Bound(port, resource):
                    port.bound(resource)
                    self.devices.bound(resource, self.clock())
                case Resumed(port, resource):
                    self._resumed(port, resource)
                case ResumeFailed(port, h):
                    port.resume_failed(h)
                    log.info("session bound", session=resource, client=port.address, sessions=len(self.router.sessions))
                case Mail(element, resources):
                    self._mail(element, resources)
                case FlushStored(resource):
                    self._flush_stored(resource)
                case CloseSession(port, condition, text):
                    port.stream_error(condition, text)
                case HoldRoom(room):
                    self.muc.state.archive.hold(room)
                case ReleaseRoom(room_jid):
                    self.muc.state.archive.release(room_jid)

    def _deliver(self, resources: tuple[str, ...], el: etree._Element | Prepared) -> None:
        """Send to each session; serialised once, with only ``to`` swapped per session.

        A ``to`` naming a full JID of the account (the upstream one, or a
        sibling's) becomes each recipient's own full JID.
        """
        ports = [s.port for s in map(self.router.sessions.get, resources) if s is not None and s.port.jid]
        if not ports:
            return
        out = _writable(el, self.router.account)
        for port in ports:
            port.send_serialized(out if isinstance(out, bytes) else out.to(port.jid))  # type: ignore[arg-type]

    def _deliver_series(self, resource: str, stanzas: tuple[etree._Element | Prepared, ...]) -> None:
        session = self.router.sessions.get(resource)
        to = None if session is None else session.port.jid
        if session is None or to is None:
            return
        outs = (_writable(el, self.router.account) for el in stanzas)
        session.port.send_series([out if isinstance(out, bytes) else out.to(to) for out in outs])

    def _mail(self, el: etree._Element, resources: tuple[str, ...]) -> None:
        """Into the mailbox first (committed with the upstream read), then to the sessions."""
        stored_id = self.devices.mailbox.add(stanza.serialize(el), self.clock())
        out = _writable(el, self.router.account)
        for resource in resources:
            session = self.router.sessions.get(resource)
            if session is not None and session.port.jid is not None:
                wire = out if isinstance(out, bytes) else out.to(session.port.jid)
                self._send_stored(session, [wire], stored_id)
        if not resources:
            log.info("stored for later", id=stored_id, kind=stanza.kind(el), sender=el.get("from"))

    def _flush_stored(self, resource: str) -> None:
        """What the session's device missed, with its delay, in order (SPEC §14)."""
        session = self.router.sessions.get(resource)
        if session is None or session.port.jid is None:
            return
        missed = self.devices.missed(resource)
        if not missed:
            return
        domain = jid.domain(self.router.account)
        wires = []
        for item in missed:
            el = stanza.parse_stored(item.stanza)
            stanza.add_delay(el, item.received, domain)
            out = _writable(el, self.router.account)
            wires.append(out if isinstance(out, bytes) else out.to(session.port.jid))
        self._send_stored(session, wires, missed[-1].id)
        log.info("delivered stored stanzas", session=resource, count=len(missed))

    def _send_stored(self, session: Session, wires: list[bytes], stored_id: int) -> None:
        """Send mailbox stanzas; the device has them (up to ``stored_id``) once they are on
        the socket, or, on an XEP-0198 stream, once the client acknowledged them."""
        state, port, resource = session.sm, session.port, session.resource
        sent_before = None if state is None else state.sent
        port.send_series(wires)
        if state is None:
            port.after_flush(lambda: self.devices.received(resource, stored_id, self.clock()))
        elif state.sent != sent_before:  # a full hibernation queue takes nothing more
            session.unconfirmed.append((state.sent, stored_id))

    def _confirm_acked(self, session: Session) -> None:
        """The client's ``<a/>``: its device has the mailbox stanzas it acknowledged."""
        state = session.sm
        while state is not None and session.unconfirmed and _covers(state.acked, session.unconfirmed[0][0]):
            _, stored_id = session.unconfirmed.popleft()
            self.devices.received(session.resource, stored_id, self.clock())

    def _resumed(self, port: SessionPort, resource: str) -> None:
        session = self.router.sessions[resource]
        assert session.sm is not None
        port.resumed(session.sm, resource)
        self.devices.seen(resource, self.clock())
        self._confirm_acked(session)  # the <resume h=/> acknowledged what the client had


def _covers(acked: int, marker: int) -> bool:
    """Whether an SM ``h`` of ``acked`` includes the stanza that made the count ``marker``."""
    return (acked - marker) % MOD < MOD // 2


def _sm_status(session: Session) -> str | None:
    if session.sm is None:
        return None
    if session.hibernated_at is not None:
        return "hibernated"
    return "resumable" if session.sm.id is not None else "enabled"


def _writable(el: etree._Element | Prepared, account: str) -> bytes | Prepared:
    """The bytes every session gets, or bytes to address to each: a ``to`` naming a full
    JID of the account becomes each recipient's own full JID."""
    if isinstance(el, Prepared):
        return el
    to = el.get("to")
    if to is None or jid.resource(to) is None or not jid.same_bare(to, account):
        return stanza.serialize(el)
    return wire.prepare(el)


def build_account(config: Config, archive: RoomArchive, mailbox: Mailbox, transaction: Transaction) -> Account:
    """The Account with its Router, room cache and devices over these stores, as the config says."""
    muc = MucRouter(archive, muc_settings(config))
    muc.restore()
    return Account(Router(router_settings(config), muc), DeviceBook(mailbox), transaction,
                   retention=retention(config), hibernation=hibernation(config))


def router_settings(config: Config) -> RouterSettings:
    return RouterSettings(
        account=jid.bare(config.upstream.jid),
        idle_show=config.presence.idle_show,
        idle_status=config.presence.idle_status,
        iq_timeout=config.limits.iq_timeout,
        upstream_queue=config.limits.upstream_queue,
    )


def muc_settings(config: Config) -> MucSettings:
    """History retention and room behaviour from the config (at start and on SIGHUP)."""
    return MucSettings(
        history_default=config.history.default_messages,
        leave_when_unused=config.muc.leave_when_unused,
        self_ping_after=config.muc.self_ping_after,
        max_age_days=config.history.max_age_days,
        max_messages=config.history.max_messages,
    )


def retention(config: Config) -> Retention:
    return Retention(max_age=config.sessions.backlog_max_age * 86400.0,
                     forget_after=config.sessions.forget_after * 86400.0)


def hibernation(config: Config) -> HibernationLimits:
    return HibernationLimits(seconds=config.sessions.hibernation, max_stanzas=config.sessions.hibernation_queue,
                             max_bytes=config.sessions.hibernation_queue_bytes)
