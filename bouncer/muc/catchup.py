"""After a rejoin, the room's MAM fills the archive's gap (SPEC §7: the archive has no gap).

The rejoin asked for history since the last archived message; a room with MAM is
also paged from the last stanza-id the archive holds, so nothing said while the
account was away is missing, even beyond what the room's history gives.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.muc import history, mam
from bouncer.muc.room import Room, stanza_id
from bouncer.muc.state import MucState, fan
from bouncer.xmpp import ids, jid, ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element
log = structlog.get_logger("bouncer.muc")


def start(room: Room) -> list[Effect]:
    """The rejoin is complete (the subject came): page the room's MAM, if it was asked to."""
    after, room.catchup_after = room.catchup_after, None
    return [] if after is None else _page(room, after)


def _page(room: Room, after: str) -> list[Effect]:
    room.catchup_id = ids.new("catchup")
    iq = stanza.make("iq", type="set", id=room.catchup_id, to=room.jid)
    query = stanza.child(iq, ns.MAM, "query", queryid=room.catchup_id)
    rsm = stanza.child(query, ns.RSM, "set")
    etree.SubElement(rsm, q(ns.RSM, "max")).text = str(mam.MAX_PAGE)
    etree.SubElement(rsm, q(ns.RSM, "after")).text = after
    return [ToUpstream(iq)]


def result_of(room: Room, el: Element) -> Element | None:
    """The MAM ``<result/>`` of the catch-up in flight that ``el`` carries, if it does."""
    if room.catchup_id is None:
        return None
    result = el.find(q(ns.MAM, "result"))
    return result if result is not None and result.get("queryid") == room.catchup_id else None


def message(state: MucState, room: Room, wrapper: Element, result: Element, now: float) -> list[Effect]:
    """A message the room archived while the account was away: archived here, and shown
    (with its delay) to the sessions in the room, which missed it too."""
    fwd = result.find(q(ns.FORWARD, "forwarded"))
    inner = None if fwd is None else fwd.find(q(ns.CLIENT, "message"))
    if inner is None:
        return []
    msg = stanza.clone(inner)
    msg.set("to", wrapper.get("to", ""))
    delay = fwd.find(q(ns.DELAY, "delay"))  # type: ignore[union-attr]
    if delay is not None and stanza.find(msg, ns.DELAY, "delay") is None:
        msg.append(stanza.clone(delay))
    sid = stanza_id(msg, room.jid) or result.get("id")
    if msg.get("type") != "groupchat" or not sid:
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
    fin = iq.find(q(ns.MAM, "fin"))
    last = None if fin is None else fin.findtext(f"{q(ns.RSM, 'set')}/{q(ns.RSM, 'last')}")
    if iq.get("type") == "result" and fin is not None and fin.get("complete") != "true" and last:
        return _page(room, last)
    log.info("room caught up", room=room.jid, ok=iq.get("type") == "result")
    return []
