"""The account's view of its upstream session, handed from one process to the next.

A graceful restart resumes the upstream XEP-0198 session, so the server sends
nothing again: not the contacts' presences, not the rooms' occupants or
subjects. What the account had cached of them is saved on SIGTERM and restored
on start, so a session that connects after the restart sees exactly what it
would have seen before. It is used only when the upstream session is resumed;
a new session rebuilds everything from the server as always.
"""

from __future__ import annotations

from typing import Any

from bouncer.muc.room import Room, RoomPhase
from bouncer.account.router import Router
from bouncer.xmpp import stanza


def dump(router: Router) -> dict[str, Any]:
    """What the account knows of contacts and joined rooms, as plain data."""
    rooms = {}
    for room in router.muc.rooms.values():
        if room.phase is RoomPhase.JOINED and room.self_presence is not None:
            rooms[room.jid] = {
                "occupants": {nick: as_text(el) for nick, el in room.occupants.items()},
                "self": as_text(room.self_presence),
                "subject": as_text(room.subject) if room.subject is not None else None,
                "own_mam": room.own_mam,
                "sent": room.sent_presence.decode() if room.sent_presence else None,
            }
    return {
        "contacts": {full: as_text(el) for full, el in router.contacts.items()},
        "sent_presence": router.sent_presence.decode() if router.sent_presence else None,
        "rooms": rooms,
        "caps": router.caps.dump(),
    }


def load(router: Router, data: dict[str, Any]) -> int:
    """Restore ``dump``'s view into a fresh router; returns the rooms restored."""
    router.contacts = {full: from_text(text) for full, text in data.get("contacts", {}).items()}
    sent = data.get("sent_presence")
    router.sent_presence = sent.encode() if sent else None
    router.caps.load(data.get("caps", {}))
    restored = 0
    for jid_, saved in data.get("rooms", {}).items():
        room = router.muc.rooms.get(jid_)
        if room is None:
            continue  # left meanwhile
        _restore_room(room, saved)
        restored += 1
    return restored


def _restore_room(room: Room, saved: dict[str, Any]) -> None:
    room.occupants = {nick: from_text(text) for nick, text in saved["occupants"].items()}
    room.self_presence = from_text(saved["self"])
    room.subject = from_text(saved["subject"]) if saved.get("subject") else None
    room.own_mam = bool(saved.get("own_mam"))
    room.sent_presence = saved["sent"].encode() if saved.get("sent") else None
    room.phase = RoomPhase.JOINED


def as_text(el) -> str:
    """A stanza as the restart state (JSON) keeps it; ``from_text`` reads it back."""
    return stanza.serialize(el).decode()


def from_text(text: str):
    return stanza.parse_stored(text.encode())
