"""XEP-0280 carbons the bouncer generates among its own downstream sessions.

The server only knows one resource (the bouncer), so copies between the
account's clients are the bouncer's job (SPEC §5, §13 "Carbons rules:0").
"""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns, stanza


def should_copy_sent(msg: etree._Element) -> bool:
    """Whether a message a session sends is copied to its siblings (XEP-0280 §6)."""
    if stanza.find(msg, ns.CARBONS, "private") is not None or stanza.find(msg, ns.HINTS, "no-copy") is not None:
        return False
    mtype = msg.get("type", "normal")
    if mtype == "chat":
        return True
    if mtype == "normal":
        return stanza.find(msg, ns.CLIENT, "body") is not None or _is_invite(msg)
    return False


def sent_carbon(msg: etree._Element, account_bare: str) -> etree._Element:
    """``<message from=account><sent><forwarded>msg</forwarded></sent></message>``."""
    wrapper = stanza.make("message", type=msg.get("type", "normal"), from_=account_bare)
    sent = stanza.child(wrapper, ns.CARBONS, "sent")
    fwd = stanza.child(sent, ns.FORWARD, "forwarded")
    fwd.append(stanza.clone(msg))
    return wrapper


def is_carbon(msg: etree._Element) -> bool:
    return any(stanza.find(msg, ns.CARBONS, name) is not None for name in ("sent", "received"))


def is_enable_request(iq: etree._Element) -> bool | None:
    """True/False for a carbons enable/disable IQ set, None for anything else."""
    body = stanza.payload(iq)
    if iq.get("type") != "set" or body is None:
        return None
    if body.tag == ns.q(ns.CARBONS, "enable"):
        return True
    if body.tag == ns.q(ns.CARBONS, "disable"):
        return False
    return None


def _is_invite(msg: etree._Element) -> bool:
    x = stanza.find(msg, ns.MUC_USER, "x")
    return (x is not None and stanza.find(x, ns.MUC_USER, "invite") is not None) or (
        stanza.find(msg, "jabber:x:conference", "x") is not None
    )
