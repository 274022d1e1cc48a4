"""Discussion history on a local join (XEP-0045 §7.2.14), served from the archive.

The client's ``<history/>`` limits (maxstanzas, maxchars, seconds, since) all
apply together; without one, a default number of messages is sent, as rooms do.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from lxml import etree

from bouncer.xmpp import ns, stanza
from bouncer.core.ports import ArchivedMessage, RoomArchive



# At most this many messages for a device coming back and asking for no history limit.
MISSED_MAX = 200


@dataclass(frozen=True)
class HistoryRequest:
    maxstanzas: int | None = None
    maxchars: int | None = None
    seconds: int | None = None
    since: float | None = None


def parse_request(history: etree._Element | None) -> HistoryRequest:
    if history is None:
        return HistoryRequest()
    return HistoryRequest(
        maxstanzas=_int(history.get("maxstanzas")),
        maxchars=_int(history.get("maxchars")),
        seconds=_int(history.get("seconds")),
        since=parse_stamp(history.get("since")),
    )


def select(archive: RoomArchive, room: str, req: HistoryRequest, now: float, default: int) -> list[ArchivedMessage]:
    """The archived messages the request asks for, oldest first."""
    limit = req.maxstanzas if req.maxstanzas is not None else default
    if req.maxchars == 0 or limit <= 0:
        return []
    since = req.since
    if req.seconds is not None:
        since = max(since or float("-inf"), now - req.seconds)
    rows = archive.latest(room, limit, since=since)
    if req.maxchars is not None:
        rows = _within_chars(rows, req.maxchars)
    return rows


def parse_stamp(value: str | None) -> float | None:
    """XEP-0082 DateTime -> POSIX time (None if absent or unreadable)."""
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def delay_stamp(el: etree._Element) -> float | None:
    delay = stanza.find(el, ns.DELAY, "delay")
    return None if delay is None else parse_stamp(delay.get("stamp"))


def _within_chars(rows: list[ArchivedMessage], maxchars: int) -> list[ArchivedMessage]:
    """The newest messages whose XML fits in ``maxchars`` characters together."""
    kept: list[ArchivedMessage] = []
    total = 0
    for row in reversed(rows):
        total += len(row.stanza.decode("utf-8", "replace"))
        if total > maxchars:
            break
        kept.append(row)
    return list(reversed(kept))


def with_delay(row: ArchivedMessage, room: str) -> etree._Element:
    """An archived message as history sends it: with a ``<delay>`` saying when it was said."""
    el = stanza.parse_stored(row.stanza)
    stanza.add_delay(el, row.ts, room)
    return el


def _int(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None
