"""The room archive: every groupchat message of every held room, and the held rooms.

A message is written (committed) before it is fanned out, so a crash after
delivery loses nothing (SPEC §7). The room's ``<stanza-id>`` makes storing
idempotent: history a room repeats on rejoin is recognised and not fanned out
twice. Retention by age and count keeps the file bounded.
"""

from __future__ import annotations

import sqlite3

from bouncer.core.ports import LOCAL_ID_PREFIX, PRUNE_BATCH, ArchivedMessage, HeldRoom


def _local_rowid(archive_id: str) -> int:
    tail = archive_id[len(LOCAL_ID_PREFIX):] if archive_id.startswith(LOCAL_ID_PREFIX) else ""
    return int(tail) if tail.isdigit() else -1


class SqliteArchive:
    """``core.ports.RoomArchive`` in the bouncer's SQLite file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # ---- messages --------------------------------------------------------------
    def store(self, room: str, stanza_id: str | None, ts: float, nick: str | None, stanza: bytes) -> bool:
        """Archive a message; False when the room's stanza-id is already there."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO muc_archive (room, stanza_id, ts, nick, stanza) VALUES (?, ?, ?, ?, ?)",
            (room, stanza_id, ts, nick, stanza),
        )
        return cur.rowcount == 1

    def place(self, room: str, stanza_id: str, ts: float, nick: str | None, stanza: bytes) -> bool:
        """Store, or move an already stored message to ``ts``: the room's MAM order wins over
        the order messages first arrived in (history on rejoin can come before older ones).
        True when the message is new."""
        if self.store(room, stanza_id, ts, nick, stanza):
            return True
        self._conn.execute("UPDATE muc_archive SET ts = ? WHERE room = ? AND stanza_id = ?", (ts, room, stanza_id))
        return False

    def latest(self, room: str, limit: int, *, since: float | None = None) -> list[ArchivedMessage]:
        """The newest ``limit`` messages (after ``since``), oldest first."""
        rows = self._conn.execute(
            "SELECT id, stanza_id, ts, nick, stanza FROM muc_archive WHERE room = ? AND ts >= ? "
            "ORDER BY ts DESC, id DESC LIMIT ?",
            (room, since if since is not None else float("-inf"), limit),
        ).fetchall()
        return [ArchivedMessage(*row) for row in reversed(rows)]

    def page(
        self,
        room: str,
        *,
        limit: int,
        start: float | None = None,
        end: float | None = None,
        nick: str | None = None,
        after: str | None = None,
        before: str | None = None,
        last_page: bool = False,
    ) -> tuple[list[ArchivedMessage], bool] | None:
        """One XEP-0313/0059 page, oldest first, and whether it reaches the end.

        Pages forward from ``after`` (or the start), or backward from ``before``
        (or from the end when ``last_page``). None when a paging id is unknown.
        """
        where, args = ["room = ?"], [room]
        for clause, value in (("ts >= ?", start), ("ts <= ?", end), ("nick = ?", nick)):
            if value is not None:
                where.append(clause)
                args.append(value)
        backward = before is not None or last_page
        anchor = before if before is not None else after
        if anchor:
            key = self._key(room, anchor)
            if key is None:
                return None
            where.append("(ts, id) < (?, ?)" if backward else "(ts, id) > (?, ?)")
            args += list(key)
        order = "DESC" if backward else "ASC"
        rows = self._conn.execute(
            f"SELECT id, stanza_id, ts, nick, stanza FROM muc_archive WHERE {' AND '.join(where)} "
            f"ORDER BY ts {order}, id {order} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        complete = len(rows) <= limit
        found = [ArchivedMessage(*row) for row in rows[:limit]]
        return (list(reversed(found)) if backward else found), complete

    def _key(self, room: str, archive_id: str) -> tuple[float, int] | None:
        row = self._conn.execute(
            "SELECT ts, id FROM muc_archive WHERE room = ? AND (stanza_id = ? OR (stanza_id IS NULL AND id = ?))",
            (room, archive_id, _local_rowid(archive_id)),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def last_stanza_id(self, room: str) -> str | None:
        """The room's id of the newest message it numbered: where a MAM catch-up starts."""
        row = self._conn.execute(
            "SELECT stanza_id FROM muc_archive WHERE room = ? AND stanza_id IS NOT NULL ORDER BY ts DESC, id DESC LIMIT 1",
            (room,),
        ).fetchone()
        return None if row is None else row[0]

    def last_ts(self, room: str) -> float | None:
        row = self._conn.execute("SELECT MAX(ts) FROM muc_archive WHERE room = ?", (room,)).fetchone()
        return row[0]

    def count(self, room: str) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM muc_archive WHERE room = ?", (room,)).fetchone()[0]

    def prune(self, room: str, now: float, max_age_days: float | None, max_messages: int | None) -> int:
        """Apply retention to one room; returns how many messages went (at most
        ``PRUNE_BATCH`` per rule and call, so that the event loop never waits long: the
        caller comes back while there is more). Only the (room, ts) index is walked."""
        removed = 0
        if max_age_days is not None:
            removed += self._delete(room, "ts < ?", (now - max_age_days * 86400,))
        if max_messages is not None:
            oldest_kept = self._conn.execute(
                "SELECT ts, id FROM muc_archive WHERE room = ? ORDER BY ts DESC, id DESC LIMIT 1 OFFSET ?",
                (room, max_messages - 1),
            ).fetchone()
            if oldest_kept is not None:
                removed += self._delete(room, "(ts, id) < (?, ?)", oldest_kept)
        return removed

    def _delete(self, room: str, condition: str, args: tuple) -> int:
        cur = self._conn.execute(
            f"DELETE FROM muc_archive WHERE id IN (SELECT id FROM muc_archive WHERE room = ? AND {condition} "
            f"ORDER BY ts, id LIMIT {PRUNE_BATCH})",
            (room, *args),
        )
        return cur.rowcount

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
