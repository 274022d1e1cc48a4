"""The bouncer's command tree (issue 13, 1): ad-hoc commands for the account's sessions and
the same commands for the control socket, over in-memory ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from bouncer.account import commands
from bouncer.account.devices import DeviceBook
from bouncer.account.owner import Account
from bouncer.core.events import Operate, SessionBind, SessionStanza, UpstreamStanza, UpstreamUp
from bouncer.storage.in_memory import MemoryArchive, MemoryMailbox, NoTransaction
from bouncer.xmpp import ns
from support.ports import RecordingPort, RecordingUpstream, new_router, no_bugs, parse_wire

ACCOUNT = "alice@example.org"
UP = f"{ACCOUNT}/bouncer"
ROOM = "room@muc.example.org"
DATA = f"{{{ns.DATA}}}"


def x(text: str) -> etree._Element:
    tag = text[1:].split(" ", 1)[0].rstrip(">/")
    return etree.fromstring(text.replace(f"<{tag}", f"<{tag} xmlns='jabber:client'", 1))


@pytest.fixture
def account() -> Iterator[Account]:
    router = new_router(ACCOUNT, MemoryArchive())
    router.settings.commands = commands.LISTED
    account = Account(router, DeviceBook(MemoryMailbox()), NoTransaction(), RecordingUpstream())
    account.handle(UpstreamUp(UP, resumed=False))
    with no_bugs():
        yield account


def session(account: Account, resource: str) -> RecordingPort:
    port = RecordingPort(ACCOUNT)
    account.handle(SessionBind(port, resource))
    account.handle(SessionStanza(port, x(f"<presence from='{ACCOUNT}/{resource}'/>")))
    return port


def execute(account: Account, port: RecordingPort, name: str, argument: str | None = None) -> etree._Element:
    """Run an ad-hoc command as a client does; the last answer."""
    form = "" if argument is None else (
        f"<x xmlns='{ns.DATA}' type='submit'><field var='argument'><value>{argument}</value></field></x>")
    account.handle(SessionStanza(port, x(
        f"<iq type='set' id='c1' from='{port.jid}' to='{ACCOUNT}'><command xmlns='{ns.COMMANDS}' "
        f"node='{commands.NODE_PREFIX}{name}' action='{'execute' if argument is None else 'complete'}'>{form}"
        "</command></iq>")))
    return [parse_wire(w) for w in port.wire if b"c1" in w][-1]


def hold_room(account: Account) -> None:
    assert not commands.run(account, "hold", f"{ROOM}/al").failed
    account.handle(UpstreamStanza(x(f"<presence from='{ROOM}/al' to='{UP}'><x xmlns='{ns.MUC_USER}'>"
                                    "<item affiliation='none' role='participant'/><status code='110'/></x></presence>")))


def test_the_account_lists_its_commands_next_to_the_servers(account):
    port = session(account, "phone")
    account.handle(SessionStanza(port, x(f"<iq type='get' id='l1' from='{port.jid}' to='{ACCOUNT}'>"
                                         f"<query xmlns='{ns.DISCO_ITEMS}' node='{ns.COMMANDS}'/></iq>")))
    asked = account.upstream.sent[-1]
    server = x(f"<iq type='result' id='{asked.get('id')}' from='{ACCOUNT}' to='{UP}'><query xmlns='{ns.DISCO_ITEMS}' "
               f"node='{ns.COMMANDS}'><item jid='{ACCOUNT}' node='server-cmd' name='Server'/></query></iq>")
    account.handle(UpstreamStanza(server))
    listed = [parse_wire(w) for w in port.wire if b"l1" in w][-1]
    nodes = [i.get("node") for i in listed.iter(f"{{{ns.DISCO_ITEMS}}}item")]
    assert nodes == ["server-cmd", *(c.node for c in commands.COMMANDS)]
    # Prosody answers item-not-found, without a from: the list is ours alone, from the account
    account.handle(SessionStanza(port, x(f"<iq type='get' id='l2' from='{port.jid}' to='{ACCOUNT}'>"
                                         f"<query xmlns='{ns.DISCO_ITEMS}' node='{ns.COMMANDS}'/></iq>")))
    asked = account.upstream.sent[-1]
    account.handle(UpstreamStanza(x(f"<iq type='error' id='{asked.get('id')}' to='{UP}'><error type='cancel'>"
                                    f"<item-not-found xmlns='{ns.STANZA_ERRORS}'/></error></iq>")))
    listed = [parse_wire(w) for w in port.wire if b"l2" in w][-1]
    assert (listed.get("type"), listed.get("from")) == ("result", ACCOUNT)
    assert len(list(listed.iter(f"{{{ns.DISCO_ITEMS}}}item"))) == len(commands.COMMANDS)


def test_status_is_a_form_of_lines_the_control_socket_prints_too(account):
    port = session(account, "phone")
    answer = execute(account, port, "status")
    command = answer.find(f"{{{ns.COMMANDS}}}command")
    assert command.get("status") == "completed"
    lines = [v.text for v in command.iter(f"{DATA}value")]
    assert "sessions: 1" in lines and any(line.startswith("  phone  from") for line in lines)
    told = []
    account.handle(Operate("sessions", "", lambda lines, failed: told.append((lines, failed))))
    assert told[0][1] is False and told[0][0][0] == "sessions: 1"


def test_leave_offers_the_rooms_held_and_leaving_is_an_account_level_leave(account):
    port = session(account, "phone")
    hold_room(account)
    form = execute(account, port, "leave")
    assert form.find(f"{{{ns.COMMANDS}}}command").get("status") == "executing"
    [field] = form.iter(f"{DATA}field")
    assert field.get("type") == "list-single" and field.findtext(f"{DATA}value") == ROOM  # preselected
    assert [o.findtext(f"{DATA}value") for o in field.iter(f"{DATA}option")] == [ROOM]
    done = execute(account, port, "leave", ROOM)
    assert done.find(f"{{{ns.COMMANDS}}}command/{{{ns.COMMANDS}}}note").get("type") == "info"
    gone = account.upstream.sent[-1]
    assert gone.get("type") == "unavailable" and gone.get("to") == f"{ROOM}/al"
    assert not account.muc.holds(ROOM)
    again = execute(account, port, "leave", ROOM)
    assert again.find(f"{{{ns.COMMANDS}}}command/{{{ns.COMMANDS}}}note").get("type") == "error"


def test_disconnect_ends_a_session_without_hibernation_and_forgets_a_device(account):
    phone, laptop = session(account, "phone"), session(account, "laptop")
    offered = execute(account, laptop, "disconnect").iter(f"{DATA}option")
    assert [o.findtext(f"{DATA}value") for o in offered] == ["phone"]  # not the asker itself
    execute(account, laptop, "disconnect", "phone")
    assert phone.errors == [("reset", "disconnected by the account's owner")]
    assert "phone" not in account.router.sessions and "phone" in account.devices.known
    assert [line for line in commands.run(account, "disconnect", "phone").lines] == [
        "device phone forgotten: its backlog is no longer kept"]
    assert "phone" not in account.devices.known
    assert commands.run(account, "disconnect", "phone").failed


def test_a_command_from_anyone_else_is_forbidden(account):
    account.handle(UpstreamStanza(x(f"<iq type='set' id='m1' from='mallory@example.org/x' to='{UP}'>"
                                    f"<command xmlns='{ns.COMMANDS}' node='{commands.NODE_PREFIX}status'/></iq>")))
    refused = account.upstream.sent[-1]
    assert refused.get("type") == "error" and refused.find(f".//{{{ns.STANZA_ERRORS}}}forbidden") is not None


def test_unknown_commands_and_missing_arguments_say_so():
    assert commands.run(None, "nope").failed  # type: ignore[arg-type]
    assert commands.run(None, "leave").lines == ("leave needs an argument: room",)  # type: ignore[arg-type]


def test_the_gauges_tell_connected_from_hibernating_sessions(account):
    session(account, "phone"), session(account, "laptop")
    account.router.sessions["phone"].hibernated_at = 1.0  # its connection dropped; it waits for a resume
    gauges = {name: value for name, (_, value) in account.gauges().items()}
    assert (gauges["sessions"], gauges["sessions_hibernating"], gauges["devices"]) == (1, 1, 2)


def test_a_result_is_one_fixed_field_per_line_each_with_its_own_var(account):
    """poezio keeps one field per var: without distinct vars it showed a blank result."""
    fields = list(execute(account, session(account, "phone"), "sessions").iter(f"{DATA}field"))
    assert len(fields) > 1 and all(f.get("type") == "fixed" for f in fields)
    assert len({f.get("var") for f in fields}) == len(fields)
