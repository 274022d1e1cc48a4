"""sd_notify without libsystemd: datagrams to NOTIFY_SOCKET, the watchdog interval."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from bouncer.notify import Notifier


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_path_socket(tmp_path) -> None:
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        assert notifier.ready("ready: upstream alice@example.org, 0 sessions")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready: upstream alice@example.org, 0 sessions"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        notifier.close()


def test_abstract_socket() -> None:
    name = f"bouncer-unit-{secrets.token_hex(6)}"
    with receiver(b"\0" + name.encode()) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("upstream: connecting (attempt 3)")
        assert sock.recv(4096) == b"STATUS=upstream: connecting (attempt 3)"
        assert notifier.reloading()
        lines = sock.recv(4096).decode().splitlines()
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        assert int(lines[1].split("=")[1]) > 0
        notifier.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False and notifier.watchdog() is False
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_a_vanished_socket_is_not_an_error(tmp_path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False  # still no exception
    notifier.close()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "200000"}, 0.1),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env, interval) -> None:
    assert Notifier(env).watchdog_interval == interval
