"""The IO the account reaches, as small Protocols (soju's ``msgstore.Store``).

The account and its decisions see only these: a downstream connection, the
upstream link, the room archive, the offline store. SQLite implements the
stores (``storage/``), the asyncio edges implement the rest, and in-memory
doubles (``storage/in_memory.py``) let the decisions be unit-tested without files
or sockets. The records that cross a port are defined here with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lxml import etree

from bouncer.xmpp import ids
from bouncer.xmpp.sm import StreamManagement

# ---- records ------------------------------------------------------------------------------
LOCAL_ID_PREFIX = ids.PREFIX  # then the archive's row id, for messages the room numbered not
PRUNE_BATCH = 5000  # messages a retention rule removes from a room per call, at most


@dataclass(frozen=True)
class ArchivedMessage:
    id: int
    stanza_id: str | None
    ts: float
    nick: str | None
    stanza: bytes

    @property
    def archive_id(self) -> str:
        """The id clients page by: the room's stanza-id, or ours when it gave none."""
        return self.stanza_id if self.stanza_id is not None else f"{LOCAL_ID_PREFIX}{self.id}"


@dataclass(frozen=True)
class HeldRoom:
    jid: str
    nick: str
    password: str | None


@dataclass(frozen=True)
class StoredStanza:
    id: int
    received: float
    stanza: bytes


@dataclass(frozen=True)
class Device:
    """A resource that bound once, and the last mailbox id it received (SPEC §14)."""

    resource: str
    cursor: int
    last_seen: float


# ---- IO -------------------------------------------------------------------------------------
class SessionPort(Protocol):
    """One downstream connection, as the account sees it."""

    address: str  # the client's address, for logs and status
    since: float  # when it connected (wall clock)

    @property
    def jid(self) -> str | None: ...  # the session's full JID once bound

    def bound(self, resource: str) -> None: ...
    def resumed(self, state: StreamManagement[bytes], resource: str) -> None: ...  # XEP-0198
    def resume_failed(self, h: int | None) -> None: ...
    def send_serialized(self, wire: bytes) -> None: ...  # one stanza
    def send_series(self, wires: list[bytes]) -> None: ...  # stanzas in order, one write
    def after_flush(self, callback: Callable[[], None]) -> None: ...
    def stream_error(self, condition: str, text: str | None = None) -> None: ...
    def cut(self) -> None: ...  # the connection ends without a word (a restart: the client resumes)


class UpstreamPort(Protocol):
    def send(self, element: etree._Element) -> bool: ...  # False: no stream up, nothing sent


class RoomArchive(Protocol):
    """Every groupchat message of every held room, and which rooms are held."""

    def store(self, room: str, stanza_id: str | None, ts: float, nick: str | None, stanza: bytes) -> bool: ...
    def place(self, room: str, stanza_id: str, ts: float, nick: str | None, stanza: bytes) -> bool: ...
    def latest(self, room: str, limit: int, *, since: float | None = None) -> list[ArchivedMessage]: ...
    def page(self, room: str, *, limit: int, start: float | None = None, end: float | None = None,
             nick: str | None = None, after: str | None = None, before: str | None = None,
             last_page: bool = False) -> tuple[list[ArchivedMessage], bool] | None: ...
    def last_stanza_id(self, room: str) -> str | None: ...
    def last_ts(self, room: str) -> float | None: ...
    def count(self, room: str) -> int: ...
    def prune(self, room: str, now: float, max_age_days: float | None,
              max_messages: int | None) -> int: ...  # removed, at most PRUNE_BATCH per rule
    def hold(self, room: HeldRoom) -> None: ...
    def release(self, jid: str) -> None: ...
    def held(self) -> list[HeldRoom]: ...


class Mailbox(Protocol):
    """1:1 stanzas kept, in arrival order, until every device has them (SPEC §14)."""

    def add(self, stanza: bytes, received: float) -> int: ...  # its id, increasing
    def since(self, cursor: int) -> list[StoredStanza]: ...  # ids above ``cursor``, in order
    def count(self, cursor: int = 0) -> int: ...
    def last_id(self) -> int: ...  # 0 when empty
    def prune(self, upto: int, older_than: float) -> int: ...  # ids <= upto, and the old
    def devices(self) -> list[Device]: ...
    def save_device(self, device: Device) -> None: ...
    def forget_device(self, resource: str) -> None: ...
    def mark(self, name: str) -> str | None: ...  # a named position kept across restarts
    def set_mark(self, name: str, value: str) -> None: ...


class Transaction(Protocol):
    """One write transaction per read from the upstream (``storage.db.GroupCommit``)."""

    def begin(self) -> None: ...
    def commit(self) -> None: ...
