"""Bookmarks as the account keeps them (SPEC §8): XEP-0402 and the XEP-0048 forms.

Pure parsing and building. XEP-0402 keeps one PEP item per room on the node
``urn:xmpp:bookmarks:1``, its id the room's JID, and notifies each change and
retraction. XEP-0048 keeps one ``<storage xmlns='storage:bookmarks'/>`` with every
room, in private XML (XEP-0049, no notifications) or as the single item of a PEP
node of that name (XEP-0223, older clients); each change replaces the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from bouncer.xmpp import jid, ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element

PEP_NODE = ns.BOOKMARKS  # XEP-0402
STORAGE_NODE = ns.BOOKMARKS_STORAGE  # XEP-0048 (private XML, or PEP under this node)
# What the account's caps announce so that the server notifies it of both nodes.
NOTIFY_FEATURES = (f"{PEP_NODE}+notify", f"{STORAGE_NODE}+notify")


@dataclass(frozen=True)
class Bookmark:
    room: str  # bare JID
    autojoin: bool
    nick: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Change:
    """What one notification says: these bookmarks are now so, these rooms are no longer
    bookmarked. ``complete``: the list is every bookmark there is (XEP-0048 sends them
    all at once), so a room missing from it was removed."""

    bookmarks: tuple[Bookmark, ...]
    removed: tuple[str, ...] = ()
    complete: bool = False


def pep_request(iq_id: str) -> Element:
    """Ask the account's PEP service for every XEP-0402 bookmark."""
    iq = stanza.make("iq", type="get", id=iq_id)
    pubsub = stanza.child(iq, ns.PUBSUB, "pubsub")
    etree.SubElement(pubsub, q(ns.PUBSUB, "items"), node=PEP_NODE)
    return iq


def private_request(iq_id: str) -> Element:
    """Ask the account's private XML storage for the XEP-0048 bookmarks (the fallback)."""
    iq = stanza.make("iq", type="get", id=iq_id)
    query = stanza.child(iq, ns.PRIVATE, "query")
    stanza.child(query, STORAGE_NODE, "storage")
    return iq


def from_result(iq: Element) -> tuple[Bookmark, ...]:
    """The bookmarks in a result to ``pep_request`` or ``private_request``."""
    pubsub = stanza.find(iq, ns.PUBSUB, "pubsub")
    if pubsub is not None:
        items = pubsub.find(q(ns.PUBSUB, "items"))
        return () if items is None else _pep_items(items.findall(q(ns.PUBSUB, "item")))
    query = stanza.find(iq, ns.PRIVATE, "query")
    storage = None if query is None else query.find(q(STORAGE_NODE, "storage"))
    return () if storage is None else _storage(storage)


def from_event(msg: Element) -> Change | None:
    """A PEP notification of either bookmark node; None: not one."""
    event = stanza.find(msg, ns.PUBSUB_EVENT, "event")
    if event is None:
        return None
    purge = event.find(q(ns.PUBSUB_EVENT, "purge"))
    if purge is not None:  # every bookmark removed at once
        return Change((), complete=True) if purge.get("node") in (PEP_NODE, STORAGE_NODE) else None
    items = event.find(q(ns.PUBSUB_EVENT, "items"))
    if items is None:
        return None
    node = items.get("node")
    if node == PEP_NODE:
        removed = tuple(r.get("id", "") for r in items.findall(q(ns.PUBSUB_EVENT, "retract")) if r.get("id"))
        return Change(_pep_items(items.findall(q(ns.PUBSUB_EVENT, "item"))), removed)
    if node == STORAGE_NODE:
        for item in items.findall(q(ns.PUBSUB_EVENT, "item")):
            storage = item.find(q(STORAGE_NODE, "storage"))
            if storage is not None:
                return Change(_storage(storage), complete=True)
    return None


def from_private_set(iq: Element) -> Change | None:
    """A session storing XEP-0048 bookmarks in private XML; None: not that."""
    query = stanza.find(iq, ns.PRIVATE, "query")
    storage = None if query is None else query.find(q(STORAGE_NODE, "storage"))
    if iq.get("type") != "set" or storage is None:
        return None
    return Change(_storage(storage), complete=True)


def _pep_items(items: list[Element]) -> tuple[Bookmark, ...]:
    """XEP-0402: one item per room, its id the room's JID."""
    found = (_bookmark(item.get("id"), item.find(q(PEP_NODE, "conference")), PEP_NODE) for item in items)
    return tuple(mark for mark in found if mark is not None)


def _storage(storage: Element) -> tuple[Bookmark, ...]:
    """XEP-0048: every room in one element, each with a ``jid`` attribute."""
    found = (_bookmark(c.get("jid"), c, STORAGE_NODE) for c in storage.findall(q(STORAGE_NODE, "conference")))
    return tuple(mark for mark in found if mark is not None)


def _bookmark(room: str | None, conference: Element | None, namespace: str) -> Bookmark | None:
    """Both forms spell a conference alike (autojoin, nick, password), each in its namespace."""
    if conference is None or not room or jid.localpart(room) is None:
        return None
    nick = conference.findtext(q(namespace, "nick"))
    password = conference.findtext(q(namespace, "password"))
    return Bookmark(jid.bare(room), _true(conference.get("autojoin")), nick or None, password or None)


def _true(value: str | None) -> bool:
    """xs:boolean: "true" or "1"."""
    return value in ("true", "1")
