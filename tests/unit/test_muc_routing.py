"""Account-level MUC decisions (SPEC §6) without sockets: join, replay, fan-out, leave, kick."""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns
from bouncer.core.effects import Deliver, DeliverSeries, HoldRoom, ReleaseRoom, ToUpstream
from bouncer.muc.routing import MucRouter
from bouncer.storage.in_memory import MemoryArchive
from bouncer.xmpp.wire import Prepared
from support.ports import bind, new_router, parse_wire

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"
ROOM = "room@muc.example.org"
MUC_USER = ns.MUC_USER


def x(text: str) -> etree._Element:
    for tag in ("message", "presence", "iq"):
        if text.startswith(f"<{tag}"):
            return etree.fromstring(text.replace(f"<{tag}", f"<{tag} xmlns='jabber:client'", 1))
    raise ValueError(text)


def setup(**muc_settings):
    """A Router over an in-memory archive, upstream, with sessions A and B available."""
    archive = MemoryArchive()
    r = new_router(ACCOUNT, archive, **muc_settings)
    r.upstream_established(UP, resumed=False)
    for res in ("A", "B"):
        bind(r, res)
        r.from_session(res, x(f"<presence from='{ACCOUNT}/{res}'/>"), 0)
    return r, archive


def join(r, res, nick="alice", pid="j1", hist=""):
    return r.from_session(
        res, x(f"<presence from='{ACCOUNT}/{res}' to='{ROOM}/{nick}' id='{pid}'><x xmlns='{ns.MUC}'>{hist}</x></presence>"), 100.0
    )


def occupant(nick, *, ptype=None, codes=(), item=""):
    t = f" type='{ptype}'" if ptype else ""
    status = "".join(f"<status code='{c}'/>" for c in codes)
    return x(f"<presence from='{ROOM}/{nick}' to='{UP}'{t}><x xmlns='{MUC_USER}'><item affiliation='member' role='participant' {item}/>{status}</x></presence>")


def groupchat(nick, body, sid):
    return x(f"<message from='{ROOM}/{nick}' to='{UP}' type='groupchat' id='m-{sid}'><body>{body}</body><stanza-id xmlns='{ns.STANZA_ID}' by='{ROOM}' id='{sid}'/></message>")


def to(actions, res):
    """What ``res`` is sent, as elements (bytes prepared once are addressed to it and parsed)."""
    out = []
    for a in actions:
        if isinstance(a, Deliver) and res in a.resources:
            out.append(_element(a.element, res))
        elif isinstance(a, DeliverSeries) and a.resource == res:
            out += [_element(el, res) for el in a.stanzas]
    return out


def _element(el, res):
    return parse_wire(el.to(f"{ACCOUNT}/{res}")) if isinstance(el, Prepared) else el


def up(actions):
    return [a.element for a in actions if isinstance(a, ToUpstream)]


def held(actions):
    return [a.room.jid for a in actions if isinstance(a, HoldRoom)]


def released(actions):
    return [a.jid for a in actions if isinstance(a, ReleaseRoom)]


def complete_first_join(r, res="A"):
    """A's join goes upstream; the room answers. Returns what the room's answer produced."""
    assert len(up(join(r, res))) == 1
    out = []
    for el in (occupant("bob"), occupant("carol"), occupant("alice", codes=("110", "100")),
               groupchat("bob", "old news", "s1"),
               x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>Topic</subject></message>")):
        out += r.from_upstream(el, 100.0)
    return out


def test_first_join_goes_upstream_once_and_is_answered_as_the_room_did():
    r, archive = setup()
    (sent,) = up(join(r, "B", pid="probe"))
    assert sent.get("to") == f"{ROOM}/alice" and sent.find(f"{{{ns.MUC}}}x") is not None and sent.get("from") is None
    r.from_session("B", x(f"<presence from='{ACCOUNT}/B' to='{ROOM}/alice' type='unavailable'/>"), 0)
    r.from_upstream(x(f"<presence from='{ROOM}/alice' to='{UP}' type='error'><error type='cancel'><conflict xmlns='{ns.STANZA_ERRORS}'/></error></presence>"), 0)
    out = complete_first_join(r)
    got = to(out, "A")
    assert [e.get("from") for e in got] == [f"{ROOM}/bob", f"{ROOM}/carol", f"{ROOM}/alice", f"{ROOM}/bob", ROOM]
    assert to(out, "B") == []
    assert held(out) == [ROOM] and archive.count(ROOM) == 1


def test_later_join_is_local_in_xep0045_order():
    r, _ = setup()
    complete_first_join(r)
    actions = join(r, "B", nick="other", pid="b-join")
    assert up(actions) == []  # nothing upstream: the account is already in
    got = to(actions, "B")
    kinds = [(e.tag.split("}")[1], e.get("from")) for e in got]
    assert kinds == [("presence", f"{ROOM}/bob"), ("presence", f"{ROOM}/carol"), ("presence", f"{ROOM}/alice"),
                     ("message", f"{ROOM}/bob"), ("message", ROOM)]
    me = got[2]
    codes = [s.get("code") for s in me.iter(f"{{{MUC_USER}}}status")]
    assert set(codes) == {"100", "110", "210"} and me.get("id") == "b-join"
    assert got[3].find(f"{{{ns.DELAY}}}delay") is not None
    assert got[4].findtext("{jabber:client}subject") == "Topic"


def test_history_limits_on_local_join():
    r, _ = setup()
    complete_first_join(r)
    for i in range(2, 8):
        r.from_upstream(groupchat("bob", f"msg {i}", f"s{i}"), 100.0 + i)
    got = to(join(r, "B", hist="<history maxstanzas='3'/>"), "B")
    assert [e.findtext("{jabber:client}body") for e in got if e.find("{jabber:client}body") is not None] == ["msg 5", "msg 6", "msg 7"]
    got = to(join(r, "B", hist="<history maxchars='0'/>"), "B")
    assert all(e.find("{jabber:client}body") is None for e in got)
    assert got[-1].find("{jabber:client}subject") is not None  # the subject always ends the join


def test_fan_out_once_per_joined_session_and_not_to_others():
    r, _ = setup()
    complete_first_join(r)
    bind(r, "C")
    r.from_session("C", x(f"<presence from='{ACCOUNT}/C'/>"), 0)
    join(r, "B")
    actions = r.from_upstream(groupchat("bob", "hello room", "s9"), 101.0)
    assert len(to(actions, "A")) == 1 and len(to(actions, "B")) == 1 and to(actions, "C") == []
    assert r.from_upstream(groupchat("bob", "hello room", "s9"), 102.0) == []  # same stanza-id: not again


def test_leave_of_one_session_only():
    r, _ = setup()
    complete_first_join(r)
    join(r, "B")
    actions = r.from_session("B", x(f"<presence from='{ACCOUNT}/B' to='{ROOM}/alice' type='unavailable'/>"), 0)
    assert up(actions) == []  # the room sees no leave
    (gone,) = to(actions, "B")
    assert gone.get("type") == "unavailable" and "110" in [s.get("code") for s in gone.iter(f"{{{MUC_USER}}}status")]
    actions = r.from_upstream(groupchat("bob", "after", "s10"), 103.0)
    assert to(actions, "B") == [] and len(to(actions, "A")) == 1


def test_leave_when_unused_leaves_upstream():
    r, archive = setup(leave_when_unused=True)
    complete_first_join(r)
    actions = r.from_session("A", x(f"<presence from='{ACCOUNT}/A' to='{ROOM}/alice' type='unavailable'/>"), 0)
    (sent,) = up(actions)
    assert sent.get("type") == "unavailable" and released(actions) == [ROOM]


def test_kick_of_the_account_reaches_all_and_drops_state():
    r, archive = setup()
    complete_first_join(r)
    join(r, "B")
    actions = r.from_upstream(occupant("alice", ptype="unavailable", codes=("110", "307")), 104.0)
    assert len(to(actions, "A")) == 1 and len(to(actions, "B")) == 1 and up(actions) == []
    assert ROOM not in r.muc.rooms and released(actions) == [ROOM]


def test_unasked_plain_departure_of_the_account_is_rejoined_quietly():
    """An unavailable self-presence without a reason, which the account never asked
    for (ejabberd ends a crashed bouncer's hibernated session after the new one
    joined with the same full JID): the account joins again, the sessions stay and
    see only what changed."""
    r, archive = setup()
    complete_first_join(r)
    join(r, "B")
    actions = r.from_upstream(occupant("alice", ptype="unavailable", codes=("110",)), 104.0)
    (rejoin,) = up(actions)
    assert rejoin.get("to") == f"{ROOM}/alice" and rejoin.find(f"{{{ns.MUC}}}x") is not None
    assert to(actions, "A") == [] and to(actions, "B") == []
    assert r.muc.rooms[ROOM].sessions == {"A", "B"} and released(actions) == []
    back = []
    for el in (occupant("bob"), occupant("carol"), occupant("alice", codes=("110",))):
        back += r.from_upstream(el, 105.0)
    assert to(back, "A") == [] and to(back, "B") == []  # nothing changed for them


def test_nick_change_and_occupant_tracking():
    r, _ = setup()
    complete_first_join(r)
    r.from_upstream(occupant("bob", ptype="unavailable", codes=("303",), item="nick='robert'"), 105.0)
    r.from_upstream(occupant("robert"), 105.0)
    r.from_upstream(occupant("carol", ptype="unavailable"), 105.0)
    got = to(join(r, "B"), "B")
    assert [e.get("from") for e in got if e.tag.endswith("presence")] == [f"{ROOM}/robert", f"{ROOM}/alice"]
    # our own nick change: sent upstream once, result fanned out, new nick held
    (sent,) = up(r.from_session("A", x(f"<presence from='{ACCOUNT}/A' to='{ROOM}/alicia'/>"), 0))
    assert sent.get("to") == f"{ROOM}/alicia"
    r.from_upstream(occupant("alice", ptype="unavailable", codes=("110", "303"), item="nick='alicia'"), 106.0)
    actions = r.from_upstream(occupant("alicia", codes=("110",)), 106.0)
    assert len(to(actions, "A")) == 1 and len(to(actions, "B")) == 1
    assert r.muc.rooms[ROOM].nick == "alicia"


def test_join_error_leaves_no_state():
    r, archive = setup()
    join(r, "A")
    err = x(f"<presence from='{ROOM}/alice' to='{UP}' type='error' id='j1'><error type='auth'><registration-required xmlns='{ns.STANZA_ERRORS}'/></error></presence>")
    actions = r.from_upstream(err, 100.0)
    assert to(actions, "A") == [err] and ROOM not in r.muc.rooms and released(actions) == [ROOM]


def test_self_ping_answered_locally():
    r, _ = setup()
    complete_first_join(r)
    ping = f"<iq type='get' id='sp' to='{ROOM}/alice' from='{ACCOUNT}/%s'><ping xmlns='urn:xmpp:ping'/></iq>"
    (ans,) = to(r.from_session("A", x(ping % "A"), 0), "A")
    assert ans.get("type") == "result" and ans.get("from") == f"{ROOM}/alice"
    (ans,) = to(r.from_session("B", x(ping % "B"), 0), "B")  # B has not joined
    assert ans.get("type") == "error" and ans.find(f".//{{{ns.STANZA_ERRORS}}}not-acceptable") is not None


def test_pm_from_occupant_reaches_joined_sessions():
    r, _ = setup()
    complete_first_join(r)
    join(r, "B")
    bind(r, "C")
    r.from_session("C", x(f"<presence from='{ACCOUNT}/C'/>"), 0)
    pm = x(f"<message from='{ROOM}/bob' to='{UP}' type='chat'><body>psst</body><x xmlns='{MUC_USER}'/></message>")
    actions = r.from_upstream(pm, 107.0)
    assert len(to(actions, "A")) == 1 and len(to(actions, "B")) == 1 and to(actions, "C") == []


def test_restart_restores_held_rooms_and_rejoins_since_last():
    r, archive = setup()
    for effect in complete_first_join(r):
        if isinstance(effect, HoldRoom):
            archive.hold(effect.room)  # as the Account's executor does
    again = MucRouter(archive)
    again.restore()
    (join_el,) = [a.element for a in again.rejoin_all()]
    hist = join_el.find(f"{{{ns.MUC}}}x/{{{ns.MUC}}}history")
    assert join_el.get("to") == f"{ROOM}/alice" and hist is not None and hist.get("since")


def test_rejoin_after_upstream_outage_shows_sessions_only_what_changed():
    r, _ = setup()
    complete_first_join(r)
    r.upstream_down()
    actions = r.upstream_established(UP, resumed=False)
    (rejoin,) = [e for e in up(actions) if e.get("to", "").startswith(ROOM)]
    assert rejoin.find(f"{{{ns.MUC}}}x/{{{ns.MUC}}}history").get("since")
    seen = []
    for el in (occupant("bob"), occupant("dave"), occupant("alice", codes=("110", "100")),
               groupchat("bob", "old news", "s1"),  # repeated history: already archived
               x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>Topic</subject></message>")):
        seen += to(r.from_upstream(el, 200.0), "A")
    summary = [(e.get("from"), e.get("type")) for e in seen]
    assert summary == [(f"{ROOM}/dave", None), (f"{ROOM}/carol", "unavailable")]


def test_failed_rejoin_tells_sessions_333():
    r, archive = setup()
    complete_first_join(r)
    r.upstream_established(UP, resumed=False)
    err = x(f"<presence from='{ROOM}/alice' to='{UP}' type='error'><error type='auth'><forbidden xmlns='{ns.STANZA_ERRORS}'/></error></presence>")
    actions = r.from_upstream(err, 200.0)
    (gone,) = to(actions, "A")
    assert gone.get("type") == "unavailable" and {"110", "333"} <= {s.get("code") for s in gone.iter(f"{{{MUC_USER}}}status")}
    assert ROOM not in r.muc.rooms and released(actions) == [ROOM]


def test_service_shutdown_332_rejoins_with_backoff():
    r, archive = setup()
    complete_first_join(r)
    actions = r.from_upstream(occupant("alice", ptype="unavailable", codes=("110", "332")), 300.0)
    assert len(to(actions, "A")) == 1 and up(actions) == []
    assert r.muc.due(303.0) == []  # not yet
    (again,) = up(r.muc.due(306.0))
    assert again.get("to") == f"{ROOM}/alice" and ROOM in r.muc.rooms  # still held, joining again
    down = x(f"<presence from='{ROOM}/alice' to='{UP}' type='error'><error type='cancel'><service-unavailable xmlns='{ns.STANZA_ERRORS}'/></error></presence>")
    r.from_upstream(down, 306.0)
    assert r.muc.due(310.0) == [] and len(up(r.muc.due(317.0))) == 1  # 10 s the second time
    r.from_upstream(occupant("alice", codes=("110",)), 317.0)
    assert r.muc.rooms[ROOM].rejoin_delay == 0.0


def test_session_going_unavailable_leaves_its_rooms_quietly():
    r, _ = setup()
    complete_first_join(r)
    join(r, "B")
    actions = r.from_session("B", x(f"<presence from='{ACCOUNT}/B' type='unavailable'/>"), 0)
    assert [e for e in up(actions) if e.get("to", "").startswith(ROOM)] == []  # the account stays
    assert "B" not in r.muc.rooms[ROOM].sessions
    assert to(r.from_upstream(groupchat("bob", "later", "s20"), 110.0), "B") == []


def test_account_self_pings_after_silence_and_rejoins_when_forgotten():
    r, _ = setup()
    complete_first_join(r)  # the room last spoke at 100.0
    assert r.muc.due(100.0 + 899) == []
    (ping,) = up(r.muc.due(100.0 + 901))
    assert ping.get("to") == f"{ROOM}/alice" and ping.find("{urn:xmpp:ping}ping") is not None
    assert r.muc.due(100.0 + 950) == []  # one ping at a time
    # no answer in time: inconclusive (a restarting server), asked again after more silence
    assert r.muc.due(100.0 + 901 + 121) == [] and r.muc.rooms[ROOM].ping_id is None
    (ping,) = up(r.muc.due(100.0 + 901 + 121 + 901))
    gone = x(f"<iq type='error' id='{ping.get('id')}' from='{ROOM}/alice' to='{UP}'><error type='cancel'><not-acceptable xmlns='{ns.STANZA_ERRORS}'/></error></iq>")
    (rejoin,) = up(r.from_upstream(gone, 3000.0))
    assert rejoin.get("to") == f"{ROOM}/alice" and rejoin.find(f"{{{ns.MUC}}}x") is not None


def test_self_ping_result_means_still_joined():
    r, _ = setup()
    complete_first_join(r)
    (ping,) = up(r.muc.due(2000.0))
    ok = x(f"<iq type='result' id='{ping.get('id')}' from='{ROOM}/alice' to='{UP}'/>")
    assert r.from_upstream(ok, 2001.0) == [] and r.muc.due(2002.0) == []


def test_rejoin_catches_up_from_room_mam_after_the_last_archived_id():
    r, archive = setup()
    complete_first_join(r)  # archived s1
    r.upstream_established(UP, resumed=False)
    for el in (occupant("bob"), occupant("alice", codes=("110",))):
        r.from_upstream(el, 200.0)
    subject = x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>Topic</subject></message>")
    (query,) = up(r.from_upstream(subject, 200.0))
    assert query.get("to") == ROOM and query.findtext(".//{http://jabber.org/protocol/rsm}after") == "s1"
    qid = query.get("id")

    def result(sid, body):
        return x(f"<message from='{ROOM}' to='{UP}'><result xmlns='urn:xmpp:mam:2' queryid='{qid}' id='{sid}'>"
                 f"<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>"
                 f"<message xmlns='jabber:client' from='{ROOM}/bob' type='groupchat'><body>{body}</body></message>"
                 f"</forwarded></result></message>")

    got = to(r.from_upstream(result("s2", "missed"), 201.0), "A")
    assert [e.findtext("{jabber:client}body") for e in got] == ["missed"]
    assert got[0].find("{urn:xmpp:delay}delay") is not None and got[0].get("to") == UP
    assert r.from_upstream(result("s2", "missed"), 201.0) == []  # once
    fin = x(f"<iq type='result' id='{qid}' from='{ROOM}' to='{UP}'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>")
    assert r.from_upstream(fin, 202.0) == []
    assert [m.stanza_id for m in archive.latest(ROOM, 10)] == ["s1", "s2"]


def test_a_device_coming_back_gets_the_history_since_it_was_last_seen():
    r, _ = setup()
    complete_first_join(r)  # "old news" at 100.0
    for i, t in enumerate((150.0, 250.0, 260.0)):
        r.from_upstream(groupchat("bob", f"said at {t}", f"t{i}"), t)
    r.sessions["B"].away_since = 200.0  # B's device was last here then
    got = to(join(r, "B"), "B")
    assert [e.findtext("{jabber:client}body") for e in got if e.find("{jabber:client}body") is not None] == [
        "said at 250.0", "said at 260.0"]
    got = to(join(r, "B", hist="<history maxstanzas='10'/>"), "B")  # an explicit limit is honoured
    assert len([e for e in got if e.find("{jabber:client}body") is not None]) == 4


def test_the_account_asks_the_room_for_history_and_each_session_gets_what_it_asked():
    """A asks for none; the account still takes the room's history into its archive, so
    that B's maxstanzas='3' and C's since get theirs (SPEC §6, §7)."""
    r, archive = setup()
    bind(r, "C")
    (sent,) = up(join(r, "A", hist="<history maxstanzas='0'/>"))
    assert sent.find(f"{{{ns.MUC}}}x/{{{ns.MUC}}}history") is None  # no limit of A's: the room's own
    out = []
    for el in (occupant("bob"), occupant("alice", codes=("110",))):
        out += r.from_upstream(el, 100.0)
    for i in range(1, 6):
        said = groupchat("bob", f"said {i}", f"h{i}")
        etree.SubElement(said, f"{{{ns.DELAY}}}delay", stamp=f"2026-01-01T00:00:0{i}Z")  # room history
        out += r.from_upstream(said, 100.0)
    out += r.from_upstream(x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>Topic</subject></message>"), 100.0)
    got = to(out, "A")
    assert [e.findtext("{jabber:client}body") for e in got if e.find("{jabber:client}body") is not None] == []
    assert got[-1].findtext("{jabber:client}subject") == "Topic" and archive.count(ROOM) == 5
    got = to(join(r, "B", hist="<history maxstanzas='3'/>"), "B")
    bodies = [e.findtext("{jabber:client}body") for e in got if e.find("{jabber:client}body") is not None]
    assert bodies == ["said 3", "said 4", "said 5"]
    assert "110" in {s.get("code") for s in got[1].iter(f"{{{MUC_USER}}}status")} and got[-1].find("{jabber:client}subject") is not None
    got = to(join(r, "C", hist="<history since='2026-01-01T00:00:04Z'/>"), "C")
    assert [e.findtext("{jabber:client}body") for e in got if e.find("{jabber:client}body") is not None] == ["said 4", "said 5"]


def test_a_second_join_during_the_first_gets_its_own_history_before_the_subject():
    r, _ = setup()
    join(r, "A", hist="<history maxstanzas='0'/>")
    join(r, "B", hist="<history maxstanzas='1'/>")  # while the account's join is under way
    out = []
    for el in (occupant("alice", codes=("110",)), groupchat("bob", "one", "s1"), groupchat("bob", "two", "s2"),
               x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>Topic</subject></message>")):
        out += r.from_upstream(el, 100.0)
    a, b = to(out, "A"), to(out, "B")
    assert [e.findtext("{jabber:client}body") for e in a if e.find("{jabber:client}body") is not None] == []
    assert [e.findtext("{jabber:client}body") for e in b if e.find("{jabber:client}body") is not None] == ["two"]
    assert b[-1].find("{jabber:client}subject") is not None and a[-1].find("{jabber:client}subject") is not None


def ping_error(ping, condition):
    return x(f"<iq type='error' id='{ping.get('id')}' from='{ROOM}/alice' to='{UP}'><error type='cancel'>"
             f"<{condition} xmlns='{ns.STANZA_ERRORS}'/></error></iq>")


def test_after_a_resume_rooms_are_checked_and_transient_errors_are_asked_again():
    """A self-ping that fails while the room's server restarts proves nothing: asked again
    after recheck_delay, doubling; the room answering means no rejoin (issue 12, 4)."""
    r, _ = setup(recheck_delay=30.0)
    complete_first_join(r)
    r.upstream_down()
    assert up(r.upstream_established(UP, resumed=True)) == []  # resumed: nothing to rejoin
    (ping,) = up(r.muc.due(200.0))  # checked at the next tick, silence or not
    assert r.from_upstream(ping_error(ping, "remote-server-not-found"), 201.0) == []
    assert r.muc.due(230.0) == []
    (ping,) = up(r.muc.due(231.0))  # 30 s later
    assert r.from_upstream(ping_error(ping, "service-unavailable"), 232.0) == []
    assert r.muc.due(291.0) == []
    (ping,) = up(r.muc.due(292.0))  # 60 s later
    ok = x(f"<iq type='result' id='{ping.get('id')}' from='{ROOM}/alice' to='{UP}'/>")
    assert r.from_upstream(ok, 293.0) == [] and r.muc.due(600.0) == []  # in: no rejoin, no more checks
    room = r.muc.rooms[ROOM]
    assert room.recheck_delay == 0.0 and room.phase.name == "JOINED"


def test_a_check_that_gets_no_answer_is_asked_again_sooner_than_the_silence_timer():
    r, _ = setup(recheck_delay=30.0)
    complete_first_join(r)
    r.upstream_established(UP, resumed=True)
    (ping,) = up(r.muc.due(200.0))
    assert r.muc.due(321.0) == []  # no answer within self_ping_timeout: inconclusive
    (again,) = up(r.muc.due(351.0))
    gone = ping_error(again, "item-not-found")
    (rejoin,) = up(r.from_upstream(gone, 352.0))  # this one says the account is out
    assert rejoin.get("to") == f"{ROOM}/alice" and rejoin.find(f"{{{ns.MUC}}}x") is not None
