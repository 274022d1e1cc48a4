"""The upstream client role against real servers: connecting, TLS, SASL, lossless relay.

Every test runs against Prosody and ejabberd (the ``server`` fixture): the
upstream must not depend on one server's quirks.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
from lxml import etree

from bouncer.upstream import link as link_module
from bouncer.core.events import UpstreamDown, UpstreamStanza, UpstreamUp
from bouncer.upstream.link import UpstreamSettings
from support.upstream import (
    CLIENT,
    Peer,
    established,
    eventually,
    has_id,
    infoset,
    link_and_peers,
    make_link,
    message,
    payload,
    ping,
    ping_roundtrip,
    stanza,
)


def test_settings_refuse_plain_to_remote_host():
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", host="192.0.2.1", tls="plain")
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", tls="plain")  # host unknown
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", tls="ssl")
    with pytest.raises(ValueError):
        UpstreamSettings("example.org", "pw")  # no account
    UpstreamSettings("a@example.org", "pw", host="127.0.0.1", tls="plain")
    UpstreamSettings("a@example.org", "pw", host="::1", tls="plain")
    assert "pw" not in repr(UpstreamSettings("a@example.org", "pw"))


@pytest.mark.parametrize("tls", ["plain", "starttls", "direct"])
async def test_connect_ping_and_clean_stop(server, tls):
    """Connects in every TLS mode (verifying the server against ca_file), binds the
    default resource, our IQ results arrive raw (not the bind result), and stop()
    closes the stream, so the server ends the session instead of keeping it."""
    jid, password = server.new_user("alice")
    link, events = make_link(server, jid, password, tls=tls)
    assert not link.connected and link.send(ping("bnc-early")) is False
    await link.start()
    ev = await events.wait(established)
    assert ev == UpstreamUp(f"{jid}/bouncer", resumed=False)
    assert link.connected and link.jid == f"{jid}/bouncer"
    port = server.direct_tls_port if tls == "direct" else server.port
    assert link.server.startswith(f"127.0.0.1:{port}")
    assert link.connected_since is not None and link.reconnects == 0
    assert (link._writer.get_extra_info("ssl_object") is not None) == (tls != "plain")
    assert link._stream.sm is not None and link._stream.sm.id  # resumable SM on every server

    result = await ping_roundtrip(link, events, "bnc-ping-1")
    assert result.get("type") == "result" and result.nsmap == {None: CLIENT}
    assert [e.element.get("id") for e in events.items if isinstance(e, UpstreamStanza)] == ["bnc-ping-1"]

    await link.stop()
    assert events.items[-1] == UpstreamDown("stopped")
    assert not link.connected and link.send(ping("bnc-late")) is False
    bob_jid, bob_pw = server.new_user("bob")
    bob = await Peer.connect(server, bob_jid, bob_pw)
    try:
        bob.send(ping("after-stop", to=f"{jid}/bouncer"))
        assert (await bob.wait(has_id("after-stop"))).get("type") == "error"
    finally:
        bob.close()


async def test_untrusted_certificate_is_refused_and_retried(server):
    """verify on, no ca_file: the self-signed certificate is refused, the reason is
    logged and kept for `bouncer status`, and the link keeps trying."""
    jid, password = server.new_user("alice")
    link, events = make_link(server, jid, password, tls="starttls", verify=True, ca_file=None)
    await link.start()
    try:
        await eventually(lambda: link.attempts >= 4)
        assert not link.connected and not events.items
        assert link.failures >= 3 and "certificate not trusted" in link.last_error, link.last_error
        assert not link._task.done()
    finally:
        await link.stop()
    assert not events.items  # never up, so never down


async def test_wrong_host_name_is_refused(server, tmp_path):
    """A certificate the CA vouches for, but for another name: refused (RFC 6125)."""
    jid, password = server.new_user("alice")
    link, events = make_link(server, "alice@127.0.0.1", password, tls="direct")
    await link.start()
    try:
        await eventually(lambda: link.attempts >= 2)
        assert "certificate not trusted" in link.last_error and "127.0.0.1" in link.last_error, link.last_error
        assert not events.items
    finally:
        await link.stop()


async def test_verify_false_accepts_self_signed(server):
    jid, password = server.new_user("alice")
    link, events = make_link(server, jid, password, tls="direct", verify=False)
    await link.start()
    await events.wait(established)
    await link.stop()


@pytest.mark.parametrize("tls_version", ["TLSv1_2", "TLSv1_3"])
async def test_scram_with_channel_binding_when_offered(server, monkeypatch, tls_version):
    """With XEP-0440 types advertised (ejabberd 24), tls-server-end-point. Without
    (Prosody 0.12, ejabberd 23), tls-unique, the RFC 5802 default, which exists for
    TLS 1.2 only (RFC 9266): SCRAM-*-PLUS on TLS 1.2 (Prosody 0.12 offers PLUS only
    there), plain SCRAM on TLS 1.3 (flag 'n' where PLUS is offered). The login works
    every time."""
    chosen = []
    original = link_module.ClientStream._authenticate

    def recording(self, features):
        original(self, features)
        chosen.append((self._sasl.mechanism, self._sasl.binding, features.mechanisms, features.binding_types))

    monkeypatch.setattr(link_module.ClientStream, "_authenticate", recording)
    jid, password = server.new_user("alice")
    link, events = make_link(server, jid, password, tls="direct")
    link._tls.maximum_version = getattr(ssl.TLSVersion, tls_version)
    await link.start()
    try:
        await events.wait(established)
        assert link._writer.get_extra_info("ssl_object").version() == tls_version.replace("_", ".")
    finally:
        await link.stop()
    mechanism, binding, offered, types = chosen[0]
    if types and "tls-server-end-point" in types:
        assert (mechanism, binding) == ("SCRAM-SHA-256-PLUS", "tls-server-end-point"), chosen
    elif tls_version == "TLSv1_2":
        assert "SCRAM-SHA-256-PLUS" in offered
        assert (mechanism, binding) == ("SCRAM-SHA-256-PLUS", "tls-unique"), chosen
    else:
        assert (mechanism, binding) == ("SCRAM-SHA-256", None), chosen


async def test_wrong_password_keeps_retrying(server):
    alice, _ = server.new_user("alice")
    link, events = make_link(server, alice, "wrong")
    await link.start()
    try:
        await eventually(lambda: link.attempts >= 3)
        assert "SASL" in link.last_error and "not-authorized" in link.last_error, link.last_error
        assert not link._task.done() and not events.items
    finally:
        await link.stop()


# --------------------------------------------------------------------------
# raw stanzas: lossless in both directions, IQs for the bouncer
# --------------------------------------------------------------------------


async def test_inbound_message_keeps_full_infoset(server):
    """What the account gets is what a direct client of the same server gets
    (servers normalise: ejabberd drops unknown attributes and reorders the body)."""
    async with link_and_peers(server, "bob", "carol") as (link, events, bob, carol):
        bob.send(payload(link.jid, "same"))
        bob.send(payload(carol.jid, "same"))
        got = (await events.wait(stanza(has_id("same")))).element
        direct = await carol.wait(has_id("same"))
        assert got.get("from") == bob.jid
        assert infoset(got, strip=("to",)) == infoset(direct, strip=("to",))
        assert got.getparent() is None and got.nsmap[None] == CLIENT


async def test_outbound_message_keeps_full_infoset(server):
    """What bob gets from the link is what he gets from a direct client sending the same."""
    async with link_and_peers(server, "bob", "carol", tls="starttls") as (link, events, bob, carol):
        assert link.send(payload(bob.jid, "out-1"))
        carol.send(payload(bob.jid, "out-2"))
        got, direct = await bob.wait(has_id("out-1")), await bob.wait(has_id("out-2"))
        assert got.get("from") == link.jid
        assert infoset(got, strip=("from", "id")) == infoset(direct, strip=("from", "id"))

        # A detached subelement with lxml's ns0: prefixes is sent just as well.
        wrapper = etree.Element("{urn:x-test}wrapper")
        inner = etree.SubElement(wrapper, f"{{{CLIENT}}}message", to=bob.jid, id="out-3")
        etree.SubElement(inner, f"{{{CLIENT}}}body").text = "prefixed"
        etree.SubElement(inner, "{urn:x-test:z}z", attrib={"{urn:x-test:z}q": "1"})
        assert link.send(inner)
        carol.send(etree.tostring(inner).replace(b"out-3", b"out-4").decode())
        got, direct = await bob.wait(has_id("out-3")), await bob.wait(has_id("out-4"))
        assert infoset(got, strip=("from", "id")) == infoset(direct, strip=("from", "id"))


async def test_iq_request_reaches_the_bouncer_unanswered(server):
    """An IQ get with an unknown payload goes to the account raw; the link answers
    nothing itself (the account decides)."""
    async with link_and_peers(server, "bob") as (link, events, bob):
        request = etree.fromstring(
            f"<iq xmlns='jabber:client' type='get' id='q-1' to='{link.jid}'>"
            "<query xmlns='urn:x-test:unknown' v='1'><deep a='b'>text</deep></query></iq>"
        )
        bob.send(request)
        got = (await events.wait(stanza(has_id("q-1")))).element
        assert infoset(got) == infoset(request)
        reply = etree.fromstring(
            f"<iq xmlns='jabber:client' type='result' id='q-1' to='{bob.jid}'>"
            "<answer xmlns='urn:x-test:unknown'/></iq>"
        )
        assert link.send(reply)
        first = await bob.wait(has_id("q-1"))
        assert first.get("type") == "result" and first.find("{urn:x-test:unknown}answer") is not None
        assert link.send(message(bob.jid, "barrier", id_="barrier-1"))
        await bob.wait(has_id("barrier-1"))
        assert bob.inbox.count(has_id("q-1")) == 1


async def test_stanzas_before_sm_enabled_are_not_counted(server, monkeypatch):
    """Stanzas the server sends after bind but before it handles <enable/> are not
    counted by it, so they must not be counted by us either (aioxmpp did, over-acked,
    and Prosody closed the stream). Made deterministic by holding <enable/> back
    until bob's messages were routed to the link."""
    alice, alice_pw = server.new_user("alice")
    bob_jid, bob_pw = server.new_user("bob")
    bob = await Peer.connect(server, bob_jid, bob_pw)
    full, early = f"{alice}/race", 25
    original_flush = link_module.UpstreamLink._flush
    held: list[bytes] = []

    async def route_early_messages(link):
        for i in range(early):
            bob.send(message(full, f"early {i}", id_=f"early-{i}"))
        bob.send(ping("sync"))
        await bob.wait(has_id("sync"))  # the server handled bob's stanzas in order
        await asyncio.sleep(0.2)  # and wrote them to the link's socket
        link._writer.write(held.pop())

    def holding_flush(self):
        stream = self._stream
        if stream is not None and not held and stream.phase.name == "ENABLE":
            held.append(stream.data_to_send(0.0))
            asyncio.ensure_future(route_early_messages(self))
            return
        original_flush(self)

    monkeypatch.setattr(link_module.UpstreamLink, "_flush", holding_flush)
    link, events = make_link(server, full, alice_pw)
    try:
        await link.start()
        await events.wait(established)
        monkeypatch.undo()
        assert established(events.items[0])
        for i in range(3):
            await ping_roundtrip(link, events, f"bnc-after-{i}")
        assert link._stream.sm.inbound == 3  # the 3 ping results, not the early messages
        assert events.count(stanza(lambda el: (el.get("id") or "").startswith("early-"))) == early
        assert link.connected and not any(isinstance(e, UpstreamDown) for e in events.items)
        assert link._stream.sm.acked == link._stream.sm.sent  # the server agrees with our count
    finally:
        bob.close()
        await link.stop()
