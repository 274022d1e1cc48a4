"""The account's XEP-0198 sessions, handed from one process to the next (SPEC §9).

On SIGTERM every resumable session (connected or hibernating) is saved with its
stream counters, what its client has not acknowledged, its presence, its rooms
and its device's unconfirmed mailbox ids; its connection is then cut without a
word, as a network blip would. The next process restores each as a hibernating
session, so the phone resumes as if nothing happened. After a crash nothing was
saved: the resume fails, and the device's backlog has what it had not acknowledged.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from bouncer.account.handover import as_text, from_text
from bouncer.account.hibernation import Hibernation
from bouncer.account.resumption import HibernationLimits, resumable
from bouncer.account.router import Router, Session
from bouncer.xmpp.sm import StreamManagement


def dump(router: Router, now: float) -> dict[str, Any]:
    """The resumable sessions, as plain data."""
    return {"sessions": [_session(router, s, now) for s in router.sessions.values() if resumable(s)]}


def _session(router: Router, session: Session, now: float) -> dict[str, Any]:
    state = session.sm
    assert state is not None
    rooms = {room.jid: as_text(room.session_presence[session.resource])
             for room in router.muc.rooms.values()
             if session.resource in room.sessions and session.resource in room.session_presence}
    return {
        "resource": session.resource,
        "since": session.port.since,
        "hibernated_at": session.hibernated_at if session.hibernated_at is not None else now,
        "presence": as_text(session.presence) if session.presence is not None else None,
        "carbons": session.carbons,
        "sm": {"id": state.id, "max": state.max, "inbound": state.inbound, "sent": state.sent,
               "acked": state.acked, "unacked": [wire.decode() for wire in state.unacked]},
        "unconfirmed": list(session.unconfirmed),
        "rooms": rooms,
    }


def load(router: Router, data: dict[str, Any], limits: HibernationLimits) -> list[str]:
    """Restore the saved sessions as hibernating ones; returns their resources."""
    restored = []
    for saved in data.get("sessions", []):
        resource = saved["resource"]
        sm = saved["sm"]
        state: StreamManagement[bytes] = StreamManagement(
            inbound=sm["inbound"], sent=sm["sent"], acked=sm["acked"], id=sm["id"], max=sm["max"],
            unacked=deque(wire.encode() for wire in sm["unacked"]))
        full = f"{router.account}/{resource}"
        port = Hibernation(full, "(before the restart)", saved["since"], state, limits.max_stanzas, limits.max_bytes)
        session = Session(resource, full, port, presence=from_text(saved["presence"]) if saved["presence"] else None, carbons=saved["carbons"],
                          sm=state, hibernated_at=saved["hibernated_at"])
        session.unconfirmed = deque((marker, stored) for marker, stored in saved["unconfirmed"])
        router.sessions[resource] = session
        for room_jid, text in saved["rooms"].items():
            room = router.muc.rooms.get(room_jid)
            if room is not None:  # left meanwhile: the session is not in it any more
                room.sessions.add(resource)
                room.session_presence[resource] = from_text(text)
        restored.append(resource)
    return restored

