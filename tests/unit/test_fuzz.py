"""Hostile input for both protocol cores, by mutation: whatever a peer sends gets a stream
error or is taken, never an exception (SPEC §11). Hypothesis mutates valid streams before
and after login (server role) and recorded server transcripts (client role), cut at random
places; ``fuzz_corpus/`` keeps every input that ever broke a core, replayed each run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from bouncer.c2s import stream as core
from support.transcripts import HERE, client
from support.server_role import HEADER, bound, settings

CORPUS = Path(__file__).parent / "fuzz_corpus"
BEFORE_LOGIN = HEADER + (
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>biwsbj1hbGljZSxyPWFiYw==</auth>"
    b"<message to='bob@example.org'><body>too early</body></message>"
)
AFTER_LOGIN = (
    b"<message to='bob@example.org' type='chat' id='m1' xmlns:p='urn:x'><body>h\xc3\xa9 &amp; &lt;</body>"
    b"<p:x p:a='1'>t<y xmlns=''/>tail</p:x></message>"
    b"<iq type='get' id='i1' to='example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    b"<presence><show>away</show></presence><r xmlns='urn:xmpp:sm:3'/>"
    b"<inactive xmlns='urn:xmpp:csi:0'/></stream:stream>"
)
NASTY = [b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"<?pi x?>", b"<!-- c -->", b"xmlns:x='a b' ", b"]]>",
         b"\x00", b"\xff\xfe", b"</stream:stream>", b"<a>" * 50, b"</a>", b"<", b">", b"'", b"=", b" xmlns='' ",
         b"<stream:error/>", b"<enable xmlns='urn:xmpp:sm:3'/>", b"<a xmlns='urn:xmpp:sm:3' h='99'/>",
         b"<iq type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", "\u2028".encode()]

mutation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.sampled_from(NASTY)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 40)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
)


def mutate(data: bytes, mutations) -> bytes:
    for kind, at, arg in mutations:
        at %= len(data) + 1
        if kind == "insert":
            data = data[:at] + arg + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + arg:]
        elif at < len(data):
            data = data[:at] + bytes([arg]) + data[at + 1:]
    return data


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def feed_server(stream: core.ServerStream, pieces: list[bytes]) -> None:
    closed = False
    for piece in pieces:
        events = stream.receive_data(piece)
        assert all(isinstance(e, core.Event.__args__) for e in events), events
        if closed:
            assert events == []
        closed = closed or any(isinstance(e, core.Closed) for e in events)
        assert isinstance(stream.data_to_send(), bytes)


FUZZ = hsettings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(mutation, max_size=6), st.lists(st.integers(0, 10_000), max_size=8))
def test_server_role_before_login(mutations, cuts):
    stream = core.ServerStream(settings(tls_required=False))
    feed_server(stream, chunks(mutate(BEFORE_LOGIN, mutations), cuts))


@FUZZ
@given(st.lists(mutation, max_size=6), st.lists(st.integers(0, 10_000), max_size=8))
def test_server_role_after_login(mutations, cuts):
    feed_server(bound(), chunks(mutate(AFTER_LOGIN, mutations), cuts))


@FUZZ
@given(st.sampled_from(["prosody", "ejabberd"]), st.lists(mutation, max_size=6),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_client_role_against_mutated_servers(server, mutations, cuts):
    recorded = json.loads((HERE / f"{server}.json").read_text())
    stream = client(recorded["jid"])
    stream.start(0.0)
    answers = b"".join(text.encode() for side, text in recorded["chunks"] if side == "S")
    for piece in chunks(mutate(answers, mutations), cuts):
        for event in stream.receive_data(piece, 0.0):
            assert type(event).__name__ in ("Established", "StanzaReceived", "Ended", "TlsRequired"), event
        assert isinstance(stream.data_to_send(0.0), bytes)


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_corpus(path):
    """Inputs that once broke a core, fed whole and one byte at a time, before and after login."""
    data = path.read_bytes()
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))]):
        feed_server(core.ServerStream(settings(tls_required=False)), pieces)
        feed_server(bound(), pieces)
