"""1:1 messages after a gap the upstream session could not bridge (issue 12, 2): the
account pages its own MAM from the last message it took, and each device gets what it
missed exactly once, whether the server also stored the messages offline or not."""

from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from integration_setup import make_setup
from support.clients import body_is, close, connect, numbers, until

TIMEOUT = 15


@pytest.mark.parametrize("offline", [True, False], ids=["with mod_offline", "without mod_offline"])
async def test_chats_sent_while_the_bouncer_was_down_reach_each_device_once(prosody_factory, tmp_path, offline):
    server = prosody_factory(without=() if offline else ("offline",))
    server.start()
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, server.port)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    laptop = await connect(f"{s.alice}/laptop", s.password, s.port)
    bob.send_message(mto=s.alice, mbody="before", mtype="chat")  # the last message the account took
    await phone.wait_for(body_is("before"))
    await laptop.wait_for(body_is("before"))
    await asyncio.to_thread(s.bouncer.kill)
    for client in (phone, laptop):
        await asyncio.wait_for(client.disconnected_event.wait(), TIMEOUT)
    for n in range(1, 31):
        bob.send_message(mto=s.alice, mbody=f"n{n}", mtype="chat")
    await asyncio.sleep(0.5)  # archived by the server meanwhile
    await asyncio.to_thread(s.bouncer.start)
    phone2 = await connect(f"{s.alice}/phone", s.password, s.port)
    await until(lambda: numbers(phone2)[-1:] == [30], seen=lambda: numbers(phone2))
    await asyncio.to_thread(s.bouncer.wait_event, "account caught up")
    laptop2 = await connect(f"{s.alice}/laptop", s.password, s.port)  # a device that comes back later
    await until(lambda: numbers(laptop2)[-1:] == [30], seen=lambda: numbers(laptop2))
    await asyncio.sleep(0.5)  # nothing more comes
    for client in (phone2, laptop2):
        assert numbers(client) == list(range(1, 31))
        assert all(el.find("{urn:xmpp:delay}delay") is not None for el in client.received
                   if el.findtext("{jabber:client}body", "").startswith("n"))
    await close(phone2, laptop2, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_what_other_clients_sent_meanwhile_comes_as_carbons_and_the_bouncers_own_not_again(prosody_factory, tmp_path):
    """A chat the account sent from a client connected to the server directly, while the
    bouncer was down, reaches the sessions as a sent carbon, in order with bob's answer;
    what a session had sent through the bouncer before the crash does not come back."""
    server = prosody_factory()
    server.start()
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    bob = await connect(s.bob, s.bob_password, server.port)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    phone.send_xml(f"<iq type='set' id='c1'><enable xmlns='{CARBONS}'/></iq>")
    await phone.wait_for(lambda el: el.get("id") == "c1")
    bob.send_message(mto=s.alice, mbody="before", mtype="chat")
    await phone.wait_for(body_is("before"))
    phone.send_message(mto=s.bob, mbody="through the bouncer", mtype="chat")
    await bob.wait_for(body_is("through the bouncer"))
    await asyncio.to_thread(s.bouncer.kill)
    await asyncio.wait_for(phone.disconnected_event.wait(), TIMEOUT)
    direct = await connect(f"{s.alice}/direct", s.bouncer.read_config()["upstream"]["password"], server.port)
    direct.send_message(mto=s.bob, mbody="from the other client", mtype="chat")
    await bob.wait_for(body_is("from the other client"))
    bob.send_message(mto=s.alice, mbody="answer", mtype="chat")
    await direct.wait_for(body_is("answer"))
    await close(direct)
    await asyncio.to_thread(s.bouncer.start)
    phone2 = await connect(f"{s.alice}/phone", s.password, s.port)
    phone2.send_xml(f"<iq type='set' id='c2'><enable xmlns='{CARBONS}'/></iq>")
    await asyncio.to_thread(s.bouncer.wait_event, "account caught up")
    await phone2.wait_for(lambda el: "answer" in bodies_in(el))
    await asyncio.sleep(0.5)  # nothing more comes
    said = [b for el in phone2.received for b in bodies_in(el)]
    assert said == ["from the other client", "answer"], [etree.tostring(el) for el in phone2.received if bodies_in(el)]
    sent = [el for el in phone2.received if el.find(f"{{{CARBONS}}}sent") is not None]
    assert len(sent) == 1 and sent[0].find(f".//{{{DELAY}}}delay") is not None
    await close(phone2, bob)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


CARBONS, DELAY = "urn:xmpp:carbons:2", "urn:xmpp:delay"


def bodies_in(el) -> list[str]:
    """The bodies a message carries, its own or a carbon's."""
    return [b.text or "" for b in el.iter("{jabber:client}body")]
