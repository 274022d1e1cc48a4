"""IQs the bouncer answers itself, and its additions to the server's disco#info.

Pure: a request element in, the answer element out (or None: not ours).
"""

from __future__ import annotations

import platform
import time

from lxml import etree

from bouncer import __version__
from bouncer.xmpp import ns, stanza
from bouncer.xmpp.ns import q

# What the bouncer implements itself for its clients, added to the domain's and
# the account's disco#info (SPEC §5, §13: Conversations gates carbons on it).
ADDED_FEATURES = (ns.CARBONS, ns.PING)

# What the bouncer's own upstream full JID answers (SPEC §5, incoming IQs); its
# disco#info, which adds its clients' features, is ``account.capabilities``.
OWN_FEATURES = (ns.DISCO_INFO, ns.PING, ns.VERSION, ns.TIME)


def answer(iq: etree._Element) -> etree._Element | None:
    """The bouncer's own answer to an IQ get addressed to its upstream full JID."""
    body = stanza.payload(iq)
    if iq.get("type") != "get" or body is None:
        return None
    tag = body.tag
    if tag == q(ns.PING, "ping"):
        return stanza.iq_result(iq)
    if tag == q(ns.VERSION, "query"):
        return _version(iq)
    if tag == q(ns.TIME, "time"):
        return _time(iq)
    return None


def augment_disco(result: etree._Element, features: tuple[str, ...] = ADDED_FEATURES) -> None:
    """Add the bouncer's features to a disco#info result, removing nothing.

    For the server and account: carbons and ping. For a held room: MAM, which
    the bouncer's archive answers when the room itself cannot (SPEC §7).
    """
    query = stanza.find(result, ns.DISCO_INFO, "query")
    if query is None or query.get("node") is not None:
        return
    present = {f.get("var") for f in query.iter(q(ns.DISCO_INFO, "feature"))}
    for var in features:
        if var not in present:
            etree.SubElement(query, q(ns.DISCO_INFO, "feature"), var=var)


def is_disco_info_get(iq: etree._Element) -> bool:
    body = stanza.payload(iq)
    return iq.get("type") == "get" and body is not None and body.tag == q(ns.DISCO_INFO, "query")


def _version(iq: etree._Element) -> etree._Element:
    reply = stanza.iq_result(iq)
    query = stanza.child(reply, ns.VERSION, "query")
    etree.SubElement(query, q(ns.VERSION, "name")).text = "bouncer"
    etree.SubElement(query, q(ns.VERSION, "version")).text = __version__
    etree.SubElement(query, q(ns.VERSION, "os")).text = platform.system()
    return reply


def _time(iq: etree._Element) -> etree._Element:
    reply = stanza.iq_result(iq)
    t = stanza.child(reply, ns.TIME, "time")
    etree.SubElement(t, q(ns.TIME, "tzo")).text = "+00:00"
    etree.SubElement(t, q(ns.TIME, "utc")).text = stanza.utc_stamp(time.time())[:-5] + "Z"
    return reply

