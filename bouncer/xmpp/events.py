"""Events both protocol cores hand to their edges."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


@dataclass(frozen=True)
class StanzaReceived:
    """A message, presence or iq from the peer: a detached element, full infoset."""

    element: etree._Element
