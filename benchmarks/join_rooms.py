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

from dataclasses import dataclass
from pathlib import Path

import common
from common import CpuMeter, JoinResult, Route, log, median, ms
from profiling import profiled

TARGET = 10.0


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


if __name__ == "__main__":
    common.run_room_benchmark(__doc__, measure, report, repeat_help="second-session joins per route")
