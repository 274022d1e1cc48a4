"""Manage the bouncer from any client (issue 13, 1): XEP-0050 ad-hoc commands on the
account's bare JID, and the same command tree over the control socket, with real effects
on a real server."""

from __future__ import annotations

import asyncio
import itertools

from lxml import etree

from integration_setup import make_setup
from support.bouncer import bouncer_cli
from support.clients import close, connect
from support.muc import create_room, from_occupant, join

COMMANDS = "http://jabber.org/protocol/commands"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
PREFIX = "urn:x-bouncer:command:"
_ids = itertools.count(1)


async def ask(client, to: str, payload: str, kind: str = "set") -> etree._Element:
    iq_id = f"q{next(_ids)}"
    client.send_xml(f"<iq type='{kind}' id='{iq_id}' to='{to}'>{payload}</iq>")
    return await client.wait_for(lambda el: el.get("id") == iq_id)


def command(node: str, argument: str | None = None) -> str:
    form = "" if argument is None else (
        f"<x xmlns='{DATA}' type='submit'><field var='argument'><value>{argument}</value></field></x>")
    return f"<command xmlns='{COMMANDS}' node='{PREFIX}{node}' action='execute'>{form}</command>"


def lines(answer: etree._Element) -> list[str]:
    return [v.text or "" for v in answer.iter(f"{{{DATA}}}value")]


def presences_of(client, occupant: str) -> list[str | None]:
    return [el.get("type") for el in client.received if el.tag == "{jabber:client}presence" and el.get("from") == occupant]


async def room_with_alice(server, tmp_path):
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, server.port)
    room = f"cmd{next(_ids)}x{s.alice.split('@')[0]}@{server.muc_domain}"
    await create_room(bob, room, "bob")
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    await join(phone, room, "alice")
    return s, bob, room, phone


async def test_ad_hoc_commands_list_run_and_leave_a_room_for_real(server, tmp_path):
    s, bob, room, phone = await room_with_alice(server, tmp_path)
    listed = await ask(phone, s.alice, f"<query xmlns='{DISCO_ITEMS}' node='{COMMANDS}'/>", "get")
    assert (listed.get("type"), listed.get("from")) == ("result", s.alice)  # Profanity needs the from
    nodes = {i.get("node"): i.get("name") for i in listed.iter(f"{{{DISCO_ITEMS}}}item")}
    assert {f"{PREFIX}{n}" for n in ("status", "rooms", "sessions", "leave", "hold", "disconnect")} <= set(nodes)
    status = await ask(phone, s.alice, command("status"))
    assert status.find(f"{{{COMMANDS}}}command").get("status") == "completed"
    assert any(line.startswith("upstream: connected as") for line in lines(status))
    assert any(line.startswith(f"  {room} as alice") for line in lines(status))
    sessions = await ask(phone, s.alice, command("sessions"))
    assert "sessions: 1" in lines(sessions) and "devices: 1" in lines(sessions)
    form = await ask(phone, s.alice, command("leave"))
    assert form.find(f"{{{COMMANDS}}}command").get("status") == "executing"
    field = form.find(f".//{{{DATA}}}field")
    assert field.get("type") == "list-single" and room in lines(form)
    left = await ask(phone, s.alice, command("leave", room))
    assert left.find(f".//{{{COMMANDS}}}note").get("type") == "info"
    await bob.wait_for(from_occupant(room, "alice", ptype="unavailable"))
    gone = await phone.wait_for(lambda el: el.get("from") == f"{room}/alice" and el.get("type") == "unavailable")
    assert gone is not None  # the session sees its own leave
    await asyncio.sleep(0.5)
    assert presences_of(bob, f"{room}/alice") == [None, "unavailable"]  # bob saw alice leave once
    held = await ask(phone, s.alice, command("hold", f"{room}/alice2"))
    assert held.find(f".//{{{COMMANDS}}}note").get("type") == "info"
    await bob.wait_for(from_occupant(room, "alice2"))
    await asyncio.to_thread(s.bouncer.wait_event, "room joined upstream", room=room, after=1)
    rooms = await ask(phone, s.alice, command("rooms"))
    assert lines(rooms)[:2] == ["rooms: 1", f"  {room} as alice2: 2 occupants, 0 sessions, 0 archived"]
    laptop = await connect(f"{s.alice}/laptop", s.password, s.port)
    form = await ask(phone, s.alice, command("disconnect"))
    assert "laptop" in lines(form) and "phone" not in lines(form)  # not the asker's own session
    await ask(phone, s.alice, command("disconnect", "laptop"))
    await asyncio.wait_for(laptop.disconnected_event.wait(), 10)
    assert laptop.stream_errors == ["reset"]
    await close(phone, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_strangers_command_is_refused(server, tmp_path):
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, server.port)
    refused = await ask(bob, s.bouncer.wait_event("upstream established")["jid"], command("status"))
    assert refused.get("type") == "error" and refused.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") is not None
    await close(bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_the_control_socket_runs_the_same_commands(server, tmp_path):
    s, bob, room, phone = await room_with_alice(server, tmp_path)
    config = str(s.bouncer.config_path)
    code, out, err = await bouncer_cli("rooms", "-c", config)
    assert (code, err) == (0, "") and out.splitlines()[0] == "rooms: 1" and room in out
    code, out, err = await bouncer_cli("leave", "-c", config, room)
    assert (code, out.strip()) == (0, f"the account left {room}")
    await bob.wait_for(from_occupant(room, "alice", ptype="unavailable"))
    await phone.wait_for(lambda el: el.get("from") == f"{room}/alice" and el.get("type") == "unavailable")
    code, out, err = await bouncer_cli("leave", "-c", config, room)
    assert (code, err.strip()) == (1, f"bouncer: {room} is not held by the account")
    code, out, _ = await bouncer_cli("disconnect", "-c", config, "phone")
    assert (code, out.strip()) == (0, "session phone disconnected")
    await asyncio.wait_for(phone.disconnected_event.wait(), 10)
    await close(bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0
