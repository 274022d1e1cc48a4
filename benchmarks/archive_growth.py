"""The bouncer's memory as its room archive grows to 1,000,000 messages.

For each archive size (0, 200,000, 500,000, 1,000,000 messages) on a fresh
Prosody: rooms without MAM (archiving off, so the bouncer's archive answers MAM
queries), and the bouncer's database prepared before it starts: the schema
from ``bouncer.storage.db.open_database``, the rooms held, and the messages
(~400-byte groupchat stanzas with a stanza-id, timestamps spread over the last
80 days) in one transaction. Retention is set so that nothing is pruned
(``history.max_age_days: 3650``, ``history.max_messages`` above the size).

The bouncer starts, rejoins the rooms upstream and applies retention once (its
first tick, a second after start): "RSS after start". Then a
session logs in, asks each room's disco#info (no MAM: the bouncer serves it),
pages each room's MAM (the last page, then scrolling back, the first page, a
page from a date in the middle, one occupant's messages), joins every room
asking for 50 messages of history, and a direct occupant sends 1000 groupchat
messages that the session receives: "RSS after the work". RSS is VmRSS of
``/proc/PID/status``, peak is VmHWM. No target: the figure should stay flat.

    python benchmarks/archive_growth.py [--sizes 0 200000 500000 1000000] [--rooms 2]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

import common
import fanout
from common import ACCOUNT_NICK, log, median, ms
from support.rawxmpp import Element, RawClient
from support.bouncer import Bouncer

from bouncer.storage.db import open_database

NO_MAM = {"muc#roomconfig_enablearchiving": "0"}
SPAN_DAYS = 80  # the archive's messages are spread over this many days before now
RETENTION = {"max_age_days": 3650}  # and max_messages: above the archive's size
HISTORY = "<history maxstanzas='50'/>"
PAGE = 50  # messages per MAM page
FIRST_PRUNE = 2.5  # seconds after start: the bouncer's first retention pass is done (it walks the archive)
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris").split()
NS_MAM, NS_RSM, NS_DATA = "urn:xmpp:mam:2", "http://jabber.org/protocol/rsm", "jabber:x:data"


# ---- the database ------------------------------------------------------------------------
def archived_rows(rooms: list[str], size: int, now: float) -> Iterator[tuple]:
    """``size`` (room, stanza_id, ts, nick, stanza) rows, oldest first, round-robin over the rooms."""
    rng = random.Random(size)
    step = SPAN_DAYS * 86400 / max(size, 1)
    for k in range(size):
        room = rooms[k % len(rooms)]
        nick, sid = f"occupant{rng.randrange(50)}", str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = " ".join(rng.choices(WORDS, k=22))
        stanza = (f'<message xmlns="jabber:client" from="{room}/{nick}" to="alice@localhost/bouncer" '
                  f'type="groupchat" id="{uuid.UUID(int=rng.getrandbits(128))}"><body>{body}</body>'
                  f'<stanza-id xmlns="urn:xmpp:sid:0" id="{sid}" by="{room}"/></message>')
        yield room, sid, now - SPAN_DAYS * 86400 + k * step, nick, stanza.encode()


def fill_database(path: Path, rooms: list[str], size: int) -> tuple[float, int]:
    """The bouncer's database holding ``rooms`` and ``size`` archived messages; (seconds, stanza bytes)."""
    started = time.perf_counter()
    conn = open_database(path)
    try:
        conn.execute("PRAGMA cache_size=-262144")  # this connection only: the random stanza-id index
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO rooms (jid, nick) VALUES (?, ?)", [(room, ACCOUNT_NICK) for room in rooms])
        conn.executemany("INSERT INTO muc_archive (room, stanza_id, ts, nick, stanza) VALUES (?, ?, ?, ?, ?)",
                         archived_rows(rooms, size, time.time()))
        conn.execute("COMMIT")
        average = conn.execute("SELECT COALESCE(AVG(LENGTH(stanza)), 0) FROM muc_archive").fetchone()[0]
    finally:
        conn.close()
    return time.perf_counter() - started, round(average)


def archive_count(path: Path) -> int:
    conn = open_database(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM muc_archive").fetchone()[0]
    finally:
        conn.close()


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


# ---- the session's work ----------------------------------------------------------------------
_ids = itertools.count(1)


def mam_query(room: str, *, start: float | None = None, with_nick: str | None = None,
              before: str | None = None, last: bool = False) -> tuple[str, str]:
    """(query id, the XML of a MAM query of one page of ``room``)."""
    qid = f"mam{next(_ids)}"
    fields = [("FORM_TYPE", NS_MAM)]
    if start is not None:
        fields.append(("start", dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
    if with_nick is not None:
        fields.append(("with", f"{room}/{with_nick}"))
    form = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields)
    paging = f"<before>{before}</before>" if before else ("<before/>" if last else "")
    return qid, (f"<iq type='set' id='{qid}' to='{room}'><query xmlns='{NS_MAM}' queryid='{qid}'>"
                 f"<x xmlns='{NS_DATA}' type='submit'>{form}</x>"
                 f"<set xmlns='{NS_RSM}'><max>{PAGE}</max>{paging}</set></query></iq>")


async def ask(client: RawClient, qid: str, xml: str) -> tuple[Element, int, float]:
    """Send an IQ; (its answer, messages received before it, seconds)."""
    mark, started = len(client.received), time.perf_counter()
    client.send_xml(xml)
    reply = await client.wait_for(lambda el: el.get("id") == qid and el.tag.endswith("}iq"), 30, start=mark)
    seconds = time.perf_counter() - started
    return reply, sum(1 for el in client.received[mark:] if el.tag.endswith("}message")), seconds


async def mam_page(client: RawClient, query: tuple[str, str], size: int) -> tuple[str | None, float]:
    """One page; (the id of its first message, seconds)."""
    reply, got, seconds = await ask(client, *query)
    if reply.get("type") != "result" or got > PAGE or (size and not got):
        raise RuntimeError(f"MAM page: {etree.tostring(reply)!r}, {got} messages")
    return reply.findtext(f"{{{NS_MAM}}}fin/{{{NS_RSM}}}set/{{{NS_RSM}}}first"), seconds


async def page_archive(client: RawClient, room: str, size: int, scroll: int) -> list[float]:
    """disco#info, then MAM pages as a client catching up and scrolling back would ask; seconds per page."""
    qid = f"disco{next(_ids)}"
    reply, _, _ = await ask(client, qid, f"<iq type='get' id='{qid}' to='{room}'>"
                                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    if reply.find(f".//{{http://jabber.org/protocol/disco#info}}feature[@var='{NS_MAM}']") is None:
        raise RuntimeError(f"the bouncer offers no MAM for {room}: {etree.tostring(reply)!r}")
    times = []
    first, seconds = await mam_page(client, mam_query(room, last=True), size)
    times.append(seconds)
    for _ in range(scroll):  # further back, a page at a time
        if first is None:
            break
        first, seconds = await mam_page(client, mam_query(room, before=first), size)
        times.append(seconds)
    middle = time.time() - SPAN_DAYS * 86400 / 2
    for query in (mam_query(room), mam_query(room, start=middle), mam_query(room, with_nick="occupant7", last=True)):
        times.append((await mam_page(client, query, size))[1])
    return times


@dataclass
class Outcome:
    size: int
    fill_seconds: float
    stanza_bytes: int
    db_bytes: int
    start_seconds: float
    start_cpu: float  # the bouncer's CPU seconds until "after start" (startup, rejoins, first retention pass)
    after_start: dict[str, int]
    after_work: dict[str, int]
    mam_pages: list[float]
    join: float
    received: int
    count_after: int


async def measure(workdir: Path, size: int, args) -> Outcome:
    with common.fresh_prosody(workdir) as prosody:
        population = await common.populate(prosody, args.rooms, 1, 0, room_config=NO_MAM)
        sender, room = population.owners[0], population.rooms[0]
        for owner in population.owners:
            owner.discard()
        jid, password = prosody.new_user("alice")
        filled: dict[str, tuple[float, int]] = {}

        def prepare(bouncer: Bouncer) -> None:
            filled["db"] = fill_database(bouncer.dir / "bouncer.sqlite", population.rooms, size)

        history = {**RETENTION, "max_messages": max(size, 10000) * 10}
        started = time.perf_counter()
        try:
            with common.running_bouncer(workdir, prosody, jid, password, prepare, history=history) as bouncer:
                await asyncio.to_thread(bouncer.wait_event, "room joined upstream", after=args.rooms - 1, timeout=60)
                start_seconds = time.perf_counter() - started - filled["db"][0]
                await asyncio.sleep(max(0.0, FIRST_PRUNE - start_seconds))
                db_path = bouncer.dir / "bouncer.sqlite"
                after_start, start_cpu = memory(bouncer.proc.pid), common.cpu_seconds(bouncer.proc.pid)
                pages, join, received = await work(bouncer, population.rooms, sender, room, size, args)
                after_work = memory(bouncer.proc.pid)
                db_bytes = file_size(db_path)
        finally:
            common.abort_all(population.clients)
        count = archive_count(db_path)
    return Outcome(size, *filled["db"], db_bytes, start_seconds, start_cpu, after_start, after_work, pages, join,
                   received, count)


async def work(bouncer: Bouncer, rooms: list[str], sender: RawClient, room: str, size: int,
               args) -> tuple[list[float], float, int]:
    """MAM pages of every room, a join of every room with history, the burst; (page seconds, join, received)."""
    session = await common.bouncer_session(bouncer, "reader")
    try:
        pages = [t for r in rooms for t in await page_archive(session, r, size, args.scroll)]
        joined = await common.join_all(session, rooms, history=HISTORY)
        receiver = fanout.Receiver(args.messages)
        session.on_data(receiver)
        fanout.send_burst(sender, room, args.messages)
        await sender.drain()
        await fanout.wait_received([receiver], quiet=5.0, timeout=60.0)
    finally:
        await session.close()
    return pages, joined.seconds, receiver.unique


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def report(outcomes: list[Outcome], args) -> None:
    common.print_table(
        f"Bouncer memory with a growing room archive ({args.rooms} rooms; start: until the rooms are rejoined "
        f"upstream; after start: {FIRST_PRUNE:g} s, the first retention pass done; work: {args.scroll + 4} MAM "
        f"pages of {PAGE} per room, a join with 50 history, {args.messages} messages in)",
        ["archive", "stanza", "DB file", "fill", "start", "CPU to start", "RSS after start", "RSS after work",
         "peak RSS", "MAM page (med)", "join", "received", "rows after"],
        [[f"{o.size:,}", f"{o.stanza_bytes} B", f"{o.db_bytes / 1e6:,.0f} MB", f"{o.fill_seconds:.1f} s",
          f"{o.start_seconds:.2f} s", f"{o.start_cpu:.2f} s", mb(o.after_start["VmRSS"]), mb(o.after_work["VmRSS"]),
          mb(o.after_work["VmHWM"]), ms(median(o.mam_pages)), ms(o.join), o.received, f"{o.count_after:,}"]
         for o in outcomes],
    )
    growth = outcomes[-1].after_work["VmRSS"] - outcomes[0].after_work["VmRSS"]
    log(f"RSS after work, {outcomes[-1].size:,} vs {outcomes[0].size:,} archived: {growth / 1024:+.1f} MB")


async def main(workdir: Path, args) -> bool:
    outcomes = []
    for size in args.sizes:
        outcome = await measure(workdir, size, args)
        log(f"{size:,} archived: RSS {mb(outcome.after_start['VmRSS'])} after start, "
            f"{mb(outcome.after_work['VmRSS'])} after work")
        outcomes.append(outcome)
    report(outcomes, args)
    return all(o.received == args.messages and o.count_after == o.size + args.messages for o in outcomes)


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 200_000, 500_000, 1_000_000])
    parser.add_argument("--rooms", type=int, default=2, help="rooms the archive is spread over")
    parser.add_argument("--messages", type=int, default=1000, help="groupchat messages sent during the work")
    parser.add_argument("--scroll", type=int, default=10, help="MAM pages scrolled back from the last one")
    arguments = parser.parse_args()
    common.run(lambda workdir: main(workdir, arguments), keep=arguments.keep)
