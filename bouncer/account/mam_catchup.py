"""After a new upstream session, the account's own MAM fills the gap (SPEC §4, issue 12).

When the upstream session could not be resumed (a crash, a server restart, a long
outage), chats that reached the server meanwhile come back only if the server stored
them offline. So the account pages its archive (XEP-0313 on its bare JID) from the
last archive id it saw (``<stanza-id by=account>`` of the last message it took),
and routes each message found like one that just arrived: into the mailbox, to the
sessions. What offline delivery brings too is recognised by its stanza-id and taken
once. What the account's other clients (connected to the server directly) sent
meanwhile reaches the sessions as XEP-0280 sent carbons; what the bouncer itself sent
(from one of the upstream resources it bound, kept across restarts) is left out: its
sessions had it already. A server without MAM answers with an error, and nothing else
happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.xmpp import carbons, ids, jid, mam_paging, ns, stanza

log = structlog.get_logger("bouncer.account")
Element = etree._Element
OWN_RESOURCES_KEPT = 16  # upstream resources remembered (a few restarts' worth)


@dataclass
class AccountCatchup:
    account: str  # bare JID
    after: str | None = None  # the archive id of the last message the account took
    query_id: str | None = None  # the page in flight
    own_resources: list[str] = field(default_factory=list)  # the upstream resources this bouncer bound

    def bound(self, resource: str | None) -> bool:
        """A new upstream session bound ``resource``: True when that is news to remember."""
        if resource is None or resource in self.own_resources:
            return False
        self.own_resources = [*self.own_resources, resource][-OWN_RESOURCES_KEPT:]
        return True

    def start(self) -> list[Effect]:
        """A new upstream session: ask for what came after the last message seen (nothing
        on a first start: the account's history is the clients' business, not a backlog)."""
        return [] if self.after is None else self._page(self.after)

    def owns(self, el: Element) -> bool:
        """Whether the message ``el`` is a result of the page in flight."""
        return mam_paging.result_of(el, self.query_id) is not None

    def unwrap(self, el: Element) -> Element | None:
        """The archived message a result of ours carries, addressed as it came (one the
        account's other clients sent: as a sent carbon), with its delay and the server's
        stanza-id; None when there is nothing to deliver (what the bouncer sent, groupchat)."""
        result = mam_paging.result_of(el, self.query_id)
        msg = None if result is None else mam_paging.unwrap(el, result)
        if msg is None or result is None or msg.get("type") == "groupchat":
            return None
        sender = msg.get("from", "")
        if jid.same_bare(sender, self.account):
            if jid.resource(sender) in self.own_resources or not carbons.should_copy_sent(msg):
                return None
            archived = result.find(f"{ns.q(ns.FORWARD, 'forwarded')}/{ns.q(ns.CLIENT, 'message')}")
            msg.set("to", "" if archived is None else archived.get("to", ""))  # its recipient, not us
            msg = _sent_carbon(msg, self.account)
        if account_stanza_id(msg, self.account) is None and result.get("id"):
            stanza.child(msg, ns.STANZA_ID, "stanza-id", by=self.account, id=result.get("id", ""))
        return msg

    def answer(self, iq: Element) -> list[Effect] | None:
        """The answer to a page; None when ``iq`` is not one."""
        if self.query_id is None or iq.get("id") != self.query_id:
            return None
        self.query_id = None
        after = mam_paging.next_after(iq)
        if after is not None:
            return self._page(after)
        log.info("account caught up", ok=iq.get("type") == "result")
        return []

    def _page(self, after: str) -> list[Effect]:
        self.query_id = ids.new("mam")
        return [ToUpstream(mam_paging.page(None, self.query_id, after))]


def _sent_carbon(msg: Element, account: str) -> Element:
    """XEP-0280's ``<sent/>`` of a message another client sent, its time on the forward."""
    delay = stanza.find(msg, ns.DELAY, "delay")
    if delay is not None:
        msg.remove(delay)
    wrapper = carbons.sent_carbon(msg, account)
    if delay is not None:
        wrapper.find(f"{ns.q(ns.CARBONS, 'sent')}/{ns.q(ns.FORWARD, 'forwarded')}").insert(0, delay)  # type: ignore[union-attr]
    return wrapper


def account_stanza_id(msg: Element, account: str) -> str | None:
    """The server's XEP-0359 id of a message to the account (what its MAM pages by); of a
    carbon, the id of the message it carries (a carbon that offline storage brings again
    is then recognised as the same message as MAM's)."""
    for sid in msg.findall(ns.q(ns.STANZA_ID, "stanza-id")):
        if sid.get("by") == account:
            return sid.get("id")
    for kind in ("sent", "received"):
        carried = msg.find(f"{ns.q(ns.CARBONS, kind)}/{ns.q(ns.FORWARD, 'forwarded')}/{ns.q(ns.CLIENT, 'message')}")
        if carried is not None:
            return account_stanza_id(carried, account)
    return None
