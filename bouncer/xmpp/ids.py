"""Every id the bouncer owns, from one scheme: ``bnc-<kind>-<run>-<n>``.

One prefix lets either role tell its own ids from a peer's at a glance (an IQ
result with a ``bnc-`` id answers the bouncer, never a client). The run part
differs per process: an upstream stream resumed after a restart may still carry
answers to IQs sent before it, and those must never match a new IQ's id.
"""

from __future__ import annotations

import itertools
import secrets

PREFIX = "bnc-"
_RUN = secrets.token_hex(3)
_counter = itertools.count(1)


def new(kind: str) -> str:
    """A fresh id, unique within this process and across its restarts."""
    return f"{PREFIX}{kind}-{_RUN}-{next(_counter)}"


def token(kind: str, nbytes: int = 4) -> str:
    """An unguessable id (resource names, markers that must not occur in payloads)."""
    return f"{PREFIX}{kind}-{secrets.token_hex(nbytes)}"


def is_ours(value: str | None, kind: str = "") -> bool:
    """Whether ``value`` is an id this scheme made (of that ``kind``, when given)."""
    return value is not None and value.startswith(f"{PREFIX}{kind}-" if kind else PREFIX)
