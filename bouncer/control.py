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

def request(path: str, command: str, argument: str | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:
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
            asked = {"command": command} if argument is None else {"command": command, "argument": argument}
            sock.sendall(json.dumps(asked).encode() + b"\n")
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
