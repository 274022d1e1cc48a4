"""Stanzas that reached the account while no session was connected.

Written (committed) before anything else happens to the stanza, read back in
arrival order for the next session, and deleted only once that session's
writer has flushed them to its socket.
"""

from __future__ import annotations

import sqlite3
from bouncer.core.ports import StoredStanza


class SqliteOffline:
    """``core.ports.OfflineStore`` in the bouncer's SQLite file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, stanza: bytes, received: float) -> int:
        cur = self._conn.execute("INSERT INTO offline (received, stanza) VALUES (?, ?)", (received, stanza))
        return int(cur.lastrowid or 0)

    def pending(self) -> list[StoredStanza]:
        rows = self._conn.execute("SELECT id, received, stanza FROM offline ORDER BY id").fetchall()
        return [StoredStanza(*row) for row in rows]

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM offline").fetchone()[0]

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self._conn.execute(f"DELETE FROM offline WHERE id IN ({','.join('?' * len(chunk))})", chunk)
