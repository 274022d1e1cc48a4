"""State handed from a gracefully stopped process to the next one (SPEC §9 restarts).

Each entry is written on SIGTERM and taken (read and deleted) on the next
start, so a stale entry can never be used twice: after a crash there is none,
and the bouncer starts anew as it always did.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


class RestartState:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def save(self, name: str, data: dict[str, Any], now: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO restart_state (name, saved, data) VALUES (?, ?, ?)",
            (name, now, json.dumps(data)),
        )

    def take(self, name: str) -> tuple[float, dict[str, Any]] | None:
        """``(saved_at, data)``, removed from the store; None when nothing was saved."""
        row = self._conn.execute("SELECT saved, data FROM restart_state WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        self._conn.execute("DELETE FROM restart_state WHERE name = ?", (name,))
        return row[0], json.loads(row[1])
