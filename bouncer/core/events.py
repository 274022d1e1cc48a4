"""Every input the account handles, as one union: the one entrance is ``Account.handle``.

The edges (a downstream connection's read loop, the upstream link, the process's
timer and SIGHUP handler) turn what happens into these and hand them over; the
account decides and returns effects. soju's ``user.run()`` switching on typed
events is the model. Frozen dataclasses, so that ``match`` can destructure them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from bouncer.core.ports import SessionPort
from bouncer.xmpp.sm import StreamManagement

if TYPE_CHECKING:
    from bouncer.config import Config


# ---- a downstream connection ------------------------------------------------------------
@dataclass(frozen=True)
class SessionBind:
    """A client authenticated and asked for a resource (None: the bouncer picks one)."""

    port: SessionPort
    requested: str | None


@dataclass(frozen=True)
class SessionStanza:
    """A message, presence or IQ from a bound session (its ``from`` stamped)."""

    port: SessionPort
    element: etree._Element


@dataclass(frozen=True)
class SessionNonza:
    """A top-level element of a bound session that is not a stanza (CSI, ...)."""

    port: SessionPort
    element: etree._Element


@dataclass(frozen=True)
class SessionSmEnabled:
    """The session enabled XEP-0198; ``state`` is its stream's counters and unacked queue
    (resumable when it has an id)."""

    port: SessionPort
    state: StreamManagement[bytes]


@dataclass(frozen=True)
class SessionResume:
    """A new connection asks to resume the XEP-0198 session ``previd``; it had ``h``."""

    port: SessionPort
    previd: str
    h: int


@dataclass(frozen=True)
class SessionAcked:
    """The session's client acknowledged stanzas (its stream's counters moved)."""

    port: SessionPort


@dataclass(frozen=True)
class SessionClosed:
    """The connection is gone (whether it was ever bound or not). ``by_client``: the
    client closed its stream (``</stream>``), which ends an XEP-0198 session too."""

    port: SessionPort
    by_client: bool = False


# ---- the upstream link -------------------------------------------------------------------
@dataclass(frozen=True)
class UpstreamUp:
    """A stream to the server is established, as ``jid``; ``resumed``: XEP-0198 resumed it."""

    jid: str
    resumed: bool


@dataclass(frozen=True)
class UpstreamDown:
    """The stream that was up is gone (the link keeps reconnecting)."""

    reason: str


@dataclass(frozen=True)
class UpstreamStanza:
    """A ``{jabber:client}`` message/presence/iq, full infoset, detached."""

    element: etree._Element


@dataclass(frozen=True)
class UpstreamReadHandled:
    """Every stanza of one read from the server was handed over (commit what they wrote)."""


UpstreamEvent = UpstreamUp | UpstreamDown | UpstreamStanza | UpstreamReadHandled


# ---- the process --------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """Time passed (wall clock ``now``): IQ timeouts, room rejoins and self-pings, retention."""

    now: float


@dataclass(frozen=True)
class Reconfigure:
    """SIGHUP loaded a new config: what the account decides with changes from now on."""

    config: Config


@dataclass(frozen=True)
class Operate:
    """A command from the control socket (``bouncer leave ROOM``); ``answer`` gets its
    outcome's lines and whether it failed."""

    command: str
    argument: str
    answer: Callable[[tuple[str, ...], bool], None]


@dataclass(frozen=True)
class Shutdown:
    """The process ends: sessions are told so, and their going changes nothing upstream."""


Event = (
    SessionBind | SessionStanza | SessionNonza | SessionSmEnabled | SessionResume | SessionAcked | SessionClosed
    | UpstreamEvent
    | Tick | Reconfigure | Operate | Shutdown
)
