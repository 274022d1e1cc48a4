"""The sans-IO C2S core, driven with bytes only: negotiation, auth, bind, bad input."""

from __future__ import annotations


import pytest
from lxml import etree

from bouncer.c2s import stream as core
from bouncer.xmpp import parser as parser_module
from support.server_role import HEADER, authed, b64, bound, feed, scram_login, settings

def test_tls_required_offers_only_starttls_then_sasl_after_tls():
    s = core.ServerStream(settings())
    _, out = feed(s, HEADER)
    assert "<starttls" in out and "<required/>" in out and "mechanisms" not in out
    events, out = feed(s, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert events == [core.StartTls()] and "<proceed" in out
    s.tls_started()
    _, out = feed(s, HEADER)
    assert "<mechanism>SCRAM-SHA-256</mechanism>" in out and "<mechanism>PLAIN</mechanism>" in out
    assert "starttls" not in out


def test_auth_before_tls_is_refused_when_tls_required():
    s = core.ServerStream(settings())
    feed(s, HEADER)
    events, out = feed(s, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHMzY3JldA==</auth>")
    assert events == [core.Closed("policy-violation")] and "<policy-violation" in out


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_login_both_mechanisms(mech):
    authed(mech=mech)


def test_plain_only_under_tls():
    s = core.ServerStream(settings(tls_required=False), tls_active=False)
    _, out = feed(s, HEADER)
    assert "PLAIN" not in out and "SCRAM-SHA-1" in out
    events, out = feed(s, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 's3cret')}</auth>".encode())
    assert "<invalid-mechanism/>" in out and isinstance(events[0], core.AuthFailed)
    s = core.ServerStream(settings(), tls_active=True)
    feed(s, HEADER)
    events, out = feed(s, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 's3cret')}</auth>".encode())
    assert events == [core.AuthSucceeded("alice")] and "<success" in out


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("mallory", "s3cret")])
def test_wrong_password_or_other_account_not_authorized(user, password):
    s = core.ServerStream(settings(), tls_active=True)
    feed(s, HEADER)
    events, out = scram_login(s, user=user, password=password)
    assert "<not-authorized/>" in out
    assert [type(e) for e in events] == [core.AuthFailed]
    # still unauthenticated: a stanza now ends the stream
    events, out = feed(s, b"<message to='bob@example.org'><body>x</body></message>")
    assert events == [core.Closed("not-authorized")]


def test_stanza_before_auth_is_not_authorized_and_nothing_emitted():
    s = core.ServerStream(settings(tls_required=False))
    feed(s, HEADER)
    events, out = feed(s, b"<message to='bob@example.org'><body>x</body></message>")
    assert events == [core.Closed("not-authorized")] and "<not-authorized" in out


def test_wrong_host_and_version():
    s = core.ServerStream(settings())
    events, out = feed(s, HEADER.replace(b"example.org", b"other.org"))
    assert events == [core.Closed("host-unknown")] and "<stream:stream" in out
    s = core.ServerStream(settings())
    events, _ = feed(s, HEADER.replace(b"version='1.0'>", b"version='0.9'>"))  # the stream's, not XML's
    assert events == [core.Closed("unsupported-version")]


def test_stanzas_after_bind_get_from_stamped():
    s = bound()
    events, _ = feed(s, b"<message from='evil@x/y' to='bob@example.org' type='chat'><body>hi</body></message>")
    (ev,) = events
    assert isinstance(ev, core.StanzaReceived)
    assert ev.element.get("from") == "alice@example.org/phone"


def test_legacy_session_is_answered():
    s = bound()
    events, out = feed(s, b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert events == [] and 'type="result"' in out and 'id="s1"' in out


def test_bind_without_resource_asks_account_to_pick():
    s = authed()
    feed(s, HEADER)
    events, _ = feed(s, b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert events == [core.BindRequested(None)]


@pytest.mark.parametrize(
    "data,condition",
    [
        (b"<?evil pi?>", "restricted-xml"),
        (b"<!-- comment -->", "restricted-xml"),
        (b"<message><body>&unknown;</body></message>", "not-well-formed"),
        (b"<message><body></message>", "not-well-formed"),
        (b"<message><body>" + b"x" * 20_000 + b"</body></message>", "policy-violation"),
    ],
)
def test_bad_input_gets_the_right_stream_error(data, condition):
    s = bound()
    events, out = feed(s, data)
    assert events == [core.Closed(condition)]
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in out and out.endswith("</stream:stream>")
    assert s.receive_data(b"<message/>") == []  # nothing after the end


def test_doctype_before_stream_is_restricted():
    s = core.ServerStream(settings())
    events, out = feed(s, b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>" + HEADER[21:])
    assert events == [core.Closed("restricted-xml")]
    assert out.startswith("<?xml") and "<restricted-xml" in out


def test_payload_keeps_infoset():
    s = bound()
    raw = (
        b"<message to='bob@example.org' type='chat' id='m1'><body>hi</body>"
        b"<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2' prekey='true'>AAA=</key>"
        b"<iv>BBB</iv></header><payload>CCC</payload></encrypted>"
        b"<x:thing xmlns:x='urn:example:x' x:attr='v'>text<y/>tail</x:thing></message>"
    )
    (ev,) = s.receive_data(raw)
    expected = etree.fromstring(raw.replace(b"<message ", b"<message xmlns='jabber:client' from='alice@example.org/phone' "))
    assert etree.tostring(ev.element, method="c14n2") == etree.tostring(expected, method="c14n2")


@pytest.fixture(params=["deferral off", "whole tags"])
def parser_mode(request, monkeypatch):
    """Both ways the parser copes with expat's reparse deferral (expat >= 2.6): switched
    off where Python can, else fed whole tags only (Debian 12's Python 3.11.2)."""
    monkeypatch.setattr(parser_module, "WHOLE_TAGS", request.param == "whole tags")
    return request.param


def test_peer_close_and_split_input(parser_mode):
    s = bound()
    events = []
    for byte in b"<message to='b@example.org'><body>split</body></message></stream:stream>":
        events += s.receive_data(bytes([byte]))
    assert isinstance(events[0], core.StanzaReceived) and events[0].element.findtext("{jabber:client}body") == "split"
    assert events[1] == core.Closed(None)


def test_text_without_markup_is_bounded(parser_mode):
    """Held back or parsed, 12 kB of text past a 10 kB limit is refused at once."""
    s = bound()
    assert s.receive_data(b"<message><body>" + b"x" * 12_000) == [core.Closed("policy-violation")]


@pytest.mark.parametrize("prefix", [
    b"<?xml version='1.0'?><!-- " + b"x" * 20_000,  # an unclosed comment before the header
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' a='" + b"x" * 20_000,
    b" " * 20_000,
])
def test_nothing_unbounded_before_the_stream_is_open(prefix):
    s = core.ServerStream(settings())
    events, out = feed(s, prefix)
    assert events == [core.Closed("policy-violation")] and "<policy-violation" in out


@pytest.mark.parametrize("where", ["header", "stanza"])
def test_a_namespace_lxml_refuses_is_a_stream_error(where):
    """expat accepts xmlns:x='a b', lxml does not: a stream error, not a traceback."""
    if where == "header":
        s = core.ServerStream(settings())
        events, out = feed(s, HEADER.replace(b"to=", b"xmlns:x='a b' to="))
    else:
        s = bound()
        events, out = feed(s, b"<message xmlns:x='a b' to='bob@example.org'><body>x</body></message>")
    assert events == [core.Closed("invalid-namespace")] and out.endswith("</stream:stream>")


def test_too_many_elements_in_one_stanza_is_refused_before_its_size():
    """lxml spends ~100 times more on an empty element than it takes on the wire: the
    count is bounded (the size limit / 32), so 400 <a/> (1.6 kB) break a 10 kB limit."""
    s = bound()
    events, out = feed(s, b"<message to='bob@example.org'><body>" + b"<a/>" * 400)
    assert events == [core.Closed("policy-violation")] and "elements" in out
    s = bound()
    events, _ = feed(s, b"<message to='bob@example.org'><body>" + b"<a/>" * 250 + b"</body></message>")
    assert isinstance(events[0], core.StanzaReceived)  # under the count: taken


def test_phases_change_only_along_the_transition_table():
    s = core.ServerStream(settings())
    assert s.phase is core.NegotiationPhase.TLS
    with pytest.raises(RuntimeError, match="'bound' cannot happen in phase TLS"):
        s.bind("phone")  # the edge asked for something the client never reached
    s.tls_started()
    assert s.phase is core.NegotiationPhase.AUTH
    s.stream_error("policy-violation")
    assert s.phase is core.NegotiationPhase.CLOSED
    with pytest.raises(RuntimeError):
        s.tls_started()
