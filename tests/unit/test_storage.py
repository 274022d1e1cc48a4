"""Storage: the SQLite schema and stores, and the in-memory doubles held to the same contract."""

from __future__ import annotations

import os
import stat

import pytest

from bouncer.core.ports import Device, HeldRoom
from bouncer.storage.archive import SqliteArchive
from bouncer.storage.db import MIGRATIONS, open_database
from bouncer.storage.in_memory import MemoryArchive, MemoryMailbox
from bouncer.storage.mailbox import SqliteMailbox


@pytest.fixture(params=["sqlite", "memory"])
def archive(request, tmp_path):
    return SqliteArchive(open_database(tmp_path / "a.sqlite")) if request.param == "sqlite" else MemoryArchive()


@pytest.fixture(params=["sqlite", "memory"])
def mailbox(request, tmp_path):
    return SqliteMailbox(open_database(tmp_path / "o.sqlite")) if request.param == "sqlite" else MemoryMailbox()


def test_mailbox_keeps_arrival_order_and_prunes_by_cursor_and_age(mailbox):
    assert mailbox.last_id() == 0
    ids = [mailbox.add(f"<m n='{i}'/>".encode(), 100.0 + i) for i in range(4)]
    assert ids == sorted(ids) and mailbox.last_id() == ids[-1]
    assert [p.id for p in mailbox.since(ids[0])] == ids[1:] and mailbox.since(ids[0])[0].received == 101.0
    assert mailbox.count() == 4 and mailbox.count(ids[1]) == 2
    assert mailbox.prune(ids[0], older_than=0.0) == 1  # every device has the first
    assert mailbox.prune(0, older_than=102.0) == 1  # too old for anyone
    assert [p.stanza for p in mailbox.since(0)] == [b"<m n='2'/>", b"<m n='3'/>"]
    assert mailbox.add(b"<m/>", 200.0) > ids[-1]  # ids never come back


def test_mailbox_devices(mailbox):
    mailbox.save_device(Device("phone", 3, 10.0))
    mailbox.save_device(Device("laptop", 1, 11.0))
    mailbox.save_device(Device("phone", 5, 12.0))
    assert mailbox.devices() == [Device("laptop", 1, 11.0), Device("phone", 5, 12.0)]
    mailbox.forget_device("laptop")
    assert mailbox.devices() == [Device("phone", 5, 12.0)]


def test_created_on_first_open_and_reopened_without_loss(tmp_path):
    path = tmp_path / "b.sqlite"
    db = open_database(path)
    store = SqliteMailbox(db)
    ids = [store.add(f"<m n='{i}'/>".encode(), 100.0 + i) for i in range(3)]
    store.save_device(Device("phone", ids[0], 1.0))
    db.close()
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    store = SqliteMailbox(db)
    pending = store.since(0)
    assert [p.id for p in pending] == ids and pending[0].stanza == b"<m n='0'/>" and pending[2].received == 102.0
    assert store.devices() == [Device("phone", ids[0], 1.0)]


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


def test_archive_retention_by_count_and_age(archive):
    for i in range(5):
        assert archive.store("r@m", f"s{i}", 1000.0 + i, "bob", b"<m/>")
    assert not archive.store("r@m", "s4", 2000.0, "bob", b"<m/>")  # same stanza-id: kept once
    archive.store("other@m", "s0", 1000.0, "bob", b"<m/>")
    assert archive.prune("r@m", 1010.0, 1, 3) == 2
    assert [m.stanza_id for m in archive.latest("r@m", 10)] == ["s2", "s3", "s4"]
    assert archive.prune("r@m", 1000.0 + 86400 + 3.5, 1, 3) == 2  # older than a day
    assert archive.count("r@m") == 1 and archive.count("other@m") == 1
    archive.hold(HeldRoom("r@m", "alice", None))
    archive.hold(HeldRoom("r@m", "alicia", "pw"))
    assert archive.held() == [HeldRoom("r@m", "alicia", "pw")]
    archive.release("r@m")
    assert archive.held() == []


def test_archive_pages_like_rsm(archive):
    for i in range(5):
        archive.store("r@m", f"s{i}" if i != 2 else None, 100.0 + i, "bob" if i % 2 else "carol", f"<m n='{i}'/>".encode())
    ids = lambda page: [m.archive_id for m in page[0]]  # noqa: E731
    first = archive.page("r@m", limit=2)
    assert ids(first) == ["s0", "s1"] and first[1] is False
    after = archive.page("r@m", limit=2, after="s1")
    assert ids(after)[0].startswith("bnc-") and ids(after)[1] == "s3"
    assert ids(archive.page("r@m", limit=2, after=ids(after)[0])) == ["s3", "s4"]
    last = archive.page("r@m", limit=2, last_page=True)
    assert ids(last) == ["s3", "s4"] and last[1] is False
    before = archive.page("r@m", limit=10, before="s3")
    assert ids(before)[0] == "s0" and len(ids(before)) == 3 and before[1] is True
    assert ids(archive.page("r@m", limit=10, nick="bob")) == ["s1", "s3"]
    assert ids(archive.page("r@m", limit=10, start=103.0)) == ["s3", "s4"]
    assert archive.page("r@m", limit=2, after="nope") is None


def test_place_moves_a_known_message_to_the_rooms_order(archive):
    archive.store("r@m", "late", 100.0, "bob", b"<m n='late'/>")  # arrived first (history)
    assert archive.place("r@m", "early", 100.1, "bob", b"<m n='early'/>") is True
    assert archive.place("r@m", "late", 100.2, "bob", b"<m n='late'/>") is False  # known: moved, not copied
    assert [m.stanza_id for m in archive.latest("r@m", 10)] == ["early", "late"] and archive.count("r@m") == 2


def test_database_files_are_owner_only_whatever_the_umask(tmp_path):
    """The database holds every message: it, its -wal and -shm are 0600 even under umask 022."""
    old = os.umask(0o022)
    try:
        db = open_database(tmp_path / "b.sqlite")
        SqliteMailbox(db).add(b"<message/>", 1.0)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        db.close()
    finally:
        os.umask(old)
    assert modes == {"b.sqlite": 0o600, "b.sqlite-wal": 0o600, "b.sqlite-shm": 0o600}


def test_archive_latest_and_last_ids(archive):
    assert archive.last_ts("r@m") is None and archive.last_stanza_id("r@m") is None
    for i, sid in enumerate(["a", None, "c", None]):
        archive.store("r@m", sid, 10.0 + i, "bob", b"<m/>")
    assert [m.ts for m in archive.latest("r@m", 2)] == [12.0, 13.0]
    assert [m.ts for m in archive.latest("r@m", 10, since=11.5)] == [12.0, 13.0]
    assert archive.last_ts("r@m") == 13.0 and archive.last_stanza_id("r@m") == "c"


def test_archive_retention_works_in_batches(archive, monkeypatch):
    import bouncer.storage.archive
    import bouncer.storage.in_memory

    for module in (bouncer.storage.archive, bouncer.storage.in_memory):
        monkeypatch.setattr(module, "PRUNE_BATCH", 3)
    for i in range(10):
        archive.store("r@m", f"s{i}", 100.0 + i, "bob", b"<m/>")
    assert archive.prune("r@m", 200.0, None, 2) == 3  # a batch at a time, oldest first
    assert [m.stanza_id for m in archive.latest("r@m", 1)] == ["s9"] and archive.count("r@m") == 7
    assert archive.prune("r@m", 200.0, None, 2) + archive.prune("r@m", 200.0, None, 2) == 5
    assert [m.stanza_id for m in archive.latest("r@m", 10)] == ["s8", "s9"]
    assert archive.prune("r@m", 200.0, None, 2) == 0
