"""A restart of the bouncer, as a user runs it (``systemctl restart``: SIGTERM, start).

The upstream XEP-0198 session is saved and resumed: bob, who is alice's contact
and sits in a room alice holds, sees no presence change, no leave and no join;
what he sends meanwhile reaches alice's sessions once. After a crash (SIGKILL)
nothing was saved: the account starts a new session and rejoins, as before.
"""

from __future__ import annotations

import itertools

import pytest

from integration_setup import make_setup
from support.clients import body_is, close, connect
from support.muc import create_room, from_occupant, groupchat, join, send_groupchat

_rooms = itertools.count(1)


def from_alice(account: str, room: str):
    """Presences bob could get from alice: as a contact or as the room's occupant."""
    def pred(el) -> bool:
        sender = el.get("from", "")
        return el.tag == "{jabber:client}presence" and (sender.startswith(account) or sender == f"{room}/alice")

    return pred


async def held_room(server, tmp_path, **overrides):
    """alice's bouncer with session A in a room, and bob (contact, occupant) on the server."""
    s = make_setup(server, tmp_path, befriend=True, **overrides)
    s.bouncer.start()
    bob = await connect(s.bob, s.bob_password, server.port)
    room = f"restart{next(_rooms)}x{s.alice.split('@')[0]}@{server.muc_domain}"
    await create_room(bob, room, "bob")
    a = await connect(f"{s.alice}/A", s.password, s.port)
    await join(a, room, "alice")
    await bob.wait_for(from_occupant(room, "alice"))
    await bob.wait_for(lambda el: el.tag.endswith("presence") and el.get("from", "").startswith(s.alice + "/"))
    return s, bob, room, a


@pytest.mark.parametrize("leave_when_unused", [False, True])
async def test_sigterm_restart_is_invisible_to_contacts_and_rooms(server, tmp_path, leave_when_unused):
    """Also with muc.leave_when_unused: a shutdown is not the last session leaving."""
    s, bob, room, a = await held_room(server, tmp_path, muc={"leave_when_unused": leave_when_unused})
    mark = len(bob.received)
    assert s.bouncer.stop() == 0  # SIGTERM: a's connection ends, the upstream session does not
    bob.send_message(mto=s.alice, mbody="during the restart", mtype="chat")
    send_groupchat(bob, room, "said during the restart")
    await bob.wait_for(groupchat(room, "said during the restart"), start=mark)
    s.bouncer.start()
    assert s.bouncer.wait_event("upstream established", after=1)["resumed"] is True
    s.bouncer.wait_event("room still joined", room=room)  # checked after the resume: answered, so no rejoin
    a = await connect(f"{s.alice}/A", s.password, s.port)
    await a.wait_for(body_is("during the restart"))
    start, me = await join(a, room, "alice")  # answered from the saved cache, at once
    bodies = [el.findtext("{jabber:client}body") for el in a.received[start:] if el.get("type") == "groupchat"]
    assert "said during the restart" in bodies
    # A barrier: everything the restart could have made bob see has reached him by now.
    send_groupchat(bob, room, "barrier")
    await a.wait_for(groupchat(room, "barrier"))
    await bob.wait_for(groupchat(room, "barrier"), start=mark)
    assert [el for el in bob.received[mark:] if from_alice(s.alice, room)(el)] == []
    assert len(a.matching(body_is("during the restart"))) == 1
    await close(a, bob)
    assert s.bouncer.stop() == 0


async def test_crash_then_start_is_a_new_session_that_rejoins(server, tmp_path):
    s, bob, room, a = await held_room(server, tmp_path)
    await close(a)
    s.bouncer.kill()  # nothing saved
    mark = len(bob.received)
    s.bouncer.start()
    assert s.bouncer.wait_event("upstream established", after=1)["resumed"] is False
    await bob.wait_for(from_occupant(room, "alice"), start=mark)  # rejoined by the account alone
    send_groupchat(bob, room, "after the crash")
    s.bouncer.wait_event("archived", room=room)
    a = await connect(f"{s.alice}/A", s.password, s.port)
    start, _ = await join(a, room, "alice")
    await a.wait_for(groupchat(room, "after the crash"), start=start)
    await close(a, bob)
    assert s.bouncer.stop() == 0
