"""The local answer to a session joining a room the account already holds (SPEC §6.1).

XEP-0045 order: every other occupant, our self-presence last with 110 (and
210 when the held nick differs from the asked one, the client's presence id
echoed), then history, then the subject — always, empty if none, because
Gajim counts a join as done only when the subject arrives (SPEC §13).
"""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.muc.room import JoinRequest, Room, muc_user
from bouncer.xmpp.ns import q
from bouncer.core.ports import ArchivedMessage
from bouncer.xmpp.wire import Prepared

Element = etree._Element

# Codes that described the first join only: a later session did not create the room.
_FIRST_JOIN_ONLY = {"201", "210"}


def join_answer(room: Room, req: JoinRequest, history: list[ArchivedMessage]) -> list[Element | Prepared]:
    """Stanzas to send, in order, to the session whose join ``req`` is answered locally.

    The occupants, the history and the subject are the same for every session, so they
    go as bytes serialised once (``Room.prepared_*``): only their ``to`` differs.
    """
    out: list[Element | Prepared] = list(room.prepared_occupants())
    out.append(self_presence(room, req))
    out.extend(room.prepared_history(history))
    out.append(room.prepared_subject() or empty_subject(room))
    return out


def self_presence(room: Room, req: JoinRequest) -> Element:
    assert room.self_presence is not None
    el = with_id(room.self_presence, req.presence_id)
    x = muc_user(el)
    if x is None:
        x = stanza.child(el, ns.MUC_USER, "x")
    for status in list(x.iter(q(ns.MUC_USER, "status"))):
        if status.get("code") in _FIRST_JOIN_ONLY or status.get("code") == "110":
            x.remove(status)
    codes = ["110"] + (["210"] if req.nick != room.nick else [])
    for code in codes:
        etree.SubElement(x, q(ns.MUC_USER, "status"), code=code)
    return el


def empty_subject(room: Room) -> Element:
    el = stanza.make("message", type="groupchat", from_=room.jid)
    etree.SubElement(el, q(ns.CLIENT, "subject"))
    return el


def leave_presence(room: Room, to: str) -> Element:
    """A session's own unavailable self-presence when it alone leaves (SPEC §6.3)."""
    el = stanza.make("presence", type="unavailable", from_=room.occupant_jid, to=to)
    x = stanza.child(el, ns.MUC_USER, "x")
    etree.SubElement(x, q(ns.MUC_USER, "item"), affiliation=_affiliation(room), role="none")
    etree.SubElement(x, q(ns.MUC_USER, "status"), code="110")
    return el


def removed_presence(room: Room) -> Element:
    """110 + 333: the account is out of the room because its rejoin failed (SPEC §6.10)."""
    # Addressed as the room addressed the account; delivery re-addresses it per session.
    to = room.self_presence.get("to") if room.self_presence is not None else None
    el = stanza.make("presence", type="unavailable", from_=room.occupant_jid, to=to)
    x = stanza.child(el, ns.MUC_USER, "x")
    etree.SubElement(x, q(ns.MUC_USER, "item"), affiliation=_affiliation(room), role="none")
    for code in ("110", "333"):
        etree.SubElement(x, q(ns.MUC_USER, "status"), code=code)
    return el


def _affiliation(room: Room) -> str:
    x = muc_user(room.self_presence) if room.self_presence is not None else None
    item = None if x is None else x.find(q(ns.MUC_USER, "item"))
    return "none" if item is None else item.get("affiliation", "none")


def unavailable_of(occupant: Element) -> Element:
    """The presence telling sessions an occupant left while the account was away."""
    el = stanza.make("presence", type="unavailable", from_=occupant.get("from"), to=occupant.get("to"))
    x = muc_user(occupant)
    if x is not None:
        out = stanza.child(el, ns.MUC_USER, "x")
        for item in x.findall(q(ns.MUC_USER, "item")):
            etree.SubElement(out, q(ns.MUC_USER, "item"), {**item.attrib, "role": "none"})
    return el


def with_id(el: Element, presence_id: str | None) -> Element:
    """A copy of ``el`` carrying a session's own presence id (or none)."""
    out = stanza.clone(el)
    if presence_id is None:
        out.attrib.pop("id", None)
    else:
        out.set("id", presence_id)
    return out
