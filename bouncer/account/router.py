"""Pure routing decisions between the downstream sessions and the upstream session.

The Router holds the routing tables (the one table of sessions, IQs in flight,
the contacts' presence, what waits for the upstream) and turns each input into a
list of effects; the Account executes them. It never touches a socket or a clock
(``now`` is passed in), so every rule of SPEC §5 is unit-tested directly.
Stages follow Prosody's stanza_router: stamp, classify the recipient, dispatch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lxml import etree

from bouncer.account.capabilities import AccountCaps
from bouncer.account.held import Held
from bouncer.account.iqtrack import IqTracker
from bouncer.account.mam_catchup import AccountCatchup
from bouncer.core.effects import Bound, CloseSession, Deliver, Effect, FlushHeld, FlushStored, Mail, ToUpstream
from bouncer.core.ports import SessionPort
from bouncer.muc import mam
from bouncer.muc.routing import MucRouter
from bouncer.xmpp import adhoc, bookmarks, caps, carbons, ids, jid, local_iq, ns, presence, stanza
from bouncer.xmpp.ns import q
from bouncer.xmpp.sm import StreamManagement

Element = etree._Element


@dataclass
class Session:
    """A bound downstream session: its connection and what routing knows of it."""

    resource: str
    jid: str
    port: SessionPort  # its connection; identity tells a session from its replacement
    presence: Element | None = None  # last available broadcast presence; None: not available
    carbons: bool = False
    csi_active: bool = True  # XEP-0352: a session starts active
    sm: StreamManagement[bytes] | None = None  # XEP-0198 enabled: its stream's counters and queue
    hibernated_at: float | None = None  # its connection dropped then; it waits for a resume
    # Mailbox ids delivered on an SM stream, with the sent count that acknowledges them.
    unconfirmed: deque[tuple[int, int]] = field(default_factory=deque)
    held: Held = field(default_factory=Held)  # what its inactive client does not get yet
    away_since: float | None = None  # its device was last seen then (None: a new device)
    # Contacts' presences wait for this roster request's answer: a server answers the
    # roster before presences arrive, and clients (poezio) drop presences of contacts
    # they do not know yet.
    replay_after: str | None = None


@dataclass
class RouterSettings:
    account: str  # bare JID
    idle_show: str = "away"
    idle_status: str | None = None
    iq_timeout: float = 60.0
    upstream_queue: int = 1000
    commands: tuple[tuple[str, str], ...] = ()  # the bouncer's ad-hoc commands: (node, name)


@dataclass
class Router:
    settings: RouterSettings
    muc: MucRouter
    sessions: dict[str, Session] = field(default_factory=dict)
    upstream_jid: str | None = None
    upstream_up: bool = False
    contacts: dict[str, Element] = field(default_factory=dict)  # full JID -> available presence
    peers: dict[str, str] = field(default_factory=dict)  # bare JID -> session that last wrote to it
    queue: deque[Element] = field(default_factory=deque)  # waits for the upstream; only the Router writes it
    iqs: IqTracker = field(init=False)
    catchup: AccountCatchup = field(init=False)
    caps: AccountCaps = field(default_factory=AccountCaps)  # what the account announces upstream
    sent_presence: bytes | None = None  # the account's presence as the server last got it

    def __post_init__(self) -> None:
        self.iqs = IqTracker(self.settings.iq_timeout)
        self.catchup = AccountCatchup(self.settings.account)

    @property
    def account(self) -> str:
        return self.settings.account

    def reconfigure(self, settings: RouterSettings) -> None:
        """New settings (SIGHUP); IQs already in flight keep their deadline."""
        self.settings = settings
        self.iqs.timeout = settings.iq_timeout

    def session_of(self, port: SessionPort) -> Session | None:
        """The session this connection is, if it is bound and not replaced."""
        for session in self.sessions.values():
            if session.port is port:
                return session
        return None

    # ---- sessions ----------------------------------------------------------
    def bind(self, port: SessionPort, requested: str | None) -> list[Effect]:
        """Register a new session; a resource in use replaces its holder (SPEC §3)."""
        upstream_res = jid.resource(self.upstream_jid or "")
        resource = requested if requested and requested != upstream_res else ids.token("res")
        actions: list[Effect] = []
        old = self.sessions.get(resource)
        if old is not None:
            actions += self.session_gone(old.port)
            actions.append(CloseSession(old.port, "conflict"))
        self.sessions[resource] = Session(resource, f"{self.account}/{resource}", port)
        return actions + [Bound(port, resource)]

    def session_gone(self, port: SessionPort) -> list[Effect]:
        """A connection ended (or was replaced): it leaves, as far as anyone can tell."""
        session = self.session_of(port)
        if session is None:
            return []  # never bound, or already replaced by a newer bind
        resource = session.resource
        del self.sessions[resource]
        self.iqs.drop_session(resource)
        actions: list[Effect] = self.muc.session_gone(resource)
        if session.presence is not None:
            gone = stanza.make("presence", type="unavailable", from_=session.jid)
            actions.append(Deliver(self._available(), gone))
            actions += self._account_presence()
        return actions

    def nonza(self, port: SessionPort, el: Element) -> list[Effect]:
        """XEP-0352 client state: an active client gets what was held for it; anything else is refused."""
        session = self.session_of(port)
        if session is not None and el.tag in (q(ns.CSI, "active"), q(ns.CSI, "inactive")):
            session.csi_active = el.tag == q(ns.CSI, "active")
            return [FlushHeld(session.resource)] if session.csi_active else []
        return [CloseSession(port, "unsupported-stanza-type", f"unexpected {el.tag}")]

    # ---- from a session ----------------------------------------------------
    def from_session(self, resource: str, el: Element, now: float) -> list[Effect]:
        """Route a stanza a bound session sent (its ``from`` already stamped)."""
        session = self.sessions[resource]
        to = el.get("to")
        if to is not None and self._is_sibling(to):
            return [Deliver((jid.resource(to),), el)]  # type: ignore[arg-type]
        if self.muc.wants_outgoing(el):
            decided = self.muc.from_session(resource, session.jid, el, now, session.away_since)
            if decided is not None:
                return decided
        if el.tag == stanza.MESSAGE:
            return self._session_message(session, el)
        if el.tag == stanza.PRESENCE:
            return self._session_presence(session, el)
        return self._session_iq(session, el, now)

    def _session_message(self, session: Session, el: Element) -> list[Effect]:
        to = el.get("to")
        if to is not None:
            self.peers[jid.bare(to)] = session.resource
        actions: list[Effect] = []
        if carbons.should_copy_sent(el):
            siblings = tuple(r for r, s in self.sessions.items() if s.carbons and r != session.resource)
            if siblings:
                actions.append(Deliver(siblings, carbons.sent_carbon(el, self.account)))
        return actions + self._upstream(el, session)

    def _session_presence(self, session: Session, el: Element) -> list[Effect]:
        if not presence.is_broadcast(el):
            if el.get("to") is not None:
                self.peers[jid.bare(el.get("to"))] = session.resource
            return self._upstream(el, session)
        first = session.presence is None and el.get("type") is None
        session.presence = None if el.get("type") == "unavailable" else el
        el.set("to", session.jid)  # re-addressed to each sibling, as a server broadcasts
        others = tuple(r for r in self._available() if r != session.resource)
        actions: list[Effect] = [Deliver(others, el)] if others else []
        if session.presence is not None:
            actions += self.caps.ask(session.resource, session.jid, el)
        if first:
            session.replay_after = self.iqs.roster_get_of(session.resource)
            if session.replay_after is None:
                actions += self._replay_presences(session)
            actions.append(FlushStored(session.resource))
        if el.get("type") == "unavailable":
            # Going unavailable leaves every room, as a server ends directed presence.
            actions += self.muc.session_gone(session.resource)
        return actions + self._account_presence()

    def _replay_presences(self, session: Session) -> list[Effect]:
        """What a server sends a resource after its initial presence: contacts and siblings."""
        me = (session.resource,)
        siblings = [s.presence for r, s in self.sessions.items() if r != session.resource and s.presence is not None]
        return [Deliver(me, p) for p in [*self.contacts.values(), *siblings]]

    def _session_iq(self, session: Session, el: Element, now: float) -> list[Effect]:
        to = el.get("to")
        if stanza.is_error_or_result(el):
            if self.caps.learn(el):
                return self._account_presence()  # what the client can do joins the account's caps
            if ids.is_ours(el.get("id"), "push") or ids.is_ours(el.get("id"), "idle"):
                return []  # answers to the bouncer's own IQs: a roster push it acknowledged, an idle ping
            return self._upstream(el, session)
        enable = carbons.is_enable_request(el)
        if enable is not None and (to is None or jid.same_bare(to, self.account)) and jid.resource(to or "") is None:
            session.carbons = enable
            return [Deliver((session.resource,), stanza.iq_result(el))]
        if to is not None and to == self.upstream_jid:
            answer = local_iq.answer(el)
            answer = answer if answer is not None else stanza.error_reply(el, "service-unavailable")
            return [Deliver((session.resource,), answer)]
        if to is not None:
            self.peers[jid.bare(to)] = session.resource
        stored = bookmarks.from_private_set(el) if to is None or to == self.account else None
        actions = [] if stored is None else self.muc.bookmarks_changed(stored, self.nick())
        return actions + self._session_iq_onwards(session, el, to, now)

    def _session_iq_onwards(self, session: Session, el: Element, to: str | None, now: float) -> list[Effect]:
        if not self.upstream_up:
            return [Deliver((session.resource,), stanza.error_reply(el, "remote-server-timeout", "upstream is reconnecting"))]
        if to is not None and jid.resource(to) is None and self.muc.holds(to):
            return self._room_iq(session, el, now)
        server = to is None or jid.bare(to) in (self.account, jid.domain(self.account))
        augment = "server" if server and local_iq.is_disco_info_get(el) else None
        augment = "commands" if to == self.account and adhoc.is_listing(el) else augment
        return [ToUpstream(self.iqs.outbound(stanza.without_from(el), session.resource, now, augment=augment))]

    def _room_iq(self, session: Session, el: Element, now: float) -> list[Effect]:
        """An IQ to a held room: MAM the archive serves itself, or upstream, remembering
        what to add to a disco#info answer and what to fall back on if MAM fails."""
        is_mam = mam.parse(el) is not None
        if is_mam and self.muc.serves_mam(el.get("to", "")):
            return [Deliver((session.resource,), answer) for answer in self.muc.mam_answer(el)]
        augment = "room" if local_iq.is_disco_info_get(el) else None
        fallback = stanza.clone(el) if is_mam else None
        outbound = self.iqs.outbound(stanza.without_from(el), session.resource, now, augment=augment, fallback=fallback)
        return [ToUpstream(outbound)]

    # ---- from upstream -----------------------------------------------------
    def from_upstream(self, el: Element, now: float) -> list[Effect]:
        if el.tag == stanza.IQ:
            return self._upstream_iq(el, now)
        if el.tag == stanza.MESSAGE and self.catchup.owns(el):
            missed = self.catchup.unwrap(el)  # a message the account missed: as if it came now
            return [] if missed is None else self.from_upstream(missed, now)
        owner = self.iqs.mam_result(el) if el.tag == stanza.MESSAGE else None
        if owner is not None:
            return [Deliver((owner,), el)] if owner in self.sessions else []
        if self.muc.wants_incoming(el):
            decided = self.muc.from_upstream(el, now)
            if decided is not None:
                return decided
        if el.tag == stanza.MESSAGE:
            return self._upstream_message(el)
        if el.tag == stanza.PRESENCE:
            return self._upstream_presence(el)
        return []

    def _upstream_iq(self, el: Element, now: float) -> list[Effect]:
        if stanza.is_error_or_result(el):
            upstream_id = el.get("id", "")
            entry = self.iqs.inbound(el)
            if entry is None:
                return self._own_answer(el, now)
            if entry is None or entry.resource not in self.sessions:
                return []  # the bouncer's own IQ, or its session is gone
            if entry.fallback is not None and el.get("type") == "error":
                return [Deliver((entry.resource,), a) for a in self.muc.mam_answer(entry.fallback)]
            if entry.augment == "commands":
                el = self._with_commands(el)
            elif entry.augment == "server" and el.get("type") == "result":
                local_iq.augment_disco(el)
            elif entry.augment == "room" and el.get("type") == "result":
                self.muc.room_features(el)
            return [Deliver((entry.resource,), el)] + self._after_roster(upstream_id)
        body = stanza.payload(el)
        if body is not None and body.tag == q(ns.ROSTER, "query") and _from_account_or_server(el, self.account):
            # Roster push: the bouncer acknowledges it once and tells every session.
            push = stanza.clone(el)
            push.set("id", ids.new("push"))
            actions: list[Effect] = [ToUpstream(stanza.iq_result(el))]
            return actions + ([Deliver(tuple(self.sessions), push)] if self.sessions else [])
        answer = self.caps.answer(el)
        answer = answer if answer is not None else local_iq.answer(el)
        command = adhoc.request(el)
        if command is not None and command.node in dict(self.settings.commands):
            answer = stanza.error_reply(el, "forbidden", "only the account's own sessions")
        if answer is not None:
            return [ToUpstream(answer)]
        target = self._iq_target(el)
        if target is None:
            return [ToUpstream(stanza.error_reply(el, "service-unavailable"))]
        return [Deliver((target,), el)]

    def _with_commands(self, answer: Element) -> Element:
        """The account's command list: the server's (when it has one) and the bouncer's."""
        if answer.get("type") == "error":  # (Prosody's has no from: Profanity crashes on a result without one)
            answer = stanza.make("iq", type="result", id=answer.get("id"), to=answer.get("to"), from_=self.account)
        return adhoc.add_items(answer, self.account, list(self.settings.commands))

    def _own_answer(self, el: Element, now: float) -> list[Effect]:
        """An answer to an IQ the account sent itself: catch-up pages, bookmarks, rooms."""
        for decided in (self.catchup.answer(el), self.muc.bookmarks_read(el, self.nick())):
            if decided is not None:
                return decided
        return self.muc.own_answer(el, now) or []

    def _iq_target(self, el: Element) -> str | None:
        """Which session answers an IQ sent to the account's upstream JID."""
        body = stanza.payload(el)
        node = body.get("node") if body is not None and body.tag == q(ns.DISCO_INFO, "query") else None
        if node is not None:
            return next((r for r, s in self.sessions.items() if s.presence is not None and caps.node_of(s.presence) == node), None)
        peer = self.peers.get(jid.bare(el.get("from", "")))
        if peer in self.sessions:
            return peer
        available = self._available()
        return available[-1] if available else None

    def _upstream_message(self, el: Element) -> list[Effect]:
        if carbons.is_carbon(el) and jid.same_bare(el.get("from"), self.account) and jid.resource(el.get("from", "")) is None:
            targets = tuple(r for r, s in self.sessions.items() if s.carbons and s.presence is not None)
            return [Mail(el, targets)]
        node = caps.notified_node(el)
        if node is not None and jid.localpart(el.get("from", "")) is not None:
            return self._notification(el, node)  # PEP: a user's node (a pubsub service's are subscribed to)
        return self._to_interested(el, keep=_worth_keeping(el))

    def _notification(self, el: Element, node: str) -> list[Effect]:
        """A PEP notification (XEP-0163) goes to the sessions whose client asked for its node
        (the server sent it because one of them did); the account's own bookmarks also drive
        its rooms (SPEC §8)."""
        change = bookmarks.from_event(el) if _from_account_or_server(el, self.account) else None
        actions = [] if change is None else self.muc.bookmarks_changed(change, self.nick())
        targets = tuple(r for r, s in self.sessions.items() if s.presence is not None and self.caps.wants(s.presence, node))
        return actions + ([Deliver(targets, el)] if targets else [])

    def _upstream_presence(self, el: Element) -> list[Effect]:
        sender = el.get("from", "")
        if sender == self.upstream_jid:
            return []  # the server echoing our own presence
        if presence.is_subscription(el):
            return self._to_interested(el, keep=True)
        if el.get("type") is None:
            self.contacts[sender] = el
        elif el.get("type") == "unavailable":
            self.contacts.pop(sender, None)
        return self._to_interested(el, keep=False)

    def _to_interested(self, el: Element, *, keep: bool) -> list[Effect]:
        """To every available session; kept in the mailbox too when it is worth keeping,
        for the devices not here (SPEC §14)."""
        targets = self._available()
        if keep:
            return [Mail(el, targets)]
        return [Deliver(targets, el)] if targets else []

    # ---- upstream lifecycle ------------------------------------------------
    def upstream_established(self, full_jid: str, resumed: bool) -> list[Effect]:
        self.upstream_jid = full_jid
        self.upstream_up = True
        actions: list[Effect] = []
        if not resumed:
            # A new session: the server forgot our presence and carbons state,
            # and IQs sent on the old stream will never be answered.
            self.contacts.clear()
            self.sent_presence = None
            for upstream_id, entry in list(self.iqs.pending.items()):
                del self.iqs.pending[upstream_id]
                actions += self._iq_timeout_error(entry, upstream_id)
            # Carbons bring copies of what the account's other real resources
            # send; a roster get makes the session an "interested resource"
            # that gets roster pushes (RFC 6121 §2.1.6).
            enable = stanza.make("iq", type="set", id=self.iqs.new_id())
            stanza.child(enable, ns.CARBONS, "enable")
            roster = stanza.make("iq", type="get", id=self.iqs.new_id())
            stanza.child(roster, ns.ROSTER, "query")
            actions += [ToUpstream(enable), ToUpstream(roster)]
            actions += self._account_presence()
            actions += self.muc.rejoin_all()
            actions += self.catchup.start()  # what reached the server while nobody took it
        else:
            # Resumed: rooms the server still holds us in need nothing; a room held
            # but never joined in this process (a restart without its cached state) does.
            actions += self.muc.join_unjoined()
        # Bookmarks changed meanwhile were not notified to a new session; a resumed one got
        # them, so it reads them only when this process has not yet (a restart).
        actions += self.muc.read_bookmarks(again=not resumed)
        while self.queue:
            actions.append(ToUpstream(self.queue.popleft()))
        return actions

    def upstream_down(self) -> None:
        self.upstream_up = False

    def upstream_refused(self, el: Element) -> None:
        """The link had no stream after all (it just went down): the stanza waits for the next."""
        self.queue.append(el)

    def tick(self, now: float) -> list[Effect]:
        """Time-driven work: IQ timeouts, room rejoins and self-pings."""
        return self.expire(now) + self.muc.due(now)

    def expire(self, now: float) -> list[Effect]:
        """Errors for IQs whose answer did not come in time (SPEC §5)."""
        actions: list[Effect] = []
        for upstream_id, entry in self.iqs.expired(now):
            actions += self._iq_timeout_error(entry, upstream_id)
        return actions

    # ---- helpers -----------------------------------------------------------
    def _after_roster(self, upstream_id: str) -> list[Effect]:
        """The presences a session's first presence held back until its roster arrived."""
        for session in self.sessions.values():
            if session.replay_after == upstream_id:
                session.replay_after = None
                return self._replay_presences(session) if session.presence is not None else []
        return []

    def _iq_timeout_error(self, entry, upstream_id: str = "") -> list[Effect]:
        if entry.resource not in self.sessions:
            return []
        probe = stanza.make("iq", type="get", id=entry.original_id, to=entry.original_to, from_=self.sessions[entry.resource].jid)
        return [Deliver((entry.resource,), stanza.error_reply(probe, "remote-server-timeout"))] + self._after_roster(upstream_id)

    def _upstream(self, el: Element, session: Session) -> list[Effect]:
        """Send upstream now, or queue while it reconnects; past the cap, say so."""
        if self.upstream_up:
            return [ToUpstream(stanza.without_from(el))]
        if len(self.queue) < self.settings.upstream_queue:
            self.queue.append(stanza.without_from(el))
            return []
        if stanza.is_error_or_result(el):
            return []  # errors and results are never answered
        return [Deliver((session.resource,), stanza.error_reply(el, "recipient-unavailable", "upstream queue is full"))]

    def refresh_presence(self) -> list[Effect]:
        """The aggregate presence, recomputed from current settings."""
        return self._account_presence()

    def _account_presence(self) -> list[Effect]:
        """The aggregate presence upstream, sent only when it changed."""
        if not self.upstream_up:
            return []  # sent on (re)establishment
        available = [s.presence for s in self.sessions.values() if s.presence is not None]
        agg = presence.aggregate(available, self.settings.idle_show, self.settings.idle_status)  # type: ignore[arg-type]
        self.caps.stamp(agg, available)  # type: ignore[arg-type]
        wire = stanza.serialize(agg)
        if wire == self.sent_presence:
            return []
        self.sent_presence = wire
        return [ToUpstream(agg)]

    def nick(self) -> str:
        """The account's nick in a room no session chose one for."""
        return jid.localpart(self.account) or self.account

    def _available(self) -> tuple[str, ...]:
        return tuple(r for r, s in self.sessions.items() if s.presence is not None)

    def _is_sibling(self, to: str) -> bool:
        res = jid.resource(to)
        return res is not None and res in self.sessions and jid.same_bare(to, self.account)


def _from_account_or_server(el: Element, account: str) -> bool:
    sender = el.get("from")
    return sender is None or jid.same_bare(sender, account) and jid.resource(sender) is None


def _worth_keeping(msg: Element) -> bool:
    """Whether a message is stored for later when nobody is connected.

    Chat states alone are transient (XEP-0085: not stored offline); groupchat
    belongs to the room archive.
    """
    if msg.get("type") == "groupchat":
        return False
    children = [c for c in msg if isinstance(c.tag, str)]
    return not children or any(etree.QName(c).namespace not in (ns.CHATSTATES,) for c in children)

