"""The mailbox: 1:1 stanzas kept for every device until it has them (SPEC §5, §14).

Every message worth keeping that reaches the account is written here (committed)
before anything else happens to it, in arrival order. Each resource that ever
bound is a device with a cursor: the id of the last stored stanza it received
(written to its socket, or acknowledged with XEP-0198). A device that comes back
without resuming gets what lies past its cursor; rows every device has, or older
than the configured age, are deleted.
"""

from __future__ import annotations

import sqlite3

from bouncer.core.ports import Device, StoredStanza


class SqliteMailbox:
    """``core.ports.Mailbox`` in the bouncer's SQLite file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, stanza: bytes, received: float) -> int:
        cur = self._conn.execute("INSERT INTO offline (received, stanza) VALUES (?, ?)", (received, stanza))
        return int(cur.lastrowid or 0)

    def since(self, cursor: int) -> list[StoredStanza]:
        rows = self._conn.execute("SELECT id, received, stanza FROM offline WHERE id > ? ORDER BY id", (cursor,))
        return [StoredStanza(*row) for row in rows.fetchall()]

    def count(self, cursor: int = 0) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM offline WHERE id > ?", (cursor,)).fetchone()[0]

    def last_id(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM offline").fetchone()[0]

    def prune(self, upto: int, older_than: float) -> int:
        cur = self._conn.execute("DELETE FROM offline WHERE id <= ? OR received < ?", (upto, older_than))
        return cur.rowcount

    # ---- devices ----------------------------------------------------------------------
    def devices(self) -> list[Device]:
        rows = self._conn.execute("SELECT resource, cursor, last_seen FROM devices ORDER BY resource")
        return [Device(*row) for row in rows.fetchall()]

    def save_device(self, device: Device) -> None:
        self._conn.execute(
            "INSERT INTO devices (resource, cursor, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (resource) DO UPDATE SET cursor = excluded.cursor, last_seen = excluded.last_seen",
            (device.resource, device.cursor, device.last_seen),
        )

    def forget_device(self, resource: str) -> None:
        self._conn.execute("DELETE FROM devices WHERE resource = ?", (resource,))

    # ---- marks --------------------------------------------------------------------------
    def mark(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def set_mark(self, name: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", (name, value))
