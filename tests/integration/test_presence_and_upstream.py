"""Account presence as the server sees it; surviving upstream restarts, silent cuts and bad certificates."""

from __future__ import annotations

import asyncio

from support.clients import body_is, close, connect
from support.upstream import Blackhole
from integration_setup import kill_upstream, make_setup, restart_upstream


def presence_from(prefix: str, *, show: str | None = "any", ptype: str | None = None):
    def pred(el) -> bool:
        if el.tag != "{jabber:client}presence" or not el.get("from", "").startswith(prefix):
            return False
        if el.get("type") != ptype:
            return False
        return show == "any" or el.findtext("{jabber:client}show") == show

    return pred


async def test_server_sees_most_available_then_idle_never_unavailable(server, tmp_path):
    s = make_setup(server, tmp_path, befriend=True, presence={"idle_show": "xa"})
    s.bouncer.start()
    bob = await connect(s.bob, s.bob_password, server.port)
    # nobody connected yet: the account is online with the idle presence
    await bob.wait_for(presence_from(s.alice, show="xa"))

    async def step(action, show):
        """Do ``action``, then wait for bob to see the account change to ``show``."""
        mark = len(bob.received)
        result = await action()
        await bob.wait_for(presence_from(s.alice, show=show), start=mark)
        return result

    b = await step(lambda: connect(f"{s.alice}/B", s.password, s.port, show="away"), "away")
    a = await step(lambda: connect(f"{s.alice}/A", s.password, s.port), None)  # A available wins
    await step(lambda: close(a), "away")  # B is left
    await step(lambda: close(b), "xa")  # nobody: idle, not unavailable
    assert bob.matching(presence_from(s.alice, ptype="unavailable")) == []
    await close(bob)
    assert s.bouncer.stop() == 0


async def test_upstream_restart_keeps_sessions_and_delivers_after(private_setup):
    s = private_setup
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, s.port)
    kill_upstream(s)
    restart_upstream(s)
    assert not a.disconnected_event.is_set() and not b.disconnected_event.is_set()
    bob = await connect(s.bob, s.bob_password, s.server.port)
    bob.send_xml(f"<message to='{s.alice}' type='chat'><body>after the restart</body></message>")
    await a.wait_for(body_is("after the restart"), timeout=15)
    await b.wait_for(body_is("after the restart"), timeout=15)
    a.send_xml(f"<message to='{s.bob}' type='chat'><body>A is back too</body></message>")
    await bob.wait_for(body_is("A is back too"))
    await close(a, b, bob)


async def test_messages_sent_while_upstream_is_down_are_delivered_after(private_setup):
    s = private_setup
    a = await connect(f"{s.alice}/A", s.password, s.port)
    kill_upstream(s)
    a.send_xml(f"<message to='{s.bob}' type='chat'><body>queued while down</body></message>")
    a.send_xml(f"<iq type='get' id='ping-down' to='{s.server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    err = await a.wait_for(lambda el: el.get("id") == "ping-down")
    assert err.get("type") == "error" and err.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}remote-server-timeout") is not None
    restart_upstream(s)
    # The queued message went upstream first; the server answers A's ping after routing it,
    # so it is in bob's offline store before he logs in (ejabberd 23.01 can lose a message
    # stored while the login that empties the store runs: see test_upstream_recovery.py).
    a.send_xml(f"<iq type='get' id='ping-up' to='{s.server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (await a.wait_for(lambda el: el.get("id") == "ping-up", timeout=15)).get("type") == "result"
    bob = await connect(s.bob, s.bob_password, s.server.port)
    # The server stored it offline for bob (he was not online): it arrives at his login
    await bob.wait_for(body_is("queued while down"), timeout=15)
    await close(a, bob)


async def test_silent_cut_of_the_upstream_loses_no_chat_and_repeats_none(server, tmp_path):
    """The upstream connection goes silent (no FIN, no RST) while bob sends numbered chats:
    the keepalive notices, the bouncer reconnects and resumes, and session A gets every
    chat exactly once, in order."""
    hole = await Blackhole(server.port).start()
    s = make_setup(server, tmp_path, upstream={"port": hole.port, "keepalive": 0.5})
    # The relay runs on this loop: wait for the bouncer's log in a thread, not on the loop.
    await asyncio.to_thread(s.bouncer.start)
    try:
        a = await connect(f"{s.alice}/A", s.password, s.port)
        bob = await connect(s.bob, s.bob_password, server.port)
        total = 60
        for i in range(total):
            if i == 20:
                hole.cut()
            bob.send_xml(f"<message to='{s.alice}' type='chat' id='n-{i}'><body>n{i}</body></message>")
            await asyncio.sleep(0.01)
        resumed = await asyncio.to_thread(s.bouncer.wait_event, "upstream established", after=1, timeout=15)
        assert resumed["resumed"] is True
        await a.wait_for(body_is(f"n{total - 1}"), timeout=15)
        got = [el.findtext("{jabber:client}body") for el in a.received if (el.get("id") or "").startswith("n-")]
        assert got == [f"n{i}" for i in range(total)]
        await close(a, bob)
        assert await asyncio.to_thread(s.bouncer.stop) == 0, s.bouncer.log_tail()
    finally:
        await hole.close()


async def test_an_untrusted_server_certificate_is_named_in_the_log(server, tmp_path):
    """upstream.verify is on by default: with no ca_file for the test server's self-signed
    certificate, every attempt fails and the log says why."""
    s = make_setup(server, tmp_path)
    config = s.bouncer.read_config()
    del config["upstream"]["ca_file"]
    s.bouncer.write_config(config)
    s.bouncer.start(wait_upstream=False)
    failed = s.bouncer.wait_event("upstream connection failed")
    assert "certificate not trusted" in failed["reason"] and "self-signed" in failed["reason"], failed
    assert s.bouncer.count("upstream established") == 0
    assert s.bouncer.stop() == 0
