"""Issue 3 end to end: real Prosody upstream, the bouncer as a process, slixmpp clients."""

from __future__ import annotations

import asyncio
import socket
from xml.etree import ElementTree

from lxml import etree

from integration_setup import make_setup
from support.clients import body_is, close, connect

CARBONS = "urn:xmpp:carbons:2"
DISCO = "http://jabber.org/protocol/disco#info"


def enable_carbons(client, id_="carbons-on"):
    client.send_xml(f"<iq type='set' id='{id_}'><enable xmlns='{CARBONS}'/></iq>")
    return client.wait_for(lambda el: el.get("id") == id_ and el.get("type") == "result")


async def two_sessions(s):
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, s.port)
    return a, b


async def test_chat_fans_out_and_sent_is_carbon_copied(setup):
    s = setup
    a, b = await two_sessions(s)
    await enable_carbons(b)
    bob = await connect(s.bob, s.bob_password, s.server.port)
    bob.send_xml(f"<message to='{s.alice}' type='chat' id='to-bare'><body>hello both</body></message>")
    await a.wait_for(body_is("hello both"))
    await b.wait_for(body_is("hello both"))
    a.send_xml(f"<message to='{s.bob}' type='chat' id='from-a'><body>reply from A</body></message>")
    got = await bob.wait_for(body_is("reply from A"))
    assert got.get("from").startswith(s.alice + "/")
    carbon = await b.wait_for(lambda el: el.find(f"{{{CARBONS}}}sent") is not None)
    inner = carbon.find(f"{{{CARBONS}}}sent/{{urn:xmpp:forward:0}}forwarded/{{jabber:client}}message")
    assert inner.findtext("{jabber:client}body") == "reply from A" and inner.get("from") == f"{s.alice}/A"
    # exactly once each: a marker sent after proves nothing else was still on its way
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>marker</body></message>")
    await a.wait_for(body_is("marker"))
    await b.wait_for(body_is("marker"))
    assert len(a.matching(body_is("hello both"))) == 1 and len(b.matching(body_is("hello both"))) == 1
    assert a.matching(lambda el: el.find(f"{{{CARBONS}}}sent") is not None) == []  # A has no carbons on
    await close(a, b, bob)


PAYLOAD = (
    "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'>"
    "<key rid='31415' prekey='true'>BASE64==</key><iv>IVIV</iv></header><payload>CIPHER</payload></encrypted>"
    "<x:custom xmlns:x='urn:example:unknown' x:attr='1' plain='two'>mixed <x:inner deep='yes'>text</x:inner> tail"
    "<empty xmlns='urn:example:other'/></x:custom>"
)


def payload_c14n(msg: etree._Element) -> list[str]:
    """The infoset of the unknown payloads (prefixes normalised: slixmpp renames them)."""
    return [
        ElementTree.canonicalize(etree.tostring(child), rewrite_prefixes=True)
        for child in msg
        if etree.QName(child).namespace in ("eu.siacs.conversations.axolotl", "urn:example:unknown")
    ]


async def test_unknown_payload_keeps_its_infoset_both_ways(setup):
    s = setup
    a = await connect(f"{s.alice}/A", s.password, s.port)
    bob = await connect(s.bob, s.bob_password, s.server.port)
    expected = payload_c14n(etree.fromstring(f"<message xmlns='jabber:client'>{PAYLOAD}</message>"))
    assert len(expected) == 2
    bob.send_xml(f"<message to='{s.alice}' type='chat' id='omemo-in'><body>in</body>{PAYLOAD}</message>")
    got = await a.wait_for(body_is("in"))
    assert payload_c14n(got) == expected
    a.send_xml(f"<message to='{s.bob}' type='chat' id='omemo-out'><body>out</body>{PAYLOAD}</message>")
    got = await bob.wait_for(body_is("out"))
    assert payload_c14n(got) == expected and got.get("id") == "omemo-out"
    await close(a, bob)


async def test_disco_result_goes_to_the_asker_only_with_its_id(setup):
    s = setup
    a, b = await two_sessions(s)
    a.send_xml(f"<iq type='get' id='disco-from-a' to='{s.server.domain}'><query xmlns='{DISCO}'/></iq>")
    result = await a.wait_for(lambda el: el.get("id") == "disco-from-a")
    assert result.get("type") == "result" and result.get("to") == f"{s.alice}/A"
    features = {f.get("var") for f in result.iter(f"{{{DISCO}}}feature")}
    assert {"urn:xmpp:carbons:2", "urn:xmpp:ping", "urn:xmpp:blocking", "http://jabber.org/protocol/disco#items"} <= features
    # B sees nothing of it: a ping of B's own, answered after, comes back alone
    b.send_xml(f"<iq type='get' id='b-ping' to='{s.server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    await b.wait_for(lambda el: el.get("id") == "b-ping")
    assert b.matching(lambda el: el.tag == "{jabber:client}iq" and el.find(f"{{{DISCO}}}query") is not None) == []
    await close(a, b)


async def test_roster_add_pushes_to_every_session(setup):
    s = setup
    a, b = await two_sessions(s)
    a.send_xml("<iq type='set' id='add'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'/></query></iq>")
    await a.wait_for(lambda el: el.get("id") == "add" and el.get("type") == "result")

    def push(el):
        item = el.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
        return el.get("type") == "set" and item is not None and item.get("jid") == "carol@localhost"

    await a.wait_for(push)
    await b.wait_for(push)
    await close(a, b)


async def test_no_session_message_is_kept_and_delivered_once_with_delay(setup):
    s = setup
    bob = await connect(s.bob, s.bob_password, s.server.port)
    bob.send_xml(f"<message to='{s.alice}' type='chat' id='while-away'><body>while you were out</body></message>")
    # stored before anything else: wait until the bouncer has it, without sleeping
    s.bouncer.wait_event("stored for later")
    a = await connect(f"{s.alice}/A", s.password, s.port)
    got = await a.wait_for(body_is("while you were out"))
    delay = got.find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("stamp")
    s.bouncer.wait_event("delivered stored stanzas")
    await close(a)
    a2 = await connect(f"{s.alice}/A", s.password, s.port)
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>marker</body></message>")
    await a2.wait_for(body_is("marker"))
    assert a2.matching(body_is("while you were out")) == []  # delivered once, then removed
    await close(a2, bob)


async def test_wrong_password_and_other_account_are_refused(setup):
    s = setup
    for jid, password in ((s.alice, "wrong"), (s.bob, s.password)):
        try:
            client = await connect(jid, password, s.port, timeout=10)
        except AssertionError:
            continue
        await close(client)
        raise AssertionError(f"{jid} logged in with a bad credential")
    assert s.bouncer.count("authentication failed") >= 2


async def test_unauthenticated_input_never_reaches_the_server(setup):
    s = setup
    bob = await connect(s.bob, s.bob_password, s.server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(
        f"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{s.server.domain}' version='1.0'>"
        f"<message to='{s.bob}' type='chat'><body>sneaky</body></message>".encode()
    )
    data = b""
    while b"</stream:stream>" not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            break
        data += chunk
    assert b"<policy-violation" in data or b"<not-authorized" in data
    writer.close()
    a = await connect(f"{s.alice}/A", s.password, s.port)
    a.send_xml(f"<message to='{s.bob}' type='chat'><body>marker</body></message>")
    await bob.wait_for(body_is("marker"))
    assert bob.matching(body_is("sneaky")) == []
    await close(a, bob)


async def test_bad_xml_ends_only_that_session(setup):
    s = setup
    a, b = await two_sessions(s)
    bob = await connect(s.bob, s.bob_password, s.server.port)
    a.send_xml("<?evil processing-instruction?>")
    await asyncio.wait_for(a.disconnected_event.wait(), 10)
    assert "restricted-xml" in a.stream_errors
    b.send_xml(f"<message to='{s.bob}' type='chat'><body>still here</body></message>")
    await bob.wait_for(body_is("still here"))
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>to b</body></message>")
    await b.wait_for(body_is("to b"))
    assert s.bouncer.count("upstream established") == 1 and s.bouncer.count("upstream down") == 0
    await close(b, bob)


def test_tls_is_required_on_the_listener(setup):
    with socket.create_connection(("127.0.0.1", setup.port), timeout=5) as sock:
        sock.sendall(
            f"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{setup.server.domain}' version='1.0'>".encode()
        )
        data = b""
        while b"</stream:features>" not in data:
            data += sock.recv(4096)
    assert b"<required/>" in data and b"mechanisms" not in data


async def test_direct_tls_login(prosody, tmp_path):
    from support.prosody import free_port

    port = free_port()
    s = make_setup(prosody, tmp_path, listen={"direct_tls_port": port})
    s.bouncer.start()
    a = await connect(f"{s.alice}/direct", s.password, port, direct_tls=True)
    bob = await connect(s.bob, s.bob_password, prosody.port)
    a.send_xml(f"<message to='{s.bob}' type='chat'><body>over direct TLS</body></message>")
    await bob.wait_for(body_is("over direct TLS"))
    await close(a, bob)
    assert s.bouncer.stop() == 0


async def test_same_resource_replaces_the_old_session(setup):
    s = setup
    first = await connect(f"{s.alice}/phone", s.password, s.port)
    second = await connect(f"{s.alice}/phone", s.password, s.port)
    await asyncio.wait_for(first.disconnected_event.wait(), 10)
    assert "conflict" in first.stream_errors
    bob = await connect(s.bob, s.bob_password, s.server.port)
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>to the new phone</body></message>")
    await second.wait_for(body_is("to the new phone"))
    await close(second, bob)
