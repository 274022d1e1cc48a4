"""XEP-0352 client state indication: what an inactive client must get at once (SPEC §9, §13).

Prosody's mod_csi_simple is the reference: IQs, nonzas, subscription presences,
message errors, carbons, messages with a body, subjects (the last step of a
room join), encrypted payloads, invites and call invitations go out at once;
occupant and contact presences, headlines and bodiless messages (chat states,
receipts, markers) can wait until the client is active again.
"""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.xmpp.ns import q

_EME = "urn:xmpp:eme:0"
_OMEMO = "eu.siacs.conversations.axolotl"
_CONFERENCE = "jabber:x:conference"
_JINGLE_MESSAGE = ("urn:xmpp:jingle-message:0", "urn:xmpp:jingle-message:1")
_CARBON_RECEIVED = f"{q(ns.CARBONS, 'received')}/{q(ns.FORWARD, 'forwarded')}/{q(ns.CLIENT, 'message')}"


def urgent(el: etree._Element) -> bool:
    """Whether an inactive client gets ``el`` at once."""
    if el.tag == stanza.PRESENCE:
        return el.get("type") not in (None, "unavailable", "error")  # subscriptions, probes
    if el.tag != stanza.MESSAGE:
        return True  # IQs
    if el.get("type") == "headline":
        return False
    if el.get("type") == "error" or stanza.find(el, ns.CARBONS, "sent") is not None:
        return True
    forwarded = el.find(_CARBON_RECEIVED)
    return _worth_waking(forwarded if forwarded is not None else el)


def _worth_waking(msg: etree._Element) -> bool:
    if stanza.find(msg, ns.CLIENT, "body") is not None or stanza.find(msg, ns.CLIENT, "subject") is not None:
        return True
    if stanza.find(msg, _EME, "encryption") is not None or stanza.find(msg, _OMEMO, "encrypted") is not None:
        return True
    if stanza.find(msg, _CONFERENCE, "x") is not None or msg.find(f"{q(ns.MUC_USER, 'x')}/{q(ns.MUC_USER, 'invite')}") is not None:
        return True
    return any(etree.QName(c).namespace in _JINGLE_MESSAGE for c in msg if isinstance(c.tag, str))
