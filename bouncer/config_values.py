"""Parsers for single values of ``bouncer.yaml``: the value, or ``Expected("what the key takes")``.

``bouncer.config`` pairs each key with one of these and turns ``Expected`` into a
ConfigError naming the key; rules that span keys or touch files live there.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, Callable, get_args


class Expected(Exception):
    """The value is not what the key takes; the message says what it takes."""


Parser = Callable[[Any], Any]


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Expected("a non-empty string")
    return value


def integer(low: int, high: int | None = None) -> Parser:
    in_range = f"an integer of at least {low}"
    if high is not None:
        in_range = f"an integer from {low} to {high}"

    def parse(value: Any) -> int:
        if type(value) is not int:  # not isinstance: YAML's true/false are ints to Python
            raise Expected("an integer")
        if value < low or (high is not None and value > high):
            raise Expected(in_range)
        return value
    return parse


def positive_number(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise Expected("a positive number")
    return float(value)


def boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise Expected("true or false")
    return value


def choice(options: Any) -> Parser:
    allowed = get_args(options)
    wanted = "one of " + ", ".join(repr(option) for option in allowed)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise Expected(wanted)
        return value
    return parse


_JID = re.compile(r"[^@/\s]+@[^@/\s]+(?:/.+)?")


def account_jid(value: Any) -> str:
    if not isinstance(value, str) or not _JID.fullmatch(value):
        raise Expected("a JID like user@example.org or user@example.org/resource")
    return value


PORT = integer(1, 65535)


def listen_address(value: Any) -> tuple[str, int]:
    """A port (on loopback), or ``address:port`` (``[v6]:port``)."""
    wanted = "a port, or address:port"
    if type(value) is int:
        return "127.0.0.1", PORT(value)
    if not isinstance(value, str) or ":" not in value:
        raise Expected(wanted)
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Expected(wanted)
    return host, int(port)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (where plain TCP is tolerated)."""
    if host is None:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
