"""Small helpers over lxml stanza elements shared by both sides of the bouncer.

Stanzas travel as lxml elements in the ``jabber:client`` namespace, exactly as
they were parsed, so that payloads the bouncer does not understand keep their
infoset. These helpers only touch addressing and build the few stanzas the
bouncer writes itself.
"""

from __future__ import annotations

import copy
import datetime as _dt

from lxml import etree

from bouncer.xmpp import ns
from bouncer.xmpp.ns import q

Element = etree._Element

MESSAGE = q(ns.CLIENT, "message")
PRESENCE = q(ns.CLIENT, "presence")
IQ = q(ns.CLIENT, "iq")
STANZA_TAGS = (MESSAGE, PRESENCE, IQ)

_NSMAP = {None: ns.CLIENT}

# RFC 6120 §8.3.2: the error type that goes with each defined condition.
_ERROR_TYPES = {
    "bad-request": "modify",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "item-not-found": "cancel",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "internal-server-error": "cancel",
}


def kind(el: Element) -> str:
    """``message``, ``presence`` or ``iq`` (or the local name of anything else)."""
    return etree.QName(el).localname


def make(kind_: str, **attrs: str | None) -> Element:
    """A new top-level stanza in ``jabber:client`` with the given non-None attributes."""
    el = etree.Element(q(ns.CLIENT, kind_), nsmap=_NSMAP)
    for key, value in attrs.items():
        if value is not None:
            el.set(key.rstrip("_"), value)
    return el


def child(parent: Element, namespace: str, local: str, **attrs: str) -> Element:
    """Append ``<local xmlns=namespace>`` to ``parent``."""
    return etree.SubElement(parent, q(namespace, local), attrs, nsmap={None: namespace})


def find(el: Element, namespace: str, local: str) -> Element | None:
    """First direct child with that name, or None."""
    return el.find(q(namespace, local))


def text_of(el: Element, namespace: str, local: str) -> str | None:
    """Text of the first direct child with that name (in the stanza's namespace usually)."""
    found = el.find(q(namespace, local))
    return None if found is None else (found.text or "")


def payload(el: Element) -> Element | None:
    """The first child of an IQ: its query/payload element."""
    for c in el:
        if isinstance(c.tag, str) and etree.QName(c).namespace != ns.STANZA_ERRORS:
            return c
    return None


# For stanzas the bouncer itself stored (SQLite, restart hand-over): no DTD, no entities.
_STORED = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def parse_stored(data: bytes) -> Element:
    """A stanza the bouncer serialised earlier, read back."""
    return etree.fromstring(data, _STORED)


def serialize(el: Element) -> bytes:
    """UTF-8 bytes for the wire (no XML declaration, namespaces as parsed)."""
    return etree.tostring(el, encoding="utf-8", xml_declaration=False)


def clone(el: Element) -> Element:
    """A detached deep copy, safe to re-address without touching the original."""
    return copy.deepcopy(el)


def error_reply(el: Element, condition: str, text: str | None = None, *, by: str | None = None) -> Element:
    """The ``type='error'`` answer to ``el``: addresses swapped, error child appended.

    The original payload is not echoed: RFC 6120 §8.3.1 allows leaving it out,
    and echoing an unknown payload back could leak it to the wrong place.
    """
    reply = make(kind(el), type="error", id=el.get("id"), to=el.get("from"), from_=el.get("to"))
    error = etree.SubElement(reply, q(ns.CLIENT, "error"), type=_ERROR_TYPES.get(condition, "cancel"))
    if by:
        error.set("by", by)
    etree.SubElement(error, q(ns.STANZA_ERRORS, condition), nsmap={None: ns.STANZA_ERRORS})
    if text:
        t = etree.SubElement(error, q(ns.STANZA_ERRORS, "text"), nsmap={None: ns.STANZA_ERRORS})
        t.text = text
    return reply


def iq_result(el: Element) -> Element:
    """An empty ``type='result'`` answer to the IQ ``el``."""
    return make("iq", type="result", id=el.get("id"), to=el.get("from"), from_=el.get("to"))


def without_from(el: Element) -> Element:
    """Drop ``from`` for upstream: the server stamps it, a downstream JID means nothing there."""
    el.attrib.pop("from", None)
    return el


def is_error_or_result(el: Element) -> bool:
    """Errors and results are never answered (RFC 6120 §8.3.1, §8.2.3)."""
    return el.get("type") in ("error", "result")


def utc_stamp(when: float) -> str:
    """XEP-0082 DateTime in UTC, the format of ``<delay stamp=...>``."""
    t = _dt.datetime.fromtimestamp(when, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def add_delay(el: Element, stamp: float, from_: str) -> None:
    """Append a XEP-0203 ``<delay>`` unless the stanza already carries one."""
    if find(el, ns.DELAY, "delay") is None:
        child(el, ns.DELAY, "delay", stamp=utc_stamp(stamp), **{"from": from_})
