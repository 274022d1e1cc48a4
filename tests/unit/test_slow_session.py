"""A client that stops reading cannot make the bouncer grow without bound (SPEC §11)."""

from __future__ import annotations

import asyncio
import socket

from bouncer.c2s.connection import Connection
from bouncer.c2s import stream as core
from bouncer.c2s.stream import ServerStream, StreamSettings
from bouncer.c2s.throttle import LoginThrottle
from bouncer.config import LimitsConfig
from bouncer.core.events import SessionClosed
from bouncer.credentials import Credentials
from bouncer.xmpp.sm import StreamManagement
from support.server_role import HEADER, authed, feed


class NoAccount:
    """The account's entrance, seeing only the connection end."""

    closed = False

    def __call__(self, event) -> None:
        self.closed = self.closed or isinstance(event, SessionClosed)


STANZA = b"<message xmlns='jabber:client' type='chat'><body>" + b"x" * 1000 + b"</body></message>"


async def flood_until_closed(**caps) -> tuple[Connection, int]:
    """A session whose peer reads nothing, sent ~2 MB: (the connection, stanzas it took)."""
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader, writer = await asyncio.open_connection(sock=ours)
    settings = StreamSettings("example.org", "alice", Credentials.from_plain("x"), False, False, 10_000)
    account = NoAccount()
    conn = Connection(reader, writer, ServerStream(settings), account, tls_context=None,
                      throttle=LoginThrottle(), limits=LimitsConfig(session_send_buffer=4096, **caps))
    runner = asyncio.create_task(conn.run())
    taken = 0
    for _ in range(2000):
        if writer.transport.is_closing():
            break
        conn.send_serialized(STANZA)
        taken += 1
        await asyncio.sleep(0)
    await asyncio.wait_for(runner, 10)  # the session ended on its own
    assert writer.transport.is_closing() and account.closed
    theirs.close()
    return conn, taken


async def test_session_past_its_queue_cap_is_closed():
    conn, _ = await flood_until_closed(session_queue=50)
    assert conn._outbox.waiting <= 50


async def test_what_a_stuck_session_holds_is_bounded_in_bytes():
    """Kernel buffers (capped) + the outbox's byte cap: closed after ~100 kB, not 2 MB,
    however high the stanza count cap is."""
    conn, taken = await flood_until_closed(session_queue=10_000, session_queue_bytes=32 * 1024)
    assert conn._outbox.waiting_bytes <= 32 * 1024 + len(STANZA)
    assert taken * len(STANZA) < 200 * 1024, taken


async def test_a_resume_resending_more_than_the_cap_is_not_cut_by_the_next_stanza():
    """What a hibernated session held goes out on the resumed connection whole, and a
    stanza that follows at once does not count it against the outbox cap."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    stream = authed(sm_max=3600)
    feed(stream, HEADER)
    events, _ = feed(stream, b"<resume xmlns='urn:xmpp:sm:3' previd='prev' h='0'/>")
    assert events == [core.ResumeRequested("prev", 0)]
    account = NoAccount()
    conn = Connection(reader, writer, stream, account, tls_context=None, throttle=LoginThrottle(),
                      limits=LimitsConfig(session_queue_bytes=65536))
    runner = asyncio.create_task(conn.run())
    held = StreamManagement(id="prev")
    for _ in range(100):
        held.on_sent(STANZA)  # ~100 kB held while hibernated: past the 64 kB cap
    conn.resumed(held, "phone")
    conn.send_serialized(STANZA)  # arrives before the writer took the resend
    got = b""
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    while got.count(b"<body>") < 101:
        got += await asyncio.wait_for(loop.sock_recv(theirs, 1 << 16), 5)
    assert not writer.transport.is_closing() and not account.closed
    assert got.startswith(b"<resumed xmlns='urn:xmpp:sm:3' previd='prev' h='0'/>")
    theirs.close()
    await asyncio.wait_for(runner, 5)
