"""Paging a MAM archive as a client (XEP-0313 with XEP-0059), for the bouncer's own catch-ups:
a room's archive after a rejoin, the account's after a new upstream session.

A page is asked for ``after`` an archive id; its messages arrive as ``<result/>``s
carrying the query id; the IQ's ``<fin/>`` says whether there is more and from where.
"""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element
PAGE = 250  # messages per page, as servers cap it


def page(to: str | None, query_id: str, after: str) -> Element:
    """The IQ asking for the page after archive id ``after`` (its id is the query id too)."""
    iq = stanza.make("iq", type="set", id=query_id, to=to)
    query = stanza.child(iq, ns.MAM, "query", queryid=query_id)
    rsm = stanza.child(query, ns.RSM, "set")
    etree.SubElement(rsm, q(ns.RSM, "max")).text = str(PAGE)
    etree.SubElement(rsm, q(ns.RSM, "after")).text = after
    return iq


def result_of(el: Element, query_id: str | None) -> Element | None:
    """The ``<result/>`` of query ``query_id`` that the message ``el`` carries, if it does."""
    if query_id is None:
        return None
    result = el.find(q(ns.MAM, "result"))
    return result if result is not None and result.get("queryid") == query_id else None


def unwrap(wrapper: Element, result: Element) -> Element | None:
    """The archived message, addressed as the wrapper was, with the archive's delay."""
    fwd = result.find(q(ns.FORWARD, "forwarded"))
    inner = None if fwd is None else fwd.find(q(ns.CLIENT, "message"))
    if inner is None:
        return None
    msg = stanza.clone(inner)
    msg.set("to", wrapper.get("to", ""))
    delay = fwd.find(q(ns.DELAY, "delay"))  # type: ignore[union-attr]
    if delay is not None and stanza.find(msg, ns.DELAY, "delay") is None:
        msg.append(stanza.clone(delay))
    return msg


def next_after(iq: Element) -> str | None:
    """From where the next page starts, when the answer says there is more; else None."""
    fin = iq.find(q(ns.MAM, "fin"))
    last = None if fin is None else fin.findtext(f"{q(ns.RSM, 'set')}/{q(ns.RSM, 'last')}")
    if iq.get("type") == "result" and fin is not None and fin.get("complete") != "true" and last:
        return last
    return None
