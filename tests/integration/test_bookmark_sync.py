"""Bookmarks drive the account (issue 12, 3; SPEC §8), against real servers: a client
connected to the server directly, not through the bouncer, changes the account's
bookmarks, and the account joins and leaves as they say."""

from __future__ import annotations

import asyncio
import itertools

from lxml import etree

from integration_setup import make_setup
from support.clients import close, connect
from support.muc import codes, create_room, from_occupant, is_self_presence, join

BOOKMARKS = "urn:xmpp:bookmarks:1"
PUBSUB = "http://jabber.org/protocol/pubsub"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
_ids = itertools.count(1)


def publish(room: str, *, autojoin: bool, nick: str) -> str:
    """A XEP-0402 bookmark publish, with the publish-options the XEP asks for."""
    options = {
        "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
        "pubsub#persist_items": "true",
        "pubsub#access_model": "whitelist",
    }
    fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in options.items())
    return (f"<iq type='set' id='bm-{next(_ids)}'><pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS}'>"
            f"<item id='{room}'><conference xmlns='{BOOKMARKS}' autojoin='{str(autojoin).lower()}' name='r'>"
            f"<nick>{nick}</nick></conference></item></publish><publish-options>"
            f"<x xmlns='jabber:x:data' type='submit'>{fields}</x></publish-options></pubsub></iq>")


async def set_bookmark(direct, room: str, *, autojoin: bool, nick: str) -> None:
    xml = publish(room, autojoin=autojoin, nick=nick)
    iq_id = etree.fromstring(xml).get("id")
    direct.send_xml(xml)
    answer = await direct.wait_for(lambda el: el.get("id") == iq_id)
    assert answer.get("type") == "result", etree.tostring(answer)


def notified(room: str):
    def pred(el: etree._Element) -> bool:
        return any(item.get("id") == room for item in el.iter("{http://jabber.org/protocol/pubsub#event}item"))
    return pred


async def account_and_room(server, tmp_path):
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    carol = await connect(*server.new_user("carol"), server.port)
    room = f"bm{next(_ids)}x{s.alice.split('@')[0]}@{server.muc_domain}"
    await create_room(carol, room, "carol")
    direct = await connect(f"{s.alice}/direct", s.bouncer.read_config()["upstream"]["password"], server.port)
    return s, carol, room, direct


async def test_a_bookmark_set_elsewhere_joins_and_leaves_the_account(server, tmp_path):
    s, carol, room, direct = await account_and_room(server, tmp_path)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    laptop = await connect(f"{s.alice}/laptop", s.password, s.port)  # never in the room
    await set_bookmark(direct, room, autojoin=True, nick="alicebm")
    await carol.wait_for(from_occupant(room, "alicebm"))  # the account joined, with the bookmark's nick
    await phone.wait_for(notified(room))  # the session sees the bookmark
    await asyncio.to_thread(s.bouncer.wait_event, "room joined upstream", room=room)
    start, me = await join(phone, room, "alicebm")  # answered locally, at once
    assert me.get("from") == f"{room}/alicebm"
    await set_bookmark(direct, room, autojoin=False, nick="alicebm")
    gone = await phone.wait_for(lambda el: el.get("from") == f"{room}/alicebm" and el.get("type") == "unavailable")
    assert "110" in codes(gone)  # the session sees its own leave
    await carol.wait_for(from_occupant(room, "alicebm", ptype="unavailable"))
    await asyncio.sleep(0.5)
    seen = [el.get("type") for el in carol.received if el.tag == "{jabber:client}presence" and el.get("from") == f"{room}/alicebm"]
    assert seen == [None, "unavailable"]  # carol saw alice join once, and leave once
    assert s.bouncer.count("room joined upstream", room=room) == 1  # the phone's join was local
    # the phone saw its leave once, and the room's answer to the account reached nobody
    assert len(phone.matching(lambda el: el.get("from") == f"{room}/alicebm" and el.get("type") == "unavailable")) == 1
    assert not laptop.matching(lambda el: el.get("from", "").startswith(room)), [etree.tostring(e) for e in laptop.received if e.get("from", "").startswith(room)]
    await close(phone, laptop, direct, carol)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_autojoin_rooms_are_held_again_after_a_crash_before_any_session(server, tmp_path):
    s, carol, room, direct = await account_and_room(server, tmp_path)
    await set_bookmark(direct, room, autojoin=True, nick="alicebm")
    await asyncio.to_thread(s.bouncer.wait_event, "room joined upstream", room=room)
    await asyncio.to_thread(s.bouncer.kill)
    await asyncio.to_thread(s.bouncer.start)
    await asyncio.to_thread(s.bouncer.wait_event, "room joined upstream", room=room, after=1)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    _, me = await join(phone, room, "alicebm")
    assert me.get("from") == f"{room}/alicebm"
    assert s.bouncer.count("room joined upstream", room=room) == 2  # once per process: the phone's join was local
    await close(phone, direct, carol)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_the_account_has_the_servers_features_through_the_bouncer(server, tmp_path):
    """Dino uses XEP-0402 only with ``#compat`` on the account (SPEC §13): the account's
    disco#info through the bouncer has every feature the server gives a direct client."""
    s = make_setup(server, tmp_path)
    await asyncio.to_thread(s.bouncer.start)
    direct = await connect(f"{s.alice}/direct", s.bouncer.read_config()["upstream"]["password"], server.port)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    features = []
    for client in (direct, phone):
        client.send_xml(f"<iq type='get' id='info' to='{s.alice}'><query xmlns='{DISCO_INFO}'/></iq>")
        answer = await client.wait_for(lambda el: el.get("id") == "info")
        features.append({f.get("var") for f in answer.iter(f"{{{DISCO_INFO}}}feature")})
    direct_features, through = features
    assert direct_features <= through
    if server.kind == "prosody":
        assert f"{BOOKMARKS}#compat" in through  # Prosody's mod_bookmarks
    await close(phone, direct)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_self_joined_room_bookmarked_without_autojoin_stays(server, tmp_path):
    """A client that bookmarks the room it is in without autojoin keeps its room."""
    s, carol, room, direct = await account_and_room(server, tmp_path)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    await join(phone, room, "alice")
    await set_bookmark(direct, room, autojoin=False, nick="alice")
    await phone.wait_for(notified(room))
    phone.send_xml(f"<iq type='get' id='sp' to='{room}/alice'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (await phone.wait_for(lambda el: el.get("id") == "sp")).get("type") == "result"
    assert not carol.matching(from_occupant(room, "alice", ptype="unavailable"))
    assert phone.matching(is_self_presence(room))[-1].get("type") is None
    await close(phone, direct, carol)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


async def test_a_new_nick_in_the_bookmark_renames_the_account_in_the_room(server, tmp_path):
    s, carol, room, direct = await account_and_room(server, tmp_path)
    phone = await connect(f"{s.alice}/phone", s.password, s.port)
    await set_bookmark(direct, room, autojoin=True, nick="alicebm")
    await asyncio.to_thread(s.bouncer.wait_event, "room joined upstream", room=room)
    await join(phone, room, "alicebm")
    await set_bookmark(direct, room, autojoin=True, nick="alicebm2")
    await carol.wait_for(from_occupant(room, "alicebm2"))
    renamed = await phone.wait_for(lambda el: el.get("from") == f"{room}/alicebm" and "303" in codes(el))
    assert renamed.get("type") == "unavailable"  # the phone sees its own nick change
    assert s.bouncer.count("room joined upstream", room=room) == 1  # renamed, not rejoined
    await close(phone, direct, carol)
    assert await asyncio.to_thread(s.bouncer.stop) == 0
