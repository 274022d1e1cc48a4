"""Bounds on connections that have not logged in (SPEC §11), on the real listener over
loopback sockets: each refused or timed-out connection gets its stream error, and the
account, its other sessions and its upstream session carry on unaware."""

from __future__ import annotations

import asyncio
import socket

from integration_setup import make_setup
from support.clients import body_is, close, connect
from support.rawxmpp import plain_login, raw


async def everything(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the bouncer writes until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def still_serving(s) -> None:
    """A real client logs in and gets a chat: the limits did not hurt anyone else."""
    a = await connect(f"{s.alice}/A", s.password, s.port)
    bob = await connect(s.bob, s.bob_password, s.server.port)
    bob.send_message(mto=f"{s.alice}/A", mbody="still here", mtype="chat")
    await a.wait_for(body_is("still here"))
    await close(a, bob)


async def test_a_connection_that_does_not_log_in_is_closed(prosody, tmp_path):
    s = make_setup(prosody, tmp_path, limits={"login_timeout": 1})
    await asyncio.to_thread(s.bouncer.start)
    reader, writer = await raw(s.port)
    writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
    await still_serving(s)  # meanwhile
    out = await everything(reader, 5)
    assert b"<connection-timeout" in out and out.endswith(b"</stream:stream>"), out
    await asyncio.to_thread(s.bouncer.wait_event, "login timed out")
    assert s.bouncer.count("upstream down") == 0
    writer.close()
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_idle_connections_from_one_address_do_not_lock_out_the_others(prosody, tmp_path):
    s = make_setup(prosody, tmp_path, limits={"max_unauthenticated": 5, "max_unauthenticated_per_address": 3})
    await asyncio.to_thread(s.bouncer.start)
    idle = [await raw(s.port, "127.0.0.2") for _ in range(3)]
    reader, writer = await raw(s.port, "127.0.0.2")  # one too many from there
    out = await everything(reader, 5)
    assert b"<policy-violation" in out and out.endswith(b"</stream:stream>"), out
    await still_serving(s)  # from 127.0.0.1, while 127.0.0.2 is at its limit
    idle += [await raw(s.port, "127.0.0.3") for _ in range(2)]  # 5 in total now
    await asyncio.sleep(0.2)
    reader, _ = await raw(s.port, "127.0.0.4")
    assert b"<policy-violation" in await everything(reader, 5)
    for _, w in idle:
        w.close()
    await asyncio.sleep(0.2)
    await still_serving(s)  # the slots are free again
    await asyncio.to_thread(s.bouncer.wait_event, "connection refused", after=1)
    assert s.bouncer.count("connection refused") == 2 and s.bouncer.count("upstream down") == 0
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_silent_session_is_pinged_then_closed(prosody, tmp_path):
    """A bound session that stops answering (a phone gone without a word) is pinged after
    idle_timeout and closed when the ping goes unanswered; a client that answers stays."""
    s = make_setup(prosody, tmp_path, limits={"idle_timeout": 1})
    await asyncio.to_thread(s.bouncer.start)
    a = await connect(f"{s.alice}/B", s.password, s.port)  # slixmpp answers pings
    reader, writer = await plain_login(s, s.password, bind=True)
    out = await everything(reader, 6)
    assert b"urn:xmpp:ping" in out and b"<connection-timeout" in out, out
    assert out.endswith(b"</stream:stream>")
    await asyncio.to_thread(s.bouncer.wait_event, "session silent, closing")
    assert not a.disconnected_event.is_set()
    await still_serving(s)
    writer.close()
    await close(a)
    assert s.bouncer.count("upstream down") == 0
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_failed_logins_share_slots_whatever_the_connections(prosody, tmp_path):
    """Six wrong passwords on six parallel connections are answered as one connection's
    would be: three at once, then at the slots 0.5, 1.5 and 3.5 s; the right password,
    meanwhile, is answered at once."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    wrong = [plain_login(s, "wrong") for _ in range(6)]
    right = asyncio.ensure_future(plain_login(s, s.password))
    results = await asyncio.gather(*wrong)
    assert all(not ok for ok, _ in results)
    times = sorted(t for _, t in results)
    assert max(times[:3]) < 0.4 and times[3] >= 0.45 and times[4] >= 1.45 and times[5] >= 3.45, times
    ok, seconds = await right
    assert ok and seconds < 0.4
    await asyncio.to_thread(s.bouncer.wait_event, "authentication failed", after=5)
    assert s.bouncer.count("upstream down") == 0
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_hostile_bytes_get_their_stream_error_and_nobody_else_notices(prosody, tmp_path):
    """From the first byte: an oversized header, a namespace lxml refuses, a stanza of
    too many elements; each gets its stream error, the account carries on."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    a = await connect(f"{s.alice}/B", s.password, s.port)  # still_serving() logs in as A
    header = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              f"xmlns:stream='http://etherx.jabber.org/streams' to='{s.server.domain}' version='1.0'>").encode()
    cases = {
        b"<stream:stream xmlns='jabber:client' a='" + b"x" * 100_000: b"<policy-violation",
        header.replace(b" to=", b" xmlns:x='a b' to="): b"<invalid-namespace",
        header + b"<message><body>" + b"<a/>" * 9000: b"<policy-violation",
    }
    for data, condition in cases.items():
        reader, writer = await raw(s.port)
        writer.write(data)
        out = await everything(reader, 5)
        assert condition in out and out.endswith(b"</stream:stream>"), (data[:60], out)
        writer.close()
    await still_serving(s)
    assert not a.disconnected_event.is_set() and s.bouncer.count("upstream down") == 0
    assert "Traceback" not in s.bouncer.log_tail(200)
    await close(a)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_session_that_stops_reading_is_closed_at_its_byte_cap(prosody, tmp_path):
    """It holds at most its send buffer and its queue's bytes, then it is closed; the
    session that reads gets every chat."""
    s = make_setup(prosody, tmp_path, limits={"session_queue_bytes": 65536, "session_send_buffer": 4096})
    await asyncio.to_thread(s.bouncer.start)
    a = await connect(f"{s.alice}/A", s.password, s.port)
    reader, writer = await plain_login(s, s.password, bind=True)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"<presence/>")  # available: chats to the account reach it too; then it reads nothing
    bob = await connect(s.bob, s.bob_password, s.server.port)
    await asyncio.sleep(0.3)
    padding = "x" * 1000
    for i in range(1000):  # ~1.1 MB
        bob.send_message(mto=s.alice, mbody=f"n{i} {padding}", mtype="chat")
    full = await asyncio.to_thread(s.bouncer.wait_event, "session queue full, closing", timeout=20)
    assert full["queued_bytes"] >= 65536 - 2000
    await a.wait_for(lambda el: (el.findtext("{jabber:client}body") or "").startswith("n999 "), timeout=20)
    got = [el for el in a.received if (el.findtext("{jabber:client}body") or "").startswith("n")]
    assert len(got) == 1000 and not a.disconnected_event.is_set()
    writer.close()
    await close(a, bob)
    assert s.bouncer.count("upstream down") == 0
    assert await asyncio.to_thread(s.bouncer.stop) == 0
