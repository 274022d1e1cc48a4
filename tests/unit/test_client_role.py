"""The sans-IO client role, without sockets: recorded server transcripts replayed
byte by byte, and a client/server pair in memory (our server role talking to our
client role: negotiation, SASL, bind, SM enable, drop, resume)."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from bouncer.c2s import stream as server_core
from bouncer.credentials import Credentials
from bouncer.upstream.events import Ended, Established, StanzaReceived
from bouncer.upstream.stream import ClientSettings, ClientStream
from bouncer.xmpp import sm
from support.transcripts import HERE, PING, client, fixed_ids


@pytest.mark.parametrize("server", ["prosody", "ejabberd"])
@pytest.mark.parametrize("chunk", [None, 1])
def test_replayed_transcript(server, chunk, monkeypatch):
    """The client writes exactly what it wrote to the real server, whatever the
    server's bytes are cut into (here: one byte at a time)."""
    fixed_ids(monkeypatch)
    recorded = json.loads((HERE / f"{server}.json").read_text())
    stream = client(recorded["jid"])
    stream.start(0.0)
    written, events = [stream.data_to_send(0.0).decode()], []
    for side, text in recorded["chunks"][1:]:
        if side == "C":
            continue
        data = text.encode()
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            for event in stream.receive_data(piece, 0.0):
                events.append(event)
                if isinstance(event, Established):
                    stream.send_stanza(etree.fromstring(PING))
        out = stream.data_to_send(0.0).decode()
        if out:
            written.append(out)
    assert written == [text for side, text in recorded["chunks"] if side == "C"]
    assert events[0] == Established(f"{recorded['jid']}/transcript", resumed=False)
    assert [e.element.get("id") for e in events[1:]] == ["bnc-ping-1"]
    assert stream.sm is not None and stream.sm.id and (stream.sm.sent, stream.sm.acked, stream.sm.inbound) == (1, 1, 1)


# ---- a pair in memory ---------------------------------------------------------------

CREDS = Credentials.from_plain("s3cret", iterations=4096)
JID = "alice@example.org/phone"


def message(id_: str) -> etree._Element:
    return etree.fromstring(f"<message xmlns='jabber:client' to='bob@example.org' id='{id_}'><body>{id_}</body></message>")


class Pair:
    """Our server role and our client role, bytes moved by ``pump`` (h11's ConnectionPair)."""

    def __init__(self, previous=None, *, chunk: int | None = None) -> None:
        self.server = server_core.ServerStream(server_core.StreamSettings(
            domain="example.org", username="alice", credentials=CREDS, tls_available=False,
            tls_required=False, max_stanza_size=10_000, sm_max=600))
        self.client = ClientStream(ClientSettings(JID, "s3cret", tls="plain"), previous=previous)
        self.chunk = chunk
        self.server_events: list = []
        self.client_events: list = []
        self.hibernated: server_core.ServerStream | None = None  # the session a resume finds
        self.client.start(0.0)

    def pump(self, *, lose: bool = False) -> None:
        """Move bytes both ways until quiet; ``lose``: what is in flight now never arrives."""
        while True:
            up, down = self.client.data_to_send(0.0), self.server.data_to_send()
            if lose:
                return
            if not up and not down:
                return
            for piece in self._pieces(up):
                for event in self.server.receive_data(piece):
                    self.server_events.append(event)
                    self._serve(event)
            for piece in self._pieces(down):
                self.client_events.extend(self.client.receive_data(piece, 0.0))

    def _pieces(self, data: bytes) -> list[bytes]:
        if not self.chunk:
            return [data] if data else []
        return [data[i:i + self.chunk] for i in range(0, len(data), self.chunk)]

    def _serve(self, event) -> None:
        """What the account does for the server role."""
        if isinstance(event, server_core.BindRequested):
            self.server.bind(event.resource or "x")
        elif isinstance(event, server_core.ResumeRequested):
            old = self.hibernated
            if old is not None and old.sm is not None and old.sm.id == event.previd:
                self.server.resume(old.sm, old.jid)
            else:
                self.server.resume_failed()

    def received_by_server(self) -> list[str]:
        return [e.element.get("id") for e in self.server_events if isinstance(e, server_core.StanzaReceived)]

    def received_by_client(self) -> list[str]:
        return [e.element.get("id") for e in self.client_events if isinstance(e, StanzaReceived)]


@pytest.mark.parametrize("chunk", [None, 1])
def test_pair_negotiates_and_acknowledges(chunk):
    pair = Pair(chunk=chunk)
    pair.pump()
    assert pair.client_events == [Established(JID, resumed=False)]
    assert [type(e).__name__ for e in pair.server_events] == ["AuthSucceeded", "BindRequested", "SmEnabled"]
    for i in range(3):
        pair.client.send_stanza(message(f"c{i}"))
    pair.server.send_stanza(message("s0"))
    pair.server.request_ack(0.0)
    pair.pump()
    assert pair.received_by_server() == ["c0", "c1", "c2"] and pair.received_by_client() == ["s0"]
    assert not pair.client.sm.unacked and not pair.server.sm.unacked  # both sides acked all
    assert (pair.client.sm.sent, pair.server.sm.inbound) == (3, 3)


@pytest.mark.parametrize("chunk", [None, 1])
def test_pair_drop_and_resume_loses_nothing_and_repeats_nothing(chunk):
    first = Pair(chunk=chunk)
    first.pump()
    first.client.send_stanza(message("c0"))
    first.server.send_stanza(message("s0"))
    first.server.request_ack(0.0)
    first.pump()
    first.client.send_stanza(message("c1"))  # reaches the server, never acknowledged
    first.pump()
    first.client.send_stanza(message("c2"))  # lost in flight
    first.server.send_stanza(message("s1"))  # lost in flight
    first.server.send_stanza(message("s2"))
    first.pump(lose=True)

    second = Pair(first.client.carry_over(), chunk=chunk)
    second.hibernated = first.server
    second.pump()
    assert second.client_events[0] == Established(JID, resumed=True)
    assert any(isinstance(e, server_core.ResumeRequested) and e.h == 1 for e in second.server_events)
    assert first.received_by_server() + second.received_by_server() == ["c0", "c1", "c2"]
    assert first.received_by_client() + second.received_by_client() == ["s0", "s1", "s2"]
    second.client.send_stanza(message("c3"))
    second.server.request_ack(0.0)
    second.pump()
    assert second.received_by_server()[-1] == "c3"
    assert not second.client.sm.unacked and not second.server.sm.unacked


def test_pair_failed_resume_binds_anew_and_renews_messages():
    first = Pair()
    first.pump()
    first.client.send_stanza(message("c0"))
    first.client.send_stanza(etree.fromstring("<presence xmlns='jabber:client'><show>away</show></presence>"))
    first.pump(lose=True)
    second = Pair(first.client.carry_over())  # no hibernated session: resumption fails
    second.pump()
    assert second.client_events[0] == Established(JID, resumed=False)
    assert second.received_by_server() == ["c0"]  # the message renewed, presence state not


def test_over_acknowledgement_is_a_stream_error():
    pair = Pair()
    pair.pump()
    pair.server.receive_data(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
    out = pair.server.data_to_send()
    assert b"<undefined-condition" in out and b"handled-count-too-high" in out and b"send-count='0'" in out
    events = pair.client.receive_data(b"<a xmlns='urn:xmpp:sm:3' h='7'/>", 0.0)
    assert isinstance(events[-1], Ended) and "acknowledged 7" in events[-1].reason
    assert b"handled-count-too-high" in pair.client.data_to_send(0.0)


def test_keepalive_probes_then_ends():
    pair = Pair()
    pair.pump()
    settings = pair.client.settings
    assert pair.client.next_timer() == settings.keepalive
    assert pair.client.handle_timer(settings.keepalive - 0.1) == []
    assert pair.client.handle_timer(settings.keepalive) == []
    probe = pair.client.data_to_send(0.0)
    assert probe == b"<r xmlns='urn:xmpp:sm:3'/>"
    pair.server.receive_data(probe)
    pair.pump()  # the server answers: alive
    assert pair.client.phase.name == "OPEN"
    later = settings.keepalive * 2
    pair.client.handle_timer(later)
    (ended,) = pair.client.handle_timer(later + settings.keepalive_timeout)
    assert isinstance(ended, Ended) and "keepalive" in ended.reason


def test_sm_state_survives_a_restart_as_data():
    """What a SIGTERM saves is what the next process resumes with."""
    from bouncer.upstream import saved

    first = Pair()
    first.pump()
    first.client.send_stanza(message("c0"))
    first.pump(lose=True)
    data = json.loads(json.dumps(saved.dump(first.client.carry_over(), JID)))
    assert saved.load(data, "alice@example.org/other", 0) is None
    assert saved.load(data, JID, 601).id is None  # older than the server's max
    second = Pair(saved.load(data, JID, 5.0))
    second.hibernated = first.server
    second.pump()
    assert second.client_events[0] == Established(JID, resumed=True)
    assert second.received_by_server() == ["c0"]
    assert isinstance(second.client.sm, sm.StreamManagement)
