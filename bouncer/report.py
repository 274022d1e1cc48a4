"""The bouncer's status as text: what ``bouncer status|rooms|sessions`` print and what the
"Bouncer status" ad-hoc command shows (SPEC §10), from the one status dict.

Pure presentation over JSON-ready data (``Service.status()``), so the command line can
format what the control socket returned and the running process can format its own.
"""

from __future__ import annotations

import time
from typing import Any


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    """The human-readable ``bouncer status`` text."""
    now = time.time() if now is None else now
    return "\n".join([*process_lines(status, now), *upstream_lines(status, now), *session_lines(status, now),
                      *room_lines(status), *device_lines(status, now)])


def process_lines(status: dict[str, Any], now: float) -> list[str]:
    proc = status.get("bouncer") or {}
    if not proc:
        return []
    since = proc.get("started")
    up = f", up {_ago(since, now)}" if since else ""
    lines = [f"bouncer {proc.get('version', '?')} for {status.get('account', '?')}, pid {proc.get('pid', '?')}{up}"]
    if proc.get("config"):
        lines.append(f"  config: {proc['config']}")
    if proc.get("listen"):
        lines.append(f"  listening: {', '.join(proc['listen'])}")
    return lines


def upstream_lines(status: dict[str, Any], now: float) -> list[str]:
    up = status.get("upstream") or {}
    lines = []
    if up.get("connected"):
        where = f" via {up['server']}" if up.get("server") else ""
        since = up.get("connected_since")
        when = f" since {_clock(since)} ({_ago(since, now)})" if since else ""
        lines.append(f"upstream: connected as {up.get('jid')}{where}{when}, "
                     f"{_plural(up.get('reconnects', 0), 'reconnect')}")
        sm = up.get("sm")
        if sm:
            window = f", resumable for {sm['max']} s" if sm.get("resumable") and sm.get("max") else (
                ", resumable" if sm.get("resumable") else ", not resumable")
            lines.append(f"  stream management{window}, {sm.get('unacked', 0)} unacknowledged")
    else:
        attempt = up.get("attempt") or (up.get("failures", 0) + 1)
        line = f"upstream: connecting (attempt {attempt})"
        if up.get("last_error"):
            line += f", last error: {up['last_error']}"
        if up.get("reconnects"):
            line += f", {_plural(up['reconnects'], 'reconnect')} so far"
        lines.append(line)
    if up.get("queued"):
        lines.append(f"  {_plural(up['queued'], 'stanza')} from clients waiting for the upstream")
    return lines


def session_lines(status: dict[str, Any], now: float) -> list[str]:
    sessions = status.get("sessions") or []
    lines = [f"sessions: {len(sessions)}"]
    for s in sessions:
        rooms = ", ".join(s.get("rooms") or []) or "none"
        sm = s.get("sm") or "off"
        since = s.get("since")
        when = f" since {_clock(since)} ({_ago(since, now)})" if since else ""
        presence = "available" if s.get("available") else "no presence"
        lines.append(f"  {s.get('resource')}  from {s.get('client')}{when}, {presence}, "
                     f"csi {s.get('csi', '?')}, sm {sm}, rooms: {rooms}")
    return lines


def room_lines(status: dict[str, Any]) -> list[str]:
    rooms = status.get("rooms") or []
    lines = [f"rooms: {len(rooms)}"]
    for r in rooms:
        if not isinstance(r, dict):
            lines.append(f"  {r}")
            continue
        parts = []
        if r.get("occupants") is not None:
            parts.append(_plural(_count(r["occupants"]), "occupant"))
        if r.get("sessions") is not None:
            joined = r["sessions"]
            parts.append(f"{_plural(_count(joined), 'session')}"
                         + (f" ({', '.join(map(str, joined))})" if isinstance(joined, list) and joined else ""))
        if r.get("last_message"):
            last = r["last_message"]
            parts.append(f"last message {_clock(last) if isinstance(last, (int, float)) else last}")
        if r.get("archived") is not None:
            parts.append(f"{_count(r['archived'])} archived")
        name = r.get("room") or r.get("name") or r.get("jid")
        if r.get("nick"):
            name += f" as {r['nick']}"
        if r.get("joined") is False:
            name += " (not joined)"
        lines.append(f"  {name}" + (f": {', '.join(parts)}" if parts else ""))
    return lines


def device_lines(status: dict[str, Any], now: float) -> list[str]:
    devices = status.get("devices") or []
    lines = [f"devices: {len(devices)}"]
    for d in devices:
        seen = d.get("last_seen")
        when = f"last seen {_clock(seen)} ({_ago(seen, now)})" if seen else "never seen"
        lines.append(f"  {d.get('resource')}: {when}, {_plural(d.get('backlog', 0), 'stanza')} waiting")
    if status.get("stored"):
        lines.append(f"mailbox: {_plural(status['stored'], 'stanza')} kept for devices")
    return lines


def _count(value: Any) -> int:
    return len(value) if isinstance(value, (list, tuple, dict)) else int(value or 0)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(ts: float, now: float) -> str:
    seconds = max(0, int(now - ts))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"
