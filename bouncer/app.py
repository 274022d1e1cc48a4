"""Process lifetime: storage, certificate, listeners, the upstream link, signals.

``run`` wires the pieces together and owns their order of start and stop;
everything that decides anything lives elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import structlog

from bouncer import jid
from bouncer.account import Account
from bouncer.c2s.listener import Listener
from bouncer.c2s.stream import StreamSettings
from bouncer.config import Config
from bouncer.router import Router, RouterSettings
from bouncer.storage.db import open_database
from bouncer.storage.offline import OfflineStore
from bouncer.tls import ensure_certificate, server_context
from bouncer.upstream import UpstreamLink, UpstreamSettings

log = structlog.get_logger("bouncer")


async def run(config: Config) -> None:
    """Run the bouncer until SIGTERM or SIGINT."""
    account_jid = jid.bare(config.upstream.jid)
    domain = jid.domain(account_jid)
    state_dir = os.path.dirname(os.path.abspath(config.storage.path))
    db = open_database(config.storage.path)

    cert, key = config.listen.cert, config.listen.key
    if cert is None or key is None:
        cert, key, fingerprint = ensure_certificate(state_dir, domain)
        log.info("using self-signed certificate", path=cert, sha256=fingerprint)
    tls_context = server_context(cert, key)

    router = Router(
        RouterSettings(
            account=account_jid,
            idle_show=config.presence.idle_show,
            idle_status=config.presence.idle_status,
            iq_timeout=config.limits.iq_timeout,
            upstream_queue=config.limits.upstream_queue,
        )
    )
    account = Account(router, OfflineStore(db))
    link = UpstreamLink(_upstream_settings(config), account.on_upstream)
    account.upstream = link

    listener = Listener(
        StreamSettings(
            domain=domain,
            username=jid.localpart(account_jid) or "",
            credentials=config.downstream.credentials,
            tls_available=True,
            tls_required=config.listen.tls == "required",
            max_stanza_size=config.limits.max_stanza_size,
        ),
        account,
        lambda: tls_context,
        config.limits.session_queue,
    )
    await listener.listen(config.listen.address, config.listen.port)
    if config.listen.direct_tls_port is not None:
        await listener.listen(config.listen.address, config.listen.direct_tls_port, direct_tls=True)
    await link.start()
    ticker = asyncio.create_task(account.tick())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down")
    ticker.cancel()
    await listener.close()
    account.shutdown()
    await asyncio.sleep(0)  # let writers pick up the stream errors
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*listener.tasks, return_exceptions=True), 3)
    await link.stop()
    db.close()
    log.info("stopped")


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
