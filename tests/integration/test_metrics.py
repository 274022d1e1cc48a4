"""Prometheus metrics (issue 13, 2): scraped after a scripted scenario, the counters and
gauges say what happened (2 sessions, 1 room, 10 messages, 1 failed login, 1 stream error)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from integration_setup import make_setup
from support.clients import close, connect
from support.muc import create_room, groupchat, join, send_groupchat
from support.prosody import free_port
from support.rawxmpp import plain_login


async def scrape(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    values = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


async def test_the_counters_match_a_scripted_scenario(prosody, tmp_path):
    port = free_port()
    s = make_setup(prosody, tmp_path, metrics={"listen": port})
    await asyncio.to_thread(s.bouncer.start)
    carol = await connect(*prosody.new_user("carol"), prosody.port)
    room = f"metrics@{prosody.muc_domain}"
    await create_room(carol, room, "carol")
    a = await connect(f"{s.alice}/A", s.password, s.port)
    b = await connect(f"{s.alice}/B", s.password, s.port)
    await join(a, room, "alice")
    await join(b, room, "alice")
    accepted, _ = await plain_login(s, "not the password")
    assert not accepted
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                 b"to='localhost' version='1.0'><a></b>")
    assert b"not-well-formed" in await asyncio.wait_for(reader.read(), 10)
    writer.close()
    before = await scrape(port)
    for n in range(10):
        send_groupchat(carol, room, f"m{n}")
    for client in (a, b):
        await client.wait_for(groupchat(room, "m9"))
    after = await scrape(port)
    assert after["bouncer_fanout_deliveries_total"] - before["bouncer_fanout_deliveries_total"] == 20
    assert after["bouncer_upstream_in_stanzas_total"] - before["bouncer_upstream_in_stanzas_total"] >= 10
    assert after["bouncer_downstream_out_stanzas_total"] - before["bouncer_downstream_out_stanzas_total"] >= 20
    assert after["bouncer_login_failures_total"] == 1
    assert after["bouncer_stream_errors_total{condition=not-well-formed}"] == 1
    assert after["bouncer_upstream_reconnects_total"] == 0
    assert after["bouncer_outbox_closes_total"] == 0
    assert (after["bouncer_sessions"], after["bouncer_sessions_hibernating"]) == (2, 0)
    assert (after["bouncer_devices"], after["bouncer_rooms_held"]) == (2, 1)
    assert after["bouncer_archive_messages"] == 10
    assert after["bouncer_upstream_connected"] == 1
    assert after["bouncer_downstream_in_stanzas_total"] >= 4  # two presences, two joins at least
    await close(a, b, carol)
    assert await asyncio.to_thread(s.bouncer.stop) == 0
