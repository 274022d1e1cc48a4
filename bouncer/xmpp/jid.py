"""Just enough JID handling for routing: split, compare, rebuild.

The bouncer never needs stringprep: it compares JIDs the server already
normalised, plus the account's own JID which config validated.
"""

from __future__ import annotations


def bare(jid: str) -> str:
    """``user@domain/res`` -> ``user@domain``; a bare or domain JID is returned as is."""
    return jid.split("/", 1)[0]


def resource(jid: str) -> str | None:
    """The resource part, or None when the JID has none."""
    parts = jid.split("/", 1)
    return parts[1] if len(parts) == 2 else None


def domain(jid: str) -> str:
    """The domain part of any JID."""
    b = bare(jid)
    return b.split("@", 1)[1] if "@" in b else b


def localpart(jid: str) -> str | None:
    """The local part, or None for a domain JID."""
    b = bare(jid)
    return b.split("@", 1)[0] if "@" in b else None


def same_bare(a: str | None, b: str) -> bool:
    """Case-insensitive bare JID equality (servers normalise to lower case)."""
    return a is not None and bare(a).lower() == bare(b).lower()
