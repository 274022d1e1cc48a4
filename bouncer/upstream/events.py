"""What the upstream client core (``upstream/stream.py``) tells its edge.

A received stanza is the shared ``bouncer.xmpp.events.StanzaReceived``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bouncer.xmpp.events import StanzaReceived


@dataclass(frozen=True)
class TlsRequired:
    """Flush, wrap the transport in TLS, then call ``tls_started``."""


@dataclass(frozen=True)
class Established:
    """A session is up: ``resumed`` (XEP-0198) or new."""

    jid: str
    resumed: bool


@dataclass(frozen=True)
class Ended:
    """The attempt or the stream is over; the edge closes the transport."""

    reason: str
    retry_later: bool = True  # False: nothing is wrong with the server (we closed)


Event = TlsRequired | Established | StanzaReceived | Ended
