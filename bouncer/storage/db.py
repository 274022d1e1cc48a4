"""Opening the SQLite file and bringing its schema up to date.

Migrations are a list of SQL scripts applied in order under
``PRAGMA user_version``, each in one transaction (as soju does), so a file
written by an older bouncer is upgraded in place and never half-migrated.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: messages kept while no session was connected (SPEC §5 "Nobody connected").
    """
    CREATE TABLE offline (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received REAL NOT NULL,
        stanza BLOB NOT NULL
    );
    """,
    # 2: the rooms the account holds and everything said in them (SPEC §7).
    """
    CREATE TABLE rooms (
        jid TEXT PRIMARY KEY,
        nick TEXT NOT NULL,
        password TEXT
    );
    CREATE TABLE muc_archive (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room TEXT NOT NULL,
        stanza_id TEXT,
        ts REAL NOT NULL,
        nick TEXT,
        stanza BLOB NOT NULL
    );
    CREATE UNIQUE INDEX muc_archive_stanza_id ON muc_archive (room, stanza_id);
    CREATE INDEX muc_archive_room_ts ON muc_archive (room, ts);
    """,
    # 3: what a graceful restart hands to the next process (the upstream XEP-0198
    # session, the account's cached view of contacts and rooms); taken once.
    """
    CREATE TABLE restart_state (
        name TEXT PRIMARY KEY,
        saved REAL NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # 4: devices (every resource that ever bound) and the last stored stanza each one
    # received: the offline table becomes a mailbox kept until every device has it (§14).
    """
    CREATE TABLE devices (
        resource TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        last_seen REAL NOT NULL
    );
    """,
    # 5: where the account's own MAM catch-up starts after a new upstream session.
    """
    CREATE TABLE marks (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (creating on first start) and migrate the database.

    Created owner-only whatever the umask: it holds every message. SQLite gives the
    -wal and -shm files the database file's permissions.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # no-op when it exists
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: every commit is in the WAL before we go on, so a crash of the
    # process loses nothing; only an OS crash could lose the last commits, and
    # it saves an fsync per archived groupchat message.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema {version} is newer than this bouncer ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class GroupCommit:
    """Many writes, one commit (the upstream hands over stanzas a read at a time).

    Everything the account writes while it handles one read from the upstream shares
    a transaction, committed once the read is handled: before control returns to the
    event loop, so before any session's writer sends what those writes archived or
    stored. Durable across a crash of the process (WAL); one commit per read instead
    of one per message.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

