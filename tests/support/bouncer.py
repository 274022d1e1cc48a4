"""The bouncer as a user runs it: ``python -m bouncer run -c FILE`` in a child process.

Its JSON log lines are collected so tests wait for real events ("upstream
established", "session bound") instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from support.prosody import free_port

REPO = Path(__file__).resolve().parents[2]
DOWNSTREAM_PASSWORD = "downstream-secret"
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "RUNTIME_DIRECTORY")


class Bouncer:
    def __init__(self, base_dir: Path, server, jid: str, password: str, **overrides: dict) -> None:
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server = server  # a Prosody or an ejabberd from tests/support
        self.jid = jid
        self.port = free_port()
        self.config_path = self.dir / "bouncer.yaml"
        config = {
            "upstream": {
                "jid": jid,
                "password": password,
                "host": "127.0.0.1",
                "port": server.port,
                "tls": "starttls",
                "ca_file": str(server.cert_path),
            },
            "listen": {"address": "127.0.0.1", "port": self.port},
            "downstream": {"password": DOWNSTREAM_PASSWORD},
            "storage": {"path": str(self.dir / "bouncer.sqlite")},
            "log": {"format": "json", "level": "debug"},
        }
        for section, values in overrides.items():
            config.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None
        self.events: list[dict] = []
        self._lines: list[str] = []
        self._cond = threading.Condition()

    def start(self, wait_upstream: bool = True, timeout: float = 20, env: dict | None = None,
              wrapper: list[str] | None = None) -> "Bouncer":
        """Run the process (``env``: extra environment variables, e.g. NOTIFY_SOCKET;
        ``wrapper``: a command line the bouncer's own is appended to)."""
        # Never the test runner's own service manager: only what the test passes.
        inherited = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "bouncer", "run", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        RUNNING.add(self)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.wait_event("listening", timeout=timeout)
        if wait_upstream:
            self.wait_event("upstream established", timeout=timeout)
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self._lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
                self._cond.notify_all()

    def count(self, event: str, **fields) -> int:
        with self._cond:
            return sum(1 for e in self.events if _matches(e, event, fields))

    def wait_event(self, event: str, *, timeout: float = 15, after: int = 0, **fields) -> dict:
        """Wait for the (after+1)-th log event called ``event`` with these fields."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if _matches(e, event, fields)]
                if len(found) > after:
                    return found[after]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc and self.proc.poll() is not None and not found):
                    raise AssertionError(f"no {event!r} {fields} in bouncer log:\n{self.log_tail()}")
                self._cond.wait(min(left, 0.5))

    def write_config(self, config: dict) -> None:
        """Replace the config file (a test then sends SIGHUP with :meth:`signal`)."""
        self.config_path.write_text(yaml.safe_dump(config))

    def read_config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.proc.send_signal(sig)

    def log_tail(self, n: int = 40) -> str:
        with self._cond:
            return "".join(self._lines[-n:])

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM; the exit status. A bug the bouncer caught and logged fails the test too."""
        self.assert_no_bug()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"bouncer did not stop on SIGTERM:\n{self.log_tail()}")


    def assert_no_bug(self) -> None:
        """The bouncer survives its own bugs (a handler's exception is logged, the event
        dropped): in a test, one is a failure."""
        with self._cond:
            bugs = [e for e in self.events if e.get("exception")]
        assert not bugs, f"the bouncer logged a bug: {bugs[0]['event']}\n{bugs[0]['exception']}"

    def kill(self) -> None:
        """SIGKILL, for cleaning up after a test that failed before stopping it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# Every bouncer a test started, so none outlives a failed test (see tests/conftest.py).
RUNNING: set[Bouncer] = set()


def kill_leftovers() -> None:
    while RUNNING:
        RUNNING.pop().kill()


def _matches(entry: dict, event: str, fields: dict) -> bool:
    return entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items())


async def bouncer_cli(*args: str) -> tuple[int, str, str]:
    """``python -m bouncer ARGS`` as a user runs it, without blocking the clients' loop."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bouncer", *args, env={**env, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()
