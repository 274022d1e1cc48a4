"""Issue 5: the bouncer as a service: sd_notify, SIGHUP, `bouncer status`, SIGTERM, units.

The process is started as systemd would start it: with NOTIFY_SOCKET pointing at a
datagram socket the test binds (an abstract one, '@name', as systemd uses) and
WATCHDOG_USEC set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bouncer.tls import ensure_certificate, fingerprint
from integration_setup import make_setup
from support.bouncer import REPO, bouncer_cli
from support.clients import body_is, close, connect
from support.muc import create_room, groupchat, join, send_groupchat
from support.prosody import free_port


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: records every message it gets."""

    def __init__(self) -> None:
        self.name = f"@bouncer-test-{os.getpid()}-{secrets.token_hex(6)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.name[1:].encode())
        self._sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.name}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def wait(self, pred, timeout: float = 15, what: str = "") -> int:
        """Index of the first message (so far or to come) for which ``pred`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, message in enumerate(self.messages):
                    if pred(message):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no notification {what}; got {self.messages[-20:]}")
                self._cond.wait(left)

    def count(self, pred) -> int:
        with self._cond:
            return sum(1 for m in self.messages if pred(m))

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@pytest.fixture
def notify():
    sock = NotifySocket()
    yield sock
    sock.close()


def is_ready(m: dict) -> bool:
    return m.get("READY") == "1"


def status_has(text: str):
    return lambda m: text in m.get("STATUS", "")


def control_socket(s) -> Path:
    return s.bouncer.dir / "bouncer.control"


# --- readiness and watchdog -------------------------------------------------------------------

async def test_ready_only_after_upstream_login_and_watchdog_keeps_pinging(prosody_factory, tmp_path, notify):
    server = prosody_factory()  # not started yet: the upstream login cannot happen
    s = make_setup(server, tmp_path)
    s.bouncer.start(wait_upstream=False, env=notify.env(watchdog_usec=200_000))
    notify.wait(status_has("upstream: connecting (attempt 2)"), what="connecting (attempt 2)")
    s.bouncer.wait_event("upstream connection failed")
    notify.wait(lambda m: notify_count_at_least(notify, 2), what="pings while starting")
    assert notify.count(is_ready) == 0  # pinging, listening, but not ready without the upstream
    # the listener is up meanwhile: clients can already log in
    early = await connect(f"{s.alice}/early", s.password, s.port)

    server.start()
    ready = notify.wait(is_ready, timeout=20, what="READY=1")
    s.bouncer.wait_event("upstream established")
    assert notify.messages[ready]["STATUS"] == f"ready: upstream {s.alice}, 1 session"
    before = [m["STATUS"] for m in notify.messages[:ready] if "STATUS" in m]
    assert before[0] == "starting" and all("upstream: connecting (attempt" in x for x in before[1:]), before
    await close(early)
    notify.wait(status_has(f"ready: upstream {s.alice}, 0 sessions"), what="0 sessions")

    # WATCHDOG=1 keeps arriving, every WATCHDOG_USEC/2 (0.1 s)
    pings = notify.count(lambda m: m.get("WATCHDOG") == "1")
    started = time.monotonic()
    notify.wait(lambda m: notify_count_at_least(notify, pings + 5), what="5 more pings")
    assert time.monotonic() - started < 2.5

    assert s.bouncer.stop() == 0
    notify.wait(lambda m: m.get("STOPPING") == "1", what="STOPPING=1")
    assert notify.count(is_ready) == 1


def notify_count_at_least(notify: NotifySocket, n: int) -> bool:
    return sum(1 for m in notify.messages if m.get("WATCHDOG") == "1") >= n


# --- SIGHUP -----------------------------------------------------------------------------------

def peer_cert_sha256_direct(port: int) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def peer_cert_sha256(client) -> str:
    """The certificate a logged-in slixmpp client got."""
    der = client.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def hex_of(cert_path: str) -> str:
    return fingerprint(cert_path).replace(":", "").lower()


async def test_sighup_applies_log_level_and_certificate_without_dropping_sessions(prosody, tmp_path):
    cert1, key1, _ = ensure_certificate(str(tmp_path / "cert1"), prosody.domain)
    cert2, key2, _ = ensure_certificate(str(tmp_path / "cert2"), prosody.domain)
    direct = free_port()
    s = make_setup(prosody, tmp_path, log={"level": "info"},
                   listen={"cert": cert1, "key": key1, "direct_tls_port": direct})
    s.bouncer.start()
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, direct, direct_tls=True)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    assert await asyncio.to_thread(peer_cert_sha256_direct, direct) == hex_of(cert1)

    # at info, a status request logs nothing
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0
    config = s.bouncer.read_config()
    config["log"]["level"] = "debug"
    config["listen"].update(cert=cert2, key=key2)
    s.bouncer.write_config(config)
    s.bouncer.signal(signal.SIGHUP)
    reloaded = s.bouncer.wait_event("config reloaded")
    # (downstream.credentials too: a plain downstream.password gets a new salt each read)
    assert {"log.level", "listen.cert", "listen.key"} <= set(reloaded["changed"])
    assert s.bouncer.count("control request") == 0
    # at debug it does
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0
    s.bouncer.wait_event("control request", command="status")
    # new handshakes, STARTTLS and direct TLS, get the new certificate
    assert await asyncio.to_thread(peer_cert_sha256_direct, direct) == hex_of(cert2)
    c = await connect(f"{s.alice}/C", s.password, s.port)  # STARTTLS
    assert peer_cert_sha256(c) == hex_of(cert2) and peer_cert_sha256(a) == hex_of(cert1)

    # and back to info: debug events disappear again
    config["log"]["level"] = "info"
    s.bouncer.write_config(config)
    s.bouncer.signal(signal.SIGHUP)
    s.bouncer.wait_event("config reloaded", after=1)
    seen = s.bouncer.count("control request")
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0
    s.bouncer.signal(signal.SIGHUP)  # a marker: everything logged before it has been read
    s.bouncer.wait_event("config reloaded", after=2)
    assert s.bouncer.count("control request") == seen

    # nobody was dropped, and both sessions still chat both ways
    assert not a.disconnected_event.is_set() and not b.disconnected_event.is_set()
    assert s.bouncer.count("session closed") == 0
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>after reload</body></message>")
    await a.wait_for(body_is("after reload"))
    await b.wait_for(body_is("after reload"))
    b.send_xml(f"<message to='{s.bob}' type='chat'><body>B still here</body></message>")
    await bob.wait_for(body_is("B still here"))
    await close(a, b, c, bob)
    assert s.bouncer.stop() == 0


async def test_sighup_with_a_broken_config_keeps_the_old_one(prosody, tmp_path):
    s = make_setup(prosody, tmp_path, log={"level": "info"})
    s.bouncer.start()
    a = await connect(f"{s.alice}/A", s.password, s.port)
    good = s.bouncer.read_config()

    broken = json.loads(json.dumps(good))
    broken["log"]["level"] = "debug"
    broken["limits"] = {"iq_timeout": -1}
    s.bouncer.write_config(broken)
    s.bouncer.signal(signal.SIGHUP)
    failed = s.bouncer.wait_event("reload failed")
    assert failed["key"] == "limits.iq_timeout" and "positive number" in failed["problem"]
    assert failed["level"] == "error"
    # the old level is still in force: a status request logs no debug event
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0

    # a change that needs a restart is said so; the rest applies
    moved = json.loads(json.dumps(good))
    moved["listen"]["port"] = free_port()
    moved["log"]["level"] = "debug"
    s.bouncer.write_config(moved)
    s.bouncer.signal(signal.SIGHUP)
    s.bouncer.wait_event("reload needs restart", key="listen.port")
    assert "log.level" in s.bouncer.wait_event("config reloaded")["changed"]
    assert s.bouncer.count("control request") == 0  # nothing debug was logged before
    c = await connect(f"{s.alice}/C", s.password, s.port)  # still on the old port
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0
    s.bouncer.wait_event("control request", command="status")
    assert not a.disconnected_event.is_set()
    await close(a, c)
    assert s.bouncer.stop() == 0


# --- bouncer status ---------------------------------------------------------------------------

async def test_status_shows_upstream_sessions_and_rooms(setup):
    s = setup
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, s.port)
    carol = await connect(*s.server.new_user("carol"), s.server.port)
    room = f"status-{s.alice.split('@')[0]}@{s.server.muc_domain}"
    await create_room(carol, room, "carol")
    await join(a, room, "alice")
    await join(b, room, "alice")
    send_groupchat(carol, room, "counted")
    await a.wait_for(groupchat(room, "counted"))
    await b.wait_for(groupchat(room, "counted"))
    path = control_socket(s)
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600

    code, out, err = await bouncer_cli("status", "-c", str(s.bouncer.config_path))
    assert (code, err) == (0, ""), err
    assert re.search(rf"^upstream: connected as {re.escape(s.alice)}/\S+ via 127\.0\.0\.1:{s.server.port} "
                     r"since .*, 0 reconnects$", out, re.M), out
    assert re.search(r"^  stream management, resumable for \d+ s, \d+ unacknowledged$", out, re.M), out
    assert re.search(r"^sessions: 2$", out, re.M) and re.search(r"^rooms: 1$", out, re.M), out
    for resource in ("A", "B"):
        assert re.search(rf"^  {resource}  from 127\.0\.0\.1:\d+ since .*, available, csi active, "
                         rf"sm off, rooms: {re.escape(room)}$", out, re.M), out
    assert re.search(rf"^  {re.escape(room)}.*2 occupants.*2 sessions \(A, B\).*1 archived", out, re.M), out

    code, out, err = await bouncer_cli("status", "-c", str(s.bouncer.config_path), "--json")
    assert (code, err) == (0, ""), err
    status = json.loads(out)
    assert status["upstream"]["connected"] is True
    assert status["upstream"]["jid"].startswith(s.alice + "/")
    assert status["upstream"]["reconnects"] == 0 and status["upstream"]["connected_since"] > 0
    sm = status["upstream"]["sm"]
    assert sm["resumable"] is True and sm["max"] > 0 and sm["received"] > 0
    assert sorted(x["resource"] for x in status["sessions"]) == ["A", "B"]
    for session in status["sessions"]:
        assert session["client"].startswith("127.0.0.1:") and session["since"] > 0
        assert session["csi"] == "active" and session["rooms"] == [room]
    (held,) = status["rooms"]
    assert (held["room"], held["nick"], held["occupants"], held["sessions"], held["archived"]) == (
        room, "alice", 2, ["A", "B"], 1)
    assert held["last_message"] > 0
    assert status["bouncer"]["pid"] == s.bouncer.proc.pid and status["bouncer"]["ready"] is True
    await close(a, b, carol)


async def test_status_when_nothing_runs_exits_1(prosody, tmp_path):
    s = make_setup(prosody, tmp_path)
    code, out, err = await bouncer_cli("status", "-c", str(s.bouncer.config_path))
    assert (code, out) == (1, "")
    assert err == (f"bouncer: no bouncer is running for {s.bouncer.config_path}: "
                   f"no control socket at {control_socket(s)}\n")
    # and after a run: the socket is gone again
    s.bouncer.start()
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 0
    assert s.bouncer.stop() == 0
    assert not control_socket(s).exists()
    assert (await bouncer_cli("status", "-c", str(s.bouncer.config_path)))[0] == 1


async def test_a_second_bouncer_for_the_same_config_refuses_to_start(setup):
    code, _, err = await bouncer_cli("run", "-c", str(setup.bouncer.config_path))
    assert code == 1
    last = err.splitlines()[-1]
    assert last == (f"bouncer: a bouncer is already running for this config "
                    f"(its control socket {control_socket(setup)} answers)"), err
    assert (await bouncer_cli("status", "-c", str(setup.bouncer.config_path)))[0] == 0


# --- SIGTERM ----------------------------------------------------------------------------------

async def test_sigterm_sends_system_shutdown_and_exits_0(prosody, tmp_path, notify):
    s = make_setup(prosody, tmp_path)
    s.bouncer.start(env=notify.env())
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, s.port)
    started = time.monotonic()
    s.bouncer.signal(signal.SIGTERM)  # and wait without blocking the clients' loop
    assert await asyncio.to_thread(s.bouncer.proc.wait, 10) == 0, s.bouncer.log_tail()
    assert time.monotonic() - started < 2
    for client in (a, b):
        await asyncio.wait_for(client.disconnected_event.wait(), 5)
        assert client.stream_errors == ["system-shutdown"]
    notify.wait(lambda m: m.get("STOPPING") == "1", what="STOPPING=1")
    s.bouncer.wait_event("upstream stopped")
    s.bouncer.wait_event("stopped")
    assert s.bouncer.count("upstream close timed out") == 0
    assert not control_socket(s).exists()


# What systemd's MemoryDenyWriteExecute=yes enforces, without systemd: the kernel's
# PR_SET_MDWE (Linux >= 6.3; inherited across execve) refuses memory both writable and
# executable, then execs the rest of the command line.
WRITE_XOR_EXECUTE = [sys.executable, "-c",
                     "import ctypes, os, sys\n"
                     "assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0, 'no PR_SET_MDWE'\n"
                     "os.execv(sys.argv[1], sys.argv[1:])"]


async def test_runs_with_write_xor_execute_memory(prosody, tmp_path):
    """The units set MemoryDenyWriteExecute=yes: the whole bouncer, upstream TLS with
    certificate checks and SCRAM included, must work without W+X memory (aioxmpp's
    pyOpenSSL verification callback needed it)."""
    s = make_setup(prosody, tmp_path)
    s.bouncer.start(wrapper=WRITE_XOR_EXECUTE)  # upstream: STARTTLS, verified against ca_file
    a = await connect(f"{s.alice}/A", s.password, s.port)  # downstream: STARTTLS, SCRAM
    bob = await connect(s.bob, s.bob_password, prosody.port)
    bob.send_message(mto=f"{s.alice}/A", mbody="w^x", mtype="chat")
    await a.wait_for(body_is("w^x"))
    await close(a, bob)
    assert s.bouncer.stop() == 0, s.bouncer.log_tail()


# --- unit files -------------------------------------------------------------------------------

UNITS = REPO / "systemd"


@pytest.mark.parametrize(("unit", "name", "user"), [
    ("bouncer.service", "bouncer.service", False),
    ("bouncer@.service", "bouncer@alice.service", False),
    ("bouncer-user.service", "bouncer-user.service", True),
])
def test_systemd_analyze_verify_passes(tmp_path, unit, name, user):
    # ExecStart must name an existing executable: the installed bouncer stands in for the
    # documented /opt/bouncer/bin/bouncer (or ~/.local/bin/bouncer).
    executable = shutil.which("bouncer") or sys.executable
    text = (UNITS / unit).read_text()
    text = text.replace("/opt/bouncer/bin/bouncer", executable).replace("%h/.local/bin/bouncer", executable)
    (tmp_path / unit).write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", str(tmp_path / name)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    # Unknown keys and bad values are only warnings for verify: none may be printed.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
