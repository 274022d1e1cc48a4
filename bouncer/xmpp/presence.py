"""The account's presence: one upstream presence standing for many sessions.

Pure functions: the router keeps each session's last broadcast presence and
asks here what the account should show upstream (SPEC §5, Presence).
"""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.xmpp.ns import q

# Most available first (SPEC §5); a missing <show/> means plain "available".
AVAILABILITY = ("chat", "available", "away", "xa", "dnd")

# Children of a session's presence that describe that one client and must not be
# copied into the account's presence as-is (the upstream session has one id).
_NOT_AGGREGATED = {"id"}


def show_of(el: etree._Element) -> str:
    show = stanza.text_of(el, ns.CLIENT, "show")
    return show.strip() if show and show.strip() in AVAILABILITY else "available"


def aggregate(presences: list[etree._Element], idle_show: str, idle_status: str | None) -> etree._Element:
    """The presence to send upstream for these sessions' broadcast presences.

    The most available session wins and its presence (show, status, priority,
    caps) is what contacts see; with no session the account stays available
    with the idle presence so that messages keep reaching the bouncer.
    """
    if not presences:
        return idle_presence(idle_show, idle_status)
    best = min(presences, key=lambda p: AVAILABILITY.index(show_of(p)))
    out = stanza.clone(best)
    for attr in ("to", "from", *_NOT_AGGREGATED):
        out.attrib.pop(attr, None)
    return out


def idle_presence(show: str, status: str | None) -> etree._Element:
    el = stanza.make("presence")
    if show != "available":
        etree.SubElement(el, q(ns.CLIENT, "show")).text = show
    if status:
        etree.SubElement(el, q(ns.CLIENT, "status")).text = status
    return el


def is_broadcast(el: etree._Element) -> bool:
    """Presence with no ``to`` and no subscription type: the sender's own availability."""
    return el.get("to") is None and el.get("type") in (None, "unavailable")


def is_subscription(el: etree._Element) -> bool:
    return el.get("type") in ("subscribe", "subscribed", "unsubscribe", "unsubscribed")

