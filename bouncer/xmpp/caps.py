"""XEP-0115 entity capabilities: a disco#info answer, its hash, the ``<c/>`` that names it.

Pure. A server notifies a resource of PEP changes (XEP-0163) only for the nodes its
caps list with ``+notify``, so what the account's upstream resource announces decides
what reaches the bouncer at all (SPEC §8).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element


@dataclass(frozen=True, order=True)
class Identity:
    category: str
    type: str
    lang: str = ""
    name: str = ""


@dataclass(frozen=True)
class Capabilities:
    identities: frozenset[Identity]
    features: frozenset[str]

    def ver(self) -> str:
        """The XEP-0115 §5.1 verification string, SHA-1 (extended forms are not announced)."""
        text = "".join(f"{i.category}/{i.type}/{i.lang}/{i.name}<" for i in sorted(self.identities))
        text += "".join(f"{f}<" for f in sorted(self.features))
        return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()

    def union(self, other: Capabilities) -> Capabilities:
        """Both entities' features; identities of one category, type and language once
        (XEP-0030 allows each only once), the first name kept."""
        kept = {(i.category, i.type, i.lang): i for i in sorted(other.identities, reverse=True)}
        kept.update({(i.category, i.type, i.lang): i for i in sorted(self.identities, reverse=True)})
        return Capabilities(frozenset(kept.values()), self.features | other.features)


NOTHING = Capabilities(frozenset(), frozenset())


def from_disco(iq: Element) -> Capabilities:
    """What a disco#info result says its sender is and can do (NOTHING if it is not one)."""
    query = stanza.find(iq, ns.DISCO_INFO, "query")
    if iq.get("type") != "result" or query is None:
        return NOTHING
    identities = frozenset(
        Identity(i.get("category", ""), i.get("type", ""), i.get(q(ns.XML, "lang"), ""), i.get("name", ""))
        for i in query.findall(q(ns.DISCO_INFO, "identity"))
    )
    features = frozenset(f.get("var", "") for f in query.findall(q(ns.DISCO_INFO, "feature")) if f.get("var"))
    return Capabilities(identities, features)


def disco_result(iq: Element, caps: Capabilities, node: str | None) -> Element:
    """The disco#info result to ``iq`` describing ``caps`` (echoing the node asked for)."""
    reply = stanza.iq_result(iq)
    query = stanza.child(reply, ns.DISCO_INFO, "query")
    if node is not None:
        query.set("node", node)
    for i in sorted(caps.identities):
        el = etree.SubElement(query, q(ns.DISCO_INFO, "identity"), category=i.category, type=i.type)
        if i.name:
            el.set("name", i.name)
        if i.lang:
            el.set(q(ns.XML, "lang"), i.lang)
    for var in sorted(caps.features):
        etree.SubElement(query, q(ns.DISCO_INFO, "feature"), var=var)
    return reply


def disco_request(iq_id: str, to: str, node: str) -> Element:
    """Ask ``to`` what the caps ``node`` (``node#ver``) stands for."""
    iq = stanza.make("iq", type="get", id=iq_id, to=to)
    stanza.child(iq, ns.DISCO_INFO, "query", node=node)
    return iq


def announce(presence: Element, node: str, ver: str) -> None:
    """Make ``presence`` carry these caps instead of any it had."""
    for old in presence.findall(q(ns.CAPS, "c")):
        presence.remove(old)
    stanza.child(presence, ns.CAPS, "c", hash="sha-1", node=node, ver=ver)


def node_of(presence: Element) -> str | None:
    """``node#ver`` of the caps a presence carries (the node its disco#info answers for)."""
    c = stanza.find(presence, ns.CAPS, "c")
    if c is None or not c.get("node") or not c.get("ver"):
        return None
    return f"{c.get('node')}#{c.get('ver')}"


def notified_node(msg: Element) -> str | None:
    """The node a PEP notification (XEP-0163) is about (items published or retracted, or
    all of them purged); None: not one."""
    event = stanza.find(msg, ns.PUBSUB_EVENT, "event")
    for kind in ("items", "purge"):
        found = None if event is None else event.find(q(ns.PUBSUB_EVENT, kind))
        if found is not None:
            return found.get("node")
    return None
