"""Driving the sans-IO server role (``bouncer.c2s.stream``) with bytes: settings, login, bind."""

from __future__ import annotations

import base64
import re

from scramp import ScramClient

from bouncer.c2s import stream as core
from bouncer.credentials import Credentials

CREDS = Credentials.from_plain("s3cret", iterations=4096)
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>"
)


def settings(**over) -> core.StreamSettings:
    base = dict(
        domain="example.org",
        username="alice",
        credentials=CREDS,
        tls_available=True,
        tls_required=True,
        max_stanza_size=10_000,
    )
    base.update(over)
    return core.StreamSettings(**base)


def feed(s: core.ServerStream, data: bytes) -> tuple[list[core.Event], str]:
    events = s.receive_data(data)
    return events, s.data_to_send().decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def scram_login(s: core.ServerStream, user="alice", password="s3cret", mech="SCRAM-SHA-256"):
    client = ScramClient([mech], user, password)
    events, out = feed(s, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{b64(client.get_client_first())}</auth>".encode())
    challenge = re.search(r"<challenge[^>]*>([^<]*)</challenge>", out)
    if challenge is None:
        return events, out
    client.set_server_first(base64.b64decode(challenge.group(1)).decode())
    events, out = feed(s, f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{b64(client.get_client_final())}</response>".encode())
    success = re.search(r"<success[^>]*>([^<]*)</success>", out)
    if success:
        client.set_server_final(base64.b64decode(success.group(1)).decode())  # server proved it knows the key
    return events, out


def authed(tls=True, mech="SCRAM-SHA-256", **over) -> core.ServerStream:
    s = core.ServerStream(settings(**over), tls_active=tls)
    feed(s, HEADER)
    events, out = scram_login(s, mech=mech)
    assert events == [core.AuthSucceeded("alice")], out
    return s


def bound(resource="phone") -> core.ServerStream:
    s = authed()
    _, out = feed(s, HEADER)
    assert "urn:ietf:params:xml:ns:xmpp-bind" in out and "<mechanisms" not in out
    events, _ = feed(s, f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>".encode())
    assert events == [core.BindRequested(resource)]
    s.bind(resource)
    out = s.data_to_send().decode()
    assert f"<jid>alice@example.org/{resource}</jid>" in out and "id=\"b1\"" in out
    return s
