"""bouncer.upstream against a real Prosody.

Peers are slixmpp clients ("bob"), which see exactly what Prosody sends. Stanzas
are compared by infoset (C14N 2.0 with prefixes rewritten), after removing what
Prosody itself adds on the way (``from``, ``xml:lang``, MAM's ``stanza-id``).

Every aioxmpp workaround in bouncer/upstream.py has a test here; the test names
say which.
"""

from __future__ import annotations

import asyncio
import copy
import time
import xml.etree.ElementTree as ET

import aioxmpp.nonza
import aioxmpp.protocol
from aioxmpp.stream import StanzaState
import pytest
import slixmpp
from lxml import etree

from bouncer.upstream import (
    UpstreamDown,
    UpstreamEstablished,
    UpstreamLink,
    UpstreamSettings,
    UpstreamStanza,
)

try:
    from support.prosody import Prosody, client_ssl_context
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.support.prosody import Prosody, client_ssl_context

CLIENT = "jabber:client"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
PROSODY_CHILDREN = {"{urn:xmpp:sid:0}stanza-id"}  # MAM marks archived messages

# Short backoff so that reconnect tests take milliseconds, not seconds.
FAST = dict(backoff_base=0.02, backoff_cap=0.1, stable_after=3600.0)
WAIT = 10.0  # upper bound for any single expected event


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class Inbox:
    """A list whose items can be awaited (no polling)."""

    def __init__(self):
        self.items: list = []
        self._waiters: list[tuple] = []

    def append(self, item) -> None:
        self.items.append(item)
        for waiter in list(self._waiters):
            check, fut = waiter
            if not fut.done() and check(item):
                fut.set_result(item)
                self._waiters.remove(waiter)

    async def _park(self, check, timeout: float):
        fut = asyncio.get_running_loop().create_future()
        waiter = (check, fut)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait(self, pred, *, start: int = 0, timeout: float = WAIT):
        """The first item from index ``start`` on that satisfies ``pred``."""
        for item in self.items[start:]:
            if pred(item):
                return item
        return await self._park(pred, timeout)

    async def until(self, condition, timeout: float = WAIT) -> None:
        """Wait until ``condition(self)`` holds (checked at each new item)."""
        if not condition(self):
            await self._park(lambda _item: condition(self), timeout)

    def count(self, pred) -> int:
        return sum(1 for i in self.items if pred(i))


def established(ev) -> bool:
    return isinstance(ev, UpstreamEstablished)


def down(ev) -> bool:
    return isinstance(ev, UpstreamDown)


def stanza(pred=lambda el: True):
    return lambda ev: isinstance(ev, UpstreamStanza) and pred(ev.element)


def has_id(value):
    return lambda el: el.get("id") == value


def body_is(text):
    return lambda el: el.findtext(f"{{{CLIENT}}}body") == text


def make_link(server: Prosody, jid: str, password: str, *, tls="plain", **kwargs):
    """A link to ``server`` plus the Inbox its events go to."""
    events = Inbox()
    port = server.direct_tls_port if tls == "direct" else server.port
    settings_kw = {k: kwargs.pop(k) for k in ("verify", "ca_file") if k in kwargs}
    if tls != "plain" and not settings_kw:
        settings_kw["ca_file"] = str(server.cert_path)
    settings = UpstreamSettings(jid, password, host="127.0.0.1", port=port, tls=tls, **settings_kw)
    link = UpstreamLink(settings, events.append, **{**FAST, **kwargs})
    return link, events


def count_attempts(link: UpstreamLink) -> Inbox:
    """Record the time of every connection attempt the link makes."""
    attempts = Inbox()
    original = link._connect

    async def counting(client):
        attempts.append(time.monotonic())
        return await original(client)

    link._connect = counting
    return attempts


class Peer:
    """A slixmpp client that records every stanza it receives as lxml."""

    def __init__(self, jid: str, password: str):
        client = slixmpp.ClientXMPP(
            jid, password, sasl_mech="PLAIN", ssl_context=client_ssl_context()
        )
        client.enable_direct_tls = False
        client.add_filter("in", self._capture)
        self.client = client
        self.inbox = Inbox()

    def _capture(self, st):
        self.inbox.append(etree.fromstring(ET.tostring(st.xml)))
        return st

    @classmethod
    async def connect(cls, server: Prosody, jid: str, password: str, *, presence=False):
        peer = cls(jid, password)
        ready = asyncio.Event()
        peer.client.add_event_handler("session_start", lambda _: ready.set())
        peer.client.connect("127.0.0.1", server.port)
        await asyncio.wait_for(ready.wait(), WAIT)
        if presence:
            peer.client.send_presence()
        return peer

    @property
    def jid(self) -> str:
        return self.client.boundjid.full

    def send(self, xml: str | etree._Element) -> None:
        if not isinstance(xml, str):
            xml = etree.tostring(xml, encoding="unicode")
        self.client.send_raw(xml)

    async def wait(self, pred, **kwargs):
        return await self.inbox.wait(pred, **kwargs)

    def close(self) -> None:
        self.client.abort()


def infoset(el: etree._Element, *, strip_prosody: bool = True) -> str:
    """C14N 2.0 with rewritten prefixes: equal strings <=> equal infosets."""
    el = copy.deepcopy(el)
    if strip_prosody:
        for name in ("from", XML_LANG):
            el.attrib.pop(name, None)
        for child in list(el):
            if child.tag in PROSODY_CHILDREN:
                # keep the text layout: what Prosody appended has no tail of ours
                el.remove(child)
    return ET.canonicalize(etree.tostring(el), rewrite_prefixes=True)


# An OMEMO-like payload with nested elements and attributes, custom attributes
# on the stanza, a hint, mixed content, prefixed elements/attributes, an
# element in no namespace, non-ASCII text and escaped characters.
PAYLOAD = """\
<message xmlns='jabber:client' to='{to}' id='{id}' type='chat'
         xmlns:x='urn:x-test:attrs' x:custom='yes' foo='bar'>
  <body>h\u00e9llo &lt;world&gt; &amp; \u2713</body>
  <encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'><key rid='31415' prekey='true'>TWFu</key><key rid='27'>QUJD</key><iv>aXY=</iv></header><payload>cGF5bG9hZA==</payload></encrypted>
  <store xmlns='urn:xmpp:hints'/>
  <note xmlns='urn:x-test:note' level='3'>mixed <b>bold</b> tail &amp; <i xmlns='urn:x-test:other' xmlns:o='urn:x-test:o' o:a='1'/> end</note>
  <p:wrapped xmlns:p='urn:x-test:prefixed'><p:inner p:attr='v'>t</p:inner></p:wrapped>
  <plain xmlns=''><deeper k='v'/></plain>
</message>"""


def payload(to: str, id_: str) -> etree._Element:
    return etree.fromstring(PAYLOAD.format(to=to, id=id_))


def message(to: str, body: str, *, type_="chat", id_=None) -> etree._Element:
    el = etree.Element(f"{{{CLIENT}}}message", nsmap={None: CLIENT}, to=to, type=type_)
    if id_:
        el.set("id", id_)
    etree.SubElement(el, f"{{{CLIENT}}}body").text = body
    return el


def ping(id_: str, to: str = "localhost") -> etree._Element:
    el = etree.Element(f"{{{CLIENT}}}iq", nsmap={None: CLIENT}, type="get", id=id_, to=to)
    etree.SubElement(el, "{urn:xmpp:ping}ping")
    return el


async def eventually(condition, timeout: float = WAIT) -> None:
    """Poll ``condition`` (only for states that fire no event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def ping_roundtrip(link: UpstreamLink, events: Inbox, id_: str) -> etree._Element:
    assert link.send(ping(id_))
    ev = await events.wait(stanza(has_id(id_)))
    return ev.element


# --------------------------------------------------------------------------
# settings and connecting
# --------------------------------------------------------------------------


def test_settings_refuse_plain_to_remote_host():
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", host="192.0.2.1", tls="plain")
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", tls="plain")  # host unknown
    with pytest.raises(ValueError):
        UpstreamSettings("a@example.org", "pw", tls="ssl")
    UpstreamSettings("a@example.org", "pw", host="127.0.0.1", tls="plain")
    UpstreamSettings("a@example.org", "pw", host="::1", tls="plain")
    assert "pw" not in repr(UpstreamSettings("a@example.org", "pw"))


@pytest.mark.parametrize("tls", ["plain", "starttls", "direct"])
async def test_connect_ping_and_clean_stop(prosody, tls):
    """Connects in every TLS mode (verifying the server against ca_file), binds
    the default resource, IQ results for bnc- ids arrive raw, aioxmpp's own bind
    result does not, and stop() closes cleanly."""
    jid, password = prosody.new_user("alice")
    link, events = make_link(prosody, jid, password, tls=tls)
    assert not link.connected and link.send(ping("bnc-early")) is False
    await link.start()
    ev = await events.wait(established)
    assert ev == UpstreamEstablished(f"{jid}/bouncer", resumed=False)
    assert link.connected and link.jid == f"{jid}/bouncer"
    expected_port = prosody.direct_tls_port if tls == "direct" else prosody.port
    assert link.server == f"127.0.0.1:{expected_port}"
    assert link.connected_since is not None and link.reconnects == 0
    transport = link._client.stream._xmlstream.transport
    assert (transport.get_extra_info("ssl_object") is not None) == (tls != "plain")

    result = await ping_roundtrip(link, events, "bnc-ping-1")
    assert result.get("type") == "result" and result.nsmap == {None: CLIENT}
    # Nothing but our own result reached the bouncer (no bind result, no pings).
    assert [e.element.get("id") for e in events.items if isinstance(e, UpstreamStanza)] == [
        "bnc-ping-1"
    ]

    await link.stop()
    assert events.items[-1] == UpstreamDown("stopped")
    assert not link.connected and link.send(ping("bnc-late")) is False
    # A clean close (</stream>): Prosody ended the session instead of keeping
    # it for resumption, so an IQ to its full JID bounces at once.
    bob_jid, bob_pw = prosody.new_user("bob")
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        bob.send(ping("after-stop", to=f"{jid}/bouncer"))
        assert (await bob.wait(has_id("after-stop"))).get("type") == "error"
    finally:
        bob.close()


async def test_untrusted_certificate_is_refused_and_retried(prosody):
    """verify=True without ca_file: the self-signed certificate is rejected.
    The handshake failure surfaces from aioopenssl as InvalidStateError, which
    stopped stock aioxmpp for good; the link keeps retrying instead."""
    jid, password = prosody.new_user("alice")
    link, events = make_link(prosody, jid, password, tls="starttls", verify=True, ca_file=None)
    attempts = count_attempts(link)
    await link.start()
    await attempts.until(lambda box: len(box.items) >= 6)
    assert not link.connected and not events.items
    assert link.failures >= 5 and link._client.running
    await link.stop()
    assert not events.items  # never up, so never down


async def test_verify_false_accepts_self_signed(prosody):
    jid, password = prosody.new_user("alice")
    link, events = make_link(prosody, jid, password, tls="direct", verify=False)
    await link.start()
    await events.wait(established)
    await link.stop()


# --------------------------------------------------------------------------
# raw stanzas: lossless in both directions, IQs for the bouncer
# --------------------------------------------------------------------------


async def test_inbound_message_keeps_full_infoset(prosody):
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    link, events = make_link(prosody, alice, alice_pw)
    await link.start()
    ev = await events.wait(established)
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        sent = payload(ev.jid, "in-1")
        bob.send(sent)
        got = (await events.wait(stanza(has_id("in-1")))).element
        assert got.get("from") == bob.jid
        assert infoset(got) == infoset(sent, strip_prosody=False)
        # Detached; every element in its namespace by default declaration
        # (attributes in a namespace need some prefix).
        assert got.getparent() is None and got.nsmap[None] == CLIENT
        assert all(e.prefix is None for e in got.iter())
    finally:
        bob.close()
        await link.stop()


async def test_outbound_message_keeps_full_infoset(prosody):
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    link, events = make_link(prosody, alice, alice_pw, tls="starttls")
    await link.start()
    await events.wait(established)
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        sent = payload(bob.jid, "out-1")
        assert link.send(sent)
        got = await bob.wait(has_id("out-1"))
        assert got.get("from") == link.jid
        assert infoset(got) == infoset(sent, strip_prosody=False)

        # A detached subelement with lxml's ns0: prefixes is sent just as well.
        wrapper = etree.Element("{urn:x-test}wrapper")
        inner = etree.SubElement(wrapper, f"{{{CLIENT}}}message", to=bob.jid, id="out-2")
        etree.SubElement(inner, f"{{{CLIENT}}}body").text = "prefixed"
        etree.SubElement(inner, "{urn:x-test:z}z", attrib={"{urn:x-test:z}q": "1"})
        assert link.send(inner)
        got = await bob.wait(has_id("out-2"))
        assert infoset(got) == infoset(inner, strip_prosody=False)
    finally:
        bob.close()
        await link.stop()


async def test_iq_request_reaches_the_bouncer_unanswered(prosody):
    """An IQ get with an unknown payload goes to on_event raw; aioxmpp does not
    answer it (stock aioxmpp would send service-unavailable)."""
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    link, events = make_link(prosody, alice, alice_pw)
    await link.start()
    ev = await events.wait(established)
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        request = etree.fromstring(
            f"<iq xmlns='jabber:client' type='get' id='q-1' to='{ev.jid}'>"
            "<query xmlns='urn:x-test:unknown' v='1'><deep a='b'>text</deep></query></iq>"
        )
        bob.send(request)
        got = (await events.wait(stanza(has_id("q-1")))).element
        assert infoset(got) == infoset(request, strip_prosody=False)

        reply = etree.fromstring(
            f"<iq xmlns='jabber:client' type='result' id='q-1' to='{bob.jid}'>"
            "<answer xmlns='urn:x-test:unknown'/></iq>"
        )
        assert link.send(reply)
        first = await bob.wait(has_id("q-1"))
        assert first.get("type") == "result" and first.find("{urn:x-test:unknown}answer") is not None
        # Barrier: anything aioxmpp had queued would arrive before this message.
        assert link.send(message(bob.jid, "barrier", id_="barrier-1"))
        await bob.wait(has_id("barrier-1"))
        assert bob.inbox.count(has_id("q-1")) == 1
    finally:
        bob.close()
        await link.stop()


# --------------------------------------------------------------------------
# workaround 1: SM counter race at <enable/>
# --------------------------------------------------------------------------


async def test_stanzas_before_sm_enabled_are_not_counted(prosody, monkeypatch):
    """Stanzas Prosody sends after bind but before it handles <enable/> are
    not counted by Prosody. Stock aioxmpp processes them only after
    <enabled/> (start_sm holds the broker lock) and counts them: over-ack,
    Prosody closes the stream. Made deterministic by having bob's messages
    routed to the link before <enable/> is even written."""
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    full = f"{alice}/race"
    early = 25
    original = aioxmpp.protocol.send_and_wait_for

    async def racing_send_and_wait_for(xmlstream, send, wait_for, *args, **kwargs):
        if any(isinstance(obj, aioxmpp.nonza.SMEnable) for obj in send):
            for i in range(early):
                bob.send(message(full, f"early {i}", id_=f"early-{i}"))
            bob.send("<iq xmlns='jabber:client' type='get' id='sync' to='localhost'>"
                     "<ping xmlns='urn:xmpp:ping'/></iq>")
            # Prosody handles bob's stanzas in order: once it answered the ping,
            # all early messages were written to the link's socket.
            await bob.wait(has_id("sync"))
        return await original(xmlstream, send, wait_for, *args, **kwargs)

    monkeypatch.setattr(aioxmpp.protocol, "send_and_wait_for", racing_send_and_wait_for)
    link, events = make_link(prosody, full, alice_pw)
    try:
        await link.start()
        await events.wait(established)
        monkeypatch.undo()
        # The early messages arrived during negotiation; held until Established.
        assert established(events.items[0])
        for i in range(3):  # each round trip exchanges <r/> and <a h=.../> both ways
            await ping_roundtrip(link, events, f"bnc-after-{i}")
        assert link._client.stream._sm_enabled
        # Counted: the 3 ping results, not the early messages.
        assert link._client.stream._sm_inbound_ctr == 3
        # ... which were all delivered all the same.
        assert events.count(stanza(lambda el: (el.get("id") or "").startswith("early-"))) == early
        assert link.connected and not any(down(e) for e in events.items)
        log = prosody.log_text()
        assert "acknowledged more stanzas than sent" not in log
        assert "handled" not in log or "but we sent" not in log
    finally:
        bob.close()
        await link.stop()


# --------------------------------------------------------------------------
# workarounds 2 and 3: connection losses aioxmpp did not notice or survive
# --------------------------------------------------------------------------


async def test_local_abort_reconnects_and_resumes(prosody):
    """transport.abort() closes the XML stream without an exception; stock
    aioxmpp treats that as a clean stop and never reconnects."""
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    link, events = make_link(prosody, alice, alice_pw)
    await link.start()
    await events.wait(established)
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        mark = len(events.items)
        link._client.stream._xmlstream.transport.abort()
        await events.wait(down, start=mark)
        ev = await events.wait(established, start=mark)
        assert ev.resumed is True and link.reconnects == 1
        assert link.send(message(bob.jid, "after abort", id_="aa-1"))
        await bob.wait(has_id("aa-1"))
        bob.send(message(link.jid, "to link", id_="aa-2"))
        await events.wait(stanza(has_id("aa-2")))
    finally:
        bob.close()
        await link.stop()


async def test_write_to_dead_tls_transport_reconnects_and_resends(prosody):
    """Once the TLS transport is closing or dead, aioopenssl raises RuntimeError
    on write. Stock aioxmpp marks the stanza FAILED (lost), then dies on the
    RuntimeError from the <r/> it sends after each batch, taking the Client
    down. The link treats it as a lost connection, resumes, and sends the
    failed stanza again."""
    alice, alice_pw = prosody.new_user("alice")
    bob_jid, bob_pw = prosody.new_user("bob")
    link, events = make_link(prosody, alice, alice_pw, tls="starttls")
    await link.start()
    await events.wait(established)
    bob = await Peer.connect(prosody, bob_jid, bob_pw)
    try:
        mark = len(events.items)
        # The race, made deterministic: the TLS transport is already closing
        # (aioopenssl's close() with data still buffered sets exactly this),
        # the XML stream above does not know yet. Every write now raises.
        link._client.stream._xmlstream.transport._closing = True
        assert link.send(message(bob.jid, "written to a closing transport", id_="dead-1"))
        reason = (await events.wait(down, start=mark)).reason
        assert reason.startswith("ConnectionError: transport failed"), reason
        ev = await events.wait(established, start=mark)
        assert ev.resumed is True
        await bob.wait(has_id("dead-1"))
        assert link.send(message(bob.jid, "barrier", id_="dead-barrier"))
        await bob.wait(has_id("dead-barrier"))
        assert bob.inbox.count(has_id("dead-1")) == 1
    finally:
        bob.close()
        await link.stop()


# --------------------------------------------------------------------------
# server restarts, failed resumption (workaround 7)
# --------------------------------------------------------------------------


async def test_server_killed_and_restarted(prosody_factory):
    server = prosody_factory()
    server.start()
    alice, alice_pw = server.new_user("alice")
    bob_jid, bob_pw = server.new_user("bob")
    link, events = make_link(server, alice, alice_pw, tls="starttls")
    await link.start()
    await events.wait(established)
    try:
        mark = len(events.items)
        server.kill()
        await events.wait(down, start=mark)
        assert link.send(message(bob_jid, "while down")) is False
        server.start()
        ev = await events.wait(established, start=mark)
        assert ev.resumed is False  # the server forgot the session: a new one
        bob = await Peer.connect(server, bob_jid, bob_pw)
        try:
            assert link.send(message(bob.jid, "after restart", id_="r-1"))
            await bob.wait(has_id("r-1"))
            bob.send(message(link.jid, "to link", id_="r-2"))
            await events.wait(stanza(has_id("r-2")))
        finally:
            bob.close()
    finally:
        await link.stop()


async def test_unacked_stanzas_are_resent_after_failed_resumption(prosody_factory):
    """Stanzas written but never acknowledged when the server died are marked
    SENT_WITHOUT_SM/DISCONNECTED by aioxmpp, which then starts a new session
    without them; the link sends them again, exactly once each - except
    presence state (available/unavailable), which the caller restores."""
    server = prosody_factory()
    server.start()
    alice, alice_pw = server.new_user("alice")
    bob_jid, bob_pw = server.new_user("bob")
    link, events = make_link(server, alice, alice_pw)
    await link.start()
    await events.wait(established)
    try:
        count = 20
        server.pause()  # from now on the server reads nothing
        for i in range(count):
            assert link.send(message(bob_jid, f"unacked {i}", id_=f"u-{i}"))
        assert link.send(etree.fromstring(
            f"<presence xmlns='jabber:client' to='{bob_jid}' type='subscribe' id='sub-1'/>"))
        assert link.send(etree.fromstring(
            "<presence xmlns='jabber:client' id='state-1'><status>old</status></presence>"))
        # Wait until the broker has written them all (no event for that).
        await eventually(lambda: all(state is StanzaState.SENT for state in link._tracked.values()))
        assert len(link._tracked) == count + 2

        resent = []
        original_enqueue = link._enqueue

        def recording_enqueue(raw):
            resent.append(etree.fromstring(raw.data).get("id"))
            return original_enqueue(raw)

        link._enqueue = recording_enqueue
        mark = len(events.items)
        server.kill()  # the unread stanzas die with it
        await events.wait(down, start=mark)
        server.start()
        ev = await events.wait(established, start=mark)
        assert ev.resumed is False
        assert resent == [f"u-{i}" for i in range(count)] + ["sub-1"]  # in order, no state-1

        bob = await Peer.connect(server, bob_jid, bob_pw, presence=True)  # offline delivery
        try:
            for i in range(count):
                await bob.wait(has_id(f"u-{i}"))
            await bob.wait(lambda el: el.get("type") == "subscribe")
            assert link.send(message(bob.jid, "barrier", id_="u-barrier"))
            await bob.wait(has_id("u-barrier"))
            for i in range(count):
                assert bob.inbox.count(has_id(f"u-{i}")) == 1
        finally:
            bob.close()
    finally:
        await link.stop()


# --------------------------------------------------------------------------
# workarounds 4-6: never give up, always back off
# --------------------------------------------------------------------------


async def test_server_down_at_start_connects_when_it_comes_up(prosody_factory):
    """Stock aioxmpp gives up after 4 failed first attempts."""
    server = prosody_factory()
    alice, alice_pw = server.new_user("alice")
    link, events = make_link(server, alice, alice_pw)
    attempts = count_attempts(link)
    await link.start()
    try:
        await attempts.until(lambda box: len(box.items) >= 6)
        assert link.failures >= 5 and link.last_error and not events.items
        server.start()
        ev = await events.wait(established)
        assert ev.resumed is False and link.failures == 0
    finally:
        await link.stop()


async def test_wrong_password_keeps_retrying(prosody):
    """Stock aioxmpp gives up for good on a SASL failure."""
    alice, _ = prosody.new_user("alice")
    link, events = make_link(prosody, alice, "wrong")
    attempts = count_attempts(link)
    await link.start()
    try:
        await attempts.until(lambda box: len(box.items) >= 4)
        assert "SASL" in link.last_error or "Authentication" in link.last_error
        assert link._client.running and not events.items
    finally:
        await link.stop()


@pytest.mark.parametrize("condition", ["undefined-condition", "conflict"])
async def test_stream_errors_back_off_and_never_give_up(condition):
    """A fake server answers every stream with a stream error. Stock aioxmpp
    reconnects at once without backoff (non-conflict) or gives up (conflict)."""
    arrivals = Inbox()

    async def handle(reader, writer):
        arrivals.append(time.monotonic())
        await reader.readuntil(b">")  # the client's stream header
        writer.write(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' "
            b"id='x' version='1.0'><stream:error><" + condition.encode()
            + b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        )
        await writer.drain()
        writer.close()

    fake = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = fake.sockets[0].getsockname()[1]
    events = Inbox()
    base, cap = 0.02, 0.16
    link = UpstreamLink(
        UpstreamSettings("alice@localhost", "pw", host="127.0.0.1", port=port, tls="plain"),
        events.append,
        backoff_base=base,
        backoff_cap=cap,
    )
    await link.start()
    try:
        await arrivals.until(lambda box: len(box.items) >= 7)
        times = arrivals.items
        gaps = [b - a for a, b in zip(times, times[1:])]
        for i, gap in enumerate(gaps):
            # delay i is drawn from [d/2, d] with d = base * 2**i, capped
            assert gap >= min(cap, base * 2**i) / 2 * 0.95, (i, gaps)
        assert condition in link.last_error and link._client.running
        assert not events.items
    finally:
        await link.stop()
        fake.close()
        await fake.wait_closed()


async def test_client_main_task_death_is_restarted(prosody_factory):
    """If the Client's main task dies anyway, on_failure restarts it."""
    server = prosody_factory()
    alice, alice_pw = server.new_user("alice")
    link, events = make_link(server, alice, alice_pw)
    attempts = count_attempts(link)
    original = link._attempt_failed
    calls = 0

    def failing_once(exc):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated bug in the reconnect loop")
        return original(exc)

    link._attempt_failed = failing_once
    await link.start()
    try:
        await attempts.until(lambda box: len(box.items) >= 3)
        server.start()
        await events.wait(established)
        assert calls >= 2
    finally:
        await link.stop()
