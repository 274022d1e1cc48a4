"""The asyncio edge of the upstream: one XMPP client session kept alive forever.

Everything XMPP is decided by the sans-IO ``ClientStream``; this module only
connects (``connect.py``), moves bytes, runs the stream's timer, and reconnects
with exponential backoff and jitter, never giving up. Each failed attempt and
each lost stream is logged with its reason; a lost stream is resumed
(XEP-0198) when the server still holds it, so nothing is sent or received
twice and nothing is lost.

Events for the account (``core.events``, called synchronously on the loop):
``UpstreamUp`` (``resumed=False`` means a NEW session: the account restores
presence, rooms and roster), ``UpstreamDown`` (only after an UpstreamUp),
``UpstreamStanza`` (only while up) and ``UpstreamReadHandled`` after each read.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Literal

import structlog
from lxml import etree

from bouncer.config_values import is_loopback
from bouncer.upstream import connect
from bouncer.core.events import UpstreamDown, UpstreamEvent, UpstreamReadHandled, UpstreamStanza, UpstreamUp
from bouncer.upstream.events import Ended, Established, StanzaReceived, TlsRequired
from bouncer.upstream.stream import ClientSettings, ClientStream, Outgoing, UpstreamPhase
from bouncer import metrics
from bouncer.xmpp import jid, sm, stanza

_log = structlog.get_logger("bouncer.upstream")
READ_SIZE = 65536
DEFAULT_RESOURCE = "bouncer"




@dataclass(frozen=True)
class UpstreamSettings:
    """How to reach the upstream server.

    ``jid`` may be bare (the resource ``bouncer`` is then used) or full.
    ``host``/``port`` absent: SRV, then the domain's A/AAAA. ``tls``: ``starttls``
    (default), ``direct`` (XEP-0368) or ``plain`` (no TLS: loopback only).
    ``verify=False`` disables certificate checks; ``ca_file`` trusts that CA (or
    self-signed certificate) instead of the system's.
    """

    jid: str
    password: str
    host: str | None = None
    port: int | None = None
    tls: Literal["starttls", "direct", "plain"] = "starttls"
    verify: bool = True
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.tls not in connect.DEFAULT_PORTS:
            raise ValueError(f"tls must be starttls, direct or plain, not {self.tls!r}")
        if self.tls == "plain" and not is_loopback(self.host):
            raise ValueError("tls='plain' (no encryption) is only allowed to a loopback host")
        if jid.localpart(self.jid) is None or not jid.domain(self.jid):
            raise ValueError(f"not an account JID: {self.jid!r}")

    @property
    def full_jid(self) -> str:
        return self.jid if jid.resource(self.jid) else f"{self.jid}/{DEFAULT_RESOURCE}"

    def __repr__(self) -> str:  # never show the password
        return (f"UpstreamSettings(jid={self.jid!r}, host={self.host!r}, port={self.port!r}, "
                f"tls={self.tls!r}, verify={self.verify!r}, ca_file={self.ca_file!r})")


class UpstreamLink:
    """Keeps one upstream session alive and moves raw stanzas through it.

    Backoff: ``backoff_base * backoff_factor**n`` capped at ``backoff_cap``, each
    delay drawn from [d/2, d]; ``n`` restarts at 0 once a session stayed up
    ``stable_after`` seconds. The first attempt is immediate.
    ``resume_from``: the SM state a previous process saved (a restart resumes it).
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        on_event: Callable[[UpstreamEvent], None],
        *,
        log=None,
        backoff_base: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_cap: float = 60.0,
        stable_after: float = 10.0,
        negotiation_timeout: float = 60.0,
        keepalive: float = 60.0,
        keepalive_timeout: float = 30.0,
        close_timeout: float = 5.0,
        resume_from: sm.StreamManagement[Outgoing] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._on_event = on_event
        self.log = (log or _log).bind(account=jid.bare(settings.jid))
        self._client = ClientSettings(settings.full_jid, settings.password, settings.tls,
                                      keepalive=keepalive, keepalive_timeout=keepalive_timeout,
                                      negotiation_timeout=negotiation_timeout)
        self._tls = connect.client_context(settings.verify, settings.ca_file) if settings.tls != "plain" else None
        self._backoff = (backoff_base, backoff_factor, backoff_cap)
        self._stable_after = stable_after
        self._close_timeout = close_timeout
        self._rand = rand
        self._carry = resume_from
        self._task: asyncio.Task | None = None
        self._stream: ClientStream | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._stopping = False
        self._up_since = 0.0
        self._backoff_exp = 0
        self.connected = False
        self.jid: str | None = None
        self.server: str | None = None
        self.connected_since: float | None = None  # wall clock, for status
        self.reconnects = 0
        self.failures = 0  # failed attempts since the last established stream
        self.last_error: str | None = None
        self.attempts = 0

    # ---- public API -------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if self._task is not None:
            raise RuntimeError("UpstreamLink already started")
        self._stopping = False
        self.log.info("upstream starting", target=self.settings.host or "SRV", tls=self.settings.tls)
        self._task = asyncio.create_task(self._run(), name="upstream")

    def send(self, element: etree._Element) -> bool:
        """Queue a stanza for the server; False (nothing sent) while no stream is up."""
        if element.tag not in stanza.STANZA_TAGS:
            raise ValueError(f"not a jabber:client stanza: {element.tag!r}")
        stream = self._stream
        if not self.connected or stream is None or stream.phase is not UpstreamPhase.OPEN:
            return False
        stream.send_stanza(element)
        metrics.COUNTS.upstream_out_stanzas += 1
        if self._flush_soon is None:  # one write (and one <r/>) per burst
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)
        return True

    async def stop(self) -> None:
        """Close the stream cleanly (``</stream>``: the server ends the session)."""
        self._stopping = True
        stream, task = self._stream, self._task
        if task is None:
            return  # never started, or already stopped or suspended
        if stream is not None and stream.phase is UpstreamPhase.OPEN:
            stream.close()
            self._flush()
            await asyncio.wait([task], timeout=self._close_timeout)
        await self._halt("stopped")
        self._carry = None

    async def suspend(self) -> sm.StreamManagement[Outgoing] | None:
        """Drop the connection WITHOUT closing the stream, for a restart to resume it.

        Returns the XEP-0198 state to save (None: nothing resumable). The server
        keeps the session for its resumption window; contacts and rooms see nothing.
        """
        self._stopping = True
        stream = self._stream
        if stream is not None and stream.phase is UpstreamPhase.OPEN:
            self._flush()
            self._carry = stream.carry_over()
        carry, self._carry = self._carry, None
        kept = carry is not None and carry.id is not None
        await self._halt("stopped, session kept for the next start" if kept else "stopped")
        return carry if kept else None

    def sm_status(self) -> dict | None:
        """XEP-0198 on the stream now up, for ``bouncer status`` (None: not enabled)."""
        stream = self._stream
        state = stream.sm if stream is not None and self.connected else None
        if state is None:
            return None
        return {"resumable": state.id is not None, "max": state.max, "unacked": len(state.unacked),
                "received": state.inbound}

    # ---- the connection loop --------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                reason = await self._attempt()
            except Exception as exc:  # a bug of ours must not end the link for good
                self.log.exception("upstream attempt crashed")
                reason = self._failed(f"internal error: {exc!r}")
            if self._stopping:
                return
            delay = self._next_delay()
            self.log.info("upstream retrying", delay=round(delay, 3), reason=reason)
            await asyncio.sleep(delay)

    async def _attempt(self) -> str:
        """One connection, from connect to its end; returns why it ended."""
        self.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            reader, writer, target = await self._connect()
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            return self._failed(_describe(exc))
        stream = ClientStream(self._client, previous=self._carry)
        self._stream, self._writer = stream, writer
        self.server = str(target)
        ended: str | None = None
        try:
            stream.start(loop.time(), connect.channel_bindings(writer.get_extra_info("ssl_object"))
                         if target.direct_tls else None)
            self._flush()
            self._arm_timer()
            while ended is None:
                data = await reader.read(READ_SIZE)
                if data:
                    events = stream.receive_data(data, loop.time())
                else:
                    events = stream.connection_lost("the server closed the connection")
                ended = await self._handle(events, writer)
                self._arm_timer()
                if stream.phase is UpstreamPhase.CLOSED and ended is None:
                    ended = self.last_error or "closed"  # ended by the timer, which said why
                self._flush()
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            ended = await self._handle(stream.connection_lost(_describe(exc)), writer) or _describe(exc)
        finally:
            self._disarm()
            if self._stream is stream:
                self._carry = stream.carry_over()
                self._stream = self._writer = None
            writer.transport.abort()
        return ended

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, connect.Target]:
        s = self.settings
        errors = []
        for target in await connect.targets(s.jid, s.tls, s.host, s.port):
            try:
                ssl_ctx = self._tls if target.direct_tls else None
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    target.host, target.port, ssl=ssl_ctx,
                    server_hostname=jid.domain(s.jid) if ssl_ctx else None,
                    limit=READ_SIZE * 4), self._client.negotiation_timeout)
                return reader, writer, target
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                errors.append(f"{target}: {_describe(exc)}")
        raise ConnectionError("; ".join(errors) or "no address to connect to")

    async def _handle(self, events: list, writer: asyncio.StreamWriter) -> str | None:
        """Act on the stream's events; the reason when the stream ended."""
        try:
            return await self._act(events, writer)
        finally:
            if any(isinstance(e, StanzaReceived) for e in events):
                self._emit(UpstreamReadHandled())

    async def _act(self, events: list, writer: asyncio.StreamWriter) -> str | None:
        for event in events:
            match event:
                case StanzaReceived(element):
                    if self.connected:
                        metrics.COUNTS.upstream_in_stanzas += 1
                        self._emit(UpstreamStanza(element))
                case Established(bound, resumed):
                    self._up(bound, resumed)
                case TlsRequired():
                    await self._start_tls(writer)
                case Ended(reason, retry_later):
                    if retry_later:
                        self._failed(reason)
                    if not self._stopping:  # stop() and suspend() say why themselves
                        self._down(reason)
                    return reason
        return None

    async def _start_tls(self, writer: asyncio.StreamWriter) -> None:
        assert self._tls is not None and self._stream is not None
        self._flush()
        await writer.start_tls(self._tls, server_hostname=jid.domain(self.settings.jid),
                               ssl_handshake_timeout=self._client.negotiation_timeout)
        self._stream.tls_started(connect.channel_bindings(writer.get_extra_info("ssl_object")))

    # ---- writing and the stream's timer ----------------------------------------------
    def _flush(self) -> None:
        self._flush_soon = None
        stream, writer = self._stream, self._writer
        if stream is None or writer is None:
            return
        data = stream.data_to_send(asyncio.get_running_loop().time())
        if data and not writer.transport.is_closing():
            writer.write(data)

    def _arm_timer(self) -> None:
        """Schedule the stream's timer; earlier than planned when its deadline moved up."""
        stream = self._stream
        if stream is None or stream.phase is UpstreamPhase.CLOSED:
            return
        due = stream.next_timer()
        if self._timer is not None:
            if self._timer.when() <= due:
                return  # fires in time, and checks again then
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        stream, writer = self._stream, self._writer
        if stream is None or writer is None:
            return
        for event in stream.handle_timer(asyncio.get_running_loop().time()):
            if isinstance(event, Ended):  # the read loop then sees the transport end
                self._failed(event.reason)
                self._down(event.reason)
                self._flush()
                writer.transport.abort()
                return
        self._flush()
        self._timer = None
        self._arm_timer()

    def _disarm(self) -> None:
        for handle in (self._timer, self._flush_soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush_soon = None

    # ---- state and events --------------------------------------------------------------
    def _emit(self, event: UpstreamEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            self.log.exception("upstream event handler failed", input=type(event).__name__)

    def _up(self, bound: str, resumed: bool) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        if self.jid is not None:
            self.reconnects += 1
            metrics.COUNTS.upstream_reconnects += 1
        self.connected, self.jid, self.failures = True, bound, 0
        self._up_since = loop.time()
        self.connected_since = time.time()
        self.log.info("upstream established", jid=bound, resumed=resumed, server=self.server)
        self._emit(UpstreamUp(bound, resumed))

    def _down(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected, self.connected_since = False, None
        if asyncio.get_running_loop().time() - self._up_since >= self._stable_after:
            self._backoff_exp = 0
        self.log.info("upstream down", reason=reason)
        self._emit(UpstreamDown(reason))

    def _failed(self, reason: str) -> str:
        if not self.connected:
            self.failures += 1
            self.log.warning("upstream connection failed", reason=reason, attempt=self.failures)
        self.last_error = reason
        return reason

    def _next_delay(self) -> float:
        base, factor, cap = self._backoff
        delay = min(cap, base * factor**self._backoff_exp)
        self._backoff_exp += 1
        return delay * (0.5 + 0.5 * self._rand())

    async def _halt(self, reason: str) -> None:
        task, self._task = self._task, None
        writer = self._writer
        if writer is not None:
            writer.transport.abort()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._disarm()
        self._stream = self._writer = None
        self._down(reason)
        self.log.info("upstream stopped", reason=reason)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message or text}"
    return f"{exc.__class__.__name__}: {text}"
