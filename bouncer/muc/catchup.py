"""After a rejoin, the room's MAM fills the archive's gap (SPEC §7: the archive has no gap).

The rejoin asked for history since the last archived message; a room with MAM is
also paged from the last stanza-id the archive holds, so nothing said while the
account was away is missing, even beyond what the room's history gives.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.muc import history
from bouncer.muc.room import Room, stanza_id
from bouncer.muc.state import MucState, fan
from bouncer.xmpp import ids, jid, mam_paging, ns, stanza

Element = etree._Element
log = structlog.get_logger("bouncer.muc")


def start(room: Room) -> list[Effect]:
    """The rejoin is complete (the subject came): page the room's MAM, if it was asked to."""
    after, room.catchup_after = room.catchup_after, None
    return [] if after is None else _page(room, after)


def _page(room: Room, after: str) -> list[Effect]:
    room.catchup_id = ids.new("catchup")
    return [ToUpstream(mam_paging.page(room.jid, room.catchup_id, after))]


def result_of(room: Room, el: Element) -> Element | None:
    """The MAM ``<result/>`` of the catch-up in flight that ``el`` carries, if it does."""
    return mam_paging.result_of(el, room.catchup_id)


def message(state: MucState, room: Room, wrapper: Element, result: Element, now: float) -> list[Effect]:
    """A message the room archived while the account was away: archived here, and shown
    (with its delay) to the sessions in the room, which missed it too."""
    msg = mam_paging.unwrap(wrapper, result)
    sid = None if msg is None else stanza_id(msg, room.jid) or result.get("id")
    if msg is None or msg.get("type") != "groupchat" or not sid:
        return []
    if stanza_id(msg, room.jid) is None:
        stanza.child(msg, ns.STANZA_ID, "stanza-id", by=room.jid, id=sid)
    # Delay stamps are often whole seconds: MAM's order decides among equal times.
    room.catchup_ts = max(history.delay_stamp(msg) or now, room.catchup_ts + 0.000001)
    new = state.archive.place(room.jid, sid, room.catchup_ts, jid.resource(msg.get("from", "")), stanza.serialize(msg))
    return fan(tuple(sorted(room.sessions)), msg) if new else []


def done(room: Room, iq: Element) -> list[Effect]:
    """The page's answer: the next page, or the end."""
    room.catchup_id = None
    after = mam_paging.next_after(iq)
    if after is not None:
        return _page(room, after)
    log.info("room caught up", room=room.jid, ok=iq.get("type") == "result")
    return []
