"""In-memory stand-ins for the account's ports, for unit tests of decisions and the executor."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from lxml import etree
from structlog.testing import capture_logs

from bouncer.account.router import Router, RouterSettings
from bouncer.muc.routing import MucRouter
from bouncer.muc.state import MucSettings
from bouncer.storage.in_memory import MemoryArchive
from bouncer.xmpp.sm import StreamManagement


def parse_wire(wire: bytes) -> etree._Element:
    """A stanza as the bouncer writes it into a client stream (whose default namespace is
    ``jabber:client``), parsed as a client does: inside that stream."""
    return etree.fromstring(b"<stream xmlns='jabber:client'>" + wire + b"</stream>")[0]


class RecordingPort:
    """``core.ports.SessionPort`` that records what the account sends it."""

    def __init__(self, account: str, address: str = "127.0.0.1:1") -> None:
        self.account = account
        self.sm: StreamManagement[bytes] | None = None  # counts what it is sent, as a stream does
        self.resume: tuple[str, list[bytes]] | None = None  # (resource, what a resume sent again)
        self.failed: list[int | None] = []  # the h of each <failed/> sent
        self.address = address
        self.since = 0.0
        self.resource: str | None = None
        self.wire: list[bytes] = []  # every stanza written
        self.writes = 0  # calls that wrote (a series is one write)
        self.errors: list[tuple[str, str | None]] = []
        self._after: list[Callable[[], None]] = []

    @property
    def jid(self) -> str | None:
        return None if self.resource is None else f"{self.account}/{self.resource}"

    def bound(self, resource: str) -> None:
        self.resource = resource

    def send_serialized(self, wire: bytes) -> None:
        self.send_series([wire])

    def send_series(self, wires: list[bytes]) -> None:
        self.writes += 1
        self.wire.extend(wires)
        if self.sm is not None:
            for wire in wires:
                self.sm.on_sent(wire)

    def resumed(self, state: StreamManagement[bytes], resource: str) -> None:
        self.resource, self.sm = resource, state
        self.resume = (resource, list(state.unacked))

    def resume_failed(self, h: int | None) -> None:
        self.failed.append(h)

    def after_flush(self, callback: Callable[[], None]) -> None:
        self._after.append(callback)

    def flushed(self) -> None:
        """What the writer task does once the socket took everything."""
        callbacks, self._after = self._after, []
        for callback in callbacks:
            callback()

    def stream_error(self, condition: str, text: str | None = None) -> None:
        self.errors.append((condition, text))

    def cut(self) -> None:
        self.errors.append(("cut", None))


class RecordingUpstream:
    """``core.ports.UpstreamPort`` that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[etree._Element] = []

    def send(self, element: etree._Element) -> bool:
        self.sent.append(element)
        return True


def new_router(account: str, archive: MemoryArchive | None = None, **settings) -> Router:
    """A Router over an in-memory archive (``settings``: MucSettings fields)."""
    muc = MucRouter(archive if archive is not None else MemoryArchive(), MucSettings(**settings))
    return Router(RouterSettings(account=account, iq_timeout=30), muc)


def bind(r: Router, resource: str) -> RecordingPort:
    """A new connection bound as ``resource`` (the Router's effects are not executed)."""
    port = RecordingPort(r.account)
    r.bind(port, resource)
    port.bound(resource)
    return port


@contextlib.contextmanager
def no_bugs():
    """Fails when the account caught and logged a bug of its own meanwhile (it carries on
    in production; in a test that is a failure)."""
    with capture_logs() as logs:
        yield
    bugs = [entry for entry in logs if entry.get("exc_info")]
    assert not bugs, f"the account logged a bug: {bugs}"
