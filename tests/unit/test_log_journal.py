"""Logging under systemd: no second timestamp, and the journal learns each event's priority."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bouncer.log import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def log_some(path: Path, format: str, monkeypatch: pytest.MonkeyPatch, journal: bool) -> list[str]:
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + (0 if journal else 1)}")
        configure_logging(format, "info", stream=stream)
        log = structlog.get_logger()
        log.debug("hidden")
        log.info("session bound", session="phone")
        log.warning("upstream connection failed", error="refused")
        logging.getLogger("aioxmpp.test").error("stdlib trouble")
    return path.read_text().splitlines()


def test_json_under_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = log_some(tmp_path / "out", "json", monkeypatch, journal=True)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["session bound", "upstream connection failed", "stdlib trouble"]
    assert all("timestamp" not in e for e in events)
    assert events[0]["session"] == "phone"


def test_console_under_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = log_some(tmp_path / "out", "console", monkeypatch, journal=True)
    assert lines[0].startswith("<6>[info     ] session bound") and "session=phone" in lines[0]
    assert lines[1].startswith("<4>[warning  ] upstream connection failed")
    assert len(lines) == 3


def test_journal_stream_of_another_file_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # inherited from a service by a process whose stderr is elsewhere: log as usual
    lines = log_some(tmp_path / "out", "json", monkeypatch, journal=False)
    events = [json.loads(line) for line in lines]
    assert all("timestamp" in e for e in events)
