"""Sampling a running bouncer with py-spy (``pip install py-spy``) and summarising the stacks.

``PySpy(pid, path)`` attaches to the process we started (never by name),
records raw collapsed stacks until ``stop()``, and ``top_functions`` turns them
into the busiest functions by own time and by inclusive time.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


class PySpy:
    """``py-spy record`` attached to ``pid`` between ``start()`` and ``stop()``."""

    def __init__(self, pid: int, output: Path, rate: int = 500) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self._proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "--format", "raw", "-r", str(self.rate),
             "-p", str(self.pid), "-o", str(self.output)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self._proc.stdout is not None
        for line in self._proc.stdout:  # attached once it says it samples
            if "Sampling process" in line:
                return
        raise RuntimeError(f"py-spy could not attach to {self.pid}")

    def stop(self) -> Path:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        self._proc.communicate(timeout=30)
        return self.output


@dataclass(frozen=True)
class Hot:
    function: str
    samples: int
    share: float


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (to/file.py)``."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = "/".join(Path(m.group(2)).parts[-2:])
    return f"{m.group(1)} ({path})"


def top_functions(raw: Path, limit: int = 15) -> tuple[int, list[Hot], list[Hot]]:
    """(total samples, busiest by own time, busiest by inclusive time) from a raw py-spy file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        frames = [_function(f) for f in m.group(1).split(";")]
        count = int(m.group(2))
        total += count
        own[frames[-1]] += count
        for fn in set(frames):
            inclusive[fn] += count

    def ranked(counter: Counter[str]) -> list[Hot]:
        return [Hot(fn, n, n / total) for fn, n in counter.most_common(limit)]

    return total, ranked(own), ranked(inclusive)


def print_profile(raw: Path, limit: int = 15) -> None:
    total, own, inclusive = top_functions(raw, limit)
    print(f"\npy-spy: {total} samples of the bouncer while busy ({raw})")
    for title, rows in (("own time", own), ("inclusive time", inclusive)):
        print(f"  top by {title}:")
        for hot in rows:
            print(f"    {hot.share * 100:5.1f}%  {hot.samples:6d}  {hot.function}")


def merge_raw(parts: list[Path], output: Path) -> Path:
    """One raw py-spy file of several (blocks sampled apart, e.g. only the measured part of each trial)."""
    output.write_text("".join(part.read_text() for part in parts))
    return output


@contextlib.contextmanager
def profiled(pid: int | None, output: Path, limit: int = 15, show: bool = True) -> Iterator[None]:
    """Sample ``pid`` with py-spy for the duration of the block and print its hot functions
    (``show`` False: only record them, e.g. for :func:`merge_raw`).

    ``pid`` None: no profiling (the block just runs).
    """
    if pid is None:
        yield
        return
    spy = PySpy(pid, output)
    spy.start()
    try:
        yield
    finally:
        spy.stop()
    if show:
        print_profile(output, limit)
