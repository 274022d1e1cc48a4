"""How many connections may be waiting to log in, in total and per client address (SPEC §11).

Pure bookkeeping: the listener asks before it serves a new connection, and the
connection says when it stops counting (logged in, or gone). A flood of idle
connections from one address then cannot take the slots of everyone else, and a
flood from many cannot grow the process without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Admission:
    max_total: int
    max_per_address: int
    pending: dict[str, int] = field(default_factory=dict)  # address -> connections not logged in

    @property
    def total(self) -> int:
        return sum(self.pending.values())

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) when over a limit."""
        if self.total >= self.max_total or self.pending.get(address, 0) >= self.max_per_address:
            return False
        self.pending[address] = self.pending.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        """The connection logged in or went away: it no longer counts."""
        left = self.pending.get(address, 0) - 1
        if left > 0:
            self.pending[address] = left
        else:
            self.pending.pop(address, None)
