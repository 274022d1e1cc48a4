"""Shared pieces of the benchmarks: servers, sessions, rooms, measuring, printing.

Every benchmark does the same work twice in one run, through the bouncer and
directly on Prosody, each on a fresh Prosody (its per-message CPU grows after
hundreds of logins; see /work/shared/notes/prosody-in-tests.md), and prints
both figures and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.rawxmpp import RawClient
from support import muc
from support.bouncer import DOWNSTREAM_PASSWORD, Bouncer
from support.prosody import Prosody

HOST = "127.0.0.1"
ACCOUNT_NICK = "alice"
NO_HISTORY = "<history maxstanzas='0'/>"
LOGIN_CONCURRENCY = 64  # occupant logins in flight at once while populating rooms


# ---- processes -------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_prosody(workdir: Path) -> Iterator[Prosody]:
    server = Prosody(base_dir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def running_bouncer(workdir: Path, prosody: Prosody, jid: str, password: str,
                    prepare: Callable[[Bouncer], None] | None = None, **config: dict) -> Iterator[Bouncer]:
    """The bouncer for ``jid``, logging at info (debug logs every stanza and would distort figures);
    ``config``: more config sections; ``prepare(bouncer)`` runs before it starts (e.g. fills its database)."""
    bouncer = Bouncer(Path(tempfile.mkdtemp(prefix="bouncer-", dir=workdir)), prosody, jid, password,
                      **{"log": {"level": "info"}, **config})
    if prepare is not None:
        prepare(bouncer)
    bouncer.start()
    try:
        yield bouncer
    except BaseException:
        log(f"bouncer log tail:\n{bouncer.log_tail()}")
        raise
    finally:
        bouncer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat`` utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used by some processes (and this one) between ``start`` and ``stop``."""

    pids: dict[str, int]
    used: dict[str, float] = field(default_factory=dict)
    _before: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        self.used = {name: after[name] - self._before[name] for name in after}
        return self.used

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["benchmark"] = time.process_time()
        return sample


# ---- sessions --------------------------------------------------------------------------
async def occupant(prosody: Prosody, gate: asyncio.Semaphore | None = None) -> RawClient:
    """A fresh user logged in directly on Prosody, in clear text (cheap; loopback only)."""
    jid, password = prosody.new_user("occ")
    async with gate or contextlib.nullcontext():
        return await RawClient.login(HOST, prosody.port, jid, password, tls=False, presence=False)


async def direct_session(prosody: Prosody, jid: str, password: str, resource: str) -> RawClient:
    """A session of the account on Prosody itself, over STARTTLS as a real client would."""
    return await RawClient.login(HOST, prosody.port, jid, password, resource=resource)


async def bouncer_session(bouncer: Bouncer, resource: str) -> RawClient:
    """A session of the account through the bouncer (STARTTLS + PLAIN, the downstream password)."""
    return await RawClient.login(HOST, bouncer.port, bouncer.jid, DOWNSTREAM_PASSWORD, resource=resource)


def abort_all(clients: Sequence[RawClient]) -> None:
    for client in clients:
        client.abort()


SessionFactory = Callable[[str], Awaitable[RawClient]]  # resource -> a logged-in session


@dataclass
class Route:
    """One way for the account's sessions to reach the rooms: through the bouncer or directly."""

    name: str
    prosody: Prosody
    connect: SessionFactory
    bouncer: Bouncer | None = None

    async def timed_connect(self, resource: str) -> tuple[RawClient, float]:
        """A new session and the seconds its login took (TCP, STARTTLS, SASL, bind, presence)."""
        started = time.perf_counter()
        client = await self.connect(resource)
        return client, time.perf_counter() - started

    @property
    def bouncer_pid(self) -> int | None:
        return self.bouncer.proc.pid if self.bouncer is not None else None

    @property
    def pids(self) -> dict[str, int]:
        pids = {"prosody": self.prosody.pid}
        if self.bouncer_pid is not None:
            pids["bouncer"] = self.bouncer_pid
        return pids


ROUTES = ("bouncer", "direct")


@contextlib.contextmanager
def open_route(name: str, workdir: Path, prosody: Prosody) -> Iterator[Route]:
    """A fresh account on ``prosody``; for ``bouncer``, with its bouncer running."""
    jid, password = prosody.new_user("alice")
    if name == "direct":
        yield Route(name, prosody, lambda resource: direct_session(prosody, jid, password, resource))
        return
    with running_bouncer(workdir, prosody, jid, password) as bouncer:
        yield Route(name, prosody, lambda resource: bouncer_session(bouncer, resource), bouncer)


# ---- rooms -----------------------------------------------------------------------------
def room_jid(prosody: Prosody, index: int) -> str:
    return f"room{index}@{prosody.muc_domain}"


def join_presence(room: str, nick: str, history: str = "") -> str:
    return f"<presence to='{room}/{nick}'><x xmlns='{muc.MUC}'>{history}</x></presence>"


@dataclass
class Population:
    """Rooms on a Prosody and the direct occupants sitting in them."""

    rooms: list[str]
    owners: list[RawClient]  # one per room, still recording what they receive
    others: list[RawClient]  # silent: their input is read and dropped

    @property
    def clients(self) -> list[RawClient]:
        return self.owners + self.others


async def populate(prosody: Prosody, rooms: int, occupants: int, history: int,
                   room_config: dict[str, str] | None = None) -> Population:
    """``rooms`` rooms with a subject, ``history`` messages and ``occupants`` direct occupants each
    (``room_config``: owner form fields, e.g. ``{"muc#roomconfig_enablearchiving": "0"}``)."""
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
    jids = [room_jid(prosody, i) for i in range(1, rooms + 1)]
    filled = await asyncio.gather(*(_populate_room(prosody, room, occupants, history, gate, room_config)
                                     for room in jids))
    others = [client for _owner, rest in filled for client in rest]
    for client in others:
        client.discard()
    return Population(jids, [owner for owner, _rest in filled], others)


@contextlib.asynccontextmanager
async def populated_route(
    workdir: Path, route_name: str, args: argparse.Namespace
) -> AsyncIterator[tuple[Route, Population]]:
    """A fresh Prosody with rooms as ``args`` say (see :func:`add_room_options`) and the route to them."""
    with fresh_prosody(workdir) as prosody:
        population = await populate(prosody, args.rooms, args.occupants, args.history)
        try:
            with open_route(route_name, workdir, prosody) as route:
                yield route, population
        finally:
            abort_all(population.clients)


async def _populate_room(prosody: Prosody, room: str, occupants: int, history: int, gate: asyncio.Semaphore,
                         room_config: dict[str, str] | None = None) -> tuple[RawClient, list[RawClient]]:
    owner = await occupant(prosody, gate)
    await muc.create_room(owner, room, "owner", config=room_config)
    owner.send_xml(f"<message to='{room}' type='groupchat'><subject>Benchmark room {room}</subject></message>")
    for i in range(history):
        muc.send_groupchat(owner, room, f"history {i}")
    if history:
        await owner.wait_for(muc.groupchat(room, f"history {history - 1}"), 30)
    rest = await asyncio.gather(*(_sit_in(prosody, room, f"occupant{i}", gate) for i in range(1, occupants)))
    return owner, list(rest)


async def _sit_in(prosody: Prosody, room: str, nick: str, gate: asyncio.Semaphore) -> RawClient:
    client = await occupant(prosody, gate)
    await muc.join(client, room, nick, history=NO_HISTORY, timeout=30)
    return client


class JoinWatch:
    """A data handler that notes when every room sent its self-presence (110) and subject.

    It scans decrypted bytes, it parses no XML (20 sessions joining at once must cost this
    process little): a self-presence is the ``<presence`` before a status code 110, a subject
    the ``<message`` before a ``<subject``; any ``<error`` fails the join.
    """

    _MARKS = (  # one pattern each, with a literal prefix: several times faster than one alternation
        (re.compile(rb"""code=['"]110['"]"""), b"self", b"<presence"),
        (re.compile(rb"<subject[\s/>]"), b"subject", b"<message"),
        (re.compile(rb"<error[\s/>]"), None, b""),
    )
    _FROM = re.compile(rb"""\sfrom=['"]([^'"/]+)""")
    _LONGEST_MARK = 11  # bytes: a mark split across two reads is found in the second
    _KEEP = 16384  # bytes kept from the previous reads: more than any stanza's start tag

    def __init__(self, rooms: Sequence[str]) -> None:
        self.missing = {room.encode(): {b"self", b"subject"} for room in rooms}
        self.left = 2 * len(rooms)
        self.stanzas = 0  # <presence and <message start tags seen (one split across reads is missed)
        self.finished: float | None = None
        self.failed: bytes | None = None
        self.done = asyncio.Event()
        self._buf = b""
        self._scan_from = 0  # in _buf: where a new mark may start (one found twice counts once)

    def __call__(self, data: bytes, _now: float) -> None:
        if self.done.is_set():
            return
        self.stanzas += data.count(b"<presence") + data.count(b"<message")
        buf = self._buf + data
        for pattern, what, tag in self._MARKS:
            for m in pattern.finditer(buf, self._scan_from):
                if what is None:
                    self.failed = buf[max(0, m.start() - 300):m.end() + 200]
                    self.done.set()
                    return
                start = buf.rfind(tag, 0, m.start())
                found = self._FROM.search(buf, start, buf.index(b">", start)) if start >= 0 else None
                missing = self.missing.get(found[1]) if found else None
                if missing is not None and what in missing:
                    self._got(missing, what)
        cut = max(0, len(buf) - self._KEEP)
        self._buf = buf[cut:]
        self._scan_from = max(0, len(buf) - self._LONGEST_MARK + 1 - cut)

    def _got(self, missing: set[bytes], what: bytes) -> None:
        missing.discard(what)
        self.left -= 1
        if self.left == 0:
            self.finished = time.perf_counter()
            self.done.set()


@dataclass(frozen=True)
class JoinResult:
    seconds: float
    stanzas: int  # everything the session received while joining


async def join_many(clients: Sequence[RawClient], rooms: Sequence[str], nick: str = ACCOUNT_NICK,
                    history: str = "", timeout: float = 60) -> list[JoinResult]:
    """Every client joins every room, all at once (pipelined); each client's time from the
    first join sent (by any of them) until its last self-presence and subject arrived."""
    watches = [JoinWatch(rooms) for _ in clients]
    for client, watch in zip(clients, watches, strict=True):
        client.on_data(watch)
    joins = "".join(join_presence(room, nick, history) for room in rooms)
    started = time.perf_counter()
    for client in clients:
        client.send_xml(joins)
    await asyncio.wait_for(asyncio.gather(*(watch.done.wait() for watch in watches)), timeout)
    for watch in watches:
        if watch.failed is not None:
            raise RuntimeError(f"join failed: {watch.failed!r}")
    return [JoinResult(watch.finished - started, watch.stanzas) for watch in watches]  # type: ignore[operator]


async def join_all(client: RawClient, rooms: Sequence[str], nick: str = ACCOUNT_NICK,
                   history: str = "", timeout: float = 60) -> JoinResult:
    """Join every room at once (pipelined); further input goes to a byte handler (``on_data``)."""
    return (await join_many([client], rooms, nick, history, timeout))[0]


# ---- figures -----------------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(slower: float, faster: float) -> float:
    return slower / faster if faster > 0 else float("inf")


def cpu_per(cpu: dict[str, float], count: int) -> str:
    """CPU per operation of each measured process, e.g. ``bouncer 20.0 ms  prosody 1.0 ms``."""
    return "  ".join(f"{name} {ms(seconds / count)}" for name, seconds in sorted(cpu.items()))


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print(line)
    print(line, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(text: str) -> None:
    print(text, flush=True)


# ---- running ---------------------------------------------------------------------------------
def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    return parser


def add_room_options(parser: argparse.ArgumentParser, repeat_help: str) -> None:
    """The busy-rooms scenario shared by join_rooms.py and reconnect.py."""
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--occupants", type=int, default=50, help="direct occupants per room")
    parser.add_argument("--history", type=int, default=20, help="messages in each room before the account joins")
    parser.add_argument("--repeat", type=int, default=7, help=repeat_help)
    add_profile_option(parser)


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", action="store_true",
                        help="sample the bouncer with py-spy during the measured trials and print its hot "
                             "functions (pip install py-spy)")


def run(main: Callable[[Path], Awaitable[bool]], keep: bool = False) -> None:
    """Run ``main(workdir)`` in a fresh temporary directory; exit 0 when its targets are met."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    log(f"{os.cpu_count()} CPUs, load average {load_average()} (other work on the machine skews the figures)")
    try:
        met = asyncio.run(main(workdir))
        log(f"load average at the end: {load_average()}")
    finally:
        if keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if met else 1)


def run_room_benchmark(doc: str, measure, report, repeat_help: str) -> None:
    """The command line of join_rooms.py and reconnect.py: every route measured, then reported."""
    parser = argument_parser(doc.splitlines()[0])
    add_room_options(parser, repeat_help=repeat_help)
    args = parser.parse_args()

    async def main(workdir: Path) -> bool:
        outcomes = {name: await measure(workdir, name, args) for name in ROUTES}
        return report(outcomes, args)

    run(main, keep=args.keep)
