"""What the pure decision code asks the account's executor to do: the vocabulary between them.

Decisions (the router, the MUC code) return lists of these and touch no socket and
no database; ``Account`` carries them out in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from bouncer.core.ports import HeldRoom, SessionPort
from bouncer.xmpp.wire import Prepared

Element = etree._Element


@dataclass(frozen=True)
class ToUpstream:
    element: Element


@dataclass(frozen=True)
class Deliver:
    """Send ``element`` to these sessions; a ``to`` naming any full JID of the
    account is re-addressed to each session's own full JID. A ``Prepared`` stanza
    was serialised once already (a room's cached occupants) and only gets its ``to``."""

    resources: tuple[str, ...]
    element: Element | Prepared


@dataclass(frozen=True)
class DeliverSeries:
    """Several stanzas, in order, to one session, in one write (a local join's answer:
    occupants, self-presence, history, subject). Addressed as ``Deliver`` does."""

    resource: str
    stanzas: tuple[Element | Prepared, ...]


@dataclass(frozen=True)
class Bound:
    """Tell the connection it is now the session ``resource`` (the bind result goes out)."""

    port: SessionPort
    resource: str


@dataclass(frozen=True)
class Resumed:
    """The connection ``port`` takes over the hibernated session ``resource`` (XEP-0198)."""

    port: SessionPort
    resource: str


@dataclass(frozen=True)
class ResumeFailed:
    """No session to resume: ``<failed/>`` (with what it had received, when known)."""

    port: SessionPort
    h: int | None = None


@dataclass(frozen=True)
class Mail:
    """Keep this stanza in the mailbox for every device (SPEC §14), then deliver it to
    these sessions; each one's device has it once it is written (or acknowledged)."""

    element: Element
    resources: tuple[str, ...]


@dataclass(frozen=True)
class FlushStored:
    """Deliver what the session's device has not received from the mailbox yet: it just
    became available."""

    resource: str


@dataclass(frozen=True)
class FlushHeld:
    """The session's client became active (XEP-0352): what was held goes out, in one write."""

    resource: str


@dataclass(frozen=True)
class CloseSession:
    """End a connection with a stream error (replaced by a new bind, bad input, shutdown)."""

    port: SessionPort
    condition: str
    text: str | None = None


@dataclass(frozen=True)
class Cut:
    """End the connection without a word (no stream error, no ``</stream>``): its client
    resumes its XEP-0198 session later, as after a network blip (a restart)."""

    port: SessionPort


@dataclass(frozen=True)
class HoldRoom:
    """Remember a joined room across restarts."""

    room: HeldRoom


@dataclass(frozen=True)
class ReleaseRoom:
    """Forget a room the account left or was put out of."""

    jid: str


Effect = ToUpstream | Deliver | DeliverSeries | Bound | Resumed | ResumeFailed | Mail | FlushStored | FlushHeld | CloseSession | Cut | HoldRoom | ReleaseRoom
