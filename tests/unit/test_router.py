"""Routing decisions (SPEC §5) without sockets: stanzas in, actions out."""

from __future__ import annotations

from lxml import etree

from bouncer.xmpp import ns
from bouncer.core.effects import Bound, CloseSession, Deliver, FlushStored, Mail, ToUpstream
from bouncer.account.router import Router
from support.ports import RecordingPort, bind, new_router

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"


def x(text: str) -> etree._Element:
    return etree.fromstring(text.replace("<message", "<message xmlns='jabber:client'", 1)
                            .replace("<presence", "<presence xmlns='jabber:client'", 1)
                            .replace("<iq", "<iq xmlns='jabber:client'", 1))


def router(up=True) -> Router:
    r = new_router(ACCOUNT)
    if up:
        r.upstream_established(UP, resumed=False)
    return r


def from_up(r: Router, el: etree._Element):
    return r.from_upstream(el, now=0.0)


def session(r: Router, res: str, *, available=True, carbons=False):
    port = bind(r, res)
    if available:
        r.from_session(res, x(f"<presence from='{ACCOUNT}/{res}'/>"), 0)
    if carbons:
        r.from_session(res, x(f"<iq type='set' id='c' from='{ACCOUNT}/{res}'><enable xmlns='{ns.CARBONS}'/></iq>"), 0)
    return port


def delivered(actions) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for a in actions:
        if isinstance(a, (Deliver, Mail)):  # Mail: kept in the mailbox too, and delivered
            for res in a.resources:
                out.setdefault(res, []).append(etree.tostring(a.element))
    return out


def upstream(actions) -> list[etree._Element]:
    return [a.element for a in actions if isinstance(a, ToUpstream)]


def test_message_to_bare_jid_reaches_every_available_session_once():
    r = router()
    session(r, "a")
    session(r, "b")
    actions = from_up(r, x(f"<message from='bob@example.org/x' to='{ACCOUNT}' type='chat'><body>hi</body></message>"))
    assert sorted(delivered(actions)) == ["a", "b"]
    assert all(len(v) == 1 for v in delivered(actions).values())


def test_message_with_nobody_connected_is_stored_chat_states_are_not():
    r = router()
    msg = x(f"<message from='bob@example.org/x' to='{UP}' type='chat'><body>hi</body></message>")
    assert from_up(r, msg) == [Mail(msg, ())]
    state = x(f"<message from='bob@example.org/x' to='{UP}' type='chat'><composing xmlns='{ns.CHATSTATES}'/></message>")
    assert from_up(r, state) == []


def test_first_presence_replays_contacts_and_flushes_store():
    r = router()
    from_up(r, x(f"<presence from='bob@example.org/x' to='{UP}'><show>dnd</show></presence>"))
    bind(r, "a")
    actions = r.from_session("a", x(f"<presence from='{ACCOUNT}/a'/>"), 0)
    assert b"bob@example.org/x" in delivered(actions)["a"][0]
    assert FlushStored("a") in actions


def test_sent_message_goes_upstream_and_is_carbon_copied_to_siblings_with_carbons():
    r = router()
    session(r, "a")
    session(r, "b", carbons=True)
    session(r, "c")  # carbons not enabled: no copy
    actions = r.from_session("a", x(f"<message from='{ACCOUNT}/a' to='bob@example.org' type='chat' id='m1'><body>yo</body></message>"), 0)
    (up,) = upstream(actions)
    assert up.get("from") is None and up.get("id") == "m1"
    copies = delivered(actions)
    assert list(copies) == ["b"]
    carbon = etree.fromstring(copies["b"][0])
    fwd = carbon.find(f"{{{ns.CARBONS}}}sent/{{{ns.FORWARD}}}forwarded/{{jabber:client}}message")
    assert fwd.get("from") == f"{ACCOUNT}/a" and fwd.findtext("{jabber:client}body") == "yo"
    assert carbon.get("from") == ACCOUNT


def test_private_and_groupchat_messages_are_not_copied():
    r = router()
    session(r, "a")
    session(r, "b", carbons=True)
    priv = x(f"<message from='{ACCOUNT}/a' to='bob@example.org' type='chat'><body>p</body><private xmlns='{ns.CARBONS}'/></message>")
    assert delivered(r.from_session("a", priv, 0)) == {}
    gc = x(f"<message from='{ACCOUNT}/a' to='room@muc.example.org' type='groupchat'><body>g</body></message>")
    assert delivered(r.from_session("a", gc, 0)) == {}


def test_iq_ids_are_rewritten_and_result_reaches_only_the_asker():
    r = router()
    session(r, "a")
    session(r, "b")
    (up,) = upstream(r.from_session("a", x(f"<iq type='get' id='q1' from='{ACCOUNT}/a' to='example.org'><query xmlns='{ns.DISCO_INFO}'/></iq>"), 0))
    assert up.get("id").startswith("bnc-") and up.get("id") != "q1"
    result = x(f"<iq type='result' id='{up.get('id')}' from='example.org' to='{UP}'><query xmlns='{ns.DISCO_INFO}'><feature var='urn:xmpp:blocking'/></query></iq>")
    out = delivered(from_up(r, result))
    assert list(out) == ["a"]
    answer = etree.fromstring(out["a"][0])
    assert answer.get("id") == "q1"
    features = [f.get("var") for f in answer.iter(f"{{{ns.DISCO_INFO}}}feature")]
    assert "urn:xmpp:blocking" in features and ns.CARBONS in features  # nothing removed, ours added
    assert from_up(r, result) == []  # answered once


def test_unanswered_iq_times_out_with_an_error():
    r = router()
    session(r, "a")
    r.from_session("a", x(f"<iq type='get' id='q1' from='{ACCOUNT}/a' to='bob@example.org/x'><ping xmlns='urn:xmpp:ping'/></iq>"), now=100)
    assert r.expire(now=120) == []
    out = delivered(r.expire(now=131))
    err = etree.fromstring(out["a"][0])
    assert err.get("type") == "error" and err.get("id") == "q1" and err.get("from") == "bob@example.org/x"
    assert err.find(f".//{{{ns.STANZA_ERRORS}}}remote-server-timeout") is not None


def test_roster_push_reaches_all_sessions_and_is_acked_once():
    r = router()
    session(r, "a")
    session(r, "b", available=False)
    push = x(f"<iq type='set' id='push1' to='{UP}'><query xmlns='{ns.ROSTER}'><item jid='bob@example.org'/></query></iq>")
    actions = from_up(r, push)
    (ack,) = upstream(actions)
    assert ack.get("type") == "result" and ack.get("id") == "push1"
    out = delivered(actions)
    assert sorted(out) == ["a", "b"]
    local_id = etree.fromstring(out["a"][0]).get("id")
    # The sessions' own acks stop at the bouncer.
    assert r.from_session("a", x(f"<iq type='result' id='{local_id}' from='{ACCOUNT}/a'/>"), 0) == []


def test_account_presence_is_most_available_and_idle_when_nobody():
    r = router()
    a = session(r, "a", available=False)
    b = session(r, "b", available=False)
    up = upstream(r.from_session("a", x(f"<presence from='{ACCOUNT}/a'><show>xa</show></presence>"), 0))
    assert up[0].findtext("{jabber:client}show") == "xa"
    up = upstream(r.from_session("b", x(f"<presence from='{ACCOUNT}/b'><status>here</status></presence>"), 0))
    assert up[0].findtext("{jabber:client}show") is None and up[0].findtext("{jabber:client}status") == "here"
    up = upstream(r.session_gone(b))
    assert up[0].findtext("{jabber:client}show") == "xa"
    up = upstream(r.session_gone(a))
    assert up[0].get("type") is None and up[0].findtext("{jabber:client}show") == "away"  # idle, never unavailable


def test_mam_queryid_isolation():
    r = router()
    session(r, "a")
    session(r, "b")
    (up,) = upstream(r.from_session("a", x(f"<iq type='set' id='m' from='{ACCOUNT}/a'><query xmlns='urn:xmpp:mam:2' queryid='f27'/></iq>"), 0))
    qid = up.find("{urn:xmpp:mam:2}query").get("queryid")
    assert qid != "f27"
    res = x(f"<message to='{UP}' from='{ACCOUNT}'><result xmlns='urn:xmpp:mam:2' queryid='{qid}' id='1'/></message>")
    out = delivered(from_up(r, res))
    assert list(out) == ["a"] and b"queryid=\"f27\"" in out["a"][0]


def test_upstream_down_queues_messages_and_fails_iqs():
    r = router(up=False)
    session(r, "a")
    msg = x(f"<message from='{ACCOUNT}/a' to='bob@example.org' type='chat'><body>later</body></message>")
    assert upstream(r.from_session("a", msg, 0)) == []
    out = delivered(r.from_session("a", x(f"<iq type='get' id='i' from='{ACCOUNT}/a' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>"), 0))
    assert b"remote-server-timeout" in out["a"][0]
    sent = upstream(r.upstream_established(UP, resumed=False))
    assert [e.findtext("{jabber:client}body") for e in sent if e.tag.endswith("message")] == ["later"]


def test_bind_conflict_replaces_the_old_session():
    r = router()
    old = session(r, "phone")
    new = RecordingPort(ACCOUNT)
    actions = r.bind(new, "phone")
    assert CloseSession(old, "conflict") in actions and Bound(new, "phone") in actions
    assert r.session_gone(old) == []  # the old one's late goodbye changes nothing
    assert r.sessions["phone"].port is new


def test_messages_between_own_sessions_stay_local():
    r = router()
    session(r, "a")
    session(r, "b")
    actions = r.from_session("a", x(f"<message from='{ACCOUNT}/a' to='{ACCOUNT}/b' type='chat'><body>x</body></message>"), 0)
    assert upstream(actions) == [] and list(delivered(actions)) == ["b"]


def test_incoming_iq_is_answered_or_routed():
    r = router()
    ping = x(f"<iq type='get' id='p' from='example.org' to='{UP}'><ping xmlns='urn:xmpp:ping'/></iq>")
    (ans,) = upstream(from_up(r, ping))
    assert ans.get("type") == "result" and ans.get("to") == "example.org"
    jingle = x(f"<iq type='set' id='j' from='bob@example.org/x' to='{UP}'><jingle xmlns='urn:xmpp:jingle:1'/></iq>")
    (err,) = upstream(from_up(r, jingle))
    assert err.get("type") == "error"  # nobody to take it
    session(r, "a")
    session(r, "b")
    r.from_session("b", x(f"<message from='{ACCOUNT}/b' to='bob@example.org/x' type='chat'><body>call?</body></message>"), 0)
    assert list(delivered(from_up(r, jingle))) == ["b"]


def test_disco_with_caps_node_goes_to_the_session_that_advertised_it():
    r = router()
    bind(r, "a")
    r.from_session("a", x(f"<presence from='{ACCOUNT}/a'/>"), 0)
    bind(r, "b")
    caps = f"<c xmlns='{ns.CAPS}' hash='sha-1' node='https://dino.im' ver='abc='/>"
    r.from_session("b", x(f"<presence from='{ACCOUNT}/b'>{caps}</presence>"), 0)
    query = x(f"<iq type='get' id='d' from='bob@example.org/x' to='{UP}'><query xmlns='{ns.DISCO_INFO}' node='https://dino.im#abc='/></iq>")
    assert list(delivered(from_up(r, query))) == ["b"]


def test_contacts_presence_waits_for_the_roster_the_session_asked_for():
    r = router()
    from_up(r, x(f"<presence from='bob@example.org/x' to='{UP}'/>"))
    bind(r, "a")
    (roster_get,) = upstream(r.from_session("a", x(f"<iq type='get' id='r1' from='{ACCOUNT}/a'><query xmlns='{ns.ROSTER}'/></iq>"), 0))
    actions = r.from_session("a", x(f"<presence from='{ACCOUNT}/a'/>"), 0)
    assert b"bob@example.org/x" not in b"".join(delivered(actions).get("a", []))  # not before the roster
    result = x(f"<iq type='result' id='{roster_get.get('id')}' to='{UP}'><query xmlns='{ns.ROSTER}'><item jid='bob@example.org' subscription='both'/></query></iq>")
    got = delivered(from_up(r, result))["a"]
    assert b"jabber:iq:roster" in got[0] and b"bob@example.org/x" in got[1]  # roster first, then presence
