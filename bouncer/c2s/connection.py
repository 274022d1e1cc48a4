"""The asyncio edge of one downstream connection: socket <-> sans-IO stream core.

One reader loop feeds bytes to the ServerStream and hands what it means to the
account's one entrance (``core.events``); one writer task per connection drains a bounded queue (soju's
``conn.go``), so a slow phone never stalls the fan-out to the others, and a
session past its cap is closed instead of growing without bound (SPEC §11).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from lxml import etree

from bouncer import memory, metrics
from bouncer.c2s import stream as core
from bouncer.c2s.admission import Admission
from bouncer.c2s.outbox import Outbox
from bouncer.c2s.throttle import LoginThrottle
from bouncer.core.events import (
    Event, SessionAcked, SessionBind, SessionClosed, SessionNonza, SessionResume, SessionSmEnabled, SessionStanza,
)
from bouncer.xmpp import ids, ns, sm, stanza

if TYPE_CHECKING:
    from bouncer.config import LimitsConfig

log = structlog.get_logger("bouncer.c2s")

READ_SIZE = 65536
GIVE_BACK_ABOVE = 64 * 1024  # bytes of a partial stanza left behind
_CLOSE = object()


class Connection:
    """A downstream client connection; once bound, a session of the account.

    It is the account's ``core.ports.SessionPort`` for this client.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: core.ServerStream,
        handle: Callable[[Event], None],
        *,
        tls_context: Callable[[], ssl.SSLContext] | None,
        throttle: LoginThrottle,
        limits: LimitsConfig,
        admission: Admission | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.stream = stream
        self._to_account = handle  # the account's one entrance
        self._tls_context = tls_context
        self._throttle = throttle
        self._outbox = Outbox(limits.session_queue, limits.session_queue_bytes)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # What the kernel holds for a client that stopped reading counts too (SPEC §11):
            # capped, the outbox fills, and past its cap the session is closed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.session_send_buffer)
        peer = writer.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.resource: str | None = None
        self.since = time.time()
        self.log = log.bind(client=self.address)
        self._admission = admission  # counts this connection until it logs in or goes
        self._login_timeout = limits.login_timeout
        self._idle_timeout = limits.idle_timeout
        # Seconds an answer may take (to our ping, or to an XEP-0198 <r/>) before the
        # connection counts as dead.
        self._grace = min(limits.idle_timeout, 60.0)
        self._heard = 0.0  # loop time of the last bytes from the client
        self._pinged_at: float | None = None  # our idle ping in flight
        self._idle: asyncio.TimerHandle | None = None
        self._dropped = False  # cut for being too slow: its read loop ends next
        self._error_counted = False  # a stream error this connection sent is counted once

    @property
    def jid(self) -> str | None:
        return self.stream.jid

    # ---- the account's side (core.ports.SessionPort) ---------------------------
    def bound(self, resource: str) -> None:
        self.resource = resource
        self.stream.bind(resource)
        self.log = self.log.bind(session=resource)
        self._flush()

    def resumed(self, state: sm.StreamManagement[bytes], resource: str) -> None:
        self.resource = resource
        self.stream.resume(state, f"{self.stream.username}@{self.stream.settings.domain}/{resource}")
        self.log = self.log.bind(session=resource)
        self.log.info("session resumed", unacked=len(state.unacked))
        self._outbox.put_exempt(self.stream.data_to_send())  # <resumed/> and what is sent again
        self._flush()  # and an <r/>, so that what was sent again is acknowledged

    def resume_failed(self, h: int | None) -> None:
        self.stream.resume_failed(h)
        self._flush()

    def send_stanza(self, el: etree._Element) -> None:
        self.stream.send_stanza(el)
        self._flush()

    def send_serialized(self, wire: bytes) -> None:
        self.send_series([wire])

    def send_series(self, wires: list[bytes]) -> None:
        for wire in wires:
            self.stream.send_serialized(wire)  # each one a stanza (XEP-0198 counts them)
        metrics.COUNTS.downstream_out_stanzas += len(wires)
        self._flush()

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued so far reached the socket."""
        self._enqueue(callback)

    def cut(self) -> None:
        """Close the TCP connection at once, stream and XEP-0198 session left open (a restart)."""
        self.log.info("connection cut for a restart")
        self._writer.transport.abort()

    def stream_error(self, condition: str, text: str | None = None) -> None:
        if self.stream.phase is not core.NegotiationPhase.CLOSED:
            metrics.COUNTS.stream_error(condition)
            self._error_counted = True
        self.stream.stream_error(condition, text)
        self._flush()
        self._enqueue(_CLOSE)

    def _flush(self) -> None:
        state = self.stream.sm
        if state is not None and state.wants_request() and self.stream.phase is core.NegotiationPhase.OPEN:
            # XEP-0198: ask for an <a/> in the same write as the stanzas, so that asking
            # wakes the client no more often than the stanzas do.
            loop = asyncio.get_running_loop()
            self.stream.request_ack(loop.time())
            if self._idle is not None and self._idle.when() > loop.time() + self._grace:
                self._idle.cancel()  # the check must come when the <a/> is overdue
                self._idle = loop.call_later(self._grace, self._idle_check)
        data = self.stream.data_to_send()
        if data:
            self._enqueue(data)

    def _enqueue(self, item: bytes | Callable[[], None] | object) -> None:
        if isinstance(item, bytes):
            if self._dropped:
                return  # the connection is being torn down: no more bytes for it
            if self._outbox.full():
                self.log.warning("session queue full, closing", queued=self._outbox.waiting,
                                 queued_bytes=self._outbox.waiting_bytes)
                self._dropped = True
                metrics.COUNTS.outbox_closes += 1
                self._writer.transport.abort()
                return
            self._outbox.put_bytes(item)
        else:
            self._outbox.put_marker(item)

    # ---- lifetime ------------------------------------------------------------
    async def run(self) -> None:
        writer_task = asyncio.create_task(self._write_loop())
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(self._login_timeout, self._login_timed_out)
        self._heard = loop.time()
        self._idle = loop.call_later(self._idle_timeout, self._idle_check)
        try:
            await self._read_loop()
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.log.info("connection lost", error=str(exc))
        finally:
            deadline.cancel()
            self._idle.cancel()
            if self.stream.holding() > GIVE_BACK_ABOVE:
                memory.give_back()  # what the partial stanza took, once it is freed
            self._logged_in_or_gone()
            self._to_account(SessionClosed(self, by_client=self.stream.ended_by_client))
            self._enqueue(_CLOSE)
            try:
                await asyncio.wait_for(writer_task, 5)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                writer_task.cancel()
                self._writer.transport.abort()

    async def _read_loop(self) -> None:
        while True:
            data = await self._reader.read(READ_SIZE)
            self._heard, self._pinged_at = asyncio.get_running_loop().time(), None
            events = self.stream.receive_data(data) if data else self.stream.connection_lost()
            for event in events:
                if await self._handle(event):
                    return
            self._flush()
            if not data:
                return

    async def _handle(self, event: core.Event) -> bool:
        """Act on one event; True when the connection is over."""
        match event:
            case core.StartTls():
                await self._start_tls()
            case core.AuthSucceeded(username):
                self._logged_in_or_gone()
                self.log.info("authenticated", user=username)
            case core.AuthFailed(username, reason):
                metrics.COUNTS.login_failures += 1
                delay = self._throttle.failed(self._host(), time.monotonic())
                self.log.warning("authentication failed", user=username, reason=reason, delay=delay)
                await asyncio.sleep(delay)
            case core.BindRequested(requested):
                self._to_account(SessionBind(self, requested))
            case core.StanzaReceived(element):
                metrics.COUNTS.downstream_in_stanzas += 1
                self._to_account(SessionStanza(self, element))
            case core.NonzaReceived(element):
                self._to_account(SessionNonza(self, element))
            case core.SmEnabled():
                assert self.stream.sm is not None
                self._to_account(SessionSmEnabled(self, self.stream.sm))
            case core.ResumeRequested(previd, h):
                self._to_account(SessionResume(self, previd, h))
            case core.Acked():
                self._to_account(SessionAcked(self))
            case core.Closed(error):
                if error:
                    self.log.info("stream error sent", condition=error)
                    if not self._error_counted:  # the stream's own, on bad input
                        metrics.COUNTS.stream_error(error)
                self._flush()
                return True
        return False

    async def _start_tls(self) -> None:
        assert self._tls_context is not None
        # Stop reading before <proceed/> goes out: the client's first TLS bytes
        # must reach the TLS layer, not our StreamReader (start_tls resumes reading).
        self._writer.transport.pause_reading()
        self._flush()
        await self._outbox.idle()  # <proceed/> must reach the client in clear text
        await self._writer.drain()
        await self._writer.start_tls(self._tls_context())
        self.stream.tls_started()

    async def _write_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is _CLOSE:
                await self._close_transport()
                return
            if callable(item):
                await self._writer.drain()
                item()
            else:
                # Drain after every (coalesced) write: a client that reads slowly then
                # holds stanzas in the outbox, where the cap sees them, instead of in
                # the transport's buffer, which has no bound (SPEC §11).
                self._writer.write(item)  # type: ignore[arg-type]
                await self._writer.drain()

    async def _close_transport(self) -> None:
        try:
            data = self.stream.data_to_send()
            if data:
                self._writer.write(data)
            await self._writer.drain()
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
            self._writer.transport.abort()

    def _logged_in_or_gone(self) -> None:
        if self._admission is not None:
            self._admission.release(self._host())
            self._admission = None

    def _login_timed_out(self) -> None:
        if self.stream.username is None:  # not logged in yet
            self.log.warning("login timed out", seconds=self._login_timeout)
            self.stream_error("connection-timeout", f"no login within {self._login_timeout:g} s")

    def _idle_check(self) -> None:
        """Ping a session silent for ``idle_timeout``; close it when the ping goes unanswered
        (any bytes count as an answer)."""
        loop = asyncio.get_running_loop()
        now, grace = loop.time(), self._grace
        if self._pinged_at is not None and now - self._pinged_at >= grace:
            self.log.info("session silent, closing", seconds=round(now - self._heard))
            return self.stream_error("connection-timeout", "no answer to a ping")
        if self._pinged_at is None and now - self._heard >= self._idle_timeout and self.jid is not None:
            self._pinged_at = now
            ping = stanza.make("iq", type="get", id=ids.new("idle"), to=self.jid)
            stanza.child(ping, ns.PING, "ping")
            self.send_stanza(ping)
        state = self.stream.sm
        if state is not None and state.overdue(now, grace):
            # The client stopped answering <r/>: its connection is gone (a phone that lost
            # its network). Cut it; the account keeps the session for a resume.
            self.log.info("no ack from the client, dropping the connection", seconds=grace)
            self._writer.transport.abort()
            return
        due = self._pinged_at + grace if self._pinged_at is not None else self._heard + self._idle_timeout
        if state is not None and state.requested_at is not None:
            due = min(due, state.requested_at + grace)
        self._idle = loop.call_at(max(due, now + 0.01), self._idle_check)

    def _host(self) -> str:
        return self.address.rsplit(":", 1)[0]
