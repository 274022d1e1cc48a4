"""IQs in flight upstream: id rewriting, result routing, timeouts, MAM queryids.

Like soju's labelled commands: every IQ a session sends upstream gets an id the
bouncer owns, so that its result goes back to that session only, with the
session's own id (SPEC §5). MAM queryids get the same treatment, so that
``<result/>`` messages reach only the querying session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from bouncer.xmpp import ids, ns, stanza



@dataclass
class PendingIq:
    resource: str  # the session that asked
    original_id: str | None
    original_to: str | None
    deadline: float
    augment: str | None = None  # "server" or "room": a disco#info result to add our features to
    fallback: etree._Element | None = None  # a room MAM query the archive answers if the room cannot
    mam_queryid: str | None = None  # upstream queryid to forget with the result
    roster_get: bool = False  # the session's roster request: its answer comes before presences


@dataclass
class ForwardedMamQuery:
    resource: str
    original_queryid: str | None


@dataclass
class IqTracker:
    timeout: float
    pending: dict[str, PendingIq] = field(default_factory=dict)
    mam: dict[str, ForwardedMamQuery] = field(default_factory=dict)

    def new_id(self) -> str:
        return ids.new("iq")

    def outbound(
        self,
        iq: etree._Element,
        resource: str,
        now: float,
        *,
        augment: str | None = None,
        fallback: etree._Element | None = None,
    ) -> etree._Element:
        """Re-id ``iq`` (in place) for upstream and remember who asked."""
        new_id = self.new_id()
        entry = PendingIq(resource, iq.get("id"), iq.get("to"), now + self.timeout, augment, fallback)
        body = stanza.payload(iq)
        entry.roster_get = iq.get("type") == "get" and body is not None and body.tag == ns.q(ns.ROSTER, "query")
        query = mam_query(iq)
        if query is not None:
            upstream_qid = f"{new_id}-q"
            self.mam[upstream_qid] = ForwardedMamQuery(resource, query.get("queryid"))
            query.set("queryid", upstream_qid)
            entry.mam_queryid = upstream_qid
        iq.set("id", new_id)
        self.pending[new_id] = entry
        return iq

    def inbound(self, iq: etree._Element) -> PendingIq | None:
        """The pending entry an upstream result/error answers (removed), or None."""
        entry = self.pending.pop(iq.get("id", ""), None)
        if entry is not None:
            iq.set("id", entry.original_id) if entry.original_id is not None else iq.attrib.pop("id")
            if entry.mam_queryid:
                self.mam.pop(entry.mam_queryid, None)
        return entry

    def mam_result(self, msg: etree._Element) -> str | None:
        """For a MAM ``<result/>`` message: restore the queryid, return the session."""
        for namespace in ns.MAM_NAMESPACES:
            result = stanza.find(msg, namespace, "result")
            if result is not None:
                query = self.mam.get(result.get("queryid", ""))
                if query is None:
                    return None
                if query.original_queryid is None:
                    result.attrib.pop("queryid")
                else:
                    result.set("queryid", query.original_queryid)
                return query.resource
        return None

    def expired(self, now: float) -> list[tuple[str, PendingIq]]:
        """Pending IQs past their deadline (removed)."""
        gone = [(i, p) for i, p in self.pending.items() if p.deadline <= now]
        for upstream_id, entry in gone:
            del self.pending[upstream_id]
            if entry.mam_queryid:
                self.mam.pop(entry.mam_queryid, None)
        return gone

    def drop_session(self, resource: str) -> None:
        """A session left: its answers have nowhere to go (soju drops pendingCmds)."""
        for upstream_id in [i for i, p in self.pending.items() if p.resource == resource]:
            del self.pending[upstream_id]
        for qid in [i for i, m in self.mam.items() if m.resource == resource]:
            del self.mam[qid]

    def roster_get_of(self, resource: str) -> str | None:
        """The upstream id of a roster request this session is waiting for, if any."""
        return next((i for i, p in self.pending.items() if p.resource == resource and p.roster_get), None)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.pending.values()), default=None)


def mam_query(iq: etree._Element) -> etree._Element | None:
    body = stanza.payload(iq)
    if body is not None and etree.QName(body).namespace in ns.MAM_NAMESPACES and etree.QName(body).localname == "query":
        return body
    return None
