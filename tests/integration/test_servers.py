"""The test-server fixtures themselves: Prosody and ejabberd behave alike.

Tests that must hold against both servers are parametrized like ``server``
below; these few checks prove that both fixtures keep the same promises
(accounts from ``new_user`` log in, over STARTTLS and direct TLS, messages flow,
``restart()`` keeps ports and accounts).
"""

from __future__ import annotations

import asyncio

import pytest
import slixmpp

from support.ejabberd import Ejabberd
from support.prosody import Prosody, client_ssl_context

WAIT = 10.0
SERVERS = {"prosody": Prosody, "ejabberd": Ejabberd}


@pytest.fixture(params=sorted(SERVERS))
def server(request, tmp_path):
    """A started server of each kind, private to the test."""
    srv = SERVERS[request.param](base_dir=tmp_path)
    srv.start()
    yield srv
    srv.cleanup()


async def login(server, jid: str, password: str, *, direct_tls: bool = False):
    """A slixmpp client with a bound session (PLAIN, like the tests' peers)."""
    client = slixmpp.ClientXMPP(jid, password, sasl_mech="PLAIN", ssl_context=client_ssl_context())
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls
    ready = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: ready.done() or ready.set_result(True))
    client.add_event_handler(
        "failed_auth", lambda _: ready.done() or ready.set_exception(AssertionError("auth failed"))
    )
    client.connect("127.0.0.1", server.direct_tls_port if direct_tls else server.port)
    await asyncio.wait_for(ready, WAIT)
    return client


async def test_new_user_logs_in_over_starttls_and_direct_tls(server):
    jid, password = server.new_user("alice")
    assert jid.endswith("@localhost") and server.domain == "localhost"
    assert server.muc_domain == "conference.localhost"
    for direct_tls in (False, True):
        client = await login(server, jid, password, direct_tls=direct_tls)
        assert client.boundjid.bare == jid
        assert client.is_connected()
        client.abort()


async def test_message_reaches_other_user(server):
    (alice_jid, alice_pw), (bob_jid, bob_pw) = server.new_user("alice"), server.new_user("bob")
    alice = await login(server, alice_jid, alice_pw)
    bob = await login(server, bob_jid, bob_pw)
    got = asyncio.get_running_loop().create_future()
    bob.add_event_handler("message", lambda msg: got.done() or got.set_result(msg))
    bob.send_presence()  # available: messages to the bare JID are delivered
    await asyncio.sleep(0.1)
    alice.send_message(mto=bob_jid, mbody="hello bob", mtype="chat")
    msg = await asyncio.wait_for(got, WAIT)
    assert msg["body"] == "hello bob"
    assert msg["from"].bare == alice_jid
    alice.abort()
    bob.abort()


async def test_restart_keeps_ports_and_accounts(server):
    port, tls_port = server.port, server.direct_tls_port
    jid, password = server.new_user()
    server.restart()
    assert server.running and (server.port, server.direct_tls_port) == (port, tls_port)
    client = await login(server, jid, password)
    client.abort()
