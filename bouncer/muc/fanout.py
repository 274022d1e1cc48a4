"""What a held room sends the account, fanned out to the sessions in it (SPEC §6.4-6.6, §6.8).

soju's ``produce()``: a groupchat message is archived first (keyed by the room's
stanza-id, so history repeated on a rejoin is recognised and not sent twice), then
delivered to every session that joined. Occupant presences keep the room's cache
exact; the account's own self-presence completes joins, reports nick changes, and
says when the room put the account out.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Deliver, DeliverSeries, Effect, HoldRoom, ReleaseRoom
from bouncer.core.ports import HeldRoom
from bouncer.muc import catchup, history, joins, recovery, replay
from bouncer.muc.room import (
    Room,
    RoomPhase,
    error_condition,
    gone_reason,
    is_self_presence,
    new_nick,
    same,
    stanza_id,
    status_codes,
    subject_message,
    track_occupant,
)
from bouncer.muc.state import MucState, fan
from bouncer.xmpp import jid, stanza

Element = etree._Element
log = structlog.get_logger("bouncer.muc")

# Join errors worth retrying while a room's service restarts.
_TRANSIENT = {"remote-server-not-found", "remote-server-timeout", "service-unavailable", "internal-server-error"}


def presence_in(state: MucState, room: Room, el: Element, now: float) -> list[Effect]:
    audience = room.audience()
    if el.get("type") == "error":
        return _presence_error(state, room, el, now)
    if not is_self_presence(room, el):
        track_occupant(room, el)
        if room.previous is not None and same(room.previous.pop(jid.resource(el.get("from", "")) or "", None), el):
            return []  # rejoining: the sessions already know this occupant as it is
        return fan(audience, el)
    if el.get("type") == "unavailable":
        return _self_unavailable(state, room, el, now)
    return _self_available(room, el)


def _self_unavailable(state: MucState, room: Room, el: Element, now: float) -> list[Effect]:
    audience = room.audience()
    codes = status_codes(el)
    if "303" in codes and new_nick(el):
        room.nick = new_nick(el) or room.nick
        return fan(audience, el)
    if "332" in codes:
        return recovery.retry_later(room, now) + fan(audience, el)
    reason = gone_reason(el, codes)
    if reason == "unavailable":
        # Out without being put out, and the account never asked to leave (it
        # forgets a room before it leaves): the room lost us, e.g. a crashed
        # bouncer's hibernated session ended after the new one joined with the
        # same full JID (ejabberd). The account joins again; sessions stay.
        log.info("room dropped the account, rejoining", room=room.jid)
        return recovery.join_upstream(state, room)
    # Kicked, banned, destroyed, membership lost: no automatic rejoin (§6.5).
    del state.rooms[room.jid]
    log.info("left room", room=room.jid, reason=reason)
    return [ReleaseRoom(room.jid), *fan(audience, el)]


def _self_available(room: Room, el: Element) -> list[Effect]:
    unchanged = same(room.self_presence, el)
    room.self_presence = el
    room.nick = jid.resource(el.get("from", "")) or room.nick
    room.nick_change_by = None
    if room.phase is not RoomPhase.JOINING:
        return fan(room.audience(), el)
    room.phase = RoomPhase.JOINED
    room.rejoin_delay = 0.0
    log.info("room joined upstream", room=room.jid, nick=room.nick, sessions=len(room.audience()))
    effects: list[Effect] = [HoldRoom(HeldRoom(room.jid, room.nick, room.password))]
    for resource, req in room.pending.items():
        mine = el if req.presence_id == el.get("id") else replay.with_id(el, req.presence_id)
        effects.append(Deliver((resource,), mine))
    already = tuple(sorted(room.sessions - set(room.pending)))  # still joined across a rejoin
    if already:
        # Only what changed while the account was away reaches them (SPEC §6.10).
        for gone in (room.previous or {}).values():
            effects.append(Deliver(already, replay.unavailable_of(gone)))
        if not unchanged:
            effects.append(Deliver(already, el))
    room.previous = None
    room.awaiting_subject = set(room.pending)
    room.history_wanted = dict(room.pending)
    room.sessions |= set(room.pending)
    room.pending.clear()
    return effects


def _presence_error(state: MucState, room: Room, el: Element, now: float) -> list[Effect]:
    if room.phase is RoomPhase.JOINING and room.rejoin_delay and error_condition(el) in _TRANSIENT:
        return recovery.retry_later(room, now)  # the service is still down: keep trying
    if room.phase is RoomPhase.JOINING:
        # A failed join leaves no state behind (SPEC §6.1). Sessions that were
        # in the room before a failed rejoin learn it as a 333 removal.
        del state.rooms[room.jid]
        log.info("room join failed", room=room.jid, condition=error_condition(el))
        return [ReleaseRoom(room.jid), *fan(tuple(sorted(room.pending)), el),
                *fan(tuple(sorted(room.sessions)), replay.removed_presence(room))]
    target = room.nick_change_by
    room.nick_change_by = None
    targets = (target,) if target is not None and target in room.sessions else room.audience()
    return fan(targets, el)


def message_in(state: MucState, room: Room, el: Element, now: float) -> list[Effect] | None:
    """A message from the room or an occupant; None: not a room matter."""
    mtype = el.get("type")
    result = catchup.result_of(room, el)
    if result is not None:
        return catchup.message(state, room, el, result, now)
    if mtype == "groupchat":
        if subject_message(el):
            return _wanted_history(state, room, now) + _subject(room, el)
        if not _archive(state, room, el, now):
            return []  # already archived and fanned out (history repeated on rejoin)
        # Sessions whose join the subject completes get their own history then, from the archive.
        return fan(tuple(r for r in room.audience() if r not in room.history_wanted), el)
    if mtype == "error":
        return fan(room.audience(), el)
    if mtype == "chat" and jid.resource(el.get("from", "")) and room.sessions:
        return [Deliver(tuple(sorted(room.sessions)), el)]  # a PM from an occupant (§6.8)
    return None


def _wanted_history(state: MucState, room: Room, now: float) -> list[Effect]:
    """The joins the subject completes: each session gets the history it asked for, from
    the archive (which has what the room sent the account), before the subject."""
    wanted, room.history_wanted = room.history_wanted, {}
    effects: list[Effect] = []
    for resource, req in wanted.items():
        rows = joins.wanted_history(state, room, req, now)
        if rows and resource in room.sessions:
            effects.append(DeliverSeries(resource, tuple(room.prepared_history(rows))))
    return effects


def _subject(room: Room, el: Element) -> list[Effect]:
    """The subject ends a join; the archive's gap is filled from the room's MAM then."""
    effects = catchup.start(room)
    waiting, room.awaiting_subject = room.awaiting_subject, set()
    if same(room.subject, el):
        # A rejoin repeats the subject: only sessions ending a join need it.
        return fan(tuple(sorted(waiting & room.sessions)), el) + effects
    room.subject = el
    return fan(room.audience(), el) + effects


def _archive(state: MucState, room: Room, el: Element, now: float) -> bool:
    ts = history.delay_stamp(el) or now
    room.last_message = now
    nick = jid.resource(el.get("from", ""))
    sid = stanza_id(el, room.jid)
    stored = state.archive.store(room.jid, sid, ts, nick, stanza.serialize(el))
    log.debug("archived" if stored else "already archived", room=room.jid, stanza_id=sid)
    return stored
