"""Bookmarks drive the account's rooms (SPEC §8), and the caps that make the server tell it."""

from __future__ import annotations

import json

from lxml import etree

from bouncer.account import handover

from bouncer.account.capabilities import NODE
from bouncer.core.effects import Deliver, Mail, ToUpstream
from bouncer.xmpp import bookmarks, caps, ns
from bouncer.xmpp.bookmarks import Bookmark
from support.ports import bind, new_router

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"
ROOM = "room@muc.example.org"
CLIENT_NODE = "https://client.example#v1"


def x(text: str) -> etree._Element:
    return etree.fromstring(text.replace("<message", "<message xmlns='jabber:client'", 1)
                            .replace("<presence", "<presence xmlns='jabber:client'", 1)
                            .replace("<iq", "<iq xmlns='jabber:client'", 1))


def up(actions) -> list[etree._Element]:
    return [a.element for a in actions if isinstance(a, ToUpstream)]


def to(actions, res: str) -> list[etree._Element]:
    return [a.element for a in actions if isinstance(a, Deliver) and res in a.resources]


def conference(room: str, autojoin: bool, nick: str = "", password: str = "") -> str:
    extra = (f"<nick>{nick}</nick>" if nick else "") + (f"<password>{password}</password>" if password else "")
    return (f"<item id='{room}'><conference xmlns='{ns.BOOKMARKS}' autojoin='{str(autojoin).lower()}'>"
            f"{extra}</conference></item>")


def notification(items: str) -> etree._Element:
    return x(f"<message from='{ACCOUNT}' to='{UP}' type='headline'><event xmlns='{ns.PUBSUB_EVENT}'>"
             f"<items node='{ns.BOOKMARKS}'>{items}</items></event></message>")


def started():
    """A router whose upstream just came up, and the id of its bookmark read."""
    r = new_router(ACCOUNT)
    actions = r.upstream_established(UP, resumed=False)
    reads = [el for el in up(actions) if el.find(f"{{{ns.PUBSUB}}}pubsub") is not None]
    assert len(reads) == 1
    return r, reads[0].get("id")


def read_answer(iq_id: str, items: str) -> etree._Element:
    return x(f"<iq type='result' id='{iq_id}' to='{UP}'><pubsub xmlns='{ns.PUBSUB}'>"
             f"<items node='{ns.BOOKMARKS}'>{items}</items></pubsub></iq>")


def joins(actions) -> list[etree._Element]:
    return [el for el in up(actions) if el.tag == f"{{{ns.CLIENT}}}presence" and el.get("type") is None
            and el.find(f"{{{ns.MUC}}}x") is not None]


def joined(r, room: str = ROOM, nick: str = "alice") -> None:
    """The room answers the account's join: the account is in."""
    r.from_upstream(x(f"<presence from='{room}/{nick}' to='{UP}'><x xmlns='{ns.MUC_USER}'>"
                      f"<item affiliation='none' role='participant'/><status code='110'/></x></presence>"), 0)
    r.from_upstream(x(f"<message from='{room}' to='{UP}' type='groupchat'><subject/></message>"), 0)


def holding():
    """A router whose account holds ROOM for its autojoin bookmark."""
    r, read_id = started()
    r.from_upstream(read_answer(read_id, conference(ROOM, True)), 0)
    joined(r)
    return r


# ---- parsing ------------------------------------------------------------------
def test_xep0402_items_and_retractions_parse():
    change = bookmarks.from_event(notification(
        conference(ROOM, True, "al", "pw") + conference("other@muc.example.org", False)
        + "<retract id='gone@muc.example.org'/>"))
    assert change is not None and not change.complete
    assert change.bookmarks == (Bookmark(ROOM, True, "al", "pw"), Bookmark("other@muc.example.org", False))
    assert change.removed == ("gone@muc.example.org",)


def test_xep0048_storage_is_a_complete_list_and_autojoin_may_be_1():
    storage = (f"<storage xmlns='{ns.BOOKMARKS_STORAGE}'><conference jid='{ROOM}' autojoin='1'><nick>al</nick>"
               f"</conference><conference jid='b@muc.example.org'/><url url='https://x'/></storage>")
    private = bookmarks.from_private_set(x(f"<iq type='set' id='p'><query xmlns='{ns.PRIVATE}'>{storage}</query></iq>"))
    assert private is not None and private.complete
    assert private.bookmarks == (Bookmark(ROOM, True, "al"), Bookmark("b@muc.example.org", False))
    pep = bookmarks.from_event(x(f"<message from='{ACCOUNT}'><event xmlns='{ns.PUBSUB_EVENT}'><items "
                                 f"node='{ns.BOOKMARKS_STORAGE}'><item id='current'>{storage}</item></items></event></message>"))
    assert pep == private


def test_caps_hash_is_xep0115s_own_example():
    """XEP-0115 §5.2: Exodus 0.9.1 hashes to QgayPKawpkPSDYmwT/WM94uAlu0=."""
    result = x(f"<iq type='result' id='d'><query xmlns='{ns.DISCO_INFO}'>"
               "<identity category='client' type='pc' name='Exodus 0.9.1'/>"
               f"<feature var='{ns.CAPS}'/><feature var='{ns.DISCO_INFO}'/>"
               "<feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>"
               "</query></iq>")
    assert caps.from_disco(result).ver() == "QgayPKawpkPSDYmwT/WM94uAlu0="


# ---- bookmarks drive the account -------------------------------------------------
def test_start_reads_bookmarks_and_holds_autojoin_rooms_with_their_nick_and_password():
    r, read_id = started()
    actions = r.from_upstream(read_answer(read_id, conference(ROOM, True, "al", "secret")
                                          + conference("quiet@muc.example.org", False)), 0)
    [join] = joins(actions)
    assert join.get("to") == f"{ROOM}/al"
    assert join.findtext(f"{{{ns.MUC}}}x/{{{ns.MUC}}}password") == "secret"
    assert r.muc.holds(ROOM) and not r.muc.holds("quiet@muc.example.org")


def test_without_xep0402_the_private_xml_bookmarks_are_read():
    r, read_id = started()
    actions = r.from_upstream(x(f"<iq type='error' id='{read_id}'><error type='cancel'>"
                                f"<feature-not-implemented xmlns='{ns.STANZA_ERRORS}'/></error></iq>"), 0)
    [private] = up(actions)
    assert private.find(f"{{{ns.PRIVATE}}}query/{{{ns.BOOKMARKS_STORAGE}}}storage") is not None
    storage = f"<storage xmlns='{ns.BOOKMARKS_STORAGE}'><conference jid='{ROOM}' autojoin='true'/></storage>"
    actions = r.from_upstream(x(f"<iq type='result' id='{private.get('id')}'><query xmlns='{ns.PRIVATE}'>"
                                f"{storage}</query></iq>"), 0)
    assert [j.get("to") for j in joins(actions)] == [f"{ROOM}/alice"]  # no nick: the account's


def test_autojoin_turned_off_is_an_account_level_leave_every_session_sees():
    r = holding()
    bind(r, "phone")
    r.from_session("phone", x(f"<presence from='{ACCOUNT}/phone' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>"), 0)
    actions = r.from_upstream(notification(conference(ROOM, False)), 0)
    [gone] = up(actions)
    assert gone.get("type") == "unavailable" and gone.get("to") == f"{ROOM}/alice"
    [own_leave] = [el for el in to(actions, "phone") if el.get("type") == "unavailable"]
    assert "110" in etree.tostring(own_leave).decode()
    assert not r.muc.holds(ROOM)


def test_a_bookmark_never_autojoined_leaves_nothing_a_retracted_autojoin_one_leaves():
    r, read_id = started()
    r.from_upstream(read_answer(read_id, ""), 0)
    bind(r, "laptop")
    r.from_session("laptop", x(f"<presence from='{ACCOUNT}/laptop' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>"), 0)
    joined(r)
    assert up(r.from_upstream(notification(conference(ROOM, False)), 0)) == []  # bookmarked while in it
    assert r.muc.holds(ROOM)
    assert up(r.from_upstream(notification(conference(ROOM, True)), 0)) == []  # already held
    [gone] = up(r.from_upstream(notification(f"<retract id='{ROOM}'/>"), 0))
    assert gone.get("type") == "unavailable" and not r.muc.holds(ROOM)


def test_notifications_from_others_do_not_drive_the_account():
    r, _ = started()
    forged = notification(conference(ROOM, True))
    forged.set("from", "mallory@example.org")
    assert joins(r.from_upstream(forged, 0)) == []


def test_a_session_storing_private_xml_bookmarks_drives_the_account_and_still_stores_them():
    r, _ = started()
    bind(r, "old")
    storage = f"<storage xmlns='{ns.BOOKMARKS_STORAGE}'><conference jid='{ROOM}' autojoin='true'/></storage>"
    actions = r.from_session("old", x(f"<iq type='set' id='s1' from='{ACCOUNT}/old'><query xmlns='{ns.PRIVATE}'>"
                                      f"{storage}</query></iq>"), 0)
    assert [j.get("to") for j in joins(actions)] == [f"{ROOM}/alice"]
    assert any(el.get("type") == "set" and el.find(f"{{{ns.PRIVATE}}}query") is not None for el in up(actions))


def test_a_resumed_upstream_reads_bookmarks_only_once_per_process():
    r, read_id = started()
    r.from_upstream(read_answer(read_id, ""), 0)
    r.upstream_down()
    assert up(r.upstream_established(UP, resumed=True)) == []
    r.upstream_down()
    assert len([el for el in up(r.upstream_established(UP, resumed=False)) if el.get("type") == "get"
                and el.find(f"{{{ns.PUBSUB}}}pubsub") is not None]) == 1


# ---- what the account announces, and who gets which notification -----------------------
def client_presence(res: str) -> etree._Element:
    return x(f"<presence from='{ACCOUNT}/{res}'><c xmlns='{ns.CAPS}' hash='sha-1' node='https://client.example' ver='v1'/></presence>")


def test_the_account_announces_its_clients_features_and_bookmark_notifications():
    r, _ = started()
    bind(r, "gajim")
    actions = r.from_session("gajim", client_presence("gajim"), 0)
    [ask] = to(actions, "gajim")
    assert ask.get("type") == "get" and ask.find(f"{{{ns.DISCO_INFO}}}query").get("node") == CLIENT_NODE
    first = [el for el in up(actions) if el.tag == f"{{{ns.CLIENT}}}presence"][0]
    assert first.find(f"{{{ns.CAPS}}}c").get("node") == NODE  # its own caps at once
    answer = x(f"<iq type='result' id='{ask.get('id')}' from='{ACCOUNT}/gajim'><query xmlns='{ns.DISCO_INFO}' "
               f"node='{CLIENT_NODE}'><identity category='client' type='pc' name='Gajim'/>"
               "<feature var='urn:xmpp:avatar:metadata+notify'/></query></iq>")
    [again] = up(r.from_session("gajim", answer, 0))
    c = again.find(f"{{{ns.CAPS}}}c")
    server_asks = x(f"<iq type='get' id='d1' from='{ACCOUNT}' to='{UP}'><query xmlns='{ns.DISCO_INFO}' "
                    f"node='{NODE}#{c.get('ver')}'/></iq>")
    [described] = up(r.from_upstream(server_asks, 0))
    info = caps.from_disco(described)
    assert info.ver() == c.get("ver")
    assert {"urn:xmpp:avatar:metadata+notify", f"{ns.BOOKMARKS}+notify", f"{ns.BOOKMARKS_STORAGE}+notify"} <= info.features
    assert [i.name for i in info.identities] == ["Gajim"]
    assert r.from_session("gajim", client_presence("gajim"), 0) == []  # known: not asked again, nothing changed


def test_a_notification_reaches_only_the_sessions_whose_client_asked_for_its_node():
    r, _ = started()
    for res, features in (("wants", f"<feature var='{ns.BOOKMARKS}+notify'/>"), ("not", "")):
        bind(r, res)
        presence = client_presence(res)
        presence.find(f"{{{ns.CAPS}}}c").set("ver", res)
        [ask] = [el for el in to(r.from_session(res, presence, 0), res) if el.tag == f"{{{ns.CLIENT}}}iq"]
        r.from_session(res, x(f"<iq type='result' id='{ask.get('id')}'><query xmlns='{ns.DISCO_INFO}'>"
                              f"<identity category='client' type='phone'/>{features}</query></iq>"), 0)
    bind(r, "unknown")
    r.from_session("unknown", x(f"<presence from='{ACCOUNT}/unknown'/>"), 0)
    actions = r.from_upstream(notification(conference(ROOM, False)), 0)
    assert [sorted(a.resources) for a in actions if isinstance(a, Deliver)] == [["unknown", "wants"]]


def test_a_restart_hands_over_what_clients_can_do_and_the_hashes_announced():
    """Sessions resumed after a restart send no presence to be asked again."""
    r, _ = started()
    bind(r, "gajim")
    [ask] = [el for el in to(r.from_session("gajim", client_presence("gajim"), 0), "gajim") if el.tag == f"{{{ns.CLIENT}}}iq"]
    [sent] = up(r.from_session("gajim", x(f"<iq type='result' id='{ask.get('id')}'><query xmlns='{ns.DISCO_INFO}'>"
                                          "<identity category='client' type='pc'/><feature var='x+notify'/></query></iq>"), 0))
    ver = sent.find(f"{{{ns.CAPS}}}c").get("ver")
    after = new_router(ACCOUNT)
    handover.load(after, json.loads(json.dumps(handover.dump(r))))
    server_asks = x(f"<iq type='get' id='d1' from='{ACCOUNT}' to='{UP}'><query xmlns='{ns.DISCO_INFO}' node='{NODE}#{ver}'/></iq>")
    after.upstream_established(UP, resumed=True)
    [described] = up(after.from_upstream(server_asks, 0))
    assert "x+notify" in caps.from_disco(described).features
    assert after.caps.ask("gajim", f"{ACCOUNT}/gajim", client_presence("gajim")) == []  # known already


def test_the_rooms_answer_to_the_accounts_leave_reaches_no_session_and_does_not_undo_a_rejoin():
    r = holding()
    bind(r, "elsewhere")
    r.from_session("elsewhere", x(f"<presence from='{ACCOUNT}/elsewhere'/>"), 0)
    r.from_upstream(notification(conference(ROOM, False)), 0)
    r.from_upstream(notification(conference(ROOM, True)), 0)  # on again before the room answered
    answer = x(f"<presence type='unavailable' from='{ROOM}/alice' to='{UP}'><x xmlns='{ns.MUC_USER}'>"
               "<item affiliation='none' role='none'/><status code='110'/></x></presence>")
    assert r.from_upstream(answer, 0) == []  # neither delivered nor taken for the room dropping the account
    assert r.muc.holds(ROOM)


def test_a_purge_of_the_bookmarks_leaves_every_autojoin_room():
    r = holding()
    purge = x(f"<message from='{ACCOUNT}' to='{UP}' type='headline'><event xmlns='{ns.PUBSUB_EVENT}'>"
              f"<purge node='{ns.BOOKMARKS}'/></event></message>")
    [gone] = up(r.from_upstream(purge, 0))
    assert gone.get("type") == "unavailable" and not r.muc.holds(ROOM)


def test_leave_when_unused_keeps_a_room_bookmarked_with_autojoin():
    r = new_router(ACCOUNT, leave_when_unused=True)
    read = [el for el in up(r.upstream_established(UP, resumed=False)) if el.find(f"{{{ns.PUBSUB}}}pubsub") is not None]
    r.from_upstream(read_answer(read[0].get("id"), conference(ROOM, True)), 0)
    joined(r)
    bind(r, "phone")
    r.from_session("phone", x(f"<presence from='{ACCOUNT}/phone' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>"), 0)
    r.from_session("phone", x(f"<presence type='unavailable' from='{ACCOUNT}/phone' to='{ROOM}/alice'/>"), 0)
    assert r.muc.holds(ROOM)


def test_a_pubsub_services_notification_reaches_every_session():
    """Filtering by caps is for PEP; a pubsub service's items were subscribed to explicitly."""
    r, _ = started()
    bind(r, "phone")
    presence = client_presence("phone")
    [ask] = [el for el in to(r.from_session("phone", presence, 0), "phone") if el.tag == f"{{{ns.CLIENT}}}iq"]
    r.from_session("phone", x(f"<iq type='result' id='{ask.get('id')}'><query xmlns='{ns.DISCO_INFO}'>"
                              "<identity category='client' type='phone'/></query></iq>"), 0)
    news = x(f"<message from='pubsub.example.org' to='{UP}'><event xmlns='{ns.PUBSUB_EVENT}'>"
             "<items node='news'><item id='1'/></items></event></message>")
    assert [a.resources for a in r.from_upstream(news, 0) if isinstance(a, (Deliver, Mail))] == [("phone",)]
    pep = x(f"<message from='bob@example.org' to='{UP}'><event xmlns='{ns.PUBSUB_EVENT}'>"
            "<items node='urn:xmpp:avatar:metadata'><item id='1'/></items></event></message>")
    assert [a for a in r.from_upstream(pep, 0) if isinstance(a, Deliver)] == []  # it did not ask for avatars


def test_a_new_nick_in_the_bookmark_of_a_held_room_changes_the_accounts_nick():
    r = holding()
    [change] = up(r.from_upstream(notification(conference(ROOM, True, "al2")), 0))
    assert change.get("to") == f"{ROOM}/al2" and change.get("type") is None
    assert change.find(f"{{{ns.MUC}}}x") is None  # a nick change, not a join
    assert up(r.from_upstream(notification(conference(ROOM, True, "al2")), 0)) == []  # unchanged: nothing
