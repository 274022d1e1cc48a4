"""What hostile or broken clients cost the bouncer (SPEC §11, issue 9): its RSS, and the others.

Four phases against one bouncer (fresh Prosody upstream), each printing the bouncer's
RSS before, at its peak during, and left after the abusers are gone (2 s later):

  (a) 1000 idle connections that never log in, from 50 loopback addresses;
  (b) ten connections each holding a legal 255 KB unfinished stanza of small elements
      (the worst shape for memory: ~400 bytes of lxml per 4-byte element);
  (c) a 2000-stream fuzz run: mutated login streams, 20 at a time;
  (d) one session that stops reading while bob floods the account with 5000 chats of
      1.1 kB (Prosody itself delivered only ~11,000 of a 20,000-chat flood of small ones,
      to a direct client as to the bouncer, so the flood is made of fewer, larger chats):
      when it is closed, and the other session's delivery rate against the same flood
      without the stuck one.

Goal: growth left after each phase under 10 MB, and the other session not slowed by
more than 10 %.

    python benchmarks/abuse.py [--flood 5000]
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import common
from common import HOST, log
from support.rawxmpp import RawClient

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").encode()
LOGIN = HEADER + (b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                  b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHg=</auth>")
PADDING = "x" * 1000  # a chat of ~1.1 kB: the flood is 5.5 MB, past what a stuck session may hold
NASTY = [b"<!DOCTYPE x>", b"&a;", b"<?pi?>", b"<!--", b"xmlns:x='a b' ", b"\x00", b"</stream:stream>",
         b"<a>" * 50, b"'", b"<", b">"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class RssWatch:
    """Samples a process's RSS every 20 ms; ``peak`` since it started."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_mb(pid)
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(0.02)

    def stop(self) -> float:
        self._task.cancel()
        return self.peak


async def phase(name: str, pid: int, abuse) -> dict:
    before = rss_mb(pid)
    watch = RssWatch(pid)
    detail = await abuse()
    peak = watch.stop()
    await asyncio.sleep(2)
    after = rss_mb(pid)
    row = {"phase": name, "before": before, "peak": peak, "after": after, "growth": after - before, **detail}
    log(f"{name}: RSS {before:.1f} -> peak {peak:.1f} -> {after:.1f} MB (left {after - before:+.1f} MB) {detail}")
    return row


async def _connect(port: int, source: str):
    return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


async def idle_connections(port: int, count: int = 1000) -> dict:
    sockets, refused = [], 0
    for i in range(count):
        reader, writer = await _connect(port, f"127.0.1.{i % 50 + 1}")
        sockets.append((reader, writer))
    await asyncio.sleep(1)
    for reader, _ in sockets:
        if reader.at_eof() or b"policy-violation" in (reader._buffer or b""):  # refused at once
            refused += 1
    for _, writer in sockets:
        writer.close()
    return {"connections": count, "refused": refused}


async def unfinished_stanzas(port: int, size: int = 255_000) -> dict:
    body = b"<message to='bob@localhost'><body>" + b"<a/>" * ((size - 40) // 4)
    writers = []
    for i in range(10):
        _, writer = await _connect(port, f"127.0.2.{i + 1}")
        writer.write(HEADER + body)
        await writer.drain()
        writers.append(writer)
    await asyncio.sleep(1)
    for writer in writers:
        writer.close()
    return {"connections": 10, "bytes each": size}


async def fuzz_streams(port: int, streams: int = 2000, parallel: int = 20) -> dict:
    rng = random.Random(9)
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        data = bytearray(LOGIN)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.choice(NASTY) if rng.random() < 0.5 else bytes([rng.randrange(256)])
        reader, writer = await _connect(port, f"127.0.3.{i % 200 + 1}")
        writer.write(bytes(data))
        try:
            out = await asyncio.wait_for(reader.read(65536), 2)
            answered += bool(out)
        except asyncio.TimeoutError:
            pass
        writer.close()

    for start in range(0, streams, parallel):
        await asyncio.gather(*(one(i) for i in range(start, min(streams, start + parallel))))
    return {"streams": streams, "answered": answered}


async def flood(route: tuple, count: int, stuck: bool) -> tuple[float, bool]:
    """bob sends ``count`` chats to the account; (seconds until session A had them all,
    whether a session that stopped reading was closed meanwhile)."""
    prosody, bouncer, bob = route
    reader = await common.bouncer_session(bouncer, "reader")
    got = asyncio.Event()
    seen, tail = 0, b""
    mark = b"<body>flood "

    def count_bodies(data: bytes, _now: float) -> None:
        nonlocal seen, tail
        data = tail + data  # a mark may straddle two reads
        seen += data.count(mark)
        tail = data[-(len(mark) - 1):]
        if seen >= count:
            got.set()

    reader.on_data(count_bodies)
    silent = None
    if stuck:
        silent = await common.bouncer_session(bouncer, "silent")
        # A phone that vanished acknowledges nothing: its window is tiny, what is sent to it
        # piles up in the bouncer's send buffer and queue until the cap closes it.
        silent.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent._task.cancel()
    await asyncio.sleep(0.5)
    started = time.monotonic()
    for i in range(count):
        bob.send_xml(f"<message to='{bouncer.jid}' type='chat'><body>flood {i} {PADDING}</body></message>")
        if i % 500 == 499:
            await bob.drain()
    try:
        await asyncio.wait_for(got.wait(), 120)
    except asyncio.TimeoutError:
        events = [e for e in bouncer.events if e.get("event") in ("session queue full, closing", "session closed",
                                                                  "upstream down", "stored for later")]
        raise AssertionError(f"session A got {seen} of {count} chats; {events[-5:]}") from None
    elapsed = time.monotonic() - started
    closed = silent is not None and bouncer.count("session queue full, closing") > 0
    for client in (reader, silent):
        if client is not None:
            client.abort()
    await asyncio.sleep(0.5)
    return elapsed, closed


async def main(workdir: Path, messages: int) -> bool:
    with common.fresh_prosody(workdir) as prosody:
        jid, password = prosody.new_user("alice")
        bob_jid, bob_pw = prosody.new_user("bob")
        with common.running_bouncer(workdir, prosody, jid, password) as bouncer:
            pid, port = bouncer.proc.pid, bouncer.port
            bob = await RawClient.login(HOST, prosody.port, bob_jid, bob_pw, tls=False)
            rows = [
                await phase("(a) 1000 idle unauthenticated", pid, lambda: idle_connections(port)),
                await phase("(b) 10 x 255 KB unfinished stanza", pid, lambda: unfinished_stanzas(port)),
                await phase("(c) 2000-stream fuzz run", pid, lambda: fuzz_streams(port)),
            ]
            route = (prosody, bouncer, bob)
            alone, _ = await flood(route, messages, stuck=False)

            async def with_stuck() -> dict:
                elapsed, closed = await flood(route, messages, stuck=True)
                return {"rate alone": round(messages / alone), "rate with stuck": round(messages / elapsed),
                        "stuck closed": closed}

            rows.append(await phase(f"(d) 1 stuck session, {messages}-chat flood", pid, with_stuck))
            bob.abort()
    common.print_table("What abusive clients cost the bouncer (RSS in MB)",
                       ["phase", "before", "peak", "after", "left", "detail"],
                       [[r["phase"], f"{r['before']:.1f}", f"{r['peak']:.1f}", f"{r['after']:.1f}",
                         f"{r['growth']:+.1f}",
                         ", ".join(f"{k} {v}" for k, v in r.items()
                                   if k not in ("phase", "before", "peak", "after", "growth"))] for r in rows])
    last = rows[-1]
    slowed = last["rate with stuck"] < 0.9 * last["rate alone"]
    met = all(r["growth"] < 10 for r in rows) and last["stuck closed"] and not slowed
    log(f"goal (growth left < 10 MB after each, stuck session closed, others within 10 %): "
        f"{'MET' if met else 'NOT MET'}")
    return met


if __name__ == "__main__":
    parser = common.argument_parser(__doc__)
    parser.add_argument("--flood", type=int, default=5000, help="chats (1.1 kB each) in the flood of phase (d)")
    args = parser.parse_args()
    common.run(lambda workdir: main(workdir, args.flood), keep=args.keep)
