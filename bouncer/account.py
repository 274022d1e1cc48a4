"""The Account: the one owner of the bouncer's state, and the executor of routing.

Socket read loops and the upstream link turn input into calls here; the
Router decides, and this class carries its actions out (sockets, the upstream
link, SQLite). Everything runs on the one event loop, so no locks.
"""

from __future__ import annotations

import asyncio
import time
from xml.sax.saxutils import escape
from typing import TYPE_CHECKING, Protocol

import structlog
from lxml import etree

from bouncer.xmpp import ids, jid, ns, stanza
from bouncer.actions import CloseSession, Deliver, FlushStored, Store, ToUpstream
from bouncer.muc.routing import MucRouter, MucSettings
from bouncer.router import Router, RouterSettings
from bouncer.storage.archive import RoomArchive
from bouncer.storage.offline import OfflineStore
from bouncer.storage.db import GroupCommit
from bouncer.upstream.events import Established
from bouncer.upstream.link import UpstreamDown, UpstreamEvent, UpstreamReadHandled, UpstreamStanza

if TYPE_CHECKING:
    import sqlite3

    from bouncer.c2s.connection import Connection
    from bouncer.config import Config

log = structlog.get_logger("bouncer.account")

# Fan-out writes ``to="<mark>"`` once and swaps it per recipient. The start tag
# comes first and attribute values have their quotes escaped, so the first
# ``to="<mark>"`` in the bytes is always that attribute, whatever the payload.
_TO_MARK = ids.token("to", 8)
_TO_MARK_BYTES = f' to="{_TO_MARK}"'.encode()


def _attr(value: str | None) -> bytes:
    """A JID as lxml writes it inside a double-quoted attribute."""
    return escape(value or "", {'"': "&quot;"}).encode()


class Upstream(Protocol):
    def send(self, element: etree._Element) -> bool: ...


class Account:
    def __init__(self, router: Router, offline: OfflineStore, commits: GroupCommit | None = None) -> None:
        self.router = router
        self.offline = offline
        self._commits = commits
        self._shutting_down = False
        self.upstream: Upstream | None = None
        self.connections: dict[str, Connection] = {}  # bound sessions by resource
        self._clock = time.time  # wall clock: it stamps archived messages too
        # Stored ids written to a session's queue but not yet to its socket: not
        # handed to another session meanwhile, and back in play if this one dies.
        self._flushing: dict[Connection, list[int]] = {}

    @property
    def domain(self) -> str:
        return jid.domain(self.router.account)

    # ---- downstream ----------------------------------------------------------
    def bind(self, conn: Connection, requested: str | None) -> None:
        session, actions = self.router.bind(requested)
        conn.resource, conn.token = session.resource, session.token
        conn.stream.bind(session.resource)
        self._run(actions)
        self.connections[session.resource] = conn
        log.info("session bound", session=session.resource, client=conn.address, sessions=len(self.connections))

    def from_session(self, conn: Connection, el: etree._Element) -> None:
        if conn.resource is None or self.connections.get(conn.resource) is not conn:
            return
        self._run(self.router.from_session(conn.resource, el, self._clock()))

    def nonza(self, conn: Connection, el: etree._Element) -> None:
        """CSI state is recorded (its filtering comes with SPEC §9); anything else is refused."""
        if el.tag in (ns.q(ns.CSI, "active"), ns.q(ns.CSI, "inactive")):
            conn.csi_active = el.tag == ns.q(ns.CSI, "active")
        else:
            conn.stream_error("unsupported-stanza-type", f"unexpected {el.tag}")

    def status(self) -> dict:
        """What ``bouncer status`` shows: upstream, sessions (JSON-ready)."""
        link = self.upstream
        return {
            "account": self.router.account,
            "upstream": {
                "connected": bool(getattr(link, "connected", False)),
                "jid": getattr(link, "jid", None),
                "server": getattr(link, "server", None),
                "connected_since": getattr(link, "connected_since", None),
                "reconnects": getattr(link, "reconnects", 0),
                "queued": len(self.router.queue),
            },
            "sessions": [
                {
                    "resource": resource,
                    "client": conn.address,
                    "since": conn.since,
                    "available": self.router.sessions[resource].presence is not None,
                    "csi": "active" if conn.csi_active else "inactive",
                    "sm": None,
                    "rooms": self._rooms_of(resource),
                }
                for resource, conn in self.connections.items()
                if resource in self.router.sessions
            ],
            "rooms": self.router.muc.status() if self.router.muc is not None else [],
            "stored": self.offline.count(),
        }

    def connection_closed(self, conn: Connection) -> None:
        self._flushing.pop(conn, None)
        if conn.resource is None or conn.token is None:
            return
        if self.connections.get(conn.resource) is conn:
            del self.connections[conn.resource]
            log.info("session closed", session=conn.resource, sessions=len(self.connections))
        if self._shutting_down:
            return  # the process ends, the clients did not leave: rooms and presence stay as they are
        self._run(self.router.session_gone(conn.resource, conn.token))

    # ---- upstream ------------------------------------------------------------
    def on_upstream(self, event: UpstreamEvent) -> None:
        match event:
            case UpstreamStanza(element):
                if self._commits is not None:
                    self._commits.begin()
                self._run(self.router.from_upstream(element, self._clock()))
            case UpstreamReadHandled():
                if self._commits is not None:
                    self._commits.commit()
            case Established(full_jid, resumed):
                self._run(self.router.upstream_established(full_jid, resumed))
            case UpstreamDown():
                self.router.upstream_down()

    async def tick(self, interval: float = 1.0, prune_every: int = 300) -> None:
        """Time-driven work (IQ timeouts, archive retention): the Router has no clock of its own."""
        ticks = 0
        while True:
            if ticks % prune_every == 0 and self.router.muc is not None:
                self.router.muc.prune(self._clock())
            await asyncio.sleep(interval)
            ticks += 1
            now = self._clock()
            self._run(self.router.expire(now))
            if self.router.muc is not None:
                self._run(self.router.muc.due(now))

    def refresh_presence(self) -> None:
        """Send the account's presence again (a reload changed the idle presence)."""
        self._run(self.router.refresh_presence())

    def shutdown(self) -> None:
        """Sessions get system-shutdown; what they leave behind is kept for the next start."""
        self._shutting_down = True
        for conn in list(self.connections.values()):
            conn.stream_error("system-shutdown")

    def _rooms_of(self, resource: str) -> list[str]:
        muc = self.router.muc
        return [] if muc is None else sorted(r.jid for r in muc.rooms.values() if resource in r.sessions)

    # ---- executing the Router's decisions --------------------------------------
    def _run(self, actions: list) -> None:
        for action in actions:
            match action:
                case Deliver(resources, element):
                    self._deliver(resources, element)
                case ToUpstream(element):
                    if self.upstream is None or not self.upstream.send(element):
                        self.router.queue.append(element)
                case Store(element):
                    row = self.offline.add(stanza.serialize(element), time.time())
                    log.info("stored for later", id=row, kind=stanza.kind(element), sender=element.get("from"))
                case FlushStored(resource):
                    self._flush_stored(resource)
                case CloseSession(resource, token, condition):
                    conn = self.connections.get(resource)
                    if conn is not None and conn.token == token:
                        del self.connections[resource]
                        conn.stream_error(condition)

    def _deliver(self, resources: tuple[str, ...], el: etree._Element) -> None:
        """Send to each session; serialised once, with only ``to`` swapped per session.

        A ``to`` naming a full JID of the account (the upstream one, or a
        sibling's) becomes each recipient's own full JID.
        """
        conns = [c for c in map(self.connections.get, resources) if c is not None and c.jid]
        if not conns:
            return
        to = el.get("to")
        if to is None or jid.resource(to) is None or not jid.same_bare(to, self.router.account):
            wire = stanza.serialize(el)
            for conn in conns:
                conn.send_serialized(wire)
            return
        el.set("to", _TO_MARK)
        head, tail = stanza.serialize(el).split(_TO_MARK_BYTES, 1)
        el.set("to", to)
        for conn in conns:
            conn.send_serialized(head + b' to="' + _attr(conn.jid) + b'"' + tail)

    def _flush_stored(self, resource: str) -> None:
        conn = self.connections.get(resource)
        busy = {i for ids in self._flushing.values() for i in ids}
        stored = [item for item in self.offline.pending() if item.id not in busy]
        if conn is None or not stored:
            return
        for item in stored:
            el = stanza.parse_stored(item.stanza)
            stanza.add_delay(el, item.received, self.domain)
            self._deliver((resource,), el)
        ids = [item.id for item in stored]
        self._flushing.setdefault(conn, []).extend(ids)

        def delivered() -> None:
            self.offline.delete(ids)
            self._flushing.pop(conn, None)

        conn.after_flush(delivered)
        log.info("delivered stored stanzas", session=resource, count=len(ids))


def build_account(config: Config, db: sqlite3.Connection) -> Account:
    """The Account with its Router, room cache and stores, as the config says."""
    muc = MucRouter(RoomArchive(db), MucSettings())
    apply_room_settings(muc, config)
    muc.restore()
    router = Router(
        RouterSettings(
            account=jid.bare(config.upstream.jid),
            idle_show=config.presence.idle_show,
            idle_status=config.presence.idle_status,
            iq_timeout=config.limits.iq_timeout,
            upstream_queue=config.limits.upstream_queue,
        ),
        muc=muc,
    )
    return Account(router, OfflineStore(db), GroupCommit(db))


def apply_room_settings(muc: MucRouter, config: Config) -> None:
    """History retention and room behaviour from the config (at start and on SIGHUP)."""
    muc.archive.max_age_days = config.history.max_age_days
    muc.archive.max_messages = config.history.max_messages
    muc.settings = MucSettings(
        history_default=config.history.default_messages,
        leave_when_unused=config.muc.leave_when_unused,
        self_ping_after=config.muc.self_ping_after,
    )
