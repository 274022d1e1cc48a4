"""What the account's upstream resource says it can do (XEP-0115), and which session
wants which PEP notifications.

The account is one resource standing for many clients. Its caps are the bouncer's
own features, bookmark notifications among them (bookmarks drive the account's
rooms, SPEC §8, connected clients or not), together with every connected client's,
so that the server sends it what any of them asked for (contacts' avatars, nicks,
OMEMO device lists). Each notification then goes only to the sessions whose client
asked for that node, as a server would do. A client's features are learned the way
a server learns them: one disco#info query to the client per ``node#ver`` its
presence names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lxml import etree

from bouncer.core.effects import Deliver, Effect
from bouncer.xmpp import bookmarks, caps, ids, local_iq, ns, stanza
from bouncer.xmpp.caps import Capabilities, Identity

Element = etree._Element

NODE = "urn:x-bouncer:caps"  # the XEP-0115 node naming the bouncer as the software
OWN = Capabilities(
    frozenset({Identity("client", "pc", name="bouncer")}),
    frozenset({*local_iq.OWN_FEATURES, ns.CAPS, *bookmarks.NOTIFY_FEATURES}),
)
# Bounds: distinct client versions remembered, and account hashes answered for (a
# contact's disco may come a while after the presence that named the hash).
LEARNED_MAX, ANNOUNCED_MAX = 64, 8


@dataclass
class AccountCaps:
    learned: dict[str, Capabilities] = field(default_factory=dict)  # a client's node#ver -> its caps
    asking: dict[str, str] = field(default_factory=dict)  # query id -> node#ver
    announced: dict[str, Capabilities] = field(default_factory=dict)  # the account's ver -> caps

    def ask(self, resource: str, session_jid: str, presence: Element) -> list[Effect]:
        """Ask a session's client what its caps stand for, unless that is known or asked."""
        node = caps.node_of(presence)
        if node is None or node in self.learned or node in self.asking.values():
            return []
        iq_id = ids.new("caps")
        self.asking[iq_id] = node
        _bound(self.asking, LEARNED_MAX)
        return [Deliver((resource,), caps.disco_request(iq_id, session_jid, node))]

    def learn(self, iq: Element) -> bool:
        """A client's answer to ``ask``; False: the IQ answers something else. An error is
        remembered as knowing nothing, so that client is not asked again."""
        node = self.asking.pop(iq.get("id", ""), None)
        if node is None:
            return False
        self.learned[node] = caps.from_disco(iq)
        _bound(self.learned, LEARNED_MAX)
        return True

    def stamp(self, presence: Element, sessions: Iterable[Element]) -> None:
        """Make the account's presence carry the account's caps."""
        combined = self.of_account(sessions)
        ver = combined.ver()
        self.announced.pop(ver, None)
        self.announced[ver] = combined  # the most recent last
        _bound(self.announced, ANNOUNCED_MAX)
        caps.announce(presence, NODE, ver)

    def of_account(self, sessions: Iterable[Element]) -> Capabilities:
        clients = [self.learned.get(caps.node_of(p) or "") for p in sessions]
        combined = Capabilities(frozenset(), OWN.features)
        for known in clients:
            if known is not None:
                combined = combined.union(known)
        return combined if combined.identities else combined.union(OWN)

    def answer(self, iq: Element) -> Element | None:
        """A disco#info query to the account's upstream resource, plain or for one of its
        hashes; None: another node (a client's own, routed to it)."""
        if not local_iq.is_disco_info_get(iq):
            return None
        node = stanza.payload(iq).get("node")  # type: ignore[union-attr]
        if node is None:
            latest = next(reversed(self.announced.values()), None)
            return caps.disco_result(iq, latest or OWN, None)
        prefix, _, ver = node.partition("#")
        if prefix != NODE:
            return None
        known = self.announced.get(ver)
        return caps.disco_result(iq, known, node) if known else stanza.error_reply(iq, "item-not-found")

    def dump(self) -> dict:
        """What a restart hands over: clients resuming there send no presence to be asked
        again, and the server and contacts keep the account's hashes."""
        return {"learned": _plain(self.learned), "announced": _plain(self.announced)}

    def load(self, data: dict) -> None:
        self.learned = _from_plain(data.get("learned", {}))
        self.announced = _from_plain(data.get("announced", {}))

    def wants(self, presence: Element, node: str) -> bool:
        """Whether the client behind ``presence`` asked to be notified of ``node``
        (a client not known yet gets everything, as before it was asked)."""
        known = self.learned.get(caps.node_of(presence) or "")
        return known is None or known == caps.NOTHING or f"{node}+notify" in known.features


def _bound(table: dict, limit: int) -> None:
    while len(table) > limit:
        del table[next(iter(table))]


def _plain(table: dict[str, Capabilities]) -> dict:
    return {key: {"identities": [[i.category, i.type, i.lang, i.name] for i in sorted(c.identities)],
                  "features": sorted(c.features)} for key, c in table.items()}


def _from_plain(data: dict) -> dict[str, Capabilities]:
    return {key: Capabilities(frozenset(Identity(*i) for i in c["identities"]), frozenset(c["features"]))
            for key, c in data.items()}
