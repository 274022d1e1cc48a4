"""(a) A second session joining 10 busy rooms: through the bouncer vs directly on Prosody.

One session of the account already holds 10 rooms of 50 direct occupants each
(with a subject and 20 messages of history). A second session then joins all
10 at once; the time runs from sending the joins until every room's
self-presence (110) and subject arrived. Through the bouncer the rooms are
held upstream, so the join is answered from its cache; directly, Prosody joins
a second resource to the same multi-session nick. Target: bouncer >= 10x faster.

Then N = 1, 5 and 20 fresh sessions join at once (each N on fresh servers): one
session holds the rooms as above, N more log in (not timed), then all N send
their 10 joins together; the time runs from the first join sent until every
session has all 10 self-presences and subjects. Directly, the N sessions are N
more resources joining the same nick. Printed per N: both wall-clock medians,
their ratio, the CPU of the bouncer, of Prosody and of this process (its
clients scan bytes, they do not parse XML: it must not be the bottleneck).
Target (issue 4): bouncer >= 50x faster than direct for 5 sessions.

    python benchmarks/join_rooms.py [--repeat 7] [--sessions 1 5 20] [--profile]
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import common
from common import ROUTES, CpuMeter, JoinResult, Route, log, median, ms
from profiling import merge_raw, print_profile, profiled

TARGET = 10.0
TARGET_AT_N = (5, 50.0)  # sessions joining at once, bouncer speedup wanted
SETTLE = 0.2  # seconds between concurrent trials: the last one's sessions are gone


@dataclass
class Outcome:
    route: str
    first: JoinResult  # the first session's join (upstream through the bouncer)
    logins: list[float]
    joins: list[JoinResult]
    cpu: dict[str, float]

    @property
    def join_median(self) -> float:
        return median([j.seconds for j in self.joins])


async def second_join(route: Route, rooms: list[str], index: int) -> tuple[float, JoinResult]:
    """Log a new session in, join every room, leave; returns (login seconds, join result)."""
    session, login = await route.timed_connect(f"second{index}")
    try:
        return login, await common.join_all(session, rooms)
    finally:
        await session.close()


async def measure(workdir: Path, route_name: str, args) -> Outcome:
    async with common.populated_route(workdir, route_name, args) as (route, population):
        first_session = await route.connect("first")
        first = await common.join_all(first_session, population.rooms)
        meter = CpuMeter(route.pids)
        meter.start()
        with profiled(route.bouncer_pid if args.profile else None, workdir / "join_rooms.pyspy"):
            trials = [await second_join(route, population.rooms, i) for i in range(args.repeat)]
        cpu = meter.stop()
        first_session.abort()
    outcome = Outcome(route_name, first, [t[0] for t in trials], [t[1] for t in trials], cpu)
    log(f"{route_name}: first join {ms(first.seconds)}, second joins "
        + ", ".join(ms(j.seconds) for j in outcome.joins))
    return outcome


def report(outcomes: dict[str, Outcome], args) -> bool:
    rows = []
    for o in outcomes.values():
        joins = [j.seconds for j in o.joins]
        rows.append([o.route, ms(o.first.seconds), ms(median(o.logins)), ms(o.join_median), ms(min(joins)),
                     ms(max(joins)), o.joins[0].stanzas, common.cpu_per(o.cpu, len(o.joins))])
    common.print_table(
        f"Second session joining {args.rooms} rooms x {args.occupants} occupants ({args.history} history), "
        f"{args.repeat} trials",
        ["route", "first join", "login (med)", "join (med)", "join (min)", "join (max)", "stanzas", "CPU per join"],
        rows,
    )
    speedup = common.ratio(outcomes["direct"].join_median, outcomes["bouncer"].join_median)
    met = speedup >= TARGET
    log(f"bouncer speedup (direct median / bouncer median): {speedup:.1f}x; target >= {TARGET:g}x: "
        f"{common.verdict(met)}")
    return met


# ---- N sessions joining at once --------------------------------------------------------
@dataclass(frozen=True)
class Burst:
    seconds: float  # from the first join sent until the last session had every room
    stanzas: int  # received by all sessions together
    cpu: dict[str, float]


@dataclass
class Concurrent:
    route: str
    sessions: int
    trials: list[Burst]

    @property
    def wall(self) -> float:
        return median([t.seconds for t in self.trials])

    def cpu(self, process: str) -> str:
        """Mean CPU per trial (the total over all trials: /proc counts in 10 ms ticks)."""
        if process not in self.trials[0].cpu:
            return "-"
        return ms(sum(t.cpu[process] for t in self.trials) / len(self.trials))


async def concurrent_trial(route: Route, rooms: list[str], n: int, trial: int, spy: Path | None) -> Burst:
    """Log ``n`` sessions in (not timed), then all join every room at once; they leave after.

    ``spy``: sample the bouncer with py-spy into this file, during the joins only."""
    sessions = await asyncio.gather(*(route.connect(f"n{n}-{trial}-{i}") for i in range(n)))
    try:
        with profiled(route.bouncer_pid if spy else None, spy, show=False):
            meter = CpuMeter(route.pids)
            meter.start()
            joins = await common.join_many(sessions, rooms)
            cpu = meter.stop()
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    await asyncio.sleep(SETTLE)
    return Burst(max(j.seconds for j in joins), sum(j.stanzas for j in joins), cpu)


async def measure_concurrent(workdir: Path, route_name: str, n: int, args) -> Concurrent:
    async with common.populated_route(workdir, route_name, args) as (route, population):
        holder = await route.connect("first")
        await common.join_all(holder, population.rooms)
        spies = [workdir / f"join_rooms-{n}-{t}.pyspy" if args.profile and route.bouncer else None
                 for t in range(args.repeat)]
        trials = [await concurrent_trial(route, population.rooms, n, t, spy) for t, spy in enumerate(spies)]
        holder.abort()
    if args.profile and route_name == "bouncer":
        print_profile(merge_raw(spies, workdir / f"join_rooms-{n}.pyspy"))  # type: ignore[arg-type]
    log(f"{route_name}: {n} sessions at once " + ", ".join(ms(t.seconds) for t in trials))
    return Concurrent(route_name, n, trials)


def report_concurrent(outcomes: dict[tuple[str, int], Concurrent], args) -> bool:
    rows = []
    for n in args.sessions:
        b, d = outcomes["bouncer", n], outcomes["direct", n]
        rows.append([n, ms(b.wall), ms(d.wall), f"{common.ratio(d.wall, b.wall):.1f}x", b.cpu("bouncer"),
                     b.cpu("prosody"), d.cpu("prosody"), b.cpu("benchmark"), d.cpu("benchmark"),
                     f"{b.trials[0].stanzas}/{d.trials[0].stanzas}"])
    common.print_table(
        f"N sessions joining {args.rooms} rooms x {args.occupants} occupants at once, from the first join sent "
        f"to the last session's last subject; medians of {args.repeat} trials; CPU: mean per trial, during the joins",
        ["N", "bouncer", "direct", "direct/bouncer", "CPU bouncer", "CPU prosody (via b.)", "CPU prosody (direct)",
         "CPU client (via b.)", "CPU client (direct)", "stanzas (b./d.)"],
        rows,
    )
    n, target = TARGET_AT_N
    if n not in args.sessions:
        return True
    speedup = common.ratio(outcomes["direct", n].wall, outcomes["bouncer", n].wall)
    met = speedup >= target
    log(f"N={n} sessions at once: bouncer {speedup:.1f}x faster than direct; target >= {target:g}x: "
        f"{common.verdict(met)}")
    return met


async def main(workdir: Path, args) -> bool:
    second = {name: await measure(workdir, name, args) for name in ROUTES}
    concurrent = {(name, n): await measure_concurrent(workdir, name, n, args)
                  for n in args.sessions for name in ROUTES}
    met = report(second, args)
    return report_concurrent(concurrent, args) and met


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.splitlines()[0])
    common.add_room_options(parser, repeat_help="second-session joins per route, and trials per N")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20],
                        help="how many sessions join at once (each N on fresh servers)")
    arguments = parser.parse_args()
    common.run(lambda workdir: main(workdir, arguments), keep=arguments.keep)
