"""XEP-0313 answers from the bouncer's own room archive, for rooms without ns.MAM (SPEC §7, §13).

Clients page a room's ns.MAM to catch up; when the room has none, the archive the
bouncer keeps anyway answers instead: form filters (start, end, with) and
XEP-0059 paging (max, after, before), results then ``<fin/>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from bouncer.xmpp import jid, ns, stanza
from bouncer.muc.history import parse_stamp
from bouncer.xmpp.ns import q
from bouncer.core.ports import ArchivedMessage, RoomArchive

MAX_PAGE = 250  # a client asking for more gets this many, as servers cap it


@dataclass(frozen=True)
class MamQuery:
    queryid: str | None
    start: float | None
    end: float | None
    nick: str | None
    max: int
    after: str | None
    before: str | None  # "" means the last page


def parse(iq: etree._Element) -> MamQuery | None:
    """The query of a ns.MAM IQ set, or None when it is not one."""
    query = iq.find(q(ns.MAM, "query"))
    if iq.get("type") != "set" or query is None:
        return None
    fields = {f.get("var"): f.findtext(q(ns.DATA, "value")) for f in query.iter(q(ns.DATA, "field"))}
    rsm = query.find(q(ns.RSM, "set"))
    max_text = rsm.findtext(q(ns.RSM, "max")) if rsm is not None else None
    before = rsm.find(q(ns.RSM, "before")) if rsm is not None else None
    with_jid = fields.get("with")
    return MamQuery(
        queryid=query.get("queryid"),
        start=parse_stamp(fields.get("start")),
        end=parse_stamp(fields.get("end")),
        nick=jid.resource(with_jid) if with_jid else None,
        max=min(int(max_text), MAX_PAGE) if max_text and max_text.isdigit() else MAX_PAGE,
        after=rsm.findtext(q(ns.RSM, "after")) if rsm is not None else None,
        before=None if before is None else (before.text or ""),
    )


def answer(archive: RoomArchive, room: str, iq: etree._Element, query: MamQuery) -> list[etree._Element]:
    """The result messages and the final IQ for ``query``, addressed to the asker."""
    page = archive.page(
        room,
        limit=query.max,
        start=query.start,
        end=query.end,
        nick=query.nick,
        after=query.after,
        before=query.before or None,
        last_page=query.before == "",
    )
    if page is None:
        return [stanza.error_reply(iq, "item-not-found", "no such archive id")]
    rows, complete = page
    out = [_result(room, iq.get("from"), query.queryid, row) for row in rows]
    out.append(_fin(iq, rows, complete))
    return out


def _result(room: str, to: str | None, queryid: str | None, row: ArchivedMessage) -> etree._Element:
    msg = stanza.make("message", from_=room, to=to)
    result = stanza.child(msg, ns.MAM, "result", id=row.archive_id)
    if queryid is not None:
        result.set("queryid", queryid)
    fwd = stanza.child(result, ns.FORWARD, "forwarded")
    stanza.child(fwd, ns.DELAY, "delay", stamp=stanza.utc_stamp(row.ts))
    original = stanza.parse_stored(row.stanza)
    original.attrib.pop("to", None)
    fwd.append(original)
    return msg


def _fin(iq: etree._Element, rows: list[ArchivedMessage], complete: bool) -> etree._Element:
    reply = stanza.iq_result(iq)
    fin = stanza.child(reply, ns.MAM, "fin")
    if complete:
        fin.set("complete", "true")
    rsm = stanza.child(fin, ns.RSM, "set")
    if rows:
        etree.SubElement(rsm, q(ns.RSM, "first")).text = rows[0].archive_id
        etree.SubElement(rsm, q(ns.RSM, "last")).text = rows[-1].archive_id
    return reply
