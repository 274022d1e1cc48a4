"""Account fan-out: one serialisation, each session's own ``to``, payload untouched."""

from __future__ import annotations

from lxml import etree

from bouncer.account import Account
from bouncer.router import Router, RouterSettings


class FakeConn:
    def __init__(self, jid):
        self.jid = jid
        self.wire: list[bytes] = []

    def send_serialized(self, wire: bytes) -> None:
        self.wire.append(wire)


def test_each_session_gets_its_own_to_and_the_same_payload():
    account = Account(Router(RouterSettings(account="alice@example.org")), offline=None)  # type: ignore[arg-type]
    account.connections = {r: FakeConn(f"alice@example.org/{r}") for r in ("a", 'we"ird&<')}
    el = etree.fromstring(
        "<message xmlns='jabber:client' from='room@muc/bob' to='alice@example.org/bouncer' type='groupchat'>"
        "<body>to=\"alice@example.org/a\" ünïcode</body><x xmlns='urn:x' a='1'/></message>"
    )
    account._deliver(("a", 'we"ird&<', "gone"), el)
    for resource, conn in account.connections.items():
        (wire,) = conn.wire
        got = etree.fromstring(wire)
        assert got.get("to") == f"alice@example.org/{resource}"
        assert got.findtext("{jabber:client}body") == 'to="alice@example.org/a" ünïcode'
        assert got.find("{urn:x}x").get("a") == "1"
    assert el.get("to") == "alice@example.org/bouncer"  # the cached element is left as it was


def test_bare_to_is_kept():
    account = Account(Router(RouterSettings(account="alice@example.org")), offline=None)  # type: ignore[arg-type]
    account.connections = {"a": FakeConn("alice@example.org/a")}
    el = etree.fromstring("<message xmlns='jabber:client' to='alice@example.org'><body>x</body></message>")
    account._deliver(("a",), el)
    assert etree.fromstring(account.connections["a"].wire[0]).get("to") == "alice@example.org"
