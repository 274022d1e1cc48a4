"""Issue 4 end to end: account-level MUC through the bouncer, with direct occupants on Prosody."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from lxml import etree

from integration_setup import kill_upstream, make_setup, restart_upstream
from support.clients import body_is, close, connect
from support.muc import (
    MUC_USER,
    codes,
    create_room,
    from_occupant,
    groupchat,
    is_self_presence,
    is_subject,
    join,
    send_groupchat,
)

_rooms = itertools.count(1)


class World:
    """alice's bouncer with sessions A and B, and carol (room owner) directly on Prosody."""

    def __init__(self, s, room, carol, a, b):
        self.s, self.room, self.carol, self.a, self.b = s, room, carol, a, b


async def bouncer_and_room(server, tmp_path, prefix: str, *, room_config: dict | None = None, **overrides):
    """A running bouncer for a fresh account, carol on Prosody owning a new room, and
    session A of the account (not yet joined)."""
    s = make_setup(server, tmp_path, **overrides)
    s.bouncer.start()
    carol = await connect(*server.new_user("carol"), server.port)
    room = f"{prefix}{next(_rooms)}x{s.alice.split('@')[0]}@{server.muc_domain}"
    await create_room(carol, room, "carol", config=room_config)
    a = await connect(f"{s.alice}/A", s.password, s.port)
    return s, carol, room, a


@pytest.fixture
async def world(server, tmp_path):
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "room")
    b = await connect(f"{s.alice}/B", s.password, s.port)
    w = World(s, room, carol, a, b)
    yield w
    await close(carol, a, b)
    assert s.bouncer.stop() == 0, s.bouncer.log_tail()


# The room configuration field that turns a room's MAM archive on or off.
ARCHIVING = {"prosody": "muc#roomconfig_enablearchiving", "ejabberd": "mam"}


def presences_in(client, room, start):
    return [el for el in client.received[start:] if el.tag == "{jabber:client}presence" and el.get("from", "").startswith(room + "/")]


def order_of(client, room, start):
    """('presence', nick, codes) / ('history', body) / ('subject',) in arrival order."""
    out = []
    for el in client.received[start:]:
        if not el.get("from", "").startswith(room):
            continue
        if el.tag == "{jabber:client}presence" and "/" not in el.get("from"):
            continue  # the room's own presence (ejabberd announces its caps this way)
        if el.tag == "{jabber:client}presence":
            out.append(("presence", el.get("from").split("/", 1)[1], "110" in codes(el)))
        elif el.find("{jabber:client}subject") is not None:
            out.append(("subject",))
        elif el.find("{jabber:client}body") is not None:
            out.append(("history", el.findtext("{jabber:client}body")))
    return out


async def test_join_order_first_and_later_session(world):
    w = world
    send_groupchat(w.carol, w.room, "before alice")
    await w.carol.wait_for(groupchat(w.room, "before alice"))
    start, me = await join(w.a, w.room, "alice", pid="a-join")
    assert me.get("id") == "a-join"
    order = order_of(w.a, w.room, start)
    assert order[0] == ("presence", "carol", False) and order[1] == ("presence", "alice", True)
    assert order[-1] == ("subject",) and ("history", "before alice") in order
    # B later: answered locally, same shape, with 210 as B asked for another nick
    start, me = await join(w.b, w.room, "alice-b", pid="b-join")
    assert me.get("id") == "b-join" and {"110", "210"} <= codes(me) and me.get("from") == f"{w.room}/alice"
    assert order_of(w.b, w.room, start) == [("presence", "carol", False), ("presence", "alice", True),
                                           ("history", "before alice"), ("subject",)]
    # carol saw alice join exactly once
    assert len(w.carol.matching(from_occupant(w.room, "alice"))) == 1
    w.s.bouncer.wait_event("room joined upstream", room=w.room)
    assert w.s.bouncer.count("room joined upstream") == 1


async def test_history_limits_for_a_later_session(world):
    w = world
    await join(w.a, w.room, "alice")
    for i in range(5):
        send_groupchat(w.carol, w.room, f"line {i}")
    await w.a.wait_for(groupchat(w.room, "line 4"))
    start, _ = await join(w.b, w.room, "alice", history="<history maxstanzas='2'/>")
    bodies = [e[1] for e in order_of(w.b, w.room, start) if e[0] == "history"]
    assert bodies == ["line 3", "line 4"]
    delayed = [el for el in w.b.received[start:] if el.findtext("{jabber:client}body") == "line 3"]
    assert delayed[0].find("{urn:xmpp:delay}delay") is not None
    start, _ = await join(w.b, w.room, "alice", history="<history maxchars='0'/>")  # repeated join re-syncs
    assert [e for e in order_of(w.b, w.room, start) if e[0] == "history"] == []
    assert order_of(w.b, w.room, start)[-1] == ("subject",)


async def test_a_first_join_asking_no_history_still_fills_the_archive(world, server):
    """A asks for none (as a client that uses MAM does); the account takes the room's
    history anyway, so B's maxstanzas='3' gets the last three, delayed, between its 110
    and the subject, and C's since gets its slice (SPEC §6, §7)."""
    w = world
    for i in range(5):
        send_groupchat(w.carol, w.room, f"before {i}")
    await w.carol.wait_for(groupchat(w.room, "before 4"))
    start, _ = await join(w.a, w.room, "alice", history="<history maxstanzas='0'/>")
    assert [e for e in order_of(w.a, w.room, start) if e[0] == "history"] == []
    start, _ = await join(w.b, w.room, "alice", history="<history maxstanzas='3'/>")
    seen = order_of(w.b, w.room, start)
    assert [e[1] for e in seen if e[0] == "history"] == ["before 2", "before 3", "before 4"]
    mine = next(i for i, e in enumerate(seen) if e[0] == "presence" and e[2])
    assert mine < seen.index(("history", "before 2")) and seen[-1] == ("subject",)
    assert all(el.find("{urn:xmpp:delay}delay") is not None for el in w.b.received[start:]
               if el.findtext("{jabber:client}body", "").startswith("before"))
    stamps = [el.find("{urn:xmpp:delay}delay").get("stamp") for el in w.b.received[start:]
              if el.findtext("{jabber:client}body") == "before 4"]
    c = await connect(f"{w.s.alice}/C", w.s.password, w.s.port)
    start, _ = await join(c, w.room, "alice", history=f"<history since='{stamps[0]}'/>")
    assert [e[1] for e in order_of(c, w.room, start) if e[0] == "history"][-1] == "before 4"
    await close(c)


async def test_each_message_once_per_joined_session_and_own_reflection(world, server):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    c = await connect(f"{w.s.alice}/C", w.s.password, w.s.port)  # online, not in the room
    for i in range(5):
        send_groupchat(w.carol, w.room, f"fan {i}")
    send_groupchat(w.a, w.room, "mine", mid="a-msg-1", origin="a-origin-1")
    for client in (w.a, w.b):
        mine = await client.wait_for(groupchat(w.room, "mine"))
        assert mine.get("id") == "a-msg-1"
        assert mine.find("{urn:xmpp:sid:0}origin-id").get("id") == "a-origin-1"
    await w.carol.wait_for(groupchat(w.room, "mine"))
    # carol's messages keep their order: once her marker is in, all of hers before it are
    send_groupchat(w.carol, w.room, "marker")
    for client in (w.a, w.b):
        await client.wait_for(groupchat(w.room, "marker"))
        for i in range(5):
            assert len(client.matching(groupchat(w.room, f"fan {i}"))) == 1
        assert len(client.matching(groupchat(w.room, "mine"))) == 1
    assert c.matching(lambda el: el.get("type") == "groupchat") == []
    await close(c)


async def test_one_session_leaving_or_dropping_is_invisible_to_the_room(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    mark = len(w.b.received)
    w.b.send_xml(f"<presence to='{w.room}/alice' type='unavailable'/>")
    gone = await w.b.wait_for(lambda el: el.get("type") == "unavailable" and el.get("from") == f"{w.room}/alice", start=mark)
    assert "110" in codes(gone)
    await close(w.a)  # A drops without leaving
    w.a = await connect(f"{w.s.alice}/A2", w.s.password, w.s.port)
    send_groupchat(w.carol, w.room, "anyone?")
    await w.carol.wait_for(groupchat(w.room, "anyone?"))
    assert w.carol.matching(from_occupant(w.room, "alice", ptype="unavailable")) == []
    assert w.b.matching(groupchat(w.room, "anyone?")) == []  # B left: nothing more from the room
    start, _ = await join(w.a, w.room, "alice")  # the account is still there: local answer
    assert ("history", "anyone?") in order_of(w.a, w.room, start)
    assert len(w.carol.matching(from_occupant(w.room, "alice"))) == 1


async def test_occupants_leave_change_nick_and_late_session_sees_them(world, server):
    w = world
    await join(w.a, w.room, "alice")
    dave = await connect(*server.new_user("dave"), server.port)
    await join(dave, w.room, "dave")
    eve = await connect(*server.new_user("eve"), server.port)
    await join(eve, w.room, "eve")
    await w.a.wait_for(from_occupant(w.room, "eve"))
    mark = len(w.a.received)
    dave.send_xml(f"<presence to='{w.room}/david'/>")  # nick change
    changed = await w.a.wait_for(from_occupant(w.room, "dave", ptype="unavailable"), start=mark)
    assert "303" in codes(changed)
    await w.a.wait_for(from_occupant(w.room, "david"), start=mark)
    eve.send_xml(f"<presence to='{w.room}/eve' type='unavailable'/>")
    await w.a.wait_for(from_occupant(w.room, "eve", ptype="unavailable"), start=mark)
    start, _ = await join(w.b, w.room, "alice")
    nicks = [el.get("from").split("/", 1)[1] for el in presences_in(w.b, w.room, start)]
    assert sorted(nicks[:-1]) == ["carol", "david"] and nicks[-1] == "alice"
    await close(dave, eve)


async def test_kick_of_the_account_reaches_all_sessions_and_no_rejoin(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    w.carol.send_xml(
        f"<iq type='set' to='{w.room}' id='kick'><query xmlns='http://jabber.org/protocol/muc#admin'>"
        "<item nick='alice' role='none'><reason>bye</reason></item></query></iq>"
    )
    await w.carol.wait_for(lambda el: el.get("id") == "kick")
    for client in (w.a, w.b):
        kicked = await client.wait_for(lambda el: el.get("type") == "unavailable" and "307" in codes(el))
        assert "110" in codes(kicked)
    w.s.bouncer.wait_event("left room", reason="307")
    send_groupchat(w.carol, w.room, "after the kick")
    await w.carol.wait_for(groupchat(w.room, "after the kick"))
    assert w.a.matching(groupchat(w.room, "after the kick")) == []
    assert len(w.carol.matching(from_occupant(w.room, "alice"))) == 1  # never rejoined


async def test_occupant_kicked_and_room_destroyed(world, server):
    w = world
    await join(w.a, w.room, "alice")
    dave = await connect(*server.new_user("dave"), server.port)
    await join(dave, w.room, "dave")
    w.carol.send_xml(
        f"<iq type='set' to='{w.room}' id='kick-dave'><query xmlns='http://jabber.org/protocol/muc#admin'>"
        "<item nick='dave' role='none'/></query></iq>"
    )
    kicked = await w.a.wait_for(from_occupant(w.room, "dave", ptype="unavailable"))
    assert "307" in codes(kicked)
    w.carol.send_xml(
        f"<iq type='set' to='{w.room}' id='destroy'><query xmlns='http://jabber.org/protocol/muc#owner'>"
        "<destroy><reason>done</reason></destroy></query></iq>"
    )
    gone = await w.a.wait_for(lambda el: el.get("type") == "unavailable" and el.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy") is not None)
    assert gone.get("from") == f"{w.room}/alice"
    w.s.bouncer.wait_event("left room")
    await close(dave)


async def test_pm_to_the_account_reaches_every_joined_session(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    w.carol.send_xml(f"<message to='{w.room}/alice' type='chat'><body>private hello</body><x xmlns='{MUC_USER}'/></message>")
    await w.a.wait_for(body_is("private hello"))
    await w.b.wait_for(body_is("private hello"))
    w.a.send_xml(f"<message to='{w.room}/carol' type='chat'><body>private reply</body><x xmlns='{MUC_USER}'/></message>")
    await w.carol.wait_for(body_is("private reply"))
    carbon = await w.b.wait_for(lambda el: el.find("{urn:xmpp:carbons:2}sent") is not None)
    assert carbon.find(".//{jabber:client}body").text == "private reply"


async def test_room_iq_and_self_ping_answer_only_the_asker(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    w.a.send_xml(f"<iq type='get' to='{w.room}' id='room-disco'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    result = await w.a.wait_for(lambda el: el.get("id") == "room-disco")
    assert result.get("type") == "result" and result.find(".//{http://jabber.org/protocol/disco#info}identity") is not None
    w.b.send_xml(f"<iq type='get' to='{w.room}/alice' id='self-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = await w.b.wait_for(lambda el: el.get("id") == "self-ping")
    assert pong.get("type") == "result"
    assert w.b.matching(lambda el: el.get("id") == "room-disco") == []
    assert w.a.matching(lambda el: el.get("id") == "self-ping") == []


async def test_join_errors_leave_no_state(server, tmp_path):
    secret = {"muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "sesame"}
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "locked", room_config=secret)
    a.send_xml(f"<presence to='{room}/alice' id='bad'><x xmlns='http://jabber.org/protocol/muc'><password>wrong</password></x></presence>")
    err = await a.wait_for(lambda el: el.get("id") == "bad")
    assert err.get("type") == "error" and err.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}not-authorized") is not None
    s.bouncer.wait_event("room join failed")
    await join(a, room, "alice", password="sesame")  # goes upstream again, succeeds
    s.bouncer.wait_event("room joined upstream", room=room)
    await close(a, carol)
    assert s.bouncer.stop() == 0


async def test_bouncer_crash_keeps_archive_and_rejoins(server, tmp_path):
    """After a crash the upstream session is not resumed (a SIGTERM restart resumes
    it: test_restart.py): the account rejoins, asking only for what it missed."""
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "kept")
    await join(a, room, "alice")
    send_groupchat(carol, room, "remember me")
    await a.wait_for(groupchat(room, "remember me"))
    await close(a)
    s.bouncer.kill()
    mark = len(carol.received)
    s.bouncer.start()
    s.bouncer.wait_event("room joined upstream", room=room)
    await carol.wait_for(from_occupant(room, "alice"), start=mark)  # rejoined by the account alone
    send_groupchat(carol, room, "while nobody was connected")
    await carol.wait_for(groupchat(room, "while nobody was connected"))
    s.bouncer.wait_event("archived", room=room, after=1)
    a = await connect(f"{s.alice}/A", s.password, s.port)
    start, _ = await join(a, room, "alice", history="<history maxstanzas='20'/>")
    bodies = [e[1] for e in order_of(a, room, start) if e[0] == "history"]
    assert bodies[-2:] == ["remember me", "while nobody was connected"]
    assert len(bodies) == len(set(bodies))  # history repeated by the room was not archived twice
    await close(a, carol)
    assert s.bouncer.stop() == 0


async def test_server_restart_rejoins_and_sessions_see_only_changes(private_setup):
    s = private_setup
    server = s.server
    carol_jid, carol_pw = server.new_user("carol")
    carol = await connect(carol_jid, carol_pw, server.port)
    room = f"durable{next(_rooms)}@{server.muc_domain}"
    await create_room(carol, room, "carol", config={"muc#roomconfig_persistentroom": "1"})
    a = await connect(f"{s.alice}/A", s.password, s.port)
    await join(a, room, "alice")
    kill_upstream(s)
    await asyncio.wait_for(carol.disconnected_event.wait(), 10)
    mark = len(a.received)
    restart_upstream(s)
    s.bouncer.wait_event("room joined upstream", room=room, after=1, timeout=30)
    carol = await connect(carol_jid, carol_pw, server.port)
    await join(carol, room, "carol")
    back = await a.wait_for(from_occupant(room, "carol"), start=mark)  # carol came back: A sees it
    send_groupchat(carol, room, "after the restart")
    await a.wait_for(groupchat(room, "after the restart"), start=mark)
    assert not a.disconnected_event.is_set()
    # the account's own rejoin was invisible: no second self-presence, no leave, no new subject
    assert [etree.tostring(el) for el in a.received[mark:] if is_self_presence(room)(el) or is_subject(room)(el)] == []
    assert back.get("type") is None
    await close(a, carol)


async def test_room_sees_the_aggregate_presence_of_joined_sessions(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")

    def alice_shows(show):
        def pred(el):
            return from_occupant(w.room, "alice")(el) and el.findtext("{jabber:client}show") == show
        return pred

    mark = len(w.carol.received)
    w.a.send_xml(f"<presence to='{w.room}/alice'><show>away</show></presence>")
    w.b.send_xml(f"<presence to='{w.room}/alice'><show>xa</show></presence>")
    await w.carol.wait_for(alice_shows("away"), start=mark)  # the most available of the two
    mark = len(w.carol.received)
    w.a.send_xml(f"<presence to='{w.room}/alice' type='unavailable'/>")  # A leaves: only B's xa is left
    await w.carol.wait_for(alice_shows("xa"), start=mark)
    assert w.carol.matching(from_occupant(w.room, "alice", ptype="unavailable")) == []


MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


def mam_query(room: str, qid: str, iq_id: str, rsm: str) -> str:
    return (f"<iq type='set' to='{room}' id='{iq_id}'><query xmlns='{MAM}' queryid='{qid}'>"
            f"<set xmlns='{RSM}'>{rsm}</set></query></iq>")


async def mam_page(client, room, qid, iq_id, rsm):
    start = len(client.received)
    client.send_xml(mam_query(room, qid, iq_id, rsm))
    fin = await client.wait_for(lambda el: el.get("id") == iq_id, start=start)
    results = [el for el in client.received[start:] if el.find(f"{{{MAM}}}result") is not None]
    assert all(r.find(f"{{{MAM}}}result").get("queryid") == qid for r in results)
    bodies = [r.findtext(".//{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body") for r in results]
    return fin, bodies


async def test_room_mam_goes_through_to_the_asker_only(world):
    w = world
    await join(w.a, w.room, "alice")
    await join(w.b, w.room, "alice")
    for i in range(3):
        send_groupchat(w.carol, w.room, f"archived {i}")
    await w.a.wait_for(groupchat(w.room, "archived 2"))
    fin, bodies = await mam_page(w.a, w.room, "my-query", "mam-1", "<max>10</max>")
    assert fin.get("type") == "result" and bodies[-3:] == ["archived 0", "archived 1", "archived 2"]
    assert w.b.matching(lambda el: el.find(f"{{{MAM}}}result") is not None) == []


async def test_room_without_mam_is_served_from_the_archive(server, tmp_path):
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "nomam", room_config={ARCHIVING[server.kind]: "0"})
    await join(a, room, "alice")
    for i in range(5):
        send_groupchat(carol, room, f"kept {i}")
    await a.wait_for(groupchat(room, "kept 4"))
    a.send_xml(f"<iq type='get' to='{room}' id='disco'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    info = await a.wait_for(lambda el: el.get("id") == "disco")
    assert MAM in {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    fin, bodies = await mam_page(a, room, "q1", "last-page", "<max>2</max><before/>")
    assert bodies == ["kept 3", "kept 4"]
    first = fin.findtext(f"{{{MAM}}}fin/{{{RSM}}}set/{{{RSM}}}first")
    assert fin.find(f"{{{MAM}}}fin").get("complete") is None
    fin, bodies = await mam_page(a, room, "q2", "earlier", f"<max>10</max><before>{first}</before>")
    assert bodies == ["kept 0", "kept 1", "kept 2"] and fin.find(f"{{{MAM}}}fin").get("complete") == "true"
    s.bouncer.wait_event("room MAM answered from the archive", room=room)
    await close(a, carol)
    assert s.bouncer.stop() == 0


async def test_account_level_leave_when_the_last_session_leaves(server, tmp_path):
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "brief", muc={"leave_when_unused": True})
    b = await connect(f"{s.alice}/B", s.password, s.port)
    await join(a, room, "alice")
    await join(b, room, "alice")
    a.send_xml(f"<presence to='{room}/alice' type='unavailable'/>")
    await a.wait_for(lambda el: el.get("type") == "unavailable" and el.get("from") == f"{room}/alice")
    b.send_xml(f"<presence to='{room}/alice' type='unavailable'/>")  # the last one: the account leaves
    await carol.wait_for(from_occupant(room, "alice", ptype="unavailable"))
    await close(a, b, carol)
    assert s.bouncer.stop() == 0


async def test_messages_missed_while_the_bouncer_was_down_are_caught_up_from_room_mam(server, tmp_path):
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "gapless")
    await join(a, room, "alice")
    send_groupchat(carol, room, "before the crash")
    await a.wait_for(groupchat(room, "before the crash"))
    await close(a)
    s.bouncer.kill()  # a crash: the room keeps talking, more than its 20-message history
    for i in range(30):
        send_groupchat(carol, room, f"missed {i}")
    await carol.wait_for(groupchat(room, "missed 29"))
    s.bouncer.start()
    s.bouncer.wait_event("room caught up", room=room, ok=True, timeout=20)
    a = await connect(f"{s.alice}/A", s.password, s.port)
    start, _ = await join(a, room, "alice", history="<history maxstanzas='100'/>")
    bodies = [e[1] for e in order_of(a, room, start) if e[0] == "history"]
    assert bodies == ["before the crash"] + [f"missed {i}" for i in range(30)]
    await close(a, carol)
    assert s.bouncer.stop() == 0


async def test_a_room_server_restarting_is_asked_again_not_rejoined(prosody_factory, tmp_path):
    """Issue 12, 4 (the lesson of mod_ping_muc): while the room's server is down, the
    account's self-ping gets remote-server-not-found; that proves nothing, so it is asked
    again after muc.recheck_delay, and once the room answers, nothing was rejoined."""
    server = prosody_factory(admin_shell=True)
    server.start()
    s, carol, room, a = await bouncer_and_room(server, tmp_path, "outage",
                                               muc={"self_ping_after": 1, "recheck_delay": 1})
    await join(a, room, "alice")
    await asyncio.to_thread(s.bouncer.wait_event, "room still joined", room=room)
    with server.muc_outage("remote-server-not-found"):
        await asyncio.to_thread(s.bouncer.wait_event, "room check inconclusive, asking again",
                                room=room, why="remote-server-not-found")
    checked = s.bouncer.count("room still joined", room=room)
    await asyncio.to_thread(s.bouncer.wait_event, "room still joined", room=room, after=checked)
    send_groupchat(carol, room, "after the outage")
    await a.wait_for(groupchat(room, "after the outage"))
    assert s.bouncer.count("room joined upstream", room=room) == 1
    assert s.bouncer.count("room dropped the account, rejoining") == 0
    assert presences_of_alice(carol, room) == [None]  # carol saw alice join once, and nothing since
    await close(carol, a)
    assert await asyncio.to_thread(s.bouncer.stop) == 0


def presences_of_alice(client, room: str) -> list[str | None]:
    return [el.get("type") for el in client.received
            if el.tag == "{jabber:client}presence" and el.get("from") == f"{room}/alice"]
