"""Phones through the bouncer (SPEC §9, §14): XEP-0198 sessions that survive their
connection, and a backlog per device. Real Prosody upstream, slixmpp with its
XEP-0198 plugin downstream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from integration_setup import make_setup
from support.clients import Client, close, connect, numbers, until
from support.muc import create_room, from_occupant, groupchat, join, send_groupchat
from support.rawxmpp import SmClient
from support.upstream import Blackhole

TIMEOUT = 15


async def phone(s, resource: str = "phone", port: int | None = None) -> Client:
    """A session with slixmpp's XEP-0198 plugin, enabled and resumable (through ``port``,
    the bouncer's by default)."""
    client = Client(f"{s.alice}/{resource}", s.password)
    client.register_plugin("xep_0198")
    enabled = asyncio.Event()
    client.add_event_handler("sm_enabled", lambda _e: enabled.set())
    client.connect(host="127.0.0.1", port=port or s.port)
    await asyncio.wait_for(enabled.wait(), TIMEOUT)
    assert client.plugin["xep_0198"].sm_id
    return client


async def resume_on(mobile: Client, port: int) -> None:
    resumed = asyncio.Event()
    mobile.add_event_handler("session_resumed", lambda _e: resumed.set())
    mobile.connect(host="127.0.0.1", port=port)
    await asyncio.wait_for(resumed.wait(), TIMEOUT)


async def test_a_phone_cut_off_resumes_and_gets_every_message_once_in_order(prosody, tmp_path):
    """Numbered chats and room messages: some read, some in flight when the network goes,
    some sent while it is away; after the resume each one is there once, in order."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    room = f"cut-{s.alice.split('@')[0]}@{prosody.muc_domain}"
    await create_room(bob, room, "bob")
    mobile = await phone(s)
    await join(mobile, room, "alice")

    def say(first: int, last: int) -> None:
        for n in range(first, last + 1):
            bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
            send_groupchat(bob, room, f"r{n}")

    say(1, 20)
    await until(lambda: numbers(mobile, "r")[-1:] == [20] and numbers(mobile, "n")[-1:] == [20],
                seen=lambda: (numbers(mobile, "n"), numbers(mobile, "r")))
    mobile.transport.pause_reading()  # what comes now is in flight when the network goes
    say(21, 30)
    await asyncio.sleep(0.5)  # written by the bouncer, never read by the phone
    mobile.transport.abort()  # the network is gone: no </stream>
    await asyncio.to_thread(s.bouncer.wait_event, "session hibernated", session="phone")
    assert numbers(mobile, "n") == list(range(1, 21)) and numbers(mobile, "r") == list(range(1, 21))
    say(31, 40)
    await asyncio.sleep(0.5)  # let bob's messages reach the hibernated session
    await resume_on(mobile, s.port)
    await until(lambda: numbers(mobile, "r")[-1:] == [40] and numbers(mobile, "n")[-1:] == [40],
                seen=lambda: (numbers(mobile, "n"), numbers(mobile, "r"), s.bouncer.log_tail(15)))
    assert numbers(mobile, "n") == list(range(1, 41))  # every one, once, in order
    assert numbers(mobile, "r") == list(range(1, 41))
    # The log is read by another thread: wait for the line before counting what came before it.
    await asyncio.to_thread(s.bouncer.wait_event, "session resumed")
    assert s.bouncer.count("session resumed") == 1 and s.bouncer.count("session ended") == 0
    await close(mobile, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_phone_that_vanished_without_a_word_hibernates_and_resumes(prosody, tmp_path):
    """No FIN, no RST (a NAT entry expired): the client stops answering <r/>, and the
    bouncer drops the connection after the grace time instead of writing into the void."""
    s = make_setup(prosody, tmp_path, limits={"idle_timeout": 2})
    await asyncio.to_thread(s.bouncer.start)
    relay = await Blackhole(s.port).start()
    bob = await connect(s.bob, s.bob_password, prosody.port)
    mobile = await phone(s, port=relay.port)
    relay.cut()
    bob.send_message(mto=s.alice, mbody="n1", mtype="chat")
    await asyncio.to_thread(s.bouncer.wait_event, "no ack from the client, dropping the connection", timeout=10)
    await asyncio.to_thread(s.bouncer.wait_event, "session hibernated", session="phone")
    mobile.transport.abort()
    await resume_on(mobile, s.port)
    await until(lambda: numbers(mobile, "n") == [1])
    await close(mobile, bob)
    await relay.close()
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_restart_is_a_network_blip_for_a_phone(prosody, tmp_path):
    """SIGTERM, then a new process: the phone resumes and gets exactly what it had not
    acknowledged, then what came meanwhile; no stream error ever reached it."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    mobile = await phone(s)
    for n in range(1, 11):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await until(lambda: numbers(mobile, "n")[-1:] == [10])
    mobile.transport.pause_reading()
    for n in range(11, 16):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await asyncio.sleep(0.5)  # written to the phone, not read by it
    assert await asyncio.to_thread(s.bouncer.stop) == 0
    await asyncio.to_thread(s.bouncer.wait_event, "sessions saved for the next run")
    mobile.transport.abort()  # what it had not read is lost with the connection
    await asyncio.wait_for(mobile.disconnected_event.wait(), TIMEOUT)
    for n in range(16, 21):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")  # while no bouncer runs
    await asyncio.to_thread(s.bouncer.start)
    await resume_on(mobile, s.port)
    await until(lambda: numbers(mobile, "n")[-1:] == [20], seen=lambda: numbers(mobile))
    assert numbers(mobile, "n") == list(range(1, 21)) and mobile.stream_errors == []
    await close(mobile, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_after_a_crash_each_device_gets_every_chat_exactly_once(prosody, tmp_path):
    """SIGKILL: nothing was saved. The phone's resume fails, and it, like the laptop,
    gets from its backlog every chat it had not acknowledged, once."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    mobile = await phone(s)
    laptop = await connect(f"{s.alice}/laptop", s.password, s.port)
    for n in range(1, 6):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await until(lambda: numbers(mobile, "n")[-1:] == [5] and numbers(laptop, "n")[-1:] == [5])
    mobile.plugin["xep_0198"].send_ack()
    await asyncio.sleep(0.3)  # the phone's ack reached the bouncer
    await asyncio.to_thread(s.bouncer.kill)
    for client in (mobile, laptop):
        await asyncio.wait_for(client.disconnected_event.wait(), TIMEOUT)  # the kernel closed their sockets
    for n in range(6, 31):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await asyncio.sleep(0.5)  # at the server, for the account
    await asyncio.to_thread(s.bouncer.start)
    failed = asyncio.Event()
    mobile.add_event_handler("sm_failed", lambda _e: failed.set())
    restarted = asyncio.Event()
    mobile.add_event_handler("session_start", lambda _e: restarted.set())
    mobile.connect(host="127.0.0.1", port=s.port)
    await asyncio.wait_for(failed.wait(), TIMEOUT)
    await asyncio.wait_for(restarted.wait(), TIMEOUT)
    laptop2 = await connect(f"{s.alice}/laptop", s.password, s.port)
    await until(lambda: numbers(mobile, "n")[-1:] == [30] and numbers(laptop2, "n")[-1:] == [30])
    await asyncio.sleep(0.5)  # nothing more comes
    assert numbers(mobile, "n") == list(range(1, 31))
    assert numbers(laptop, "n") + numbers(laptop2, "n") == list(range(1, 31))
    await close(mobile, laptop2, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_phone_too_slow_for_its_queue_is_cut_hibernates_and_resumes(prosody, tmp_path):
    """Past its outbox cap the connection is dropped (memory stays bounded), the session
    hibernates, and the phone resumes with everything, once, in order."""
    s = make_setup(prosody, tmp_path, limits={"session_queue_bytes": 65536, "session_send_buffer": 4096})
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    mobile = await phone(s)
    mobile.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mobile.transport.pause_reading()
    filler = "x" * 1500
    for n in range(1, 1501):
        bob.send_message(mto=s.alice, mbody=f"n{n} {filler}", mtype="chat")
    await asyncio.to_thread(s.bouncer.wait_event, "session queue full, closing", timeout=20)
    await asyncio.to_thread(s.bouncer.wait_event, "session hibernated", session="phone")
    assert s.bouncer.count("session queue full, closing") == 1  # said once, not per stanza after
    mobile.transport.abort()
    # As a phone does: resume whenever the connection drops, until it has everything. While
    # bob's flood is still arriving, this slow client may fill the tiny outbox of this test
    # again and be cut again; each resume makes progress.
    for _ in range(10):
        await asyncio.wait_for(mobile.disconnected_event.wait(), TIMEOUT)
        mobile.disconnected_event.clear()
        await resume_on(mobile, s.port)
        done = asyncio.ensure_future(until(lambda: numbers(mobile)[-1:] == [1500], timeout=30))
        dropped = asyncio.ensure_future(mobile.disconnected_event.wait())
        await asyncio.wait({done, dropped}, return_when=asyncio.FIRST_COMPLETED)
        dropped.cancel()
        if done.done():
            done.result()
            break
        done.cancel()
    assert numbers(mobile) == list(range(1, 1501))
    await close(mobile, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_an_inactive_phone_gets_bodies_at_once_and_presences_when_active(prosody, tmp_path):
    """XEP-0352 in a real room: occupant presences wait (the latest per occupant, with
    the time it came), and arrive in the same write as the next message with a body."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    carol_jid, carol_pw = prosody.new_user("carol")
    dave_jid, dave_pw = prosody.new_user("dave")
    carol = await connect(carol_jid, carol_pw, prosody.port)
    room = f"csi-{s.alice.split('@')[0]}@{prosody.muc_domain}"
    await create_room(carol, room, "carol")
    mobile = await phone(s)
    await join(mobile, room, "alice")
    mobile.send_xml("<inactive xmlns='urn:xmpp:csi:0'/>")
    dave = await connect(dave_jid, dave_pw, prosody.port)
    await join(dave, room, "dave")
    dave.send_xml(f"<presence to='{room}/dave'><show>away</show></presence>")
    dave.send_xml(f"<presence to='{room}/dave'><show>dnd</show></presence>")
    await carol.wait_for(lambda el: from_occupant(room, "dave")(el) and el.findtext("{jabber:client}show") == "dnd")
    await asyncio.sleep(0.3)
    assert mobile.matching(from_occupant(room, "dave")) == []  # held
    mark = len(mobile.received)
    send_groupchat(carol, room, "wake up")
    await mobile.wait_for(groupchat(room, "wake up"), start=mark)
    got = mobile.received[mark:]
    daves = [el for el in got if from_occupant(room, "dave")(el)]
    assert len(daves) == 1 and daves[0].findtext("{jabber:client}show") == "dnd"  # coalesced
    assert daves[0].find("{urn:xmpp:delay}delay") is not None  # stamped with when it came
    assert got.index(daves[0]) < got.index(next(el for el in got if groupchat(room, "wake up")(el)))
    mark = len(mobile.received)
    dave.send_xml(f"<presence to='{room}/dave' type='unavailable'/>")
    await carol.wait_for(from_occupant(room, "dave", ptype="unavailable"))
    await asyncio.sleep(0.3)
    assert mobile.matching(from_occupant(room, "dave", ptype="unavailable")) == []
    mobile.send_xml("<active xmlns='urn:xmpp:csi:0'/>")
    await mobile.wait_for(from_occupant(room, "dave", ptype="unavailable"), start=mark)
    await close(mobile, carol, dave)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


@pytest.mark.parametrize("how", ["hibernation over", "wrong h"])
async def test_a_resume_that_cannot_be_gets_failed_and_the_backlog(prosody, tmp_path, how):
    """The session ended (its hibernation time is over), or the phone claims stanzas it
    was never sent: <failed/>, then a new session that gets every chat from the backlog."""
    s = make_setup(prosody, tmp_path, sessions={"hibernation": 1 if how == "hibernation over" else 3600})
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    mobile = await phone(s)
    bob.send_message(mto=s.alice, mbody="n1", mtype="chat")
    await until(lambda: numbers(mobile) == [1])
    mobile.plugin["xep_0198"].send_ack()
    await asyncio.sleep(0.3)
    mobile.transport.abort()
    await asyncio.to_thread(s.bouncer.wait_event, "session hibernated", session="phone")
    for n in range(2, 6):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    if how == "hibernation over":
        await asyncio.to_thread(s.bouncer.wait_event, "session ended", session="phone", reason=how)
    else:
        await asyncio.sleep(0.3)
        mobile.plugin["xep_0198"].handled = 1000
    failed, started = asyncio.Event(), asyncio.Event()
    mobile.add_event_handler("sm_failed", lambda _e: failed.set())
    mobile.add_event_handler("session_start", lambda _e: started.set())
    mobile.connect(host="127.0.0.1", port=s.port)
    await asyncio.wait_for(failed.wait(), TIMEOUT)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await until(lambda: numbers(mobile)[-1:] == [5])
    assert numbers(mobile) == [1, 2, 3, 4, 5]
    refusal = s.bouncer.wait_event("resume refused")
    assert refusal["reason"] == ("h too high" if how == "wrong h" else "unknown or ended session")
    await close(mobile, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_exact_counts_over_hundreds_of_stanzas_both_ways(prosody, tmp_path):
    """A raw client counting as XEP-0198 says: the bouncer's <a h/> is exactly what the
    client sent, the client's h exactly what it got, and a resume's <resumed h/> exactly
    what the bouncer had handled; the stanzas sent again are exactly those the client's h
    did not cover (Monal drops a session whose h is wrong)."""
    s = make_setup(prosody, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    raw = await SmClient.login("127.0.0.1", s.port, s.alice, s.password, resource="raw")
    sent = 1  # its initial presence
    for n in range(300):
        raw.send_xml(f"<message to='{s.bob}' type='chat' id='c{n}'><body>to bob {n}</body></message>")
        sent += 1
    raw.send_xml("<r xmlns='urn:xmpp:sm:3'/>")
    await until(lambda: raw.server_h == sent, seen=lambda: raw.server_h)
    for n in range(1, 301):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await until(lambda: bodies_of(raw)[-1:] == ["n300"], seen=lambda: len(bodies_of(raw)))
    assert raw.h == len(raw.received)  # every stanza it got counted, nothing else
    got = raw.h
    raw.writer.transport.pause_reading()
    for n in range(301, 351):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await asyncio.sleep(0.5)
    raw.abort()
    await asyncio.to_thread(s.bouncer.wait_event, "session hibernated", session="raw")
    again = await SmClient.resume_session("127.0.0.1", s.port, s.alice, s.password, raw.sm_id, got)
    assert again.resumed is not None and int(again.resumed.get("h")) == sent
    await until(lambda: bodies_of(again)[-1:] == ["n350"], seen=lambda: bodies_of(again))
    assert bodies_of(again) == [f"n{n}" for n in range(301, 351)] and again.h == got + len(again.received)
    await again.close()
    await close(bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


def bodies_of(client) -> list[str]:
    return [el.findtext("{jabber:client}body") for el in client.received
            if el.tag == "{jabber:client}message" and el.findtext("{jabber:client}body")]
