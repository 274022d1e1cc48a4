"""The bytes around stanzas: stream headers, stream errors, the closing tag.

Both roles write these; spelling them once keeps the two ends of the bouncer
speaking the same dialect (RFC 6120 §4).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

CLOSE = b"</stream:stream>"


def header(*, to: str | None = None, from_: str | None = None, id_: str | None = None) -> bytes:
    """An opening ``<stream:stream>`` with the XML declaration."""
    attrs = "".join(
        f" {name}={quoteattr(value)}" for name, value in (("to", to), ("from", from_), ("id", id_)) if value
    )
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams'{attrs} version='1.0' xml:lang='en'>"
    ).encode()


def stream_error(condition: str, text: str | None = None, detail: bytes = b"") -> bytes:
    """``<stream:error>`` with a defined condition, optional text and application element."""
    body = f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode()
    if text:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        body += f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{escaped}</text>".encode()
    return b"<stream:error>" + body + detail + b"</stream:error>"
