"""Prometheus metrics (SPEC §10), served on ``metrics.listen`` when it is set.

Counters are module-level, as prometheus-client has them, counted where things happen
(the connections, the link, the executor); what the account holds now (sessions,
devices, rooms, stored stanzas) is read when Prometheus scrapes, on the event loop
that owns it, so it is never read mid-change. Names follow soju's and Prometheus'
conventions: ``bouncer_`` prefix, ``_total`` for counters.

The endpoint is a minimal HTTP/1.0 responder on the event loop: one ``GET`` line
and headers, bounded and timed out, then the exposition text and close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("bouncer.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

UPSTREAM_IN = Counter("bouncer_upstream_in_stanzas", "Stanzas received from the server", registry=REGISTRY)
UPSTREAM_OUT = Counter("bouncer_upstream_out_stanzas", "Stanzas sent to the server", registry=REGISTRY)
DOWNSTREAM_IN = Counter("bouncer_downstream_in_stanzas", "Stanzas received from clients", registry=REGISTRY)
DOWNSTREAM_OUT = Counter("bouncer_downstream_out_stanzas", "Stanzas sent to clients", registry=REGISTRY)
FANOUT = Counter("bouncer_fanout_deliveries", "Room messages delivered to sessions (one per session)",
                 registry=REGISTRY)
RECONNECTS = Counter("bouncer_upstream_reconnects", "Upstream sessions established after the first",
                     registry=REGISTRY)
LOGIN_FAILURES = Counter("bouncer_login_failures", "Failed client logins", registry=REGISTRY)
STREAM_ERRORS = Counter("bouncer_stream_errors", "Stream errors sent to clients", ["condition"], registry=REGISTRY)
OUTBOX_CLOSES = Counter("bouncer_outbox_closes", "Sessions closed because they did not read what they were sent",
                        registry=REGISTRY)


class AccountCollector(Collector):
    """Gauges read from ``read()`` at scrape time: a dict of name -> (help, value)."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, value) in self._read().items():
            yield GaugeMetricFamily(f"bouncer_{name}", help_text, value=value)

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only


def watch(read: Callable[[], dict[str, tuple[str, float]]]) -> AccountCollector:
    """Register the account's gauges (``REGISTRY.unregister`` it when the service ends)."""
    collector = AccountCollector(read)
    REGISTRY.register(collector)
    return collector


MAX_REQUEST = 8192
TIMEOUT = 5.0


async def serve(address: str, port: int) -> asyncio.base_events.Server:
    """Serve ``GET /metrics`` (and ``/``) at ``address:port``."""
    server = await asyncio.start_server(_answer, address, port, limit=MAX_REQUEST)
    log.info("metrics listening", address=address, port=port)
    return server


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        method, path = (request.split(b" ") + [b"", b""])[:2]
        if method != b"GET":
            writer.write(_response(b"405 Method Not Allowed", b"text/plain", b"GET only\n"))
        elif path.split(b"?")[0] not in (b"/metrics", b"/"):
            writer.write(_response(b"404 Not Found", b"text/plain", b"see /metrics\n"))
        else:
            writer.write(_response(b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(REGISTRY)))
        await asyncio.wait_for(writer.drain(), TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.0 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: " + \
        str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    return head + body
