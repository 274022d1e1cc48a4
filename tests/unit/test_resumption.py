"""XEP-0198 sessions of the account over in-memory ports: hibernate, resume, end (SPEC §9)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from bouncer.account.devices import DeviceBook
from bouncer.account.owner import Account
from bouncer.account.resumption import HibernationLimits
from bouncer.core.events import (
    SessionAcked, SessionBind, SessionClosed, SessionResume, SessionSmEnabled, SessionStanza, Tick, UpstreamStanza,
    UpstreamUp,
)
from bouncer.storage.in_memory import MemoryArchive, MemoryMailbox, NoTransaction
from bouncer.xmpp import ns
from bouncer.xmpp.sm import StreamManagement
from support.ports import RecordingPort, RecordingUpstream, new_router, no_bugs, parse_wire

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"
ROOM = "room@muc.example.org"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def account() -> Iterator[Account]:
    account = Account(new_router(ACCOUNT, MemoryArchive()), DeviceBook(MemoryMailbox()), NoTransaction(), RecordingUpstream(),
                      hibernation=HibernationLimits(seconds=3600, max_stanzas=5, max_bytes=100_000), clock=Clock())
    account.handle(UpstreamUp(UP, resumed=False))
    with no_bugs():
        yield account


def phone(account: Account, resource: str = "phone", sm_id: str | None = "prev-1") -> RecordingPort:
    """A session that bound, enabled SM (resumable with ``sm_id``) and sent its presence."""
    port = RecordingPort(ACCOUNT)
    account.handle(SessionBind(port, resource))
    port.sm = StreamManagement(id=sm_id)
    account.handle(SessionSmEnabled(port, port.sm))
    account.handle(SessionStanza(port, etree.fromstring(f"<presence xmlns='jabber:client' from='{port.jid}'/>")))
    return port


def chat(n: int) -> UpstreamStanza:
    return UpstreamStanza(etree.fromstring(
        f"<message xmlns='jabber:client' from='bob@example.org/x' to='{UP}' type='chat' id='c{n}'><body>chat {n}</body></message>"))


def bodies(wires: list[bytes]) -> list[str]:
    return [el.findtext("{jabber:client}body") for el in map(parse_wire, wires)
            if el.tag == "{jabber:client}message"]


def ack(account: Account, port: RecordingPort, h: int) -> None:
    assert port.sm is not None
    port.sm.on_ack(h)
    account.handle(SessionAcked(port))


def test_a_dropped_session_is_resumed_with_what_it_missed_in_order_and_nothing_twice(account):
    first = phone(account)
    account.handle(chat(1))
    account.handle(chat(2))
    ack(account, first, 1)  # the client had chat 1 (of 1 stanza sent before: the chats only)
    account.handle(SessionClosed(first))  # TCP gone, no </stream>
    assert account.status()["sessions"][0]["sm"] == "hibernated"
    account.handle(chat(3))  # while away
    again = RecordingPort(ACCOUNT)
    account.handle(SessionResume(again, "prev-1", 1))
    assert again.resume is not None and again.resume[0] == "phone"
    assert bodies(again.resume[1]) == ["chat 2", "chat 3"]
    assert account.router.sessions["phone"].port is again and account.status()["sessions"][0]["sm"] == "resumable"
    account.handle(chat(4))  # then live, on the new connection
    assert bodies(again.wire) == ["chat 4"]


def test_acks_move_the_devices_cursor_so_a_later_bind_gets_only_the_rest(account):
    first = phone(account)
    for n in (1, 2, 3):
        account.handle(chat(n))
    ack(account, first, 2)
    account.handle(SessionClosed(first, by_client=True))  # a clean close ends the session
    assert "phone" not in account.router.sessions
    fresh = RecordingPort(ACCOUNT)
    account.handle(SessionBind(fresh, "phone"))
    account.handle(SessionStanza(fresh, etree.fromstring(f"<presence xmlns='jabber:client' from='{fresh.jid}'/>")))
    assert bodies(fresh.wire) == ["chat 3"]


def test_unknown_previd_fails_and_the_backlog_has_everything_unacknowledged(account):
    first = phone(account)
    account.handle(chat(1))
    account.handle(SessionClosed(first))
    stranger = RecordingPort(ACCOUNT)
    account.handle(SessionResume(stranger, "no-such-id", 0))
    assert stranger.failed == [None]


def test_a_resume_claiming_too_much_fails_and_ends_the_session(account):
    first = phone(account)
    account.handle(chat(1))
    account.handle(SessionClosed(first))
    liar = RecordingPort(ACCOUNT)
    account.handle(SessionResume(liar, "prev-1", 7))  # only 1 stanza was sent
    assert liar.failed == [0] and "phone" not in account.router.sessions
    fresh = RecordingPort(ACCOUNT)
    account.handle(SessionBind(fresh, "phone"))
    account.handle(SessionStanza(fresh, etree.fromstring(f"<presence xmlns='jabber:client' from='{fresh.jid}'/>")))
    assert bodies(fresh.wire) == ["chat 1"]  # from the device's backlog


def test_hibernation_ends_after_its_time_and_the_session_leaves(account):
    first = phone(account)
    sibling = phone(account, "laptop", sm_id=None)
    account.handle(SessionClosed(first))
    account.handle(Tick(account.clock() + 3599))
    assert "phone" in account.router.sessions  # still waiting
    account.clock.now += 3601  # type: ignore[attr-defined]
    account.handle(Tick(account.clock()))
    assert "phone" not in account.router.sessions
    gone = [parse_wire(w) for w in sibling.wire if b"unavailable" in w]
    assert [g.get("from") for g in gone] == [f"{ACCOUNT}/phone"]  # only now do its siblings see it go


def test_a_full_hibernation_queue_ends_the_session_at_the_next_tick(account):
    first = phone(account)
    account.handle(SessionClosed(first))
    for n in range(1, 9):
        account.handle(chat(n))
    account.handle(Tick(account.clock()))
    assert "phone" not in account.router.sessions
    fresh = RecordingPort(ACCOUNT)
    account.handle(SessionBind(fresh, "phone"))
    account.handle(SessionStanza(fresh, etree.fromstring(f"<presence xmlns='jabber:client' from='{fresh.jid}'/>")))
    assert bodies(fresh.wire) == [f"chat {n}" for n in range(1, 9)]  # nothing lost


def test_a_hibernated_session_stays_in_its_rooms_and_the_room_sees_nothing(account):
    first = phone(account)
    join = f"<presence xmlns='jabber:client' from='{first.jid}' to='{ROOM}/alice'><x xmlns='{ns.MUC}'/></presence>"
    account.handle(SessionStanza(first, etree.fromstring(join)))
    account.upstream.sent.clear()  # type: ignore[union-attr]
    account.handle(SessionClosed(first))
    assert account.upstream.sent == [] and "phone" in account.router.muc.rooms[ROOM].pending  # type: ignore[union-attr]


def test_a_resume_while_the_old_connection_lingers_replaces_it(account):
    first = phone(account)
    account.handle(chat(1))
    second = RecordingPort(ACCOUNT)
    account.handle(SessionResume(second, "prev-1", 0))
    assert first.errors == [("conflict", "resumed on another connection")]
    assert second.resume is not None and bodies(second.resume[1]) == ["chat 1"]
    account.handle(SessionClosed(first))  # its end changes nothing now
    assert account.router.sessions["phone"].port is second


def test_a_bind_that_replaces_a_hibernated_session_takes_over_its_backlog(account):
    first = phone(account)
    account.handle(chat(1))
    account.handle(SessionClosed(first))
    account.handle(chat(2))  # held for the resume that will not come
    fresh = RecordingPort(ACCOUNT)
    account.handle(SessionBind(fresh, "phone"))  # the client logged in anew instead
    account.handle(SessionStanza(fresh, etree.fromstring(f"<presence xmlns='jabber:client' from='{fresh.jid}'/>")))
    assert bodies(fresh.wire) == ["chat 1", "chat 2"]
    assert account.router.sessions["phone"].port is fresh and account.router.sessions["phone"].sm is None


def test_a_resume_after_the_queue_overflowed_fails_and_the_backlog_has_the_rest(account):
    """Between the overflow and the next tick a resume must not skip what the queue refused."""
    first = phone(account)
    account.handle(SessionClosed(first))
    for n in range(1, 9):  # the queue takes 5 (plus one over), then refuses
        account.handle(chat(n))
    again = RecordingPort(ACCOUNT)
    account.handle(SessionResume(again, "prev-1", 0))
    assert again.resume is None and len(again.failed) == 1 and "phone" not in account.router.sessions
    fresh = RecordingPort(ACCOUNT)
    account.handle(SessionBind(fresh, "phone"))
    account.handle(SessionStanza(fresh, etree.fromstring(f"<presence xmlns='jabber:client' from='{fresh.jid}'/>")))
    assert bodies(fresh.wire) == [f"chat {n}" for n in range(1, 9)]


def test_while_hibernating_presences_coalesce_and_come_after_the_resend(account):
    first = phone(account)
    account.handle(SessionClosed(first))
    for show in ("away", "xa", "dnd"):  # one contact changing its mind three times
        account.handle(UpstreamStanza(etree.fromstring(
            f"<presence xmlns='jabber:client' from='carol@example.org/x' to='{UP}'><show>{show}</show></presence>")))
    account.handle(chat(1))
    assert len(account.router.sessions["phone"].sm.unacked) == 1  # type: ignore[union-attr]  # the chat only
    again = RecordingPort(ACCOUNT)
    account.handle(SessionResume(again, "prev-1", 0))
    assert again.resume is not None and bodies(again.resume[1]) == ["chat 1"]
    (carol,) = [parse_wire(w) for w in again.wire if b"carol@" in w]
    assert carol.findtext("{jabber:client}show") == "dnd" and carol.find(f"{{{ns.DELAY}}}delay") is not None
