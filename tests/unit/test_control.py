"""The control socket behind `bouncer status`: path, protocol, presentation, CLI errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bouncer import control, report
from bouncer.cli import main
from bouncer.config import ConfigError

REPO = Path(__file__).parents[2]


def test_socket_path_is_next_to_the_database_or_in_the_runtime_directory() -> None:
    assert control.socket_path("/var/lib/bouncer/bouncer.sqlite", {}) == "/var/lib/bouncer/bouncer.control"
    assert control.socket_path("/srv/x/alice.db", {}) == "/srv/x/alice.control"
    env = {"RUNTIME_DIRECTORY": "/run/bouncer:/run/other"}
    assert control.socket_path("/var/lib/bouncer/bouncer.sqlite", env) == "/run/bouncer/bouncer.control"


def test_storage_path_of_resolves_like_load_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bouncer.yaml"
    config.write_text("storage: {path: state/b.sqlite}\nupstream: {password_file: /nonexistent}\n")
    assert control.storage_path_of(str(config)) == str(tmp_path / "state" / "b.sqlite")
    config.write_text("upstream: {jid: a@b}\n")  # default path, next to the file
    assert control.storage_path_of(str(config)) == str(tmp_path / "bouncer.sqlite")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config.write_text("storage: {path: ~/b.sqlite}\n")
    assert control.storage_path_of(str(config)) == str(tmp_path / "home" / "b.sqlite")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        control.storage_path_of(str(tmp_path / "missing.yaml"))


async def serve(path: str, handler=None) -> control.ControlServer:
    server = control.ControlServer(path, handler or (lambda req: {"ok": True, "status": {"echo": req}}))
    await server.start()
    return server


async def test_one_request_line_one_response_line(tmp_path: Path) -> None:
    path = str(tmp_path / "bouncer.control")
    server = await serve(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    response = await asyncio.to_thread(control.request, path, "status")
    assert response == {"ok": True, "status": {"echo": {"command": "status"}}}
    assert await asyncio.to_thread(control.request, path, "ping") == {"ok": True}

    def raw(data: bytes) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(data)
            return json.loads(sock.makefile("rb").readline())

    assert (await asyncio.to_thread(raw, b"not json\n"))["ok"] is False
    assert (await asyncio.to_thread(raw, b"[1]\n"))["ok"] is False
    await server.close()
    assert not os.path.exists(path)


async def test_a_failing_handler_is_an_error_answer(tmp_path: Path) -> None:
    path = str(tmp_path / "bouncer.control")

    def broken(_request):
        raise RuntimeError("bug")

    server = await serve(path, broken)
    response = await asyncio.to_thread(control.request, path, "status")
    assert response["ok"] is False and "internal error" in response["error"]
    await server.close()


async def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "bouncer.control")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a crashed process
    with pytest.raises(control.NotRunning, match="refuses connections"):
        control.request(path, "status")
    server = await serve(path)
    with pytest.raises(control.AlreadyRunning):
        await serve(path)
    assert (await asyncio.to_thread(control.request, path, "ping"))["ok"]
    await server.close()


async def test_a_path_too_long_for_sun_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "bouncer.control")
    assert len(path) > 108
    server = await serve(path)
    assert os.path.exists(path)
    assert (await asyncio.to_thread(control.request, path, "ping"))["ok"]
    await server.close()
    assert not os.path.exists(path)


def test_status_when_nothing_runs(tmp_path: Path) -> None:
    config = tmp_path / "bouncer.yaml"
    config.write_text("storage: {path: ./b.sqlite}\n")
    result = subprocess.run(
        [sys.executable, "-m", "bouncer", "status", "-c", str(config)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"bouncer: no bouncer is running for {config}: "
                             f"no control socket at {tmp_path / 'b.control'}\n")


def test_status_with_a_stale_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bouncer.yaml"
    config.write_text("")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(tmp_path / "bouncer.control"))
    assert main(["status", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bouncer: no bouncer is running for {config}: ") and "refuses connections" in err


def test_status_without_a_config_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


STATUS = {
    "account": "alice@example.org",
    "upstream": {"connected": True, "jid": "alice@example.org/bouncer", "server": "192.0.2.1:5222",
                 "connected_since": 1_000_000.0, "reconnects": 2, "queued": 0},
    "sessions": [
        {"resource": "phone", "client": "192.0.2.7:40000", "since": 1_003_000.0, "available": True,
         "csi": "inactive", "sm": "enabled", "rooms": ["room@muc.example.org"]},
        {"resource": "laptop", "client": "127.0.0.1:5000", "since": 1_003_500.0, "available": False,
         "csi": "active", "sm": None, "rooms": []},
    ],
    "rooms": [{"room": "room@muc.example.org", "nick": "alice", "joined": True, "occupants": 12,
               "sessions": ["phone"], "last_message": 1_003_590.0, "archived": 340},
              {"room": "quiet@muc.example.org", "nick": "al", "joined": False, "occupants": 0,
               "sessions": [], "last_message": None, "archived": 0}],
    "devices": [{"resource": "laptop", "last_seen": 1_003_500.0, "backlog": 0},
                {"resource": "tablet", "last_seen": 1_000_000.0, "backlog": 3}],
    "stored": 3,
    "bouncer": {"version": "0.1.0", "pid": 42, "started": 999_000.0, "ready": True,
                "config": "/etc/bouncer/bouncer.yaml", "listen": ["127.0.0.1:5222"]},
}


def test_format_status() -> None:
    text = report.format_status(STATUS, now=1_003_600.0)
    lines = text.splitlines()
    assert lines[0] == "bouncer 0.1.0 for alice@example.org, pid 42, up 1h 16m"
    assert lines[1:3] == ["  config: /etc/bouncer/bouncer.yaml", "  listening: 127.0.0.1:5222"]
    assert lines[3].startswith("upstream: connected as alice@example.org/bouncer via 192.0.2.1:5222 since ")
    assert lines[3].endswith("(1h 0m), 2 reconnects")
    assert lines[4] == "sessions: 2"
    assert lines[5].startswith("  phone  from 192.0.2.7:40000 since ")
    assert lines[5].endswith("(10m 0s), available, csi inactive, sm enabled, rooms: room@muc.example.org")
    assert lines[6].endswith("(1m 40s), no presence, csi active, sm off, rooms: none")
    assert lines[7] == "rooms: 2"
    assert lines[8].startswith("  room@muc.example.org as alice: 12 occupants, 1 session (phone), last message ")
    assert lines[8].endswith(", 340 archived")
    assert lines[9] == "  quiet@muc.example.org as al (not joined): 0 occupants, 0 sessions, 0 archived"
    assert lines[10] == "devices: 2"
    assert lines[11].startswith("  laptop: last seen ") and lines[11].endswith("(1m 40s), 0 stanzas waiting")
    assert lines[12].endswith("(1h 0m), 3 stanzas waiting")
    assert lines[13] == "mailbox: 3 stanzas kept for devices"


def test_format_status_while_connecting() -> None:
    status = {"account": "a@b", "upstream": {"connected": False, "attempt": 3, "failures": 2,
                                             "last_error": "ConnectionRefusedError: refused"},
              "sessions": [], "rooms": []}
    assert report.format_status(status).splitlines() == [
        "upstream: connecting (attempt 3), last error: ConnectionRefusedError: refused",
        "sessions: 0",
        "rooms: 0",
        "devices: 0",
    ]
