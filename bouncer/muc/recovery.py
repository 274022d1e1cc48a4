"""Keeping the account in its rooms (SPEC §4, §6.5, §6.10): rejoins and self-pings.

A new upstream session rejoins every held room, asking for the history since the
last archived message; a room whose service shut down (332) is retried with
backoff; a silent room is checked with a XEP-0410 self-ping, and a ping answered
``not-acceptable``/``item-not-found`` means the account is out and rejoins.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.muc.joins import ask_for_history, presence_to_room
from bouncer.muc.room import Room, RoomPhase, error_condition
from bouncer.muc.state import MucState
from bouncer.xmpp import ids, ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element
log = structlog.get_logger("bouncer.muc")

# Backoff of rejoins after a 332, and cap of rechecks (seconds).
_REJOIN_FIRST, _REJOIN_CAP = 5.0, 300.0
# Self-ping errors that say the room's server is not there right now, not that we are out.
_TRANSIENT = {"remote-server-not-found", "remote-server-timeout", "service-unavailable"}


def rejoin_all(state: MucState) -> list[Effect]:
    """A new upstream session: every held room is joined again (SPEC §4)."""
    effects: list[Effect] = []
    for room in state.rooms.values():
        effects += join_upstream(state, room)
    return effects


def join_unjoined(state: MucState) -> list[Effect]:
    """After a resume: rooms held but neither joined nor being joined by this process are
    joined; the joined ones are checked with a self-ping at the next tick (the room's
    service may have restarted meanwhile; one that answers is not rejoined)."""
    effects: list[Effect] = []
    for room in state.rooms.values():
        if room.phase is RoomPhase.JOINING and not room.join_sent and room.rejoin_at is None:
            effects += join_upstream(state, room)
        elif room.phase is RoomPhase.JOINED:
            room.check_at = 0.0
    return effects


def due(state: MucState, now: float) -> list[Effect]:
    """Time-driven room work: rejoins after a 332 (SPEC §6.5), self-pings after silence (§6.10)."""
    effects: list[Effect] = []
    for room in state.rooms.values():
        if room.rejoin_at is not None and room.rejoin_at <= now:
            room.rejoin_at = None
            effects += join_upstream(state, room)
        elif room.phase is RoomPhase.JOINED:
            effects += _self_ping(state, room, now)
    return effects


def _self_ping(state: MucState, room: Room, now: float) -> list[Effect]:
    if room.ping_id is not None:
        if now - room.ping_sent > state.settings.self_ping_timeout:
            room.ping_id = None  # no answer (the server may be restarting): ask again later
            _recheck_later(state, room, now, "no answer")
        return []
    checking = room.check_at is not None and room.check_at <= now
    if not checking and now - (room.heard_at or now) < state.settings.self_ping_after:
        room.heard_at = room.heard_at or now
        return []
    room.check_at = None
    room.ping_id, room.ping_sent = ids.new("ping"), now
    ping = stanza.make("iq", type="get", id=room.ping_id, to=room.occupant_jid)
    stanza.child(ping, ns.PING, "ping")
    return [ToUpstream(ping)]


def ping_answer(state: MucState, room: Room, iq: Element, now: float) -> list[Effect]:
    """XEP-0410: not-acceptable or item-not-found mean the account is no longer in the
    room, so it rejoins. A transient error (the room's server restarting: not found, timed
    out, unavailable) proves nothing: asked again after ``muc.recheck_delay``, with backoff
    (the lesson of Prosody's mod_ping_muc). Anything else means it is in."""
    room.ping_id, room.heard_at = None, now
    condition = error_condition(iq) if iq.get("type") == "error" else None
    if condition in ("not-acceptable", "item-not-found"):
        log.info("room dropped the account, rejoining", room=room.jid)
        room.recheck_delay = 0.0
        return join_upstream(state, room)
    if condition in _TRANSIENT:
        _recheck_later(state, room, now, condition)
    else:
        room.recheck_delay = 0.0
        log.info("room still joined", room=room.jid)
    return []


def _recheck_later(state: MucState, room: Room, now: float, why: str | None) -> None:
    room.recheck_delay = min(max(room.recheck_delay * 2, state.settings.recheck_delay), _REJOIN_CAP)
    room.check_at = now + room.recheck_delay
    log.info("room check inconclusive, asking again", room=room.jid, why=why, delay=room.recheck_delay)


def retry_later(room: Room, now: float) -> list[Effect]:
    """The room's service shut down (332): the account's sessions are out, the account comes back."""
    room.rejoin_delay = min(max(room.rejoin_delay * 2, _REJOIN_FIRST), _REJOIN_CAP)
    room.rejoin_at = now + room.rejoin_delay
    room.phase = RoomPhase.JOINING
    room.sessions.clear()
    room.pending.clear()
    room.session_presence.clear()
    room.occupants.clear()
    log.info("room rejoin scheduled", room=room.jid, delay=room.rejoin_delay)
    return []


def hold(state: MucState, room_jid: str, nick: str, password: str | None) -> list[Effect]:
    """The account joins a room no session asked for (a bookmark's autojoin, SPEC §8):
    sessions that join it later are answered locally, as for any held room."""
    if room_jid in state.rooms:
        return []
    room = Room(room_jid, nick, password)
    state.rooms[room_jid] = room
    log.info("holding room for the account", room=room_jid, nick=nick)
    return join_upstream(state, room)


def join_upstream(state: MucState, room: Room) -> list[Effect]:
    """Join ``room`` upstream again with what the account's sessions show, asking
    for the history since the last archived message so the archive has no gap."""
    room.phase, room.join_sent = RoomPhase.JOINING, True
    room.previous, room.occupants = room.occupants, {}
    mine = [p for r, p in room.session_presence.items() if r in room.sessions]
    join = presence_to_room(room, mine)
    room.sent_presence = stanza.serialize(join)
    x = stanza.child(join, ns.MUC, "x")
    if room.password:
        etree.SubElement(x, q(ns.MUC, "password")).text = room.password
    ask_for_history(state, room, x)
    last = state.archive.last_ts(room.jid)
    room.catchup_after = None if room.own_mam else state.archive.last_stanza_id(room.jid)
    room.catchup_ts = last or 0.0
    return [ToUpstream(join)]
