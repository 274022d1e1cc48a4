"""Recorded conversations of the client role with real servers, for byte-exact unit tests.

A transcript is what a ``ClientStream`` (plain TCP, fixed SCRAM nonce, fixed id
run) wrote and what the server answered, chunk by chunk: login, bind, SM enable,
one ping, an ``<r/>``/``<a/>`` exchange. The unit tests replay the server's side
to a fresh ``ClientStream`` and expect the client's side byte for byte.

Re-record (needs Prosody and ejabberd installed):
    python -m support.transcripts   # from tests/
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from lxml import etree

from bouncer.upstream.events import Established, StanzaReceived
from bouncer.upstream.stream import ClientSettings, ClientStream
from bouncer.xmpp import ids

HERE = Path(__file__).resolve().parents[1] / "unit" / "transcripts"
NONCE = "fixed-client-nonce-for-transcripts"
PASSWORD = "transcript-password"
PING = b"<iq xmlns='jabber:client' type='get' id='bnc-ping-1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


def fixed_ids(monkeypatch=None) -> None:
    """Make ``ids.new`` deterministic (the run part and the counter)."""
    import itertools

    if monkeypatch is not None:
        monkeypatch.setattr(ids, "_RUN", "000000")
        monkeypatch.setattr(ids, "_counter", itertools.count(1))
    else:
        ids._RUN, ids._counter = "000000", itertools.count(1)


def client(jid: str) -> ClientStream:
    return ClientStream(ClientSettings(f"{jid}/transcript", PASSWORD, tls="plain"), nonce=NONCE)


def record(server, name: str) -> None:
    fixed_ids()
    jid = server.add_user("transcript", PASSWORD)
    stream = client(jid)
    chunks: list[list[str]] = []
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(5)
    stream.start(0.0)
    state = {"pinged": False}

    def flush() -> None:
        out = stream.data_to_send(0.0)
        if out:
            chunks.append(["C", out.decode()])
            sock.sendall(out)

    flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(["S", data.decode()])
        for event in stream.receive_data(data, 0.0):
            if isinstance(event, Established) and not state["pinged"]:
                stream.send_stanza(etree.fromstring(PING))
                state["pinged"] = True
            if isinstance(event, StanzaReceived) and event.element.get("id") == "bnc-ping-1":
                state["answered"] = True
        flush()
        if state.get("answered") and stream.sm is not None and stream.sm.acked == 1:
            break
    sock.close()
    (HERE / f"{name}.json").write_text(json.dumps({"jid": jid, "chunks": chunks}, indent=1) + "\n")


if __name__ == "__main__":
    from support.ejabberd import Ejabberd
    from support.prosody import Prosody

    for kind, name in ((Prosody, "prosody"), (Ejabberd, "ejabberd")):
        with kind() as server:
            record(server, name)
            print("recorded", name)
