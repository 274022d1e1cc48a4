"""The control socket: how ``bouncer status`` asks the running process (SPEC §10).

A Unix stream socket, mode 0600, next to the database (``<storage dir>/<db name>.control``,
e.g. ``/var/lib/bouncer/bouncer.control``) or in ``$RUNTIME_DIRECTORY`` when systemd sets
one; the command derives the same path from the same config file. The protocol is one
JSON request line (``{"command": "status"}``) and one JSON response line
(``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import yaml

from bouncer.config import ConfigError, StorageConfig

log = structlog.get_logger("bouncer.control")

SUFFIX = ".control"
MAX_LINE = 65536
TIMEOUT = 5.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
_SUN_PATH_MAX = 107

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class AlreadyRunning(Exception):
    """Another process answers on this config's control socket."""


class NotRunning(Exception):
    """Nothing answers on the control socket; ``str()`` says why."""


def socket_path(storage_path: str, environ: Mapping[str, str] | None = None) -> str:
    """The control socket of the bouncer whose database is ``storage_path``."""
    env = os.environ if environ is None else environ
    name = os.path.splitext(os.path.basename(storage_path))[0] + SUFFIX
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime or os.path.dirname(storage_path), name)


def storage_path_of(config_file: str) -> str:
    """``storage.path`` of a config file, resolved as ``load_config`` does it.

    Deliberately lenient: ``bouncer status`` must work where the full config does not
    load, e.g. as root while ``password_file`` is a systemd credential that exists only
    inside the running service.
    """
    try:
        with open(config_file, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(config_file, f"cannot read the config file: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(config_file, f"invalid config file: {' '.join(str(e).split())}") from None
    storage = document.get("storage") if isinstance(document, dict) else None
    path = storage.get("path") if isinstance(storage, dict) else None
    if not isinstance(path, str) or not path:
        path = StorageConfig.path
    base = os.path.dirname(os.path.abspath(config_file))
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


# --- server side ------------------------------------------------------------------------------

class ControlServer:
    """Answers requests on the control socket with ``handler(request) -> response``."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        """Bind; raises AlreadyRunning when a live bouncer owns the socket, OSError otherwise."""
        if _is_socket(self.path):
            if await _answers(self.path):
                raise AlreadyRunning(self.path)
            os.unlink(self.path)  # left by a process that died: stale
        umask = os.umask(0o077)  # owner-only from its first instant, not only after chmod
        try:
            with _short_path(self.path) as bind_path:
                self._server = await asyncio.start_unix_server(self._serve, bind_path, limit=MAX_LINE)
        finally:
            os.umask(umask)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        log.debug("control socket listening", path=self.path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._server = None
        # Remove it only if it is still ours (not one a newer process bound meanwhile).
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            response = self._answer(line)
            writer.write(json.dumps(response, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            log.debug("control request failed", error=str(e) or type(e).__name__)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "expected one JSON object on one line"}
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            return {"ok": False, "error": "expected {\"command\": ...}"}
        log.debug("control request", command=req["command"])
        if req["command"] == "ping":
            return {"ok": True}
        try:
            return self._handler(req)
        except Exception:
            log.exception("control request failed", command=req["command"])
            return {"ok": False, "error": "internal error (see the bouncer's log)"}


async def _answers(path: str, timeout: float = 2.0) -> bool:
    """Whether a process answers a ping on the socket at ``path``."""
    try:
        with _short_path(path) as connect_path:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(connect_path), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b'{"command": "ping"}\n')
        line = await asyncio.wait_for(reader.readline(), timeout)
        return json.loads(line).get("ok") is True
    except (OSError, asyncio.TimeoutError, ValueError, AttributeError):
        return True  # something listens there, even if it is not a bouncer that answers
    finally:
        writer.close()


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def _short_path(path: str):
    """``path``, or the same file reached through /proc/self/fd when it is too long to bind."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


# --- client side ------------------------------------------------------------------------------

def request(path: str, command: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request and return the response; raises NotRunning when nobody answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            with _short_path(path) as connect_path:
                sock.connect(connect_path)
        except FileNotFoundError:
            raise NotRunning(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise NotRunning(f"{path} refuses connections (left over by a bouncer that is gone)") from None
        except PermissionError:
            raise NotRunning(f"no permission to use {path} (run as the bouncer's user or root)") from None
        except OSError as e:
            raise NotRunning(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_LINE * 64:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:  # includes socket.timeout
            raise NotRunning(f"no answer on {path}: {e.strerror or e or 'timed out'}") from None
    finally:
        sock.close()
    try:
        response = json.loads(data)
    except ValueError:
        raise NotRunning(f"no valid answer on {path}") from None
    if not isinstance(response, dict):
        raise NotRunning(f"no valid answer on {path}")
    return response


# --- presenting a status ----------------------------------------------------------------------

def format_status(status: dict[str, Any], now: float | None = None) -> str:
    """The human-readable ``bouncer status`` text."""
    now = time.time() if now is None else now
    lines = []
    proc = status.get("bouncer") or {}
    if proc:
        since = proc.get("started")
        up = f", up {_ago(since, now)}" if since else ""
        lines.append(f"bouncer {proc.get('version', '?')} for {status.get('account', '?')}, "
                     f"pid {proc.get('pid', '?')}{up}")
        if proc.get("config"):
            lines.append(f"  config: {proc['config']}")
        if proc.get("listen"):
            lines.append(f"  listening: {', '.join(proc['listen'])}")

    up = status.get("upstream") or {}
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
        lines.append(line)
        if up.get("reconnects"):
            lines[-1] += f", {_plural(up['reconnects'], 'reconnect')} so far"
    if up.get("queued"):
        lines.append(f"  {_plural(up['queued'], 'stanza')} from clients waiting for the upstream")

    sessions = status.get("sessions") or []
    lines.append(f"sessions: {len(sessions)}")
    for s in sessions:
        rooms = ", ".join(s.get("rooms") or []) or "none"
        sm = s.get("sm") or "off"
        since = s.get("since")
        when = f" since {_clock(since)} ({_ago(since, now)})" if since else ""
        presence = "available" if s.get("available") else "no presence"
        lines.append(f"  {s.get('resource')}  from {s.get('client')}{when}, {presence}, "
                     f"csi {s.get('csi', '?')}, sm {sm}, rooms: {rooms}")

    rooms = status.get("rooms") or []
    lines.append(f"rooms: {len(rooms)}")
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

    devices = status.get("devices") or []
    lines.append(f"devices: {len(devices)}")
    for d in devices:
        seen = d.get("last_seen")
        when = f"last seen {_clock(seen)} ({_ago(seen, now)})" if seen else "never seen"
        lines.append(f"  {d.get('resource')}: {when}, {_plural(d.get('backlog', 0), 'stanza')} waiting")
    if status.get("stored"):
        lines.append(f"mailbox: {_plural(status['stored'], 'stanza')} kept for devices")
    return "\n".join(lines)


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
