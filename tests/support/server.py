"""What every throwaway XMPP server of the tests shares (Prosody, ejabberd).

Each lives in its own temporary directory and runs as a child process in its own
session; subclasses say how to start, stop and signal it. ``kind`` names the
server for the few tests whose expectations differ by server.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path


class ThrowawayServer:
    kind = ""
    dir: Path
    log_path: Path
    console_path: Path
    port: int
    _proc: subprocess.Popen | None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        self._before_kill()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._proc = None

    def _before_kill(self) -> None:
        """What to let go of before the process disappears."""

    def _signal(self, sig: int) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text()
        try:
            text += self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            pass
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.pid} dir={self.dir}>"
