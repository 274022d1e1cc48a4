"""The room archive: every groupchat message of every held room, and the held rooms.

A message is written (committed) before it is fanned out, so a crash after
delivery loses nothing (SPEC §7). The room's ``<stanza-id>`` makes storing
idempotent: history a room repeats on rejoin is recognised and not fanned out
twice. Retention by age and count keeps the file bounded.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchivedMessage:
    id: int
    stanza_id: str | None
    ts: float
    nick: str | None
    stanza: bytes


@dataclass(frozen=True)
class HeldRoom:
    jid: str
    nick: str
    password: str | None


class RoomArchive:
    def __init__(self, conn: sqlite3.Connection, *, max_age_days: float | None = None, max_messages: int | None = None) -> None:
        self._conn = conn
        self.max_age_days = max_age_days
        self.max_messages = max_messages

    # ---- messages --------------------------------------------------------------
    def store(self, room: str, stanza_id: str | None, ts: float, nick: str | None, stanza: bytes) -> bool:
        """Archive a message; False when the room's stanza-id is already there."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO muc_archive (room, stanza_id, ts, nick, stanza) VALUES (?, ?, ?, ?, ?)",
            (room, stanza_id, ts, nick, stanza),
        )
        return cur.rowcount == 1

    def latest(self, room: str, limit: int, *, since: float | None = None) -> list[ArchivedMessage]:
        """The newest ``limit`` messages (after ``since``), oldest first."""
        rows = self._conn.execute(
            "SELECT id, stanza_id, ts, nick, stanza FROM muc_archive WHERE room = ? AND ts >= ? "
            "ORDER BY ts DESC, id DESC LIMIT ?",
            (room, since if since is not None else float("-inf"), limit),
        ).fetchall()
        return [ArchivedMessage(*row) for row in reversed(rows)]

    def last_ts(self, room: str) -> float | None:
        row = self._conn.execute("SELECT MAX(ts) FROM muc_archive WHERE room = ?", (room,)).fetchone()
        return row[0]

    def count(self, room: str) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM muc_archive WHERE room = ?", (room,)).fetchone()[0]

    def prune(self, room: str, now: float) -> int:
        """Apply retention to one room; returns how many messages went."""
        removed = 0
        if self.max_age_days is not None:
            cur = self._conn.execute(
                "DELETE FROM muc_archive WHERE room = ? AND ts < ?", (room, now - self.max_age_days * 86400)
            )
            removed += cur.rowcount
        if self.max_messages is not None:
            cur = self._conn.execute(
                "DELETE FROM muc_archive WHERE room = ? AND id NOT IN "
                "(SELECT id FROM muc_archive WHERE room = ? ORDER BY ts DESC, id DESC LIMIT ?)",
                (room, room, self.max_messages),
            )
            removed += cur.rowcount
        return removed

    # ---- held rooms ------------------------------------------------------------
    def hold(self, room: HeldRoom) -> None:
        self._conn.execute(
            "INSERT INTO rooms (jid, nick, password) VALUES (?, ?, ?) "
            "ON CONFLICT (jid) DO UPDATE SET nick = excluded.nick, password = excluded.password",
            (room.jid, room.nick, room.password),
        )

    def release(self, jid: str) -> None:
        self._conn.execute("DELETE FROM rooms WHERE jid = ?", (jid,))

    def held(self) -> list[HeldRoom]:
        return [HeldRoom(*row) for row in self._conn.execute("SELECT jid, nick, password FROM rooms ORDER BY jid")]
