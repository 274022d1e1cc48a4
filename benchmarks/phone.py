"""Phone: (a) CSI in 10 busy rooms, (b) coming back after a 2-minute network loss.

The account's phone is a raw client with XEP-0198 (resumable) that joins 10 rooms
of 20 direct occupants and then says ``<inactive xmlns='urn:xmpp:csi:0'/>``.
Through the bouncer it is a downstream session (the bouncer's upstream session
holds the account's occupant in the rooms); directly, it is a resource of the
account on Prosody (mod_smacks, mod_csi_simple) that joins the rooms itself.
Each route runs on a fresh Prosody; the traffic is the same (seeded) on both.

(a) CSI. The occupants make "ten minutes of traffic" in 60 s of wall time: 1200
presence changes (an occupant goes away / comes back, or leaves and rejoins 2-10
changes later; who changes is skewed, the k-th occupant of a room with weight
1/k, as a few flapping clients make most of the churn: ``--zipf 0`` is uniform)
and a groupchat message with a body after every 20th change. At the phone:
wake-ups (reads of its socket; a read less than 20 ms after the previous read
belongs to the same wake-up), bytes received (TCP payload, TLS included, from
the kernel's TCP_INFO; the decrypted XML too), bytes sent (its <a/> answers),
and whether every body arrived. Target: bouncer wake-ups <= Prosody's, fewer bytes.

(b) Resume. The phone's TCP connection is aborted (no ``</stream>``). During the
loss the rooms go on and a contact sends 1:1 chats: ``--loss`` (120) seconds of
(a)'s rate, i.e. 2400 presence changes, 120 room messages and 10 chats, sent in
``--loss-seconds`` of wall time; then a barrier (every traffic client's ping is
answered: Prosody has handled it all) and 1.5 s. Measured: from TCP connect until
every chat and room message of the loss has arrived. Through the bouncer:
XEP-0198 ``<resume previd h/>``. Directly, (1) what a phone does once
mod_smacks' hibernation (600 s) is over: a fresh login (STARTTLS, SASL, bind,
enable, presence: offline chats), joins of the 10 rooms with ``<history since/>``
and a MAM query for the chats since the loss, pipelined (the session that was
dropped was made non-resumable, so that Prosody ended it at once, as it does
when the hibernation is over); (2) a resume within the hibernation. A failed
resume falls back to (1), on the same stream if the server keeps it open.
Medians of ``--trials``. Target: bouncer resume >= 5x faster than (1), every
trial resumed and complete.

    python benchmarks/phone.py [--trials 3] [--seconds 60] [--changes 1200] [--loss 120] [--zipf 1]
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import common
from common import ACCOUNT_NICK, CpuMeter, log, median, ms, muc
from phone_traffic import Traffic, build_traffic
from support.rawxmpp import Element, SmClient, XmppError
from support.bouncer import Bouncer
from support.prosody import Prosody

PHONE = "phone"
WAKE_GAP = 0.020  # s: a read less than this after the previous one is the same wake-up
SETTLE = 1.5  # s after the last stanza of a phase, for what is in flight to arrive
TARGET_RESUME = 5.0
MUC_USER_X = f"{{{muc.MUC_USER}}}x"
BODY, SUBJECT = "{jabber:client}body", "{jabber:client}subject"
MAM_BODY = "{urn:xmpp:mam:2}result/{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body"


# ---- the phone's side ------------------------------------------------------------------
class Phone:
    """What the phone received: bodies (with repeats), room joins, and its socket reads."""

    def __init__(self) -> None:
        self.bodies: Counter[str] = Counter()
        self.self_presences: set[str] = set()
        self.subjects: set[str] = set()
        self.stanzas = 0
        self.reads: list[tuple[float, int]] = []
        self.recording = False
        self._missing: set[str] = set()
        self._rooms: set[str] = set()
        self._done = asyncio.Event()
        self.done_at: float | None = None

    # handlers for SmClient
    def stanza(self, el: Element, now: float) -> None:
        self.stanzas += 1
        tag = el.tag
        if tag == "{jabber:client}message":
            body = el.findtext(BODY)
            if body is None:  # a MAM result: the archived message inside
                body = el.findtext(MAM_BODY)
            if body is not None:
                self.bodies[body] += 1
                self._missing.discard(body)
            elif el.find(SUBJECT) is not None:
                self.subjects.add(el.get("from", "").split("/")[0])
        elif tag == "{jabber:client}presence":
            x = el.find(MUC_USER_X)
            if x is not None and any(s.get("code") == "110" for s in x.iter(f"{{{muc.MUC_USER}}}status")):
                self.self_presences.add(el.get("from", "").split("/")[0])
        self._check(now)

    def read(self, size: int, now: float) -> None:
        if self.recording:
            self.reads.append((now, size))

    # waiting
    def expect(self, bodies: set[str], rooms: Sequence[str] = ()) -> None:
        """From now on, :meth:`wait` returns once these bodies arrived and these rooms are joined."""
        self._missing = set(bodies) - set(self.bodies)
        self._rooms = set(rooms)
        self._done.clear()
        self.done_at = None
        self._check(time.perf_counter())

    async def wait(self, timeout: float) -> float:
        await asyncio.wait_for(self._done.wait(), timeout)
        assert self.done_at is not None
        return self.done_at

    def _check(self, _now: float) -> None:
        if self._done.is_set() or self._missing:
            return
        if self._rooms and not (self._rooms <= self.self_presences and self._rooms <= self.subjects):
            return
        self.done_at = time.perf_counter()
        self._done.set()

    @property
    def missing(self) -> set[str]:
        return set(self._missing)

    def wakeups(self) -> int:
        """Reads less than WAKE_GAP after the previous read are merged into one wake-up."""
        count, last = 0, None
        for now, _size in self.reads:
            if last is None or now - last >= WAKE_GAP:
                count += 1
            last = now
        return count



@dataclass
class Endpoint:
    """Where the phone logs in on a route, with what."""

    host: str
    port: int
    jid: str
    password: str

    async def login(self, phone: Phone, *, resume: bool = True) -> SmClient:
        client = await SmClient.login(self.host, self.port, self.jid, self.password, resource=PHONE,
                                      resume=resume, handler=phone.stanza)
        client.on_read(phone.read)
        return client


@dataclass
class PhoneRoute:
    """Through the bouncer (``bouncer`` set) or directly on Prosody."""

    name: str
    prosody: Prosody
    account: str
    password: str
    bouncer: Bouncer | None = None

    @property
    def pids(self) -> dict[str, int]:
        pids = {"prosody": self.prosody.pid}
        if self.bouncer is not None and self.bouncer.proc is not None:
            pids["bouncer"] = self.bouncer.proc.pid
        return pids


def endpoint(route: PhoneRoute) -> Endpoint:
    if route.bouncer is not None:
        return Endpoint(common.HOST, route.bouncer.port, route.bouncer.jid, common.DOWNSTREAM_PASSWORD)
    return Endpoint(common.HOST, route.prosody.port, route.account, route.password)


def history_since(stamp: float) -> str:
    return f"<history since='{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(stamp))}'/>"


def join_rooms(client: SmClient, rooms: Sequence[str], history: str) -> None:
    client.send_xml("".join(common.join_presence(room, ACCOUNT_NICK, history) for room in rooms))


async def phone_in_rooms(ep: Endpoint, rooms: Sequence[str], *, resume: bool = True) -> tuple[SmClient, Phone]:
    """The phone logged in, in every room (no history), then inactive."""
    phone = Phone()
    client = await ep.login(phone, resume=resume)
    phone.expect(set(), rooms)
    join_rooms(client, rooms, common.NO_HISTORY)
    await phone.wait(30)
    client.set_inactive()
    return client, phone


# ---- (a) CSI ----------------------------------------------------------------------------
@dataclass
class CsiOutcome:
    route: str
    seconds: float
    changes: int
    messages: int
    reads: int
    wakeups: int
    wire_bytes: int  # TCP payload received (TLS records)
    xml_bytes: int  # decrypted
    sent_bytes: int  # TCP payload the phone sent (its <a/> answers)
    stanzas: int
    requests: int  # <r/> the phone answered
    lost: int
    duplicated: int
    cpu: dict[str, float]


async def measure_csi(route: PhoneRoute, traffic: Traffic, client: SmClient, phone: Phone, args) -> CsiOutcome:
    await asyncio.sleep(2.0)  # the inactive state is in force; joins' stragglers are in
    messages = args.changes // args.per_message
    wire0, sent0, _segs0 = client.tcp_counters()
    stanzas0, requests0 = phone.stanzas, client.requests
    meter = CpuMeter(route.pids)
    phone.reads.clear()
    phone.recording = True
    meter.start()
    started = time.perf_counter()
    bodies, _chats = await traffic.run("csi", args.changes, args.per_message, 0, args.seconds)
    await asyncio.sleep(SETTLE)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    phone.recording = False
    wire1, sent1, _segs1 = client.tcp_counters()
    lost = sum(1 for b in bodies if phone.bodies[b] == 0)
    duplicated = sum(phone.bodies[b] - 1 for b in bodies if phone.bodies[b] > 1)
    return CsiOutcome(route.name, seconds, args.changes, messages, len(phone.reads), phone.wakeups(), wire1 - wire0,
                      sum(size for _t, size in phone.reads), sent1 - sent0, phone.stanzas - stanzas0,
                      client.requests - requests0, lost, duplicated, cpu)


# ---- (b) resume ---------------------------------------------------------------------------
@dataclass
class ResumeTrial:
    kind: str  # "resume" or "fresh login"
    connected: float  # s: TCP connect until resumed / bound
    total: float  # s: TCP connect until every body of the loss arrived (and rooms joined, for a rejoin)
    outcome: str  # "resumed", "failed: ...", "fresh login"
    stanzas: int  # stanzas received until done
    cpu_bench: float
    lost: int = 0


async def lose_network(route: PhoneRoute, traffic: Traffic, client: SmClient, args, trial: int,
                       hibernation_events: int | None) -> tuple[set[str], float]:
    """Abort the phone's connection; the loss's traffic goes on; returns its bodies and start time."""
    client.abort()
    lost_at = time.time()
    if hibernation_events is not None:
        assert route.bouncer is not None
        await asyncio.to_thread(route.bouncer.wait_event, "session hibernated", session=PHONE,
                                after=hibernation_events, timeout=30)
    else:
        await asyncio.sleep(0.5)  # Prosody saw the reset (the connection is gone at once on loopback)
    changes = round(args.changes * args.loss / args.seconds)
    rooms, chats = await traffic.run(f"loss{trial}", changes, args.per_message, args.chats, args.loss_seconds)
    await asyncio.sleep(SETTLE)
    return rooms | chats, lost_at


async def fresh_login(ep: Endpoint, phone: Phone, rooms: Sequence[str], since: float,
                      client: SmClient | None = None) -> SmClient:
    """Bind (on ``client``'s stream if given, else a new connection), enable, presence, join with history."""
    if client is None:
        client = await ep.login(phone)
    else:
        await client.bind_resource(PHONE)
        await client.enable_sm(True)
        client.start(presence=True, handler=phone.stanza)
        client.on_read(phone.read)
    catch_up(client, rooms, since)
    return client


def catch_up(client: SmClient, rooms: Sequence[str], since: float) -> None:
    """What a client does on a fresh session: join its rooms with history since it was last
    there, and ask the account's archive (MAM) for the chats since then, all at once."""
    join_rooms(client, rooms, history_since(since))
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    client.send_xml(
        "<iq type='set' id='mam-catch-up'><query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
        f"<field var='start'><value>{start}</value></field></x>"
        "<set xmlns='http://jabber.org/protocol/rsm'><max>1000</max></set></query></iq>")


def never_came(missing: set[str]) -> str:
    chats = sum(1 for body in missing if " chat " in body)
    return f"{chats} chats and {len(missing) - chats} room messages never came"


async def timed_resume(ep: Endpoint, old: SmClient, rooms: Sequence[str], expected: set[str], since: float,
                       timeout: float) -> tuple[SmClient, ResumeTrial]:
    phone = Phone()
    phone.expect(expected)
    cpu0 = time.process_time()
    started = time.perf_counter()
    assert old.sm_id is not None
    client = await SmClient.resume_session(ep.host, ep.port, ep.jid, ep.password, old.sm_id, old.h,
                                           handler=phone.stanza)
    if client.resumed is not None:
        client.on_read(phone.read)
        outcome = "resumed"
    else:
        assert client.failed is not None
        condition = client.resume_error or next(
            (c.tag.split("}")[-1] for c in client.failed if isinstance(c.tag, str)), "no condition")
        outcome = f"failed ({condition}), then "
        phone.expect(expected, rooms)
        try:
            if client.resume_error is not None:
                raise XmppError(client.resume_error)
            client = await fresh_login(ep, phone, rooms, since, client)  # XEP-0198 §5: bind on the same stream
            outcome += "bind on the same stream + rejoin"
        except XmppError:
            client.abort()
            client = await fresh_login(ep, phone, rooms, since)
            outcome += "new connection + rejoin"
    connected = time.perf_counter() - started
    return client, await delivered(phone, "resume", outcome, started, connected, cpu0, timeout)


async def timed_fresh_login(ep: Endpoint, rooms: Sequence[str], expected: set[str], since: float,
                            timeout: float) -> tuple[SmClient, ResumeTrial]:
    phone = Phone()
    phone.expect(expected, rooms)
    cpu0 = time.process_time()
    started = time.perf_counter()
    client = await ep.login(phone)
    connected = time.perf_counter() - started
    catch_up(client, rooms, since)
    return client, await delivered(phone, "fresh login", "fresh login + rejoin", started, connected, cpu0, timeout)


async def delivered(phone: Phone, how: str, outcome: str, started: float, connected: float, cpu0: float,
                    timeout: float) -> ResumeTrial:
    """Wait until everything of the loss arrived (or the timeout): the trial's figures."""
    try:
        done = await phone.wait(timeout)
    except TimeoutError:
        done = time.perf_counter()
        outcome += f" -- TIMED OUT: {never_came(phone.missing)}"
    return ResumeTrial(how, connected, done - started, outcome, phone.stanzas,
                       time.process_time() - cpu0, len(phone.missing))


async def back_to_sleep(client: SmClient) -> None:
    """The screen goes off again after a trial: inactive, and a moment for it to take."""
    client.set_inactive()
    await asyncio.sleep(1.0)


async def resume_trials(route: PhoneRoute, traffic: Traffic, client: SmClient, args) -> tuple[SmClient, list[ResumeTrial]]:
    ep = endpoint(route)
    trials = []
    for n in range(args.trials):
        events = n if route.bouncer is not None else None
        expected, since = await lose_network(route, traffic, client, args, n, events)
        client, trial = await timed_resume(ep, client, traffic.rooms, expected, since - 1, args.timeout)
        log(f"  {route.name} resume {n + 1}: {ms(trial.total)} ({trial.outcome}; {trial.stanzas} stanzas)")
        trials.append(trial)
        await back_to_sleep(client)
    return client, trials


async def fresh_login_trials(route: PhoneRoute, traffic: Traffic, client: SmClient, args) -> list[ResumeTrial]:
    """What a phone does after mod_smacks' hibernation is over: the session is gone (here: its
    stream management was not resumable, so Prosody ends it at once), a fresh login and rejoin."""
    ep = endpoint(route)
    trials = []
    await client.close()  # out of the rooms; the next phone's session will not be resumable
    for n in range(args.trials):
        client, _phone = await phone_in_rooms(ep, traffic.rooms, resume=False)
        await asyncio.sleep(1.0)
        expected, since = await lose_network(route, traffic, client, args, 100 + n, None)
        client, trial = await timed_fresh_login(ep, traffic.rooms, expected, since - 1, args.timeout)
        log(f"  {route.name} fresh login {n + 1}: {ms(trial.total)} ({trial.stanzas} stanzas)")
        trials.append(trial)
        await client.close()
    return trials


# ---- one route ------------------------------------------------------------------------------
@dataclass
class RouteOutcome:
    csi: CsiOutcome
    resumes: list[ResumeTrial]
    fresh: list[ResumeTrial]
    hibernation_max: int | None


async def measure(workdir: Path, route_name: str, args) -> RouteOutcome:
    with common.fresh_prosody(workdir) as prosody:
        account, password = prosody.new_user("alice")
        traffic, clients = await build_traffic(prosody, args.rooms, args.occupants, account, args.zipf)
        try:
            with _route(route_name, workdir, prosody, account, password) as route:
                ep = endpoint(route)
                client, phone = await phone_in_rooms(ep, traffic.rooms)
                log(f"{route_name}: phone in {args.rooms} rooms, inactive; SM id={client.sm_id!r} max={client.sm_max}")
                csi = await measure_csi(route, traffic, client, phone, args)
                log(f"{route_name} (a): {csi.wakeups} wake-ups, {csi.wire_bytes:,} bytes, lost {csi.lost}")
                hibernation_max = client.sm_max
                client, resumes = await resume_trials(route, traffic, client, args)
                fresh = await fresh_login_trials(route, traffic, client, args) if route.bouncer is None else []
                if route.bouncer is not None:
                    ended = Counter(e.get("reason") for e in route.bouncer.events if e.get("event") == "session ended")
                    refused = Counter(e.get("reason") for e in route.bouncer.events if e.get("event") == "resume refused")
                    log(f"bouncer log: sessions ended {dict(ended)}, resumes refused {dict(refused)}")
        finally:
            common.abort_all(clients)
    return RouteOutcome(csi, resumes, fresh, hibernation_max)


@contextlib.contextmanager
def _route(name: str, workdir: Path, prosody: Prosody, account: str, password: str) -> Iterator[PhoneRoute]:
    """The phone's way in: Prosody itself, or a bouncer for ``account`` (created beforehand:
    the traffic's contact writes to it)."""
    if name == "direct":
        yield PhoneRoute(name, prosody, account, password)
        return
    with common.running_bouncer(workdir, prosody, account, password) as bouncer:
        yield PhoneRoute(name, prosody, account, password, bouncer)


# ---- report ------------------------------------------------------------------------------------
def kb(n: int) -> str:
    return f"{n / 1024:,.1f} kB"


def report(outcomes: dict[str, RouteOutcome], args) -> bool:
    b, d = outcomes["bouncer"].csi, outcomes["direct"].csi
    rows = []
    for o in (b, d):
        cpu_server = "  ".join(f"{k} {v:.2f} s" for k, v in sorted(o.cpu.items()) if k != "benchmark")
        rows.append([o.route, o.wakeups, o.reads, kb(o.wire_bytes), kb(o.xml_bytes), kb(o.sent_bytes), o.stanzas,
                     o.requests, f"{o.messages - o.lost}/{o.messages}", o.duplicated, f"{o.seconds:.1f} s",
                     f"{o.cpu['benchmark']:.2f} s", cpu_server])
    common.print_table(
        f"(a) CSI: phone inactive in {args.rooms} rooms x {args.occupants} occupants, {b.changes} presence changes "
        f"+ {b.messages} messages with a body in {args.seconds:g} s (wake-up: reads < {WAKE_GAP * 1000:.0f} ms apart merged)",
        ["route", "wake-ups", "reads", "bytes (TCP)", "bytes (XML)", "sent", "stanzas", "<r/>", "bodies", "dup",
         "wall", "CPU bench", "CPU servers"],
        rows,
    )
    wake_ratio = common.ratio(d.wakeups, b.wakeups)
    byte_ratio = common.ratio(d.wire_bytes, b.wire_bytes)
    csi_met = b.wakeups <= d.wakeups and b.wire_bytes < d.wire_bytes and b.lost == 0
    log(f"(a) direct/bouncer: wake-ups {wake_ratio:.2f}x, bytes {byte_ratio:.2f}x; target (bouncer wake-ups <= "
        f"direct, fewer bytes, every body): {common.verdict(csi_met)}")

    loss_changes = round(args.changes * args.loss / args.seconds)
    rows = []
    series = [("bouncer", "resume", outcomes["bouncer"].resumes),
              ("direct", "fresh login + rejoin", outcomes["direct"].fresh),
              ("direct", "resume", outcomes["direct"].resumes)]
    for route, kind, trials in series:
        totals = [t.total for t in trials]
        rows.append([route, kind, ms(median([t.connected for t in trials])), ms(median(totals)), ms(min(totals)),
                     ms(max(totals)), int(median([t.stanzas for t in trials])), sum(t.lost for t in trials),
                     f"{median([t.cpu_bench for t in trials]) * 1000:.0f} ms", "; ".join(sorted({t.outcome for t in trials}))])
    common.print_table(
        f"(b) back after a {args.loss:g} s loss ({loss_changes} presence changes, {loss_changes // args.per_message} "
        f"room messages, {args.chats} chats, sent in {args.loss_seconds:g} s), {args.trials} trials (medians); "
        "from TCP connect until every chat and room message of the loss arrived",
        ["route", "how", "connected", "total", "min", "max", "stanzas", "missing", "CPU bench", "outcome"],
        rows,
    )
    bouncer_resume = median([t.total for t in outcomes["bouncer"].resumes])
    direct_fresh = median([t.total for t in outcomes["direct"].fresh])
    speedup = common.ratio(direct_fresh, bouncer_resume)
    resumed = all(t.outcome == "resumed" and t.lost == 0 for t in outcomes["bouncer"].resumes)
    resume_met = speedup >= TARGET_RESUME and resumed
    log(f"(b) direct fresh login / bouncer resume: {speedup:.1f}x; target >= {TARGET_RESUME:g}x with every trial "
        f"resumed and complete: {common.verdict(resume_met)}")
    if not resumed:
        failed = sum(1 for t in outcomes["bouncer"].resumes if t.outcome != "resumed")
        log(f"    {failed} of {len(outcomes['bouncer'].resumes)} bouncer resumes did not resume (see the outcome column; "
            "the time above is then its fallback's)")
    log(f"    hibernation offered (<enabled max=/>): bouncer {outcomes['bouncer'].hibernation_max} s, "
        f"Prosody {outcomes['direct'].hibernation_max} s")
    return csi_met and resume_met


async def main(workdir: Path, args) -> bool:
    outcomes = {}
    for name in common.ROUTES:
        outcomes[name] = await measure(workdir, name, args)
    return report(outcomes, args)


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--occupants", type=int, default=20, help="direct occupants per room (the owner included)")
    parser.add_argument("--seconds", type=float, default=60.0, help="(a): wall time of the 'ten minutes of traffic'")
    parser.add_argument("--changes", type=int, default=1200, help="(a): presence changes in that time")
    parser.add_argument("--zipf", type=float, default=1.0,
                        help="skew of presence churn: the k-th occupant of a room changes with weight 1/k**ZIPF "
                             "(0: uniform)")
    parser.add_argument("--per-message", type=int, default=20, help="presence changes per message with a body")
    parser.add_argument("--loss", type=float, default=120.0,
                        help="(b): seconds of (a)'s traffic rate that happen during the loss")
    parser.add_argument("--loss-seconds", type=float, default=10.0, help="(b): wall time that traffic is sent in")
    parser.add_argument("--chats", type=int, default=10, help="(b): 1:1 chats from a contact during the loss")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="(b): longest wait for everything to arrive")
    arguments = parser.parse_args()
    common.run(lambda workdir: main(workdir, arguments), keep=arguments.keep)
