"""A client that stops reading cannot make the bouncer grow without bound (SPEC §11)."""

from __future__ import annotations

import asyncio
import socket

from bouncer.c2s.connection import Connection
from bouncer.c2s.stream import ServerStream, StreamSettings
from bouncer.c2s.throttle import LoginThrottle
from bouncer.credentials import Credentials


class NoAccount:
    def connection_closed(self, conn) -> None:
        self.closed = True


async def test_session_past_its_queue_cap_is_closed():
    ours, theirs = socket.socketpair()
    for sock, opt in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4096)
    reader, writer = await asyncio.open_connection(sock=ours)
    settings = StreamSettings("example.org", "alice", Credentials.from_plain("x"), False, False, 10_000)
    account = NoAccount()
    conn = Connection(reader, writer, ServerStream(settings), account, tls_context=None,
                      throttle=LoginThrottle(), queue_cap=50)
    runner = asyncio.create_task(conn.run())
    stanza = b"<message xmlns='jabber:client' type='chat'><body>" + b"x" * 1000 + b"</body></message>"
    for _ in range(2000):  # ~2 MB at a peer that reads nothing
        if writer.transport.is_closing():
            break
        conn.send_serialized(stanza)
        await asyncio.sleep(0)
    await asyncio.wait_for(runner, 10)  # the session ended on its own
    assert writer.transport.is_closing() and account.closed
    assert conn._outbox.waiting <= 50
    theirs.close()
