"""SQLite storage: schema migration and the offline store."""

from __future__ import annotations

from bouncer.storage.db import MIGRATIONS, open_database
from bouncer.storage.offline import OfflineStore


def test_created_on_first_open_and_reopened_without_loss(tmp_path):
    path = tmp_path / "b.sqlite"
    db = open_database(path)
    store = OfflineStore(db)
    ids = [store.add(f"<m n='{i}'/>".encode(), 100.0 + i) for i in range(3)]
    db.close()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    store = OfflineStore(db)
    pending = store.pending()
    assert [p.id for p in pending] == ids and pending[0].stanza == b"<m n='0'/>" and pending[2].received == 102.0
    store.delete(ids[:2])
    assert [p.id for p in store.pending()] == ids[2:]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "b.sqlite"
    db = open_database(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    try:
        open_database(path)
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("opened a database from a newer bouncer")
