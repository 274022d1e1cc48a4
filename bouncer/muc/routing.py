"""Account-level MUC decisions (SPEC §6): join once upstream, answer later joins
locally, fan room traffic out to the sessions that joined, archive it first.

Like the Router, this returns actions and touches no socket; it reads and
writes the room archive directly, because whether a message is new (its
stanza-id not yet archived) decides whether it is fanned out at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from lxml import etree

from bouncer import carbons, local_iq, presence
from bouncer.xmpp import ids, jid, ns, stanza
from bouncer.actions import Action, Deliver, ToUpstream
from bouncer.muc import history, mam, replay
from bouncer.muc.room import (
    JoinRequest,
    Phase,
    Room,
    is_join,
    is_self_presence,
    new_nick,
    stanza_id,
    status_codes,
    subject_message,
    track_occupant,
)
from bouncer.xmpp.ns import q
from bouncer.storage.archive import HeldRoom, RoomArchive

Element = etree._Element
log = structlog.get_logger("bouncer.muc")

# Why the room let go of the account (SPEC §6.5), for the log.
_GONE_REASONS = ("301", "307", "321", "322")
# Backoff of rejoins after a 332 (seconds), and the join errors worth retrying.
_REJOIN_FIRST, _REJOIN_CAP = 5.0, 300.0
_TRANSIENT = {"remote-server-not-found", "remote-server-timeout", "service-unavailable", "internal-server-error"}


@dataclass
class MucSettings:
    history_default: int = 20  # messages on a local join without <history/>
    leave_when_unused: bool = False  # leave upstream when the last session leaves
    self_ping_after: float = 900.0  # silence (s) after which the account checks it is still in
    self_ping_timeout: float = 120.0  # no answer by then: inconclusive, try again later


@dataclass
class MucRouter:
    archive: RoomArchive
    settings: MucSettings = field(default_factory=MucSettings)
    rooms: dict[str, Room] = field(default_factory=dict)

    def restore(self) -> None:
        """Rooms held before a restart: joined again once upstream is up."""
        for held in self.archive.held():
            self.rooms[held.jid] = Room(held.jid, held.nick, held.password)

    # ---- classification ------------------------------------------------------
    def wants_outgoing(self, el: Element) -> bool:
        to = el.get("to")
        if to is None or jid.localpart(to) is None:
            return False
        return jid.bare(to) in self.rooms or is_join(el)

    def wants_incoming(self, el: Element) -> bool:
        return jid.bare(el.get("from", "")) in self.rooms

    def holds(self, room_jid: str) -> bool:
        return jid.bare(room_jid) in self.rooms

    def serves_mam(self, room_jid: str) -> bool:
        room = self.rooms.get(jid.bare(room_jid))
        return room is not None and room.own_mam

    def room_features(self, result: Element) -> None:
        """A held room's disco#info: without MAM, the bouncer's archive serves it (§7, §13)."""
        room = self.rooms.get(jid.bare(result.get("from", "")))
        features = {f.get("var") for f in result.iter(q(ns.DISCO_INFO, "feature"))}
        if room is not None and mam.MAM not in features:
            room.own_mam = True
            local_iq.augment_disco(result, (mam.MAM,))

    def mam_answer(self, iq: Element) -> list[Element]:
        """The room could not answer a MAM query: the bouncer's archive does (SPEC §7)."""
        query = mam.parse(iq)
        room = jid.bare(iq.get("to", ""))
        if query is None:
            return [stanza.error_reply(iq, "service-unavailable")]
        log.info("room MAM answered from the archive", room=room)
        return mam.answer(self.archive, room, iq, query)

    # ---- from sessions ---------------------------------------------------------
    def from_session(self, resource: str, session_jid: str, el: Element, now: float) -> list[Action] | None:
        """Decide for a stanza a session sent to a room; None: not a room matter."""
        if el.tag == stanza.PRESENCE:
            return self._session_presence(resource, session_jid, el, now)
        room = self.rooms.get(jid.bare(el.get("to", "")))
        if room is None:
            return None
        if el.tag == stanza.IQ and _is_ping(el) and el.get("to") == room.occupant_jid:
            return [Deliver((resource,), self_ping_answer(room, resource, el))]
        if el.tag == stanza.MESSAGE and el.get("type") == "chat" and jid.resource(el.get("to", "")):
            # A private message: copied to the sibling sessions in that room (SPEC §13).
            siblings = tuple(r for r in room.sessions if r != resource)
            copy = carbons.sent_carbon(el, jid.bare(session_jid))
            return _fan(siblings, copy) + [ToUpstream(stanza.without_from(el))]
        return None

    def _session_presence(self, resource: str, session_jid: str, el: Element, now: float) -> list[Action] | None:
        to = el.get("to", "")
        room_jid, nick = jid.bare(to), jid.resource(to)
        room = self.rooms.get(room_jid)
        if el.get("type") == "unavailable":
            return None if room is None else self._leave(room, resource, session_jid)
        if el.get("type") is not None or nick is None:
            return None if room is None else [ToUpstream(stanza.without_from(el))]
        req = _join_request(resource, nick, el)
        if room is None:
            return self._first_join(room_jid, req, el)
        room.session_presence[resource] = el
        if room.phase is Phase.JOINING:
            room.pending[resource] = req
            return [Deliver((resource,), p) for p in room.occupants.values()]
        if resource in room.sessions and not is_join(el):
            if nick != room.nick:
                room.nick_change_by = resource
                return [ToUpstream(stanza.without_from(stanza.clone(el)))]
            return self._room_presence(room)
        return self._local_join(room, req, now) + self._room_presence(room)

    def _first_join(self, room_jid: str, req: JoinRequest, el: Element) -> list[Action]:
        x = stanza.find(el, ns.MUC, "x")
        password = None if x is None else x.findtext(q(ns.MUC, "password"))
        room = Room(room_jid, req.nick, password, join_sent=True)
        room.pending[req.resource] = req
        room.session_presence[req.resource] = el
        room.sent_presence = stanza.serialize(_room_presence_of(room, [el]))
        self.rooms[room_jid] = room
        return [ToUpstream(stanza.without_from(stanza.clone(el)))]

    def _local_join(self, room: Room, req: JoinRequest, now: float) -> list[Action]:
        wanted = history.parse_request(req.history)
        past = history.select(self.archive, room.jid, wanted, now, self.settings.history_default)
        room.sessions.add(req.resource)
        return [Deliver((req.resource,), el) for el in replay.join_answer(room, req, past)]

    def _leave(self, room: Room, resource: str, session_jid: str) -> list[Action]:
        was_in = resource in room.sessions or resource in room.pending
        self._forget_session(room, resource)
        actions: list[Action] = [Deliver((resource,), replay.leave_presence(room, session_jid))] if was_in else []
        return actions + self._after_departure(room)

    def leave_room(self, room_jid: str) -> list[Action]:
        """Account-level leave: the account itself goes (SPEC §6.3)."""
        room = self.rooms.pop(room_jid, None)
        if room is None:
            return []
        self.archive.release(room_jid)
        gone = stanza.make("presence", type="unavailable", to=room.occupant_jid)
        actions: list[Action] = [ToUpstream(gone)]
        if room.audience() and room.self_presence is not None:
            actions.append(Deliver(room.audience(), replay.leave_presence(room, room.self_presence.get("to", ""))))
        return actions

    def session_gone(self, resource: str) -> list[Action]:
        """A session disconnected without leaving: treated as a leave (SPEC §6.3)."""
        actions: list[Action] = []
        for room in list(self.rooms.values()):
            if resource in room.sessions or resource in room.pending:
                self._forget_session(room, resource)
                actions += self._after_departure(room)
        return actions

    def _after_departure(self, room: Room) -> list[Action]:
        """Once a session is out: the account leaves too if configured so, else its presence is updated."""
        if not room.audience() and self.settings.leave_when_unused:
            return self.leave_room(room.jid)
        return self._room_presence(room)

    def _forget_session(self, room: Room, resource: str) -> None:
        room.sessions.discard(resource)
        room.pending.pop(resource, None)
        room.session_presence.pop(resource, None)

    def _room_presence(self, room: Room) -> list[Action]:
        """The account's presence in the room: the aggregate of its sessions' (SPEC §6.7)."""
        if room.phase is not Phase.JOINED:
            return []
        mine = [p for r, p in room.session_presence.items() if r in room.sessions]
        if not mine:
            return []
        agg = _room_presence_of(room, mine)
        wire = stanza.serialize(agg)
        if wire == room.sent_presence:
            return []
        room.sent_presence = wire
        return [ToUpstream(agg)]

    # ---- from the room -----------------------------------------------------------
    def from_upstream(self, el: Element, now: float) -> list[Action] | None:
        room = self.rooms[jid.bare(el.get("from", ""))]
        room.heard_at = now
        if el.tag == stanza.PRESENCE:
            return self._room_presence_in(room, el, now)
        if el.tag == stanza.MESSAGE:
            return self._room_message(room, el, now)
        return None

    def _room_presence_in(self, room: Room, el: Element, now: float) -> list[Action]:
        audience = room.audience()
        if el.get("type") == "error":
            return self._presence_error(room, el, now)
        if not is_self_presence(room, el):
            track_occupant(room, el)
            if room.previous is not None and _same(room.previous.pop(jid.resource(el.get("from", "")) or "", None), el):
                return []  # rejoining: the sessions already know this occupant as it is
            return _fan(audience, el)
        if el.get("type") == "unavailable":
            codes = status_codes(el)
            if "303" in codes and new_nick(el):
                room.nick = new_nick(el) or room.nick
                return _fan(audience, el)
            if "332" in codes:
                return self._retry_later(room, now) + (_fan(audience, el))
            reason = _gone_reason(el, codes)
            if reason == "unavailable":
                # Out without being put out, and the account never asked to leave (it
                # forgets a room before it leaves): the room lost us, e.g. a crashed
                # bouncer's hibernated session ended after the new one joined with the
                # same full JID (ejabberd). The account joins again; sessions stay.
                log.info("room dropped the account, rejoining", room=room.jid)
                return self._join_upstream(room)
            # Kicked, banned, destroyed, membership lost: no automatic rejoin (§6.5).
            del self.rooms[room.jid]
            self.archive.release(room.jid)
            log.info("left room", room=room.jid, reason=reason)
            return _fan(audience, el)
        return self._self_available(room, el)

    def _self_available(self, room: Room, el: Element) -> list[Action]:
        unchanged = _same(room.self_presence, el)
        room.self_presence = el
        room.nick = jid.resource(el.get("from", "")) or room.nick
        room.nick_change_by = None
        if room.phase is not Phase.JOINING:
            return _fan(room.audience(), el)
        room.phase = Phase.JOINED
        room.rejoin_delay = 0.0
        self.archive.hold(HeldRoom(room.jid, room.nick, room.password))
        log.info("room joined upstream", room=room.jid, nick=room.nick, sessions=len(room.audience()))
        actions: list[Action] = []
        for resource, req in room.pending.items():
            mine = el if req.presence_id == el.get("id") else _with_id(el, req.presence_id)
            actions.append(Deliver((resource,), mine))
        already = tuple(sorted(room.sessions - set(room.pending)))  # still joined across a rejoin
        if already:
            # Only what changed while the account was away reaches them (SPEC §6.10).
            for gone in (room.previous or {}).values():
                actions.append(Deliver(already, _unavailable_of(gone)))
            if not unchanged:
                actions.append(Deliver(already, el))
        room.previous = None
        room.awaiting_subject = set(room.pending)
        room.sessions |= set(room.pending)
        room.pending.clear()
        return actions

    def _presence_error(self, room: Room, el: Element, now: float) -> list[Action]:
        if room.phase is Phase.JOINING and room.rejoin_delay and _error_condition(el) in _TRANSIENT:
            return self._retry_later(room, now)  # the service is still down: keep trying
        if room.phase is Phase.JOINING:
            # A failed join leaves no state behind (SPEC §6.1). Sessions that were
            # in the room before a failed rejoin learn it as a 333 removal.
            del self.rooms[room.jid]
            self.archive.release(room.jid)
            log.info("room join failed", room=room.jid, condition=_error_condition(el))
            return _fan(tuple(sorted(room.pending)), el) + _fan(tuple(sorted(room.sessions)), replay.removed_presence(room))
        target = room.nick_change_by
        room.nick_change_by = None
        targets = (target,) if target is not None and target in room.sessions else room.audience()
        return _fan(targets, el)

    def _room_message(self, room: Room, el: Element, now: float) -> list[Action] | None:
        mtype = el.get("type")
        if room.catchup_id is not None:
            result = el.find(q(mam.MAM, "result"))
            if result is not None and result.get("queryid") == room.catchup_id:
                return self._caught_up_message(room, el, result, now)
        if mtype == "groupchat":
            if subject_message(el):
                catchup = self._start_catchup(room)  # the join is complete: fill the gap
                waiting, room.awaiting_subject = room.awaiting_subject, set()
                if _same(room.subject, el):
                    # A rejoin repeats the subject: only sessions ending a join need it.
                    return _fan(tuple(sorted(waiting & room.sessions)), el) + catchup
                room.subject = el
                return _fan(room.audience(), el) + catchup
            if not self._archive(room, el, now):
                return []  # already archived and fanned out (history repeated on rejoin)
            return _fan(room.audience(), el)
        if mtype == "error":
            return _fan(room.audience(), el)
        if mtype == "chat" and jid.resource(el.get("from", "")) and room.sessions:
            return [Deliver(tuple(sorted(room.sessions)), el)]  # a PM from an occupant (§6.8)
        return None

    def _archive(self, room: Room, el: Element, now: float) -> bool:
        ts = history.delay_stamp(el) or now
        room.last_message = now
        nick = jid.resource(el.get("from", ""))
        sid = stanza_id(el, room.jid)
        stored = self.archive.store(room.jid, sid, ts, nick, stanza.serialize(el))
        log.debug("archived" if stored else "already archived", room=room.jid, stanza_id=sid)
        return stored

    # ---- upstream lifecycle ----------------------------------------------------------
    def rejoin_all(self) -> list[Action]:
        """A new upstream session: every held room is joined again (SPEC §4)."""
        actions: list[Action] = []
        for room in self.rooms.values():
            actions += self._join_upstream(room)
        return actions

    def join_unjoined(self) -> list[Action]:
        """Rooms held but neither joined nor being joined by this process: join them."""
        actions: list[Action] = []
        for room in self.rooms.values():
            if room.phase is Phase.JOINING and not room.join_sent and room.rejoin_at is None:
                actions += self._join_upstream(room)
        return actions

    def due(self, now: float) -> list[Action]:
        """Time-driven room work: rejoins after a 332 (SPEC §6.5), self-pings after silence (§6.10)."""
        actions: list[Action] = []
        for room in self.rooms.values():
            if room.rejoin_at is not None and room.rejoin_at <= now:
                room.rejoin_at = None
                actions += self._join_upstream(room)
            elif room.phase is Phase.JOINED:
                actions += self._self_ping(room, now)
        return actions

    def _self_ping(self, room: Room, now: float) -> list[Action]:
        if room.ping_id is not None:
            if now - room.ping_sent > self.settings.self_ping_timeout:
                room.ping_id, room.heard_at = None, now  # no answer (the server may be restarting)
            return []
        if now - (room.heard_at or now) < self.settings.self_ping_after:
            room.heard_at = room.heard_at or now
            return []
        room.ping_id, room.ping_sent = ids.new("ping"), now
        ping = stanza.make("iq", type="get", id=room.ping_id, to=room.occupant_jid)
        stanza.child(ping, ns.PING, "ping")
        return [ToUpstream(ping)]

    def own_answer(self, iq: Element, now: float) -> list[Action] | None:
        """The answer to an IQ the account sent a room itself; None when ``iq`` is not one."""
        room = self.rooms.get(jid.bare(iq.get("from", "")))
        if room is None or not iq.get("id"):
            return None
        if iq.get("id") == room.catchup_id:
            return self._catchup_done(room, iq)
        if iq.get("id") == room.ping_id:
            return self._ping_answer(room, iq, now)
        return None

    def _ping_answer(self, room: Room, iq: Element, now: float) -> list[Action]:
        """XEP-0410: not-acceptable or item-not-found mean the account is no longer
        in the room, so it rejoins; anything else means it is (or cannot be told)."""
        room.ping_id, room.heard_at = None, now
        if iq.get("type") == "error" and _error_condition(iq) in ("not-acceptable", "item-not-found"):
            log.info("room dropped the account, rejoining", room=room.jid)
            return self._join_upstream(room)
        return []

    def _retry_later(self, room: Room, now: float) -> list[Action]:
        """The room's service shut down (332): the account's sessions are out, the account comes back."""
        room.rejoin_delay = min(max(room.rejoin_delay * 2, _REJOIN_FIRST), _REJOIN_CAP)
        room.rejoin_at = now + room.rejoin_delay
        room.phase = Phase.JOINING
        room.sessions.clear()
        room.pending.clear()
        room.session_presence.clear()
        room.occupants.clear()
        log.info("room rejoin scheduled", room=room.jid, delay=room.rejoin_delay)
        return []

    def _join_upstream(self, room: Room) -> list[Action]:
        """Join ``room`` upstream again with what the account's sessions show, asking
        for the history since the last archived message so the archive has no gap."""
        room.phase, room.join_sent = Phase.JOINING, True
        room.previous, room.occupants = room.occupants, {}
        mine = [p for r, p in room.session_presence.items() if r in room.sessions]
        join = _room_presence_of(room, mine)
        room.sent_presence = stanza.serialize(join)
        x = stanza.child(join, ns.MUC, "x")
        if room.password:
            etree.SubElement(x, q(ns.MUC, "password")).text = room.password
        last = self.archive.last_ts(room.jid)
        if last is not None:
            etree.SubElement(x, q(ns.MUC, "history"), since=stanza.utc_stamp(last))
        room.catchup_after = None if room.own_mam else self.archive.last_stanza_id(room.jid)
        room.catchup_ts = last or 0.0
        return [ToUpstream(join)]

    # ---- catch-up from the room's MAM after a rejoin (SPEC §7: the archive has no gap) ----
    def _start_catchup(self, room: Room) -> list[Action]:
        after, room.catchup_after = room.catchup_after, None
        return [] if after is None else self._catchup_page(room, after)

    def _catchup_page(self, room: Room, after: str) -> list[Action]:
        room.catchup_id = ids.new("catchup")
        iq = stanza.make("iq", type="set", id=room.catchup_id, to=room.jid)
        query = stanza.child(iq, mam.MAM, "query", queryid=room.catchup_id)
        rsm = stanza.child(query, mam.RSM, "set")
        etree.SubElement(rsm, q(mam.RSM, "max")).text = str(mam.MAX_PAGE)
        etree.SubElement(rsm, q(mam.RSM, "after")).text = after
        return [ToUpstream(iq)]

    def _caught_up_message(self, room: Room, wrapper: Element, result: Element, now: float) -> list[Action]:
        """A message the room archived while the account was away: archived here, and shown
        (with its delay) to the sessions in the room, which missed it too."""
        fwd = result.find(q(mam.FORWARD, "forwarded"))
        inner = None if fwd is None else fwd.find(q(ns.CLIENT, "message"))
        if inner is None:
            return []
        msg = stanza.clone(inner)
        msg.set("to", wrapper.get("to", ""))
        delay = fwd.find(q(mam.DELAY, "delay"))  # type: ignore[union-attr]
        if delay is not None and stanza.find(msg, ns.DELAY, "delay") is None:
            msg.append(stanza.clone(delay))
        sid = stanza_id(msg, room.jid) or result.get("id")
        if msg.get("type") != "groupchat" or not sid:
            return []
        if stanza_id(msg, room.jid) is None:
            stanza.child(msg, ns.STANZA_ID, "stanza-id", by=room.jid, id=sid)
        # Delay stamps are often whole seconds: MAM's order decides among equal times.
        room.catchup_ts = max(history.delay_stamp(msg) or now, room.catchup_ts + 0.000001)
        new = self.archive.place(room.jid, sid, room.catchup_ts, jid.resource(msg.get("from", "")), stanza.serialize(msg))
        return _fan(tuple(sorted(room.sessions)), msg) if new else []

    def _catchup_done(self, room: Room, iq: Element) -> list[Action]:
        room.catchup_id = None
        fin = iq.find(q(mam.MAM, "fin"))
        last = None if fin is None else fin.findtext(f"{q(mam.RSM, 'set')}/{q(mam.RSM, 'last')}")
        if iq.get("type") == "result" and fin is not None and fin.get("complete") != "true" and last:
            return self._catchup_page(room, last)
        log.info("room caught up", room=room.jid, ok=iq.get("type") == "result")
        return []

    def prune(self, now: float) -> int:
        """Apply archive retention to every held room (SPEC §7: the database stays bounded)."""
        removed = sum(self.archive.prune(room, now) for room in self.rooms)
        if removed:
            log.info("archive pruned", removed=removed)
        return removed

    def status(self) -> list[dict]:
        return [
            {
                "room": room.jid,
                "nick": room.nick,
                "joined": room.phase is Phase.JOINED,
                "occupants": len(room.occupants) + (1 if room.self_presence is not None else 0),
                "sessions": sorted(room.sessions),
                "last_message": room.last_message,
                "archived": self.archive.count(room.jid),
            }
            for room in self.rooms.values()
        ]


def self_ping_answer(room: Room, resource: str, iq: Element) -> Element:
    """XEP-0410 answered at once: joined sessions get a result, others not-acceptable (§13)."""
    if room.phase is Phase.JOINED and resource in room.sessions:
        return stanza.iq_result(iq)
    return stanza.error_reply(iq, "not-acceptable")


def _gone_reason(el: Element, codes: set[str]) -> str:
    x = stanza.find(el, ns.MUC_USER, "x")
    if x is not None and x.find(q(ns.MUC_USER, "destroy")) is not None:
        return "destroyed"
    return next((c for c in _GONE_REASONS if c in codes), "unavailable")


def _error_condition(el: Element) -> str | None:
    error = el.find(q(ns.CLIENT, "error"))
    return None if error is None or len(error) == 0 else etree.QName(error[0]).localname


def _is_ping(iq: Element) -> bool:
    body = stanza.payload(iq)
    return iq.get("type") == "get" and body is not None and body.tag == q(ns.PING, "ping")


def _join_request(resource: str, nick: str, el: Element) -> JoinRequest:
    x = stanza.find(el, ns.MUC, "x")
    hist = None if x is None else x.find(q(ns.MUC, "history"))
    return JoinRequest(resource, nick, el.get("id"), hist)


def _room_presence_of(room: Room, session_presences: list[Element]) -> Element:
    """The aggregate presence to the room, without join payload or per-client ids."""
    agg = presence.aggregate(session_presences, "available", None)
    for x in agg.findall(q(ns.MUC, "x")):
        agg.remove(x)
    agg.set("to", room.occupant_jid)
    return agg


def _fan(resources: tuple[str, ...], el: Element) -> list[Action]:
    """Deliver ``el`` to these sessions, if there are any."""
    return [Deliver(resources, el)] if resources else []


def _same(a: Element | None, b: Element) -> bool:
    """Whether a room stanza says the same again (after a rejoin), for a client's eyes.

    Compared on what clients show: availability, status text, role and
    affiliation, or the subject; a rejoin changes status codes, ids and
    server-added payloads, which mean nothing to a session already in the room.
    """
    return a is not None and _meaning(a) == _meaning(b)


def _meaning(el: Element) -> tuple:
    x = stanza.find(el, ns.MUC_USER, "x")
    item = None if x is None else x.find(q(ns.MUC_USER, "item"))
    return (
        el.get("from"),
        el.get("type"),
        stanza.text_of(el, ns.CLIENT, "show"),
        stanza.text_of(el, ns.CLIENT, "status"),
        stanza.text_of(el, ns.CLIENT, "subject"),
        None if item is None else (item.get("affiliation"), item.get("role"), item.get("jid"), item.get("nick")),
    )


def _unavailable_of(occupant: Element) -> Element:
    """The presence telling sessions an occupant left while the account was away."""
    el = stanza.make("presence", type="unavailable", from_=occupant.get("from"), to=occupant.get("to"))
    x = stanza.find(occupant, ns.MUC_USER, "x")
    if x is not None:
        out = stanza.child(el, ns.MUC_USER, "x")
        for item in x.findall(q(ns.MUC_USER, "item")):
            etree.SubElement(out, q(ns.MUC_USER, "item"), {**item.attrib, "role": "none"})
    return el


def _with_id(el: Element, presence_id: str | None) -> Element:
    out = stanza.clone(el)
    if presence_id is None:
        out.attrib.pop("id", None)
    else:
        out.set("id", presence_id)
    return out
