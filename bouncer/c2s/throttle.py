"""Rate limit for failed logins (SPEC §3), per client address.

Pure: the caller passes the clock. After a few free failures each further one
doubles the delay before the failure is answered, up to a cap, so password
guessing gets slow while a user's typo costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FREE_FAILURES = 3
WINDOW = 600.0
MAX_DELAY = 30.0


@dataclass
class LoginThrottle:
    failures: dict[str, list[float]] = field(default_factory=dict)

    def failed(self, address: str, now: float) -> float:
        """Record a failure; return how long to hold back its answer (seconds)."""
        recent = [t for t in self.failures.get(address, []) if now - t < WINDOW]
        recent.append(now)
        self.failures[address] = recent
        extra = len(recent) - FREE_FAILURES
        return 0.0 if extra <= 0 else min(MAX_DELAY, 0.5 * 2 ** (extra - 1))

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)
