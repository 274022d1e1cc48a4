"""The upstream XEP-0198 session as plain data, for a restart to resume it.

Counters, the resumption id, the bound JID and the unacknowledged stanzas
(base64: they are bytes on the wire). A saved session older than the server's
``max`` is not worth a resume attempt; one for another JID never is.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

from bouncer.upstream.stream import Outgoing
from bouncer.xmpp import sm

DEFAULT_WINDOW = 300.0  # seconds, when the server gave no max (ejabberd's default)


def dump(state: sm.StreamManagement[Outgoing], full_jid: str) -> dict[str, Any]:
    return {
        "jid": full_jid,
        "id": state.id,
        "inbound": state.inbound,
        "sent": state.sent,
        "acked": state.acked,
        "max": state.max,
        "location": state.location,
        "unacked": [[base64.b64encode(o.data).decode(), o.renew] for o in state.unacked],
    }


def load(data: dict[str, Any], full_jid: str, age: float) -> sm.StreamManagement[Outgoing] | None:
    """The state to resume, or None when it is for another JID or too old."""
    if data.get("jid") != full_jid or not data.get("id"):
        return None
    state = sm.StreamManagement[Outgoing](
        inbound=int(data["inbound"]), sent=int(data["sent"]), acked=int(data["acked"]),
        unacked=deque(Outgoing(base64.b64decode(d), bool(r)) for d, r in data["unacked"]),
        id=str(data["id"]), max=data.get("max"), location=data.get("location"),
    )
    if age > (state.max or DEFAULT_WINDOW):
        state.id = None  # expired: the next session renews what was unacknowledged
    return state
