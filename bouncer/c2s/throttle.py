"""Rate limit for failed logins (SPEC §3, §11): per client address and in total.

Pure: the caller passes the clock. A failure's answer is held back until a slot: the
first few failures in a window are free, after that each failure from an address takes
the next slot of that address, the slots growing apart (doubling, capped), and past a
larger free budget every failure also takes the next slot of everyone's. Slots are
shared by all the connections of an address, so opening more connections buys an
attacker nothing: it learns whether a guess was right only at its slot. A success
answers at once and resets nothing, so nobody's login clears an attacker's count.
With 100 parallel connections from one address that is 9 guesses in the first minute
and 2 a minute after that; from many addresses, 30 a minute in total once past 20.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FREE_FAILURES = 3  # per address and window
WINDOW = 600.0
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
FREE_TOTAL = 20  # failures from all addresses per window before the shared slots count
TOTAL_STEP = 2.0  # seconds between answers to failures, all addresses together


@dataclass
class _Slots:
    failures: list[float] = field(default_factory=list)  # times, within WINDOW
    next_free: float = 0.0

    def take(self, now: float, free: int, step) -> float:
        """Record a failure at ``now``; the time its answer may go out."""
        self.failures = [t for t in self.failures if now - t < WINDOW] + [now]
        extra = len(self.failures) - free
        if extra <= 0:
            return now
        self.next_free = max(now, self.next_free) + step(extra)
        return self.next_free


def _doubling(extra: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** (extra - 1))


@dataclass
class LoginThrottle:
    addresses: dict[str, _Slots] = field(default_factory=dict)
    everyone: _Slots = field(default_factory=_Slots)

    def failed(self, address: str, now: float) -> float:
        """Record a failure; return how long to hold back its answer (seconds)."""
        self._forget(now)
        mine = self.addresses.setdefault(address, _Slots()).take(now, FREE_FAILURES, _doubling)
        shared = self.everyone.take(now, FREE_TOTAL, lambda _extra: TOTAL_STEP)
        return max(mine, shared) - now

    def _forget(self, now: float) -> None:
        """Addresses quiet for a whole window: nothing to remember (the table stays bounded)."""
        stale = [a for a, s in self.addresses.items() if s.failures and now - s.failures[-1] >= WINDOW
                 and s.next_free <= now]
        for address in stale:
            del self.addresses[address]
