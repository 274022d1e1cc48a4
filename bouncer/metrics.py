"""Prometheus metrics (SPEC §10), served on ``metrics.listen`` when it is set.

Counters are plain integers in ``COUNTS``, counted where things happen (the
connections, the link, the executor); they and what the account holds now (sessions,
devices, rooms, stored stanzas) are read when Prometheus scrapes, on the event loop
that owns them, so nothing is read mid-change. Names follow soju's and Prometheus'
conventions: ``bouncer_`` prefix, ``_total`` for counters.

The endpoint is a minimal HTTP/1.0 responder on the event loop: one ``GET`` line
and headers, bounded and timed out, then the exposition text and close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("bouncer.metrics")

REGISTRY = CollectorRegistry()


@dataclass
class Counts:
    """The counters, as plain integers: ``+=`` on a hot path (a fan-out to 20 sessions
    counts 20 writes) costs ~30 ns where a prometheus-client Counter takes a lock (~500 ns)."""

    upstream_in_stanzas: int = 0
    upstream_out_stanzas: int = 0
    downstream_in_stanzas: int = 0
    downstream_out_stanzas: int = 0
    fanout_deliveries: int = 0
    upstream_reconnects: int = 0
    login_failures: int = 0
    outbox_closes: int = 0
    stream_errors: dict[str, int] = field(default_factory=dict)  # by condition

    def stream_error(self, condition: str) -> None:
        self.stream_errors[condition] = self.stream_errors.get(condition, 0) + 1


COUNTS = Counts()
_HELP = {
    "upstream_in_stanzas": "Stanzas received from the server",
    "upstream_out_stanzas": "Stanzas sent to the server",
    "downstream_in_stanzas": "Stanzas received from clients",
    "downstream_out_stanzas": "Stanzas sent to clients",
    "fanout_deliveries": "Room messages delivered to sessions (one per session)",
    "upstream_reconnects": "Upstream sessions established after the first",
    "login_failures": "Failed client logins",
    "outbox_closes": "Sessions closed because they did not read what they were sent",
}


class AccountCollector(Collector):
    """The counters, and gauges read from ``read()`` (name -> (help, value)), at scrape time."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        for name, help_text in _HELP.items():
            yield CounterMetricFamily(f"bouncer_{name}", help_text, value=getattr(COUNTS, name))
        errors = CounterMetricFamily("bouncer_stream_errors", "Stream errors sent to clients", labels=["condition"])
        for condition, count in sorted(COUNTS.stream_errors.items()):
            errors.add_metric([condition], count)
        yield errors
        for name, (help_text, value) in self._read().items():
            yield GaugeMetricFamily(f"bouncer_{name}", help_text, value=value)


def watch(read: Callable[[], dict[str, tuple[str, float]]]) -> AccountCollector:
    """Register the metrics (``REGISTRY.unregister`` it when the service ends)."""
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
