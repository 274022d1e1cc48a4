"""Listening sockets for downstream clients: STARTTLS port and optional direct TLS port."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from bouncer.c2s.admission import Admission
from bouncer.c2s.connection import Connection
from bouncer.c2s.stream import ServerStream, StreamSettings
from bouncer.c2s.throttle import LoginThrottle
from bouncer.config import LimitsConfig
from bouncer.core.events import Event
from bouncer.xmpp import framing

log = structlog.get_logger("bouncer.c2s")


@dataclass
class Listener:
    settings: StreamSettings
    handle: Callable[[Event], None]  # the account's one entrance
    tls_context: Callable[[], ssl.SSLContext] | None
    limits: LimitsConfig  # for connections accepted from now on (SIGHUP replaces it)
    admission: Admission = field(init=False)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    tasks: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.admission = Admission(self.limits.max_unauthenticated, self.limits.max_unauthenticated_per_address)

    def apply(self, limits: LimitsConfig) -> None:
        """New bounds, for connections accepted from now on."""
        self.limits = limits
        self.admission.max_total = limits.max_unauthenticated
        self.admission.max_per_address = limits.max_unauthenticated_per_address

    async def listen(self, address: str, port: int, *, direct_tls: bool = False) -> int:
        """Start accepting; returns the bound port (useful with port 0 in tests)."""
        ssl_ctx = self.tls_context() if direct_tls and self.tls_context else None
        server = await asyncio.start_server(
            lambda r, w: self._accept(r, w, direct_tls), address, port, ssl=ssl_ctx, limit=2**20
        )
        self.servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        log.info("listening", address=address, port=bound, direct_tls=direct_tls)
        return bound

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direct_tls: bool) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self.admission.admit(host):
            log.warning("connection refused", client=host, reason="too many connections not logged in",
                        pending=self.admission.pending.get(host, 0), total=self.admission.total)
            writer.write(framing.header(from_=self.settings.domain)
                         + framing.stream_error("policy-violation", "too many connections not logged in")
                         + framing.CLOSE)
            writer.close()
            return
        conn = Connection(
            reader,
            writer,
            ServerStream(self.settings, tls_active=direct_tls),
            self.handle,
            tls_context=self.tls_context,
            throttle=self.throttle,
            limits=self.limits,
            admission=self.admission,
        )
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await conn.run()
        finally:
            self.tasks.discard(task)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
