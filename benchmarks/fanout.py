"""(b) Room fan-out: 1, 5 and 20 sessions of the account receiving a burst of groupchat.

A direct occupant sends 1000 messages as fast as it can, each body carrying
its sequence number and send time. The account's sessions (raw clients that
only count bodies) are joined either through the bouncer (one upstream
occupant, fanned out by the bouncer) or directly on Prosody as one
multi-session occupant (every session joins with the same nick). Reported:
messages/s at the slowest receiver, deliveries/s, latency p50/p99 (send to
receipt, queueing included: it is a burst), CPU of the bouncer and Prosody
(/proc/PID/stat) and of this benchmark process, lost and duplicated messages.
Target: at 20 sessions at least the direct messages/s, nothing lost or duplicated.

    python benchmarks/fanout.py [--sessions 1 5 20] [--messages 1000] [--profile [N ...]]
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
from common import ROUTES, CpuMeter, Route, log, ms, muc
from profiling import PySpy, profiled
from support.rawxmpp import RawClient

PREFIX = "bench"
BODY = re.compile(rb"<body[^>]*>" + PREFIX.encode() + rb" (\d+) ([\d.]+)</body>")
MAX_BODY = 128  # bytes: longer than any whole benchmark <body> element
SETTLE = 0.5  # seconds to wait after the last message for late duplicates


class Receiver:
    """Counts benchmark bodies in a session's raw bytes: arrivals per sequence number, latencies.

    It scans the decrypted stream with one regular expression instead of
    parsing XML, so that 20 receivers in this process stay cheap next to the
    bouncer and Prosody on the same cores.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.counts = [0] * expected
        self.unique = 0
        self.latencies: list[float] = []
        self.last = 0.0
        self._tail = b""  # the end of the previous chunk: a body may be split across reads

    def __call__(self, data: bytes, now: float) -> None:
        buf = self._tail + data
        end = 0
        for m in BODY.finditer(buf):
            self._arrived(int(m[1]), float(m[2]), now)
            end = m.end()
        self._tail = buf[max(end, len(buf) - MAX_BODY):]

    def _arrived(self, seq: int, sent: float, now: float) -> None:
        """Latency and time of the first arrival of each message; repeats are only counted."""
        if self.counts[seq] == 0:
            self.unique += 1
            self.latencies.append(now - sent)
            self.last = now
        self.counts[seq] += 1

    @property
    def duplicates(self) -> int:
        return sum(self.counts) - self.unique

    @property
    def lost(self) -> int:
        return self.expected - self.unique


@dataclass
class Outcome:
    route: str
    sessions: int
    messages: int
    started: float
    receivers: list[Receiver]
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """From the first send until the slowest receiver had its last message."""
        return max((r.last for r in self.receivers if r.unique), default=self.started) - self.started

    @property
    def rate(self) -> float:
        """Messages per second at the slowest receiver."""
        return min(r.unique / (r.last - self.started) if r.unique else 0.0 for r in self.receivers)

    @property
    def deliveries(self) -> float:
        seconds = self.seconds
        return sum(r.unique for r in self.receivers) / seconds if seconds > 0 else 0.0

    def latency(self, pct: float) -> float:
        return common.percentile([x for r in self.receivers for x in r.latencies], pct)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.receivers)

    @property
    def duplicates(self) -> int:
        return sum(r.duplicates for r in self.receivers)


def send_burst(sender: RawClient, room: str, count: int) -> None:
    for i in range(count):
        sender.send_xml(f"<message to='{room}' type='groupchat' id='b{i}'>"
                        f"<body>{PREFIX} {i} {time.monotonic():.6f}</body></message>")


async def wait_received(receivers: list[Receiver], quiet: float, timeout: float) -> None:
    """Until every receiver has every message, or nothing arrived for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(r.unique for r in receivers)
        if all(r.unique == r.expected for r in receivers):
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        await asyncio.sleep(0.01)


async def join_sessions(route: Route, room: str, sessions: int) -> list[RawClient]:
    """The account's sessions, each joined to the room with the same nick, one after another."""
    clients = []
    for i in range(sessions):
        client = await route.connect(f"r{i}")
        await common.join_all(client, [room], history=common.NO_HISTORY)
        clients.append(client)
    return clients


async def measure(workdir: Path, route_name: str, sessions: int, args, profile: bool) -> Outcome:
    with common.fresh_prosody(workdir) as prosody:
        room = common.room_jid(prosody, 1)
        sender = await common.occupant(prosody)
        await muc.create_room(sender, room, "sender")
        sender.discard()  # its reflections are read and dropped
        with common.open_route(route_name, workdir, prosody) as route:
            clients = await join_sessions(route, room, sessions)
            receivers = [Receiver(args.messages) for _ in clients]
            for client, receiver in zip(clients, receivers, strict=True):
                client.on_data(receiver)
            with profiled(route.bouncer_pid if profile else None, workdir / f"fanout-{sessions}.pyspy"):
                outcome = await burst(route, sender, room, receivers, args)
            await asyncio.sleep(SETTLE)
            common.abort_all([sender, *clients])
    return outcome


async def burst(route: Route, sender: RawClient, room: str, receivers: list[Receiver], args) -> Outcome:
    meter = CpuMeter(route.pids)
    meter.start()
    started = time.monotonic()
    send_burst(sender, room, args.messages)
    await sender.drain()
    await wait_received(receivers, args.quiet, args.timeout)
    cpu = meter.stop()
    return Outcome(route.name, len(receivers), args.messages, started, receivers, cpu)


def row(o: Outcome) -> list[object]:
    bouncer_cpu = ms(o.cpu["bouncer"]) if "bouncer" in o.cpu else "-"
    return [o.route, o.sessions, f"{o.rate:,.0f}", f"{o.deliveries:,.0f}", ms(o.latency(50)), ms(o.latency(99)),
            f"{o.seconds:.2f} s", bouncer_cpu, ms(o.cpu["prosody"]), ms(o.cpu["benchmark"]), o.lost, o.duplicates]


def report(outcomes: list[Outcome], args) -> bool:
    common.print_table(
        f"Fan-out of {args.messages} groupchat messages (burst) to N sessions of the account "
        "(direct: the N sessions are one multi-session occupant, same nick, on Prosody)",
        ["route", "N", "msg/s", "deliv/s", "p50", "p99", "duration", "CPU bouncer", "CPU prosody",
         "CPU bench", "lost", "dup"],
        [row(o) for o in outcomes],
    )
    by = {(o.route, o.sessions): o for o in outcomes}
    for n in args.sessions:
        b, d = by[("bouncer", n)], by[("direct", n)]
        log(f"N={n}: bouncer/direct messages/s = {common.ratio(b.rate, d.rate):.2f}")
    top = max(args.sessions)
    b, d = by[("bouncer", top)], by[("direct", top)]
    met = b.rate >= d.rate and b.lost == 0 and b.duplicates == 0
    log(f"target at N={top} (bouncer msg/s >= direct, none lost or duplicated): {common.verdict(met)}")
    return met


async def main(workdir: Path, args) -> bool:
    outcomes = []
    for n in args.sessions:
        for route_name in ROUTES:
            profile = route_name == "bouncer" and n in (args.profile or ())
            outcome = await measure(workdir, route_name, n, args, profile)
            log(f"{route_name} N={n}: {outcome.rate:,.0f} msg/s, lost {outcome.lost}, dup {outcome.duplicates}")
            outcomes.append(outcome)
    return report(outcomes, args)


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--quiet", type=float, default=5.0, help="give up after this long without progress (s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="longest wait for one burst (s)")
    parser.add_argument("--profile", type=int, nargs="*", metavar="N",
                        help="sample the bouncer with py-spy during the burst to N sessions (default: the "
                             "largest N) and print its hot functions")
    arguments = parser.parse_args()
    if arguments.profile == []:
        arguments.profile = [max(arguments.sessions)]
    if arguments.profile and not PySpy.available():
        parser.error("--profile needs py-spy (pip install py-spy)")
    common.run(lambda workdir: main(workdir, arguments), keep=arguments.keep)
