"""The account's one entrance and its executor, over in-memory ports (no socket, no file)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from lxml import etree
from structlog.testing import capture_logs

from bouncer.account.devices import DeviceBook
from bouncer.account.owner import Account
from bouncer.core.events import (
    SessionBind, SessionClosed, SessionNonza, SessionStanza, Shutdown, Tick, UpstreamStanza,
    UpstreamUp,
)
from bouncer.storage.in_memory import MemoryArchive, MemoryMailbox, NoTransaction
from bouncer.xmpp import ns
from support.ports import RecordingPort, RecordingUpstream, new_router, no_bugs, parse_wire

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"
ROOM = "room@muc.example.org"


def x(text: str) -> etree._Element:
    tag = text[1:].split(" ", 1)[0].rstrip(">/")
    return etree.fromstring(text.replace(f"<{tag}", f"<{tag} xmlns='jabber:client'", 1))


@pytest.fixture
def account() -> Iterator[Account]:
    account = Account(new_router(ACCOUNT, MemoryArchive()), DeviceBook(MemoryMailbox()), NoTransaction(), RecordingUpstream())
    account.handle(UpstreamUp(UP, resumed=False))
    with no_bugs():
        yield account


def session(account: Account, resource: str, *, available: bool = True) -> RecordingPort:
    port = RecordingPort(ACCOUNT)
    account.handle(SessionBind(port, resource))
    if available:
        account.handle(SessionStanza(port, x(f"<presence from='{ACCOUNT}/{resource}'/>")))
    return port


def iq(port: RecordingPort, iq_id: str, to: str = "example.org") -> SessionStanza:
    return SessionStanza(port, x(f"<iq type='get' id='{iq_id}' from='{port.jid}' to='{to}'><ping xmlns='{ns.PING}'/></iq>"))


def received(port: RecordingPort) -> list[etree._Element]:
    return [parse_wire(w) for w in port.wire]


def test_a_bug_in_a_decision_is_logged_and_the_next_stanza_is_still_served(account, monkeypatch):
    phone = session(account, "phone")
    real = account.router.from_session

    def buggy(resource, el, now):
        if el.get("id") == "boom":
            raise KeyError("a bug")
        return real(resource, el, now)

    monkeypatch.setattr(account.router, "from_session", buggy)
    with capture_logs() as logs:
        account.handle(iq(phone, "boom"))
    (failed,) = [e for e in logs if e["event"] == "event handler failed"]
    assert failed["input"] == "SessionStanza" and failed["exc_info"] is True and failed["log_level"] == "error"
    (answer,) = [el for el in received(phone) if el.get("id") == "boom"]
    assert answer.get("type") == "error" and answer.find(f".//{{{ns.STANZA_ERRORS}}}internal-server-error") is not None
    account.handle(iq(phone, "next"))
    (sent,) = [el for el in account.upstream.sent if el.find(f"{{{ns.PING}}}ping") is not None]  # type: ignore[union-attr]
    assert sent.get("to") == "example.org"  # served as usual


def test_the_tick_survives_a_bug_and_keeps_expiring_iqs(account, monkeypatch):
    phone = session(account, "phone")
    account.handle(iq(phone, "slow"))  # sent upstream; never answered
    due = account.router.muc.due
    calls = []

    def buggy(now):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return due(now)

    monkeypatch.setattr(account.router.muc, "due", buggy)
    with capture_logs() as logs:
        account.handle(Tick(1.0))
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["event handler failed"]
    account.handle(Tick(account.clock() + 3600))
    (timeout,) = [el for el in received(phone) if el.get("id") == "slow"]
    assert timeout.find(f".//{{{ns.STANZA_ERRORS}}}remote-server-timeout") is not None and len(calls) == 2


def chat(n: int) -> UpstreamStanza:
    return UpstreamStanza(x(f"<message from='bob@example.org/x' to='{UP}' type='chat' id='c{n}'><body>chat {n}</body>"
                            f"<stanza-id xmlns='{ns.STANZA_ID}' by='{ACCOUNT}' id='sid{n}'/></message>"))


def bodies(port: RecordingPort) -> list[str]:
    return [el.findtext("{jabber:client}body") for el in received(port) if el.tag == "{jabber:client}message"]


def test_each_device_gets_what_it_missed_exactly_once(account):
    """Two devices known, both away: each one, coming back, gets every chat once, with
    its delay and the server's stanza-id; what it already had is not sent again."""
    for resource in ("phone", "laptop"):
        account.handle(SessionClosed(session(account, resource)))
    for n in (1, 2):
        account.handle(chat(n))
    phone = session(account, "phone")
    assert bodies(phone) == ["chat 1", "chat 2"]
    (first, _) = [el for el in received(phone) if el.tag == "{jabber:client}message"]
    assert first.find(f"{{{ns.DELAY}}}delay") is not None and first.find(f"{{{ns.STANZA_ID}}}stanza-id").get("id") == "sid1"
    assert first.get("to") == f"{ACCOUNT}/phone"
    account.handle(chat(3))  # live, to the phone
    assert bodies(phone) == ["chat 1", "chat 2", "chat 3"]
    phone.flushed()  # the writer put it all on the socket
    account.handle(SessionClosed(phone))
    laptop = session(account, "laptop")
    assert bodies(laptop) == ["chat 1", "chat 2", "chat 3"]  # the phone's having them changes nothing here
    laptop.flushed()
    again = session(account, "phone")
    assert bodies(again) == []  # nothing twice
    assert [d["backlog"] for d in account.status()["devices"]] == [0, 0]


def test_what_was_not_written_is_sent_again(account):
    phone = session(account, "phone")
    account.handle(chat(1))
    account.handle(SessionClosed(phone))  # the connection died before its writer got to it
    assert bodies(session(account, "phone")) == ["chat 1"]


def test_a_new_device_gets_what_nobody_got(account):
    phone = session(account, "phone")
    account.handle(chat(1))
    phone.flushed()
    account.handle(SessionClosed(phone))
    account.handle(chat(2))
    assert bodies(session(account, "tablet")) == ["chat 2"]


def test_a_bind_replaces_the_holder_of_the_resource(account):
    old = session(account, "phone")
    new = session(account, "phone")
    assert old.errors == [("conflict", None)] and new.jid == f"{ACCOUNT}/phone"
    account.handle(SessionClosed(old))  # the old connection's end changes nothing
    assert account.router.sessions["phone"].port is new


def test_unknown_nonza_ends_the_session_and_csi_is_recorded(account):
    phone = session(account, "phone")
    account.handle(SessionNonza(phone, etree.Element(f"{{{ns.CSI}}}inactive")))
    assert account.status()["sessions"][0]["csi"] == "inactive" and phone.errors == []
    account.handle(SessionNonza(phone, etree.Element("{urn:example}thing")))
    assert phone.errors[0][0] == "unsupported-stanza-type"


def test_shutdown_tells_sessions_and_their_going_leaves_rooms_held(account):
    phone = session(account, "phone")
    account.handle(SessionStanza(phone, x(f"<presence from='{phone.jid}' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>")))
    account.upstream.sent.clear()  # type: ignore[union-attr]
    account.handle(Shutdown())
    assert phone.errors == [("system-shutdown", None)]
    account.handle(SessionClosed(phone))
    assert account.upstream.sent == [] and ROOM in account.router.muc.rooms  # type: ignore[union-attr]


def test_reconfigure_changes_what_the_account_decides_from_now_on(account):
    from bouncer.config import Config, DownstreamConfig, LimitsConfig, MucConfig, PresenceConfig, UpstreamConfig
    from bouncer.core.events import Reconfigure
    from bouncer.credentials import Credentials

    config = Config(upstream=UpstreamConfig(ACCOUNT, "pw"), downstream=DownstreamConfig(Credentials.from_plain("x")),
                    presence=PresenceConfig(idle_show="xa", idle_status="on a walk"),
                    limits=LimitsConfig(iq_timeout=5.0), muc=MucConfig(leave_when_unused=True))
    account.upstream.sent.clear()  # type: ignore[union-attr]
    account.handle(Reconfigure(config))
    (idle,) = account.upstream.sent  # type: ignore[union-attr]
    assert idle.findtext("{jabber:client}show") == "xa" and idle.findtext("{jabber:client}status") == "on a walk"
    assert account.router.iqs.timeout == 5.0 and account.router.muc.settings.leave_when_unused


def occupant_presence(nick: str, show: str | None = None) -> UpstreamStanza:
    body = f"<show>{show}</show>" if show else ""
    return UpstreamStanza(x(f"<presence from='{ROOM}/{nick}' to='{UP}'>{body}<x xmlns='{ns.MUC_USER}'>"
                            f"<item affiliation='none' role='participant'/></x></presence>"))


def test_an_inactive_client_gets_bodies_at_once_and_presences_on_active_coalesced_and_stamped(account):
    phone = session(account, "phone")
    join = f"<presence from='{phone.jid}' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>"
    account.handle(SessionStanza(phone, x(join)))
    for el in (occupant_presence("bob"),
               UpstreamStanza(x(f"<presence from='{ROOM}/alice' to='{UP}'><x xmlns='{ns.MUC_USER}'><item affiliation='none' role='participant'/><status code='110'/></x></presence>")),
               UpstreamStanza(x(f"<message from='{ROOM}' to='{UP}' type='groupchat'><subject>s</subject></message>"))):
        account.handle(el)
    account.handle(SessionNonza(phone, etree.Element(f"{{{ns.CSI}}}inactive")))
    writes = len(phone.wire)
    account.handle(occupant_presence("carol"))
    account.handle(occupant_presence("bob", "away"))
    account.handle(occupant_presence("bob", "dnd"))  # replaces bob's away
    assert len(phone.wire) == writes  # nothing yet
    calls = phone.writes
    account.handle(UpstreamStanza(x(f"<message from='{ROOM}/bob' to='{UP}' type='groupchat'><body>hi</body>"
                                    f"<stanza-id xmlns='{ns.STANZA_ID}' by='{ROOM}' id='s1'/></message>")))
    got = received(phone)[writes:]
    assert [(g.get("from"), g.findtext("{jabber:client}show")) for g in got] == [
        (f"{ROOM}/carol", None), (f"{ROOM}/bob", "dnd"), (f"{ROOM}/bob", None)]  # held ones first
    assert phone.writes == calls + 1  # in one write
    assert all(g.find(f"{{{ns.DELAY}}}delay") is not None for g in got[:2]) and got[2].findtext("{jabber:client}body") == "hi"
    assert all(g.get("to") == phone.jid for g in got)
    writes = len(phone.wire)
    account.handle(occupant_presence("dave"))
    assert len(phone.wire) == writes
    account.handle(SessionNonza(phone, etree.Element(f"{{{ns.CSI}}}active")))
    (dave,) = received(phone)[writes:]
    assert dave.get("from") == f"{ROOM}/dave" and dave.find(f"{{{ns.DELAY}}}delay") is not None
    assert account.router.muc.rooms[ROOM].occupants["dave"].find(f"{{{ns.DELAY}}}delay") is None  # the cache is untouched


def test_the_held_queue_is_flushed_when_full(account):
    from bouncer.account.held import HELD_MAX

    phone = session(account, "phone")
    account.handle(SessionNonza(phone, etree.Element(f"{{{ns.CSI}}}inactive")))
    writes = len(phone.wire)
    for n in range(HELD_MAX):
        account.handle(UpstreamStanza(x(f"<presence from='c{n}@example.org/x' to='{UP}'/>")))
    assert len(received(phone)[writes:]) == HELD_MAX


def mam_result(query: etree._Element, sid: str, sender: str, body: str) -> UpstreamStanza:
    qid = query.get("id")
    return UpstreamStanza(x(
        f"<message from='{ACCOUNT}' to='{UP}'><result xmlns='urn:xmpp:mam:2' queryid='{qid}' id='{sid}'>"
        f"<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-11-28T10:00:00Z'/>"
        f"<message xmlns='jabber:client' from='{sender}' to='{ACCOUNT}' type='chat'><body>{body}</body></message>"
        f"</forwarded></result></message>"))


def test_a_new_upstream_session_pages_the_accounts_mam_and_takes_each_message_once(account):
    """Issue 12, 2: after a session that could not be resumed, what the server archived
    since the last message taken reaches the sessions, once, whatever offline storage
    brings too; what the account's other clients sent comes as a sent carbon, and what
    the bouncer itself sent (from an upstream resource it bound) not at all."""
    phone = session(account, "phone")
    account.handle(SessionStanza(phone, x(f"<iq type='set' id='c' from='{phone.jid}'><enable xmlns='{ns.CARBONS}'/></iq>")))
    account.handle(chat(5))
    assert account.router.catchup.after == "sid5" and account.devices.mailbox.mark("account-mam") == "sid5"
    account.upstream.sent.clear()  # type: ignore[union-attr]
    account.handle(UpstreamUp(f"{ACCOUNT}/new-run", resumed=False))
    (query,) = [el for el in account.upstream.sent if el.find("{urn:xmpp:mam:2}query") is not None]  # type: ignore[union-attr]
    assert query.findtext(".//{http://jabber.org/protocol/rsm}after") == "sid5" and query.get("to") is None
    assert json.loads(account.devices.mailbox.mark("upstream-resources")) == ["bouncer", "new-run"]
    account.handle(mam_result(query, "sid6", "bob@example.org/x", "missed 6"))
    account.handle(mam_result(query, "sid7", f"{ACCOUNT}/elsewhere", "I said this elsewhere"))
    account.handle(mam_result(query, "sid8", UP, "a session said this through the bouncer"))
    account.handle(chat(6))  # the same message again, from offline storage
    account.handle(UpstreamStanza(x(f"<iq type='result' id='{query.get('id')}' from='{ACCOUNT}' to='{UP}'>"
                                    f"<fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>")))
    got = [el for el in received(phone) if el.tag == "{jabber:client}message"]
    assert [el.findtext("{jabber:client}body") for el in got] == ["chat 5", "missed 6", None]
    assert got[1].find(f"{{{ns.DELAY}}}delay") is not None and got[1].get("to") == phone.jid
    forwarded = got[2].find(f"{{{ns.CARBONS}}}sent/{{{ns.FORWARD}}}forwarded")
    assert forwarded.find(f"{{{ns.DELAY}}}delay") is not None  # its time, on the forward (XEP-0297)
    sent = forwarded.find("{jabber:client}message")
    assert (sent.get("to"), sent.findtext("{jabber:client}body")) == (ACCOUNT, "I said this elsewhere")
    assert account.router.catchup.after == "sid7"  # the last one taken
    assert account.router.catchup.query_id is None  # done: complete
