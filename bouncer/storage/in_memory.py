"""The storage ports in memory: the same contract as the SQLite stores, without a file.

For unit tests of the decisions (routing, MUC), which then need no database; the
storage tests run against both implementations, so the two cannot drift apart.
Ordering follows the SQLite queries: by (timestamp, row id).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bouncer.core.ports import LOCAL_ID_PREFIX, PRUNE_BATCH, ArchivedMessage, Device, HeldRoom, StoredStanza


@dataclass
class MemoryArchive:
    """``core.ports.RoomArchive`` as lists and dicts."""

    rows: dict[str, list[ArchivedMessage]] = field(default_factory=dict)  # room -> messages
    rooms: dict[str, HeldRoom] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def store(self, room: str, stanza_id: str | None, ts: float, nick: str | None, stanza: bytes) -> bool:
        if stanza_id is not None and self._find(room, stanza_id) is not None:
            return False
        self.rows.setdefault(room, []).append(ArchivedMessage(next(self._ids), stanza_id, ts, nick, stanza))
        return True

    def place(self, room: str, stanza_id: str, ts: float, nick: str | None, stanza: bytes) -> bool:
        if self.store(room, stanza_id, ts, nick, stanza):
            return True
        old = self._find(room, stanza_id)
        assert old is not None
        rows = self.rows[room]
        rows[rows.index(old)] = ArchivedMessage(old.id, old.stanza_id, ts, old.nick, old.stanza)
        return False

    def latest(self, room: str, limit: int, *, since: float | None = None) -> list[ArchivedMessage]:
        found = [r for r in self._sorted(room) if since is None or r.ts >= since]
        return found[-limit:] if limit > 0 else []

    def page(self, room: str, *, limit: int, start: float | None = None, end: float | None = None,
             nick: str | None = None, after: str | None = None, before: str | None = None,
             last_page: bool = False) -> tuple[list[ArchivedMessage], bool] | None:
        rows = [r for r in self._sorted(room)
                if (start is None or r.ts >= start) and (end is None or r.ts <= end)
                and (nick is None or r.nick == nick)]
        backward = before is not None or last_page
        anchor = before if before is not None else after
        if anchor:
            found = self._find(room, anchor)
            if found is None:
                return None
            key = (found.ts, found.id)
            rows = [r for r in rows if ((r.ts, r.id) < key if backward else (r.ts, r.id) > key)]
        if backward:
            return rows[-limit:] if limit > 0 else [], len(rows) <= limit
        return rows[:limit], len(rows) <= limit

    def last_stanza_id(self, room: str) -> str | None:
        numbered = [r for r in self._sorted(room) if r.stanza_id is not None]
        return numbered[-1].stanza_id if numbered else None

    def last_ts(self, room: str) -> float | None:
        rows = self.rows.get(room)
        return max(r.ts for r in rows) if rows else None

    def count(self, room: str) -> int:
        return len(self.rows.get(room, []))

    def prune(self, room: str, now: float, max_age_days: float | None, max_messages: int | None) -> int:
        removed = 0
        if max_age_days is not None:
            removed += self._drop(room, [r for r in self._sorted(room) if r.ts < now - max_age_days * 86400])
        if max_messages is not None:
            rows = self._sorted(room)
            removed += self._drop(room, rows[:max(len(rows) - max_messages, 0)])
        return removed

    def _drop(self, room: str, oldest_first: list[ArchivedMessage]) -> int:
        gone = {r.id for r in oldest_first[:PRUNE_BATCH]}
        self.rows[room] = [r for r in self.rows.get(room, []) if r.id not in gone]
        return len(gone)

    def hold(self, room: HeldRoom) -> None:
        self.rooms[room.jid] = room

    def release(self, jid: str) -> None:
        self.rooms.pop(jid, None)

    def held(self) -> list[HeldRoom]:
        return sorted(self.rooms.values(), key=lambda r: r.jid)

    def _sorted(self, room: str) -> list[ArchivedMessage]:
        return sorted(self.rows.get(room, []), key=lambda r: (r.ts, r.id))

    def _find(self, room: str, archive_id: str) -> ArchivedMessage | None:
        local = archive_id[len(LOCAL_ID_PREFIX):] if archive_id.startswith(LOCAL_ID_PREFIX) else ""
        for row in self.rows.get(room, []):
            if row.stanza_id == archive_id or (row.stanza_id is None and local.isdigit() and row.id == int(local)):
                return row
        return None


@dataclass
class MemoryMailbox:
    """``core.ports.Mailbox`` as a list and a dict."""

    items: list[StoredStanza] = field(default_factory=list)
    known: dict[str, Device] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(self, stanza: bytes, received: float) -> int:
        item = StoredStanza(next(self._ids), received, stanza)
        self.items.append(item)
        return item.id

    def since(self, cursor: int) -> list[StoredStanza]:
        return [i for i in self.items if i.id > cursor]

    def count(self, cursor: int = 0) -> int:
        return len(self.since(cursor))

    def last_id(self) -> int:
        return max((i.id for i in self.items), default=0)

    def prune(self, upto: int, older_than: float) -> int:
        before = len(self.items)
        self.items = [i for i in self.items if i.id > upto and i.received >= older_than]
        return before - len(self.items)

    def devices(self) -> list[Device]:
        return sorted(self.known.values(), key=lambda d: d.resource)

    def save_device(self, device: Device) -> None:
        self.known[device.resource] = device

    def forget_device(self, resource: str) -> None:
        self.known.pop(resource, None)

    def mark(self, name: str) -> str | None:
        return self.marks.get(name)

    def set_mark(self, name: str, value: str) -> None:
        self.marks[name] = value


@dataclass
class NoTransaction:
    """``core.ports.Transaction`` where there is nothing to commit."""

    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass
