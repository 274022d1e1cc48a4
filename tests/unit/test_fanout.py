"""The executor's delivery: one serialisation, each session's own ``to``, payload untouched."""

from __future__ import annotations

from lxml import etree

from bouncer.account.devices import DeviceBook
from bouncer.account.owner import Account
from bouncer.core.events import SessionBind
from bouncer.storage.in_memory import MemoryMailbox, NoTransaction
from support.ports import RecordingPort, new_router, parse_wire

ACCOUNT = "alice@example.org"


def account_with(*resources: str) -> tuple[Account, dict[str, RecordingPort]]:
    account = Account(new_router(ACCOUNT), DeviceBook(MemoryMailbox()), NoTransaction())
    ports = {}
    for resource in resources:
        ports[resource] = RecordingPort(ACCOUNT)
        account.handle(SessionBind(ports[resource], resource))
    return account, ports


def test_each_session_gets_its_own_to_and_the_same_payload():
    account, ports = account_with("a", 'we"ird&<')
    el = etree.fromstring(
        "<message xmlns='jabber:client' from='room@muc/bob' to='alice@example.org/bouncer' type='groupchat'>"
        "<body>to=\"alice@example.org/a\" ünïcode</body><x xmlns='urn:x' a='1'/></message>"
    )
    account.delivery.deliver(("a", 'we"ird&<', "gone"), el)
    for resource, port in ports.items():
        (wire,) = port.wire
        got = parse_wire(wire)
        assert got.get("to") == f"alice@example.org/{resource}"
        assert got.findtext("{jabber:client}body") == 'to="alice@example.org/a" ünïcode'
        assert got.find("{urn:x}x").get("a") == "1"
    assert el.get("to") == "alice@example.org/bouncer"  # the cached element is left as it was


def test_bare_to_is_kept():
    account, ports = account_with("a")
    el = etree.fromstring("<message xmlns='jabber:client' to='alice@example.org'><body>x</body></message>")
    account.delivery.deliver(("a",), el)
    assert parse_wire(ports["a"].wire[0]).get("to") == "alice@example.org"


def test_stanzas_go_out_without_restating_the_streams_namespace():
    account, ports = account_with("a")
    el = etree.fromstring("<message xmlns='jabber:client' to='alice@example.org/bouncer' a='x xmlns=\"jabber:client\"'>"
                          "<body xmlns='jabber:client'>hi</body><x xmlns='jabber:client'/></message>")
    account.delivery.deliver(("a",), el)
    (wire,) = ports["a"].wire
    assert wire.startswith(b'<message to="alice@example.org/a" a="x xmlns=&quot;jabber:client&quot;">'), wire
    inside = b"<stream xmlns='jabber:client'>" + wire + b"</stream>"
    got = etree.fromstring(inside)[0]
    assert got.tag == "{jabber:client}message" and got.findtext("{jabber:client}body") == "hi"
