"""Opening the SQLite file and bringing its schema up to date.

Migrations are a list of SQL scripts applied in order under
``PRAGMA user_version``, each in one transaction (as soju does), so a file
written by an older bouncer is upgraded in place and never half-migrated.
"""

from __future__ import annotations

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
]


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (creating on first start) and migrate the database."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
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
