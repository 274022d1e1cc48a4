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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from bouncer.account import commands, resumption, saved_sessions
from bouncer.account.delivery import CATCHUP_MARK, RESOURCES_MARK, Delivery
from bouncer.account.devices import DeviceBook, Retention
from bouncer.account.resumption import HibernationLimits
from bouncer.account.router import Router, RouterSettings, Session
from bouncer.config import SessionsConfig
from bouncer.core.effects import (
    Bound, CloseSession, Cut, Deliver, DeliverSeries, Effect, FlushHeld, FlushStored, HoldRoom, Mail, ReleaseRoom, Resumed,
    ResumeFailed, ToUpstream,
)
from bouncer.core.events import (
    Event, Operate, Reconfigure, SessionAcked, SessionBind, SessionClosed, SessionNonza, SessionResume, SessionSmEnabled,
    SessionStanza, Shutdown, Tick,
    UpstreamDown, UpstreamReadHandled, UpstreamStanza, UpstreamUp,
)
from bouncer.core.ports import Mailbox, RoomArchive, SessionPort, Transaction, UpstreamPort
from bouncer.muc.routing import MucRouter
from bouncer.muc.state import MucSettings
from bouncer.xmpp import jid, stanza

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
    retention: Retention = field(default_factory=lambda: retention(SessionsConfig()))
    hibernation: HibernationLimits = field(default_factory=lambda: hibernation(SessionsConfig()))
    clock: Callable[[], float] = time.time  # wall clock: it stamps archived and stored stanzas
    # Adds what only the process knows (the upstream link, the listeners) to ``status()``.
    process_status: Callable[[dict], dict] = lambda status: status
    _shutting_down: bool = False
    _pruned_at: float | None = None
    delivery: Delivery = field(init=False)

    def __post_init__(self) -> None:
        self.delivery = Delivery(self.router, self.devices, self.clock)

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
                if session is None:
                    return []
                if element.tag == stanza.IQ and element.get("to") == self.router.account and commands.is_ours(element):
                    return commands.answer(self, session.resource, element)
                return self.router.from_session(session.resource, element, self.clock())
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
                    self.delivery.confirm_acked(session)
            case SessionResume(port, previd, h):
                return resumption.resume(self.router, port, previd, h)
            case SessionClosed(port, by_client):
                return self._session_closed(port, by_client)
            case UpstreamUp(full_jid, resumed):
                if self.router.catchup.bound(jid.resource(full_jid)):  # what it sends is not news to catch up on
                    self.devices.mailbox.set_mark(RESOURCES_MARK, json.dumps(self.router.catchup.own_resources))
                return self.router.upstream_established(full_jid, resumed)
            case UpstreamDown():
                self.router.upstream_down()
            case Tick(now):
                return self._tick(now)
            case Reconfigure(config):
                return self._reconfigure(config)
            case Operate(name, argument, answer):
                outcome = commands.run(self, name, argument)
                answer(outcome.lines, outcome.failed)
                return list(outcome.effects)
            case Shutdown():
                # Resumable sessions were saved for the next process: cut, they resume there.
                self._shutting_down = True
                return [Cut(s.port) if resumption.resumable(s) else CloseSession(s.port, "system-shutdown")
                        for s in self.router.sessions.values()]
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
            # While a pass removes something there may be more: the next tick goes on.
            self._pruned_at = None if self.muc.prune(now) else now
            self.devices.prune(now, self.retention, live=set(self.router.sessions))
        return resumption.expired(self.router, self.hibernation, now) + self.router.tick(now)

    def _reconfigure(self, config: Config) -> list[Effect]:
        self.router.reconfigure(router_settings(config))
        self.muc.reconfigure(muc_settings(config))
        self.retention = retention(config.sessions)
        self.hibernation = hibernation(config.sessions)
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

    # ---- across a restart -----------------------------------------------------------
    def save_sessions(self) -> dict:
        """The resumable sessions, for the next process (before ``Shutdown``)."""
        return saved_sessions.dump(self.router, self.clock())

    def restore_sessions(self, data: dict) -> list[str]:
        """The previous process's resumable sessions, hibernating until their clients resume."""
        restored = saved_sessions.load(self.router, data, self.hibernation)
        for resource in restored:
            self.devices.seen(resource, self.clock())
        return restored

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

    def gauges(self) -> dict[str, tuple[str, float]]:
        """What the account holds now, for Prometheus: name -> (help, value)."""
        rooms = self.muc.rooms
        away = sum(1 for s in self.router.sessions.values() if s.hibernated_at is not None)
        return {
            "sessions": ("Sessions connected", len(self.router.sessions) - away),
            "sessions_hibernating": ("Sessions waiting for their client to resume (XEP-0198)", away),
            "devices": ("Devices the bouncer keeps a backlog for", len(self.devices.known)),
            "rooms_held": ("Rooms the account holds", len(rooms)),
            "archive_messages": ("Messages in the room archive", sum(self.muc.state.archive.count(r) for r in rooms)),
            "stored_stanzas": ("Stanzas kept in the mailbox for devices", self.devices.mailbox.count()),
        }

    def full_status(self) -> dict:
        """``status()`` with what the process adds: what the status command shows."""
        return self.process_status(self.status())

    # ---- the executor ----------------------------------------------------------------
    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Deliver(resources, element):
                    self.delivery.deliver(resources, element)
                case DeliverSeries(resource, stanzas):
                    self.delivery.series(resource, stanzas)
                case ToUpstream(element):
                    if self.upstream is None or not self.upstream.send(element):
                        self.router.upstream_refused(element)
                case Bound(port, resource):
                    port.bound(resource)
                    self.router.sessions[resource].away_since = self.devices.bound(resource, self.clock())
                    log.info("session bound", session=resource, client=port.address, sessions=len(self.router.sessions))
                case Resumed(port, resource):
                    self._resumed(port, resource)
                case ResumeFailed(port, h):
                    port.resume_failed(h)
                case Mail(element, resources):
                    self.delivery.mail(element, resources)
                case FlushStored(resource):
                    self.delivery.flush_stored(resource)
                case FlushHeld(resource):
                    self.delivery.flush_held(resource)
                case CloseSession(port, condition, text):
                    port.stream_error(condition, text)
                case Cut(port):
                    port.cut()
                case HoldRoom(room):
                    self.muc.state.archive.hold(room)
                case ReleaseRoom(room_jid):
                    self.muc.state.archive.release(room_jid)

    def _resumed(self, port: SessionPort, resource: str) -> None:
        session = self.router.sessions[resource]
        assert session.sm is not None
        port.resumed(session.sm, resource)
        self.delivery.flush_held(resource)  # what waited meanwhile, coalesced: the client is active now
        self.devices.seen(resource, self.clock())
        self.delivery.confirm_acked(session)  # the <resume h=/> acknowledged what the client had


def _sm_status(session: Session) -> str | None:
    if session.sm is None:
        return None
    if session.hibernated_at is not None:
        return "hibernated"
    return "resumable" if session.sm.id is not None else "enabled"


def build_account(config: Config, archive: RoomArchive, mailbox: Mailbox, transaction: Transaction) -> Account:
    """The Account with its Router, room cache and devices over these stores, as the config says."""
    muc = MucRouter(archive, muc_settings(config))
    muc.restore()
    router = Router(router_settings(config), muc)
    router.catchup.after = mailbox.mark(CATCHUP_MARK)
    router.catchup.own_resources = json.loads(mailbox.mark(RESOURCES_MARK) or "[]")
    return Account(router, DeviceBook(mailbox), transaction,
                   retention=retention(config.sessions), hibernation=hibernation(config.sessions))


def router_settings(config: Config) -> RouterSettings:
    return RouterSettings(
        account=jid.bare(config.upstream.jid),
        idle_show=config.presence.idle_show,
        idle_status=config.presence.idle_status,
        iq_timeout=config.limits.iq_timeout,
        upstream_queue=config.limits.upstream_queue,
        commands=commands.LISTED,
    )


def muc_settings(config: Config) -> MucSettings:
    """History retention and room behaviour from the config (at start and on SIGHUP)."""
    return MucSettings(
        history_default=config.history.default_messages,
        leave_when_unused=config.muc.leave_when_unused,
        self_ping_after=config.muc.self_ping_after,
        recheck_delay=config.muc.recheck_delay,
        max_age_days=config.history.max_age_days,
        max_messages=config.history.max_messages,
    )


def retention(sessions: SessionsConfig) -> Retention:
    return Retention(max_age=sessions.backlog_max_age * 86400.0, forget_after=sessions.forget_after * 86400.0)


def hibernation(sessions: SessionsConfig) -> HibernationLimits:
    return HibernationLimits(seconds=sessions.hibernation, max_stanzas=sessions.hibernation_queue,
                             max_bytes=sessions.hibernation_queue_bytes)
