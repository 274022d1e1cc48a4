"""What the account's MUC decisions share: the rooms held, the archive port, the settings.

Each job of the MUC code (joins, fan-out, recovery, catch-up) is a module of
functions over this state that return effects; ``MucRouter`` dispatches to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from bouncer.core.effects import Deliver, Effect
from bouncer.core.ports import RoomArchive
from bouncer.muc.room import Room


LEAVING_KEPT = 64


@dataclass(frozen=True)
class MucSettings:
    history_default: int = 20  # messages on a local join without <history/>
    leave_when_unused: bool = False  # leave upstream when the last session leaves
    self_ping_after: float = 900.0  # silence (s) after which the account checks it is still in
    self_ping_timeout: float = 120.0  # no answer by then: inconclusive, try again later
    recheck_delay: float = 30.0  # first wait before asking again after an inconclusive self-ping
    max_age_days: float | None = None  # archive retention (SPEC §7)
    max_messages: int | None = None  # per room


@dataclass
class MucState:
    archive: RoomArchive
    settings: MucSettings = field(default_factory=MucSettings)
    rooms: dict[str, Room] = field(default_factory=dict)
    # Occupant JIDs the account left, and those rooms (SPEC §6.3): the rooms' answers to
    # the leave are the account's own business, not its sessions'. Bounded: an answer
    # may never come.
    leaving: dict[str, None] = field(default_factory=dict)
    autojoin: set[str] = field(default_factory=set)  # rooms bookmarked with autojoin: never left unused

    def left(self, occupant_jid: str) -> None:
        self.leaving[occupant_jid] = None
        while len(self.leaving) > LEAVING_KEPT:
            del self.leaving[next(iter(self.leaving))]


def fan(resources: tuple[str, ...], el: etree._Element) -> list[Effect]:
    """Deliver ``el`` to these sessions, if there are any."""
    return [Deliver(resources, el)] if resources else []
