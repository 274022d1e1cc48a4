"""(c) A session in 10 busy rooms loses its connection and comes back to full state.

A session of the account is joined to 10 rooms of 50 direct occupants each. Its
TCP connection is dropped (no </stream>, like a phone changing networks); once
the server side has noticed, it reconnects: login (STARTTLS, SASL, bind,
presence) and joins all 10 rooms again, until every room's self-presence and
subject arrived. Through the bouncer the account never left the rooms, so the
joins are answered from its cache; directly, Prosody had taken the occupant
out of every room and joins it again. Target: bouncer >= 5x faster.

    python benchmarks/reconnect.py [--repeat 7] [--profile]
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import common
from common import ACCOUNT_NICK, CpuMeter, Population, Route, log, median, ms, muc
from profiling import profiled
from support.rawxmpp import RawClient

TARGET = 5.0
RESOURCE = "phone"


@dataclass(frozen=True)
class Trial:
    login: float  # seconds: TCP, STARTTLS, SASL, bind, presence
    joins: float  # seconds: joining every room again, until the last subject
    stanzas: int  # received while joining

    @property
    def total(self) -> float:
        return self.login + self.joins


@dataclass
class Outcome:
    route: str
    trials: list[Trial]
    cpu: dict[str, float]

    def median(self, figure: str) -> float:
        return median([getattr(t, figure) for t in self.trials])


async def session_gone(route: Route, population: Population, marks: list[int], drops: int) -> None:
    """Until the server side has dealt with the dropped connection.

    The bouncer logs the session closed (it stays in the rooms); Prosody takes
    the occupant out of every room, which each room's owner sees.
    """
    if route.bouncer is not None:
        await asyncio.to_thread(route.bouncer.wait_event, "session closed", session=RESOURCE, after=drops - 1)
        return
    await asyncio.gather(*(
        owner.wait_for(muc.from_occupant(room, ACCOUNT_NICK, ptype="unavailable"), 30, start=mark)
        for owner, room, mark in zip(population.owners, population.rooms, marks, strict=True)
    ))


async def drop_and_return(route: Route, population: Population, session: RawClient,
                          drops: int) -> tuple[RawClient, Trial]:
    marks = [len(owner.received) for owner in population.owners]
    session.abort()
    await session_gone(route, population, marks, drops)
    session, login = await route.timed_connect(RESOURCE)
    joined = await common.join_all(session, population.rooms)
    return session, Trial(login, joined.seconds, joined.stanzas)


async def measure(workdir: Path, route_name: str, args) -> Outcome:
    async with common.populated_route(workdir, route_name, args) as (route, population):
        session = await route.connect(RESOURCE)
        await common.join_all(session, population.rooms)
        trials = []
        meter = CpuMeter(route.pids)
        meter.start()
        with profiled(route.bouncer_pid if args.profile else None, workdir / "reconnect.pyspy"):
            for drops in range(1, args.repeat + 1):
                session, trial = await drop_and_return(route, population, session, drops)
                trials.append(trial)
        cpu = meter.stop()
        session.abort()
    log(f"{route_name}: reconnects " + ", ".join(ms(t.total) for t in trials))
    return Outcome(route_name, trials, cpu)


def report(outcomes: dict[str, Outcome], args) -> bool:
    rows = []
    for o in outcomes.values():
        totals = [t.total for t in o.trials]
        rows.append([o.route, ms(o.median("login")), ms(o.median("joins")), ms(o.median("total")), ms(min(totals)),
                     ms(max(totals)), o.trials[0].stanzas, common.cpu_per(o.cpu, len(o.trials))])
    common.print_table(
        f"Reconnect to full state in {args.rooms} rooms x {args.occupants} occupants ({args.history} history), "
        f"{args.repeat} trials (medians)",
        ["route", "login", "join", "total", "total (min)", "total (max)", "stanzas", "CPU per reconnect"],
        rows,
    )
    speedup = common.ratio(outcomes["direct"].median("total"), outcomes["bouncer"].median("total"))
    met = speedup >= TARGET
    log(f"bouncer speedup (direct median / bouncer median, login + joins): {speedup:.1f}x; "
        f"target >= {TARGET:g}x: {common.verdict(met)}")
    return met


if __name__ == "__main__":
    common.run_room_benchmark(__doc__, measure, report, repeat_help="drops and reconnects per route")
