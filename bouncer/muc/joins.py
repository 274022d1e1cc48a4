"""Sessions joining and leaving held rooms (SPEC §6.1-6.3, §6.7).

The first join of a room goes upstream; later ones are answered locally from
the room's cache (``replay``) once the account is in. A session leaving (or
disconnecting) is a local matter unless it was the last and the config says to
leave; the account's presence in a room is the aggregate of its sessions'.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Deliver, DeliverSeries, Effect, ReleaseRoom, ToUpstream
from bouncer.muc import history, replay
from bouncer.muc.room import JoinRequest, Room, RoomPhase, is_join
from bouncer.muc.state import MucState
from bouncer.xmpp import jid, ns, presence, stanza
from bouncer.xmpp.ns import q

Element = etree._Element
log = structlog.get_logger("bouncer.muc")


def session_presence(state: MucState, resource: str, el: Element, now: float,
                     away_since: float | None = None) -> list[Effect] | None:
    """A session's presence to a room: join, nick change, status, leave; None: not ours."""
    to = el.get("to", "")
    room_jid, nick = jid.bare(to), jid.resource(to)
    room = state.rooms.get(room_jid)
    if el.get("type") == "unavailable":
        return None if room is None else leave(state, room, resource, el.get("from", ""))
    if el.get("type") is not None or nick is None:
        return None if room is None else [ToUpstream(stanza.without_from(el))]
    req = _join_request(resource, nick, el, away_since)
    if room is None:
        return _first_join(state, room_jid, req, el)
    room.session_presence[resource] = el
    if room.phase is RoomPhase.JOINING:
        room.pending[resource] = req
        return [Deliver((resource,), p) for p in room.occupants.values()]
    if resource in room.sessions and not is_join(el):
        if nick != room.nick:
            room.nick_change_by = resource
            return [ToUpstream(stanza.without_from(stanza.clone(el)))]
        return room_presence(room)
    return _local_join(state, room, req, now) + room_presence(room)


def _first_join(state: MucState, room_jid: str, req: JoinRequest, el: Element) -> list[Effect]:
    """The account joins upstream, asking the room for the history its archive needs, not
    for what this session asked: the session gets its own from the archive (``wanted_history``)."""
    x = stanza.find(el, ns.MUC, "x")
    password = None if x is None else x.findtext(q(ns.MUC, "password"))
    room = Room(room_jid, req.nick, password, join_sent=True)
    room.pending[req.resource] = req
    room.session_presence[req.resource] = el
    room.sent_presence = stanza.serialize(presence_to_room(room, [el]))
    state.rooms[room_jid] = room
    join = stanza.without_from(stanza.clone(el))
    ask_for_history(state, room, stanza.find(join, ns.MUC, "x"))
    return [ToUpstream(join)]


def ask_for_history(state: MucState, room: Room, x: Element | None) -> None:
    """The account's ``<history/>`` in a join of ``room``: since the last archived message,
    or, with an empty archive, whatever the room gives (no limit of ours)."""
    if x is None:
        return
    for asked in x.findall(q(ns.MUC, "history")):
        x.remove(asked)
    last = state.archive.last_ts(room.jid)
    if last is not None:
        etree.SubElement(x, q(ns.MUC, "history"), since=stanza.utc_stamp(last))


def wanted_history(state: MucState, room: Room, req: JoinRequest, now: float) -> list:
    """The archived messages a session's join asked for. Without a ``<history/>`` of its
    own, a device that was here before gets what was said since it was last seen (SPEC
    §14), bounded; a new one the configured default."""
    if req.history is None and req.away_since is not None:
        # Rooms stamp their delays in whole seconds: a second of slack, so that nothing said
        # in the second the device left is missed (a repeat is recognised by its stanza-id).
        wanted, default = history.HistoryRequest(since=req.away_since - 1.0), history.MISSED_MAX
    else:
        wanted, default = history.parse_request(req.history), state.settings.history_default
    return history.select(state.archive, room.jid, wanted, now, default)


def _local_join(state: MucState, room: Room, req: JoinRequest, now: float) -> list[Effect]:
    """Answered from the cache (SPEC §6.4)."""
    past = wanted_history(state, room, req, now)
    room.sessions.add(req.resource)
    return [DeliverSeries(req.resource, tuple(replay.join_answer(room, req, past)))]


def leave(state: MucState, room: Room, resource: str, session_jid: str) -> list[Effect]:
    """One session leaves; the room sees nothing unless the account goes too."""
    was_in = resource in room.sessions or resource in room.pending
    _forget_session(room, resource)
    effects: list[Effect] = [Deliver((resource,), replay.leave_presence(room, session_jid))] if was_in else []
    return effects + _after_departure(state, room)


def leave_room(state: MucState, room_jid: str) -> list[Effect]:
    """Account-level leave: the account itself goes (SPEC §6.3)."""
    room = state.rooms.pop(room_jid, None)
    if room is None:
        return []
    gone = stanza.make("presence", type="unavailable", to=room.occupant_jid)
    state.left(room.occupant_jid)
    state.left(room_jid)  # ejabberd's room ends its own presence (its caps) too
    effects: list[Effect] = [ReleaseRoom(room_jid), ToUpstream(gone)]
    if room.audience() and room.self_presence is not None:
        effects.append(Deliver(room.audience(), replay.leave_presence(room, room.self_presence.get("to", ""))))
    return effects


def session_gone(state: MucState, resource: str) -> list[Effect]:
    """A session disconnected (or went unavailable) without leaving: a leave (SPEC §6.3)."""
    effects: list[Effect] = []
    for room in list(state.rooms.values()):
        if resource in room.sessions or resource in room.pending:
            _forget_session(room, resource)
            effects += _after_departure(state, room)
    return effects


def _after_departure(state: MucState, room: Room) -> list[Effect]:
    """Once a session is out: the account leaves too if configured so (unless the room is
    bookmarked with autojoin, SPEC §6.3), else its presence is updated."""
    if not room.audience() and state.settings.leave_when_unused and room.jid not in state.autojoin:
        return leave_room(state, room.jid)
    return room_presence(room)


def _forget_session(room: Room, resource: str) -> None:
    room.sessions.discard(resource)
    room.pending.pop(resource, None)
    room.session_presence.pop(resource, None)


def room_presence(room: Room) -> list[Effect]:
    """The account's presence in the room: the aggregate of its sessions' (SPEC §6.7)."""
    if room.phase is not RoomPhase.JOINED:
        return []
    mine = [p for r, p in room.session_presence.items() if r in room.sessions]
    if not mine:
        return []
    agg = presence_to_room(room, mine)
    wire = stanza.serialize(agg)
    if wire == room.sent_presence:
        return []
    room.sent_presence = wire
    return [ToUpstream(agg)]


def presence_to_room(room: Room, session_presences: list[Element]) -> Element:
    """The aggregate presence to the room, without join payload or per-client ids."""
    agg = presence.aggregate(session_presences, "available", None)
    for x in agg.findall(q(ns.MUC, "x")):
        agg.remove(x)
    agg.set("to", room.occupant_jid)
    return agg


def _join_request(resource: str, nick: str, el: Element, away_since: float | None) -> JoinRequest:
    x = stanza.find(el, ns.MUC, "x")
    hist = None if x is None else x.find(q(ns.MUC, "history"))
    return JoinRequest(resource, nick, el.get("id"), hist, away_since)
