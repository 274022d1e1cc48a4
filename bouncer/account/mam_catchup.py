"""After a new upstream session, the account's own MAM fills the gap (SPEC §4, issue 12).

When the upstream session could not be resumed (a crash, a server restart, a long
outage), chats that reached the server meanwhile come back only if the server stored
them offline. So the account pages its archive (XEP-0313 on its bare JID) from the
last archive id it saw (``<stanza-id by=account>`` of the last message it took),
and routes each message found like one that just arrived: into the mailbox, to the
sessions. What offline delivery brings too is recognised by its stanza-id and taken
once. A server without MAM answers with an error, and nothing else happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.xmpp import ids, jid, mam_paging, ns, stanza

log = structlog.get_logger("bouncer.account")
Element = etree._Element


@dataclass
class AccountCatchup:
    account: str  # bare JID
    after: str | None = None  # the archive id of the last message the account took
    query_id: str | None = None  # the page in flight

    def start(self) -> list[Effect]:
        """A new upstream session: ask for what came after the last message seen (nothing
        on a first start: the account's history is the clients' business, not a backlog)."""
        return [] if self.after is None else self._page(self.after)

    def owns(self, el: Element) -> bool:
        """Whether the message ``el`` is a result of the page in flight."""
        return mam_paging.result_of(el, self.query_id) is not None

    def unwrap(self, el: Element) -> Element | None:
        """The archived message a result of ours carries, addressed as it came, with its
        delay and the server's stanza-id; None when there is nothing to deliver (what the
        account itself sent from its other clients, groupchat)."""
        result = mam_paging.result_of(el, self.query_id)
        msg = None if result is None else mam_paging.unwrap(el, result)
        if msg is None or jid.same_bare(msg.get("from"), self.account) or msg.get("type") == "groupchat":
            return None
        if account_stanza_id(msg, self.account) is None and result.get("id"):  # type: ignore[union-attr]
            stanza.child(msg, ns.STANZA_ID, "stanza-id", by=self.account, id=result.get("id", ""))  # type: ignore[union-attr]
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


def account_stanza_id(msg: Element, account: str) -> str | None:
    """The server's XEP-0359 id of a message to the account (what its MAM pages by)."""
    for sid in msg.findall(ns.q(ns.STANZA_ID, "stanza-id")):
        if sid.get("by") == account:
            return sid.get("id")
    return None
