"""bouncer: an XMPP client-side multi-session proxy (one upstream, many downstream)."""

__version__ = "0.1.0"
