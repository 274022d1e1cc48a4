"""What the pure decision code asks the Account to do: the vocabulary between them."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

Element = etree._Element


@dataclass(frozen=True)
class ToUpstream:
    element: Element


@dataclass(frozen=True)
class Deliver:
    """Send ``element`` to these sessions; a ``to`` naming any full JID of the
    account is re-addressed to each session's own full JID."""

    resources: tuple[str, ...]
    element: Element


@dataclass(frozen=True)
class Store:
    """Keep this stanza for the next session (nobody is connected, SPEC §5)."""

    element: Element


@dataclass(frozen=True)
class FlushStored:
    """Deliver what was stored to this session, which just became available."""

    resource: str


@dataclass(frozen=True)
class CloseSession:
    resource: str
    token: int
    condition: str


Action = ToUpstream | Deliver | Store | FlushStored | CloseSession
