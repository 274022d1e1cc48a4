"""Process lifetime: storage, certificate, listeners, the upstream link, signals, systemd.

``run`` wires the pieces together and owns their order of start and stop; everything that
decides anything about XMPP lives elsewhere. Signals: SIGTERM/SIGINT stop gracefully,
SIGHUP reloads the config file and the TLS certificate without dropping a session. Under
systemd (``Type=notify``) READY=1 is sent once the listener is bound and the upstream
session is established, STATUS= says what the process is waiting for, WATCHDOG=1 is sent
from the event loop, and RELOADING=1/STOPPING=1 around reload and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time

import structlog

from bouncer import __version__, metrics
from bouncer.account import handover
from bouncer.account.owner import Account, build_account
from bouncer.core.events import Operate, Reconfigure, Shutdown, Tick, UpstreamEvent, UpstreamUp
from bouncer.storage.archive import SqliteArchive
from bouncer.storage.mailbox import SqliteMailbox
from bouncer.xmpp import jid
from bouncer.c2s.listener import Listener
from bouncer.c2s.stream import StreamSettings
from bouncer.config import Config, ConfigError, load_config
from bouncer.control import AlreadyRunning, ControlServer, socket_path
from bouncer.log import configure_logging
from bouncer.notify import Notifier
from bouncer.reload import differences, in_force, needs_restart
from bouncer.storage.db import GroupCommit, open_database
from bouncer.storage.restart import RestartState
from bouncer.upstream import saved as saved_upstream
from bouncer.tls import ensure_certificate, fingerprints, server_context
from bouncer.upstream.link import UpstreamLink, UpstreamSettings

log = structlog.get_logger("bouncer")

SESSIONS_GRACE = 3.0  # seconds for clients to read their system-shutdown before we cut them


class StartupError(Exception):
    """The process cannot start (port taken, already running...): one line for the user."""


async def run(config: Config, notifier: Notifier | None = None) -> None:
    """Run the bouncer until SIGTERM or SIGINT."""
    await Service(config, notifier or Notifier()).run()


class Service:
    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.started = time.time()
        self.account_jid = jid.bare(config.upstream.jid)
        self.domain = jid.domain(self.account_jid)
        self.state_dir = os.path.dirname(os.path.abspath(config.storage.path))
        self.ready = False  # READY=1 sent
        self.stopping = False
        self.listening: list[str] = []
        self.db = None
        self.account: Account | None = None
        self.link: UpstreamLink | None = None
        self.listener: Listener | None = None
        self.control = ControlServer(socket_path(config.storage.path), self._control)
        self._tls: ssl.SSLContext | None = None
        self._cert: tuple[str, str] | None = None  # (path, sha256) last logged
        self._status_sent: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._metrics: asyncio.base_events.Server | None = None
        self._gauges: metrics.AccountCollector | None = None

    # ---- lifetime ----------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.notifier.status("starting")
        started = False
        try:
            await self._start()
            started = True
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._shutdown(quiet=not started)

    async def _start(self) -> None:
        config = self.config
        try:
            await self.control.start()
        except AlreadyRunning:
            raise StartupError(f"a bouncer is already running for this config "
                               f"(its control socket {self.control.path} answers)") from None
        except OSError as e:
            raise StartupError(f"cannot create the control socket {self.control.path}: "
                               f"{e.strerror or e}") from None
        self.db = open_database(config.storage.path)
        self._tls = self._tls_context(config)

        self.account = build_account(config, SqliteArchive(self.db), SqliteMailbox(self.db), GroupCommit(self.db))
        self.account.process_status = self._with_process
        self.restart_state = RestartState(self.db)
        self._take_sessions()
        self.link = _upstream_link(config, self._on_upstream, self._take_handover())
        self.account.upstream = self.link

        self.listener = Listener(_stream_settings(config, self.domain, self.account_jid),
                                 self.account.handle, self._current_tls, config.limits)
        ports = [(config.listen.port, False)]
        if config.listen.direct_tls_port is not None:
            ports.append((config.listen.direct_tls_port, True))
        for port, direct in ports:
            try:
                bound = await self.listener.listen(config.listen.address, port, direct_tls=direct)
            except OSError as e:
                raise StartupError(f"cannot listen on {config.listen.address}:{port}: "
                                   f"{e.strerror or e}") from None
            self.listening.append(f"{config.listen.address}:{bound}" + (" (direct TLS)" if direct else ""))

        if config.metrics.listen is not None:
            await self._serve_metrics(*config.metrics.listen)
        await self.link.start()
        self._tasks.append(asyncio.create_task(self._tick()))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._monitor()))
        self._update_status()

    async def _shutdown(self, quiet: bool = False) -> None:
        """Clients get system-shutdown, then the upstream stream is closed, then the database.

        ``quiet``: the start failed (the caller reports why); just release what was taken.
        """
        self.stopping = True
        self.notifier.stopping()
        if not quiet:
            log.info("shutting down", sessions=len(self.account.router.sessions) if self.account else 0)
        await self.control.close()
        if self._metrics is not None:
            self._metrics.close()
            metrics.REGISTRY.unregister(self._gauges)
        listener = self.listener
        if listener is not None:
            for server in listener.servers:
                server.close()  # no new clients; wait_closed() comes when they are gone
        if self.link is not None and not quiet:
            # First, so that nothing the sessions' goodbyes change reaches the server:
            # contacts and rooms must see nothing of a restart.
            self._save_handover(await self.link.suspend())
        if self.account is not None:
            if not quiet:
                self._save_sessions()
            self.account.handle(Shutdown())
        if listener is not None:
            tasks = set(listener.tasks)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=SESSIONS_GRACE)
                for task in pending:  # unauthenticated or unresponsive connections
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(listener.close(), 1)
        if self.link is not None:
            await self.link.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.db is not None:
            self.db.close()
        if not quiet:
            log.info("stopped")
        self.notifier.close()

    # ---- the upstream session across restarts -----------------------------------------
    def _take_handover(self):
        """The XEP-0198 session the previous process left to resume, with the account's
        view of it (contacts, rooms); None when it left none (first start, crash)."""
        assert self.account is not None
        saved, view = self.restart_state.take("upstream"), self.restart_state.take("account")
        if saved is None:
            return None
        saved_at, data = saved
        state = saved_upstream.load(data, _upstream_settings(self.config).full_jid, time.time() - saved_at)
        rooms = handover.load(self.account.router, view[1]) if view is not None and state and state.id else 0
        log.info("upstream session saved by the last run", resumable=bool(state and state.id),
                 unacked=len(state.unacked) if state else 0, age=round(time.time() - saved_at, 1), rooms=rooms)
        return state

    def _save_handover(self, state) -> None:
        if state is None or self.account is None:
            return
        now = time.time()
        self.restart_state.save("upstream", saved_upstream.dump(state, _upstream_settings(self.config).full_jid), now)
        self.restart_state.save("account", handover.dump(self.account.router), now)
        log.info("upstream session saved for the next run", unacked=len(state.unacked))

    # ---- the downstream XEP-0198 sessions across restarts -----------------------------------
    def _save_sessions(self) -> None:
        assert self.account is not None
        data = self.account.save_sessions()
        self.restart_state.save("sessions", data, time.time())
        if data["sessions"]:
            log.info("sessions saved for the next run", sessions=[s["resource"] for s in data["sessions"]])

    def _take_sessions(self) -> None:
        assert self.account is not None
        saved = self.restart_state.take("sessions")
        if saved is not None:
            restored = self.account.restore_sessions(saved[1])
            if restored:
                log.info("sessions saved by the last run, waiting for their clients", sessions=restored,
                         age=round(time.time() - saved[0], 1))

    async def _tick(self, interval: float = 1.0) -> None:
        """Time passing, as an event for the account (it has no clock of its own)."""
        assert self.account is not None
        while True:
            await asyncio.sleep(interval)
            self.account.handle(Tick(time.time()))

    # ---- readiness and status for systemd ---------------------------------------------
    def _on_upstream(self, event: UpstreamEvent) -> None:
        assert self.account is not None
        self.account.handle(event)
        if isinstance(event, UpstreamUp) and self.listening and not self.ready:
            self.ready = True
            text = self._status_text()
            self._status_sent = text
            self.notifier.ready(text)
            log.info("ready", upstream=event.jid, listening=self.listening)
        else:
            self._update_status()

    def _status_text(self) -> str:
        link, account = self.link, self.account
        if self.stopping:
            return "stopping"
        if link is None or account is None or not self.listening:
            return "starting"
        n = len(account.router.sessions)
        sessions = f"{n} session" + ("" if n == 1 else "s")
        if link.connected:
            return f"ready: upstream {self.account_jid}, {sessions}"
        text = f"upstream: {'reconnecting' if self.ready else 'connecting'} (attempt {link.failures + 1})"
        if link.last_error:
            error = link.last_error if len(link.last_error) <= 120 else link.last_error[:117] + "..."
            text += f", last error: {error}"
        return f"{text}; {sessions}" if self.ready else text

    def _update_status(self) -> None:
        text = self._status_text()
        if text != self._status_sent and not self.stopping:
            self._status_sent = text
            self.notifier.status(text)

    async def _monitor(self) -> None:
        """WATCHDOG=1 at half WATCHDOG_USEC from this loop (a wedged loop stops them) and
        STATUS= when the upstream attempt or the session count changes."""
        loop = asyncio.get_running_loop()
        interval = self.notifier.watchdog_interval
        tick = min(interval, 1.0) if interval else 1.0
        next_ping = loop.time()
        while True:
            if interval and loop.time() >= next_ping:
                self.notifier.watchdog()
                next_ping = loop.time() + interval
            self._update_status()
            await asyncio.sleep(tick)

    # ---- SIGHUP ------------------------------------------------------------------------
    def _on_sighup(self) -> None:
        if self.stopping:
            return
        if self.listener is None or not self.listening:
            log.warning("reload ignored", reason="still starting")
            return
        try:
            self.reload()  # synchronous: no second SIGHUP can interleave with it
        except Exception:  # a bug must not take the process down with it
            log.exception("reload failed", key=None, problem="internal error")

    def reload(self) -> bool:
        """Re-read the config file and the certificate; True when the new config is in force.

        A broken file changes nothing. Values only a restart can apply keep their old value.
        """
        if self.ready:
            self.notifier.reloading()
        try:
            ok = self._reload()
        finally:
            if self.ready:
                self._status_sent = self._status_text()
                self.notifier.ready(self._status_sent)
            else:
                self._update_status()
        return ok

    def _reload(self) -> bool:
        old = self.config
        log.info("reloading", config=old.source)
        if old.source is None:
            log.error("reload failed", key=None, problem="the config was not read from a file")
            return False
        try:
            new = load_config(old.source)
            tls = self._tls_context(new)
        except ConfigError as e:
            for mistake in e.errors:
                log.error("reload failed", key=mistake.key, problem=mistake.problem)
            return False
        except (OSError, ValueError) as e:
            log.error("reload failed", key="listen.cert", problem=f"cannot use the certificate: {e}")
            return False
        for key in differences(old, new):
            if needs_restart(key):
                log.warning("reload needs restart", key=key)
        new = in_force(old, new)
        changed = differences(old, new)
        self._apply(new, tls)
        for warning in new.warnings:
            log.warning("config_warning", problem=warning)
        log.info("config reloaded", changed=changed)
        return True

    def _apply(self, config: Config, tls: ssl.SSLContext) -> None:
        assert self.account is not None and self.listener is not None
        if (config.log.format, config.log.level) != (self.config.log.format, self.config.log.level):
            configure_logging(config.log.format, config.log.level)
        self._tls = tls  # next STARTTLS and direct TLS handshakes; open sessions keep theirs
        # New logins see the new credentials, TLS policy, stanza limit and queue cap.
        self.listener.settings = _stream_settings(config, self.domain, self.account_jid)
        self.listener.apply(config.limits)
        self.account.handle(Reconfigure(config))
        self.config = config

    # ---- TLS ---------------------------------------------------------------------------
    def _tls_context(self, config: Config) -> ssl.SSLContext:
        """A new server context from the configured or the self-signed certificate."""
        cert, key = config.listen.cert, config.listen.key
        generated = cert is None or key is None
        if generated:
            cert, key, _ = ensure_certificate(self.state_dir, self.domain)
        assert cert is not None and key is not None
        context = server_context(cert, key)
        # The direct-TLS socket got its context once, when it was bound: switch each new
        # handshake over to the current one (the callback runs with or without SNI).
        context.sni_callback = self._switch_context
        shown = fingerprints(cert)
        if (cert, shown["sha256"]) != self._cert:
            self._cert = (cert, shown["sha256"])
            log.info("using self-signed certificate" if generated else "using certificate", path=cert, **shown)
        return context

    def _current_tls(self) -> ssl.SSLContext:
        assert self._tls is not None
        return self._tls

    def _switch_context(self, ssl_object, _server_name, context) -> None:
        if self._tls is not None and context is not self._tls:
            ssl_object.context = self._tls

    async def _serve_metrics(self, address: str, port: int) -> None:
        try:
            self._metrics = await metrics.serve(address, port)
        except OSError as e:
            raise StartupError(f"cannot listen on {address}:{port} for metrics.listen: {e.strerror or e}") from None
        self._gauges = metrics.watch(self._gauge_values)

    def _gauge_values(self) -> dict[str, tuple[str, float]]:
        connected = self.link is not None and self.link.connected
        values = {"upstream_connected": ("1 while the upstream session is up", float(connected))}
        return values | (self.account.gauges() if self.account is not None else {})

    # ---- control socket ------------------------------------------------------------------
    def _control(self, request: dict) -> dict:
        """``status`` answers with the status dict (``bouncer status --json``); every other
        command is the account's (``bouncer rooms``, ``leave ROOM``...) and answers lines."""
        if request.get("command") == "status":
            return {"ok": True, "status": self.status()}
        if self.account is None:
            return {"ok": False, "error": "the bouncer is starting"}
        told: dict = {}
        argument = request.get("argument")
        self.account.handle(Operate(str(request["command"]), argument if isinstance(argument, str) else "",
                                    lambda lines, failed: told.update(lines=list(lines), failed=failed)))
        if "lines" not in told:
            return {"ok": False, "error": "internal error (see the bouncer's log)"}
        return {"ok": not told["failed"], "lines": told["lines"], "error": "\n".join(told["lines"])}

    def status(self) -> dict:
        """Account.status() plus what only the process knows (JSON-ready)."""
        if self.account is None:
            return self._with_process({"account": self.account_jid, "upstream": {"connected": False},
                                       "sessions": [], "rooms": [], "stored": 0})
        return self.account.full_status()

    def _with_process(self, status: dict) -> dict:
        link = self.link
        upstream = status.setdefault("upstream", {})
        if link is not None:
            upstream.update(connected=link.connected, jid=link.jid, server=link.server,
                            connected_since=link.connected_since, reconnects=link.reconnects,
                            failures=link.failures, last_error=link.last_error, sm=link.sm_status())
            if not link.connected:
                upstream["attempt"] = link.failures + 1
        status["bouncer"] = {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "ready": self.ready,
            "config": self.config.source,
            "listen": list(self.listening),
            "status": self._status_text(),
        }
        return status


def _stream_settings(config: Config, domain: str, account_jid: str) -> StreamSettings:
    return StreamSettings(
        domain=domain,
        username=jid.localpart(account_jid) or "",
        credentials=config.downstream.credentials,
        tls_available=True,
        tls_required=config.listen.tls == "required",
        max_stanza_size=config.limits.max_stanza_size,
        sm_max=int(config.sessions.hibernation),
    )


def _upstream_link(config: Config, on_event, resume_from) -> UpstreamLink:
    keepalive = config.upstream.keepalive
    return UpstreamLink(_upstream_settings(config), on_event, keepalive=keepalive,
                        keepalive_timeout=min(keepalive, 30.0), resume_from=resume_from)


def _upstream_settings(config: Config) -> UpstreamSettings:
    up = config.upstream
    return UpstreamSettings(
        jid=up.jid,
        password=up.password,
        host=up.host,
        port=up.port,
        tls=up.tls,
        verify=up.verify,
        ca_file=up.ca_file,
    )
