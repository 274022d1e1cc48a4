"""What an inactive session's client does not get yet (XEP-0352, SPEC §9).

Held stanzas wait in arrival order; a newer presence from the same sender replaces
the older one (only the latest state matters). Each is stamped with a ``<delay>``
of when it arrived and written, all in one write, when the client becomes active,
when something urgent goes out (first, so order is kept), or when the queue is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from bouncer.xmpp import stanza

HELD_MAX = 256  # held stanzas per session before they are flushed anyway (Prosody: csi_queue_size)


@dataclass
class Held:
    items: dict[object, tuple[etree._Element, float]] = field(default_factory=dict)
    _seq: int = 0

    def hold(self, el: etree._Element, now: float) -> bool:
        """Keep ``el`` back; True when the queue is full and must be flushed."""
        if el.tag == stanza.PRESENCE:
            key: object = ("presence", el.get("from"))
            self.items.pop(key, None)  # the latest presence of a sender replaces the older one
        else:
            self._seq += 1
            key = self._seq
        self.items[key] = (el, now)
        return len(self.items) >= HELD_MAX

    def take(self, domain: str) -> list[etree._Element]:
        """Everything held, oldest first, stamped with when it arrived; the queue empties."""
        out = []
        for el, when in self.items.values():
            copy = stanza.clone(el)  # the element may be shared (a room's cache): stamp a copy
            stanza.add_delay(copy, when, domain)
            out.append(copy)
        self.items.clear()
        return out

    def __len__(self) -> int:
        return len(self.items)
