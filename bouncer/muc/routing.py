"""Account-level MUC decisions (SPEC §6): join once upstream, answer later joins
locally, fan room traffic out to the sessions that joined, archive it first.

``MucRouter`` classifies and dispatches; each job is its own module: ``joins``
(sessions joining and leaving), ``fanout`` (what rooms send), ``recovery``
(rejoins, self-pings), ``catchup`` (the room's MAM after a rejoin), ``mam``
(queries the archive answers), ``replay`` (the local join answer). Like the
Router, it returns effects and touches no socket; it reads the archive through
its port, because whether a message is new (its stanza-id not yet archived)
decides whether it is fanned out at all.
"""

from __future__ import annotations

import structlog
from lxml import etree

from bouncer.core.effects import Deliver, Effect, ToUpstream
from bouncer.core.ports import RoomArchive
from bouncer.muc import autojoin, catchup, fanout, joins, mam, recovery
from bouncer.muc.autojoin import BookmarkBook
from bouncer.muc.room import Room, RoomPhase, is_join
from bouncer.muc.state import MucSettings, MucState, fan
from bouncer.xmpp import carbons, jid, local_iq, ns, stanza
from bouncer.xmpp.bookmarks import Change
from bouncer.xmpp.ns import q

Element = etree._Element
log = structlog.get_logger("bouncer.muc")


class MucRouter:
    def __init__(self, archive: RoomArchive, settings: MucSettings | None = None) -> None:
        self.state = MucState(archive, settings or MucSettings())
        self.bookmarks = BookmarkBook()

    @property
    def rooms(self) -> dict[str, Room]:
        return self.state.rooms

    @property
    def settings(self) -> MucSettings:
        return self.state.settings

    def reconfigure(self, settings: MucSettings) -> None:
        self.state.settings = settings

    def restore(self) -> None:
        """Rooms held before a restart: joined again once upstream is up."""
        for held in self.state.archive.held():
            self.rooms[held.jid] = Room(held.jid, held.nick, held.password)

    # ---- classification ------------------------------------------------------
    def wants_outgoing(self, el: Element) -> bool:
        to = el.get("to")
        if to is None or jid.localpart(to) is None:
            return False
        return jid.bare(to) in self.rooms or is_join(el)

    def wants_incoming(self, el: Element) -> bool:
        return jid.bare(el.get("from", "")) in self.rooms or el.get("from", "") in self.state.leaving

    def holds(self, room_jid: str) -> bool:
        return jid.bare(room_jid) in self.rooms

    def serves_mam(self, room_jid: str) -> bool:
        room = self.rooms.get(jid.bare(room_jid))
        return room is not None and room.own_mam

    def joined_by(self, resource: str) -> list[str]:
        return sorted(r.jid for r in self.rooms.values() if resource in r.sessions)

    # ---- MAM the archive answers (SPEC §7, §13) ---------------------------------
    def room_features(self, result: Element) -> None:
        """A held room's disco#info: without MAM, the bouncer's archive serves it."""
        room = self.rooms.get(jid.bare(result.get("from", "")))
        features = {f.get("var") for f in result.iter(q(ns.DISCO_INFO, "feature"))}
        if room is not None and ns.MAM not in features:
            room.own_mam = True
            local_iq.augment_disco(result, (ns.MAM,))

    def mam_answer(self, iq: Element) -> list[Element]:
        """The room could not answer a MAM query: the bouncer's archive does."""
        query = mam.parse(iq)
        room = jid.bare(iq.get("to", ""))
        if query is None:
            return [stanza.error_reply(iq, "service-unavailable")]
        log.info("room MAM answered from the archive", room=room)
        return mam.answer(self.state.archive, room, iq, query)

    # ---- from sessions ---------------------------------------------------------
    def from_session(self, resource: str, session_jid: str, el: Element, now: float,
                     away_since: float | None = None) -> list[Effect] | None:
        """Decide for a stanza a session sent to a room; None: not a room matter.
        ``away_since``: when the session's device was last seen (its room history cursor)."""
        if el.tag == stanza.PRESENCE:
            return joins.session_presence(self.state, resource, el, now, away_since)
        room = self.rooms.get(jid.bare(el.get("to", "")))
        if room is None:
            return None
        if el.tag == stanza.IQ and _is_ping(el) and el.get("to") == room.occupant_jid:
            return [Deliver((resource,), self_ping_answer(room, resource, el))]
        if el.tag == stanza.MESSAGE and el.get("type") == "chat" and jid.resource(el.get("to", "")):
            # A private message: copied to the sibling sessions in that room (SPEC §13).
            siblings = tuple(r for r in room.sessions if r != resource)
            copy = carbons.sent_carbon(el, jid.bare(session_jid))
            return fan(siblings, copy) + [ToUpstream(stanza.without_from(el))]
        return None

    def session_gone(self, resource: str) -> list[Effect]:
        return joins.session_gone(self.state, resource)

    def leave_room(self, room_jid: str) -> list[Effect]:
        return joins.leave_room(self.state, room_jid)

    # ---- from the room -----------------------------------------------------------
    def from_upstream(self, el: Element, now: float) -> list[Effect] | None:
        if el.get("from", "") in self.state.leaving and el.tag == stanza.PRESENCE and el.get("type") == "unavailable":
            del self.state.leaving[el.get("from", "")]
            return []  # the room confirms the account's leave; its sessions were told already
        room = self.rooms.get(jid.bare(el.get("from", "")))
        if room is None:
            return None
        room.heard_at = now
        if el.tag == stanza.PRESENCE:
            return fanout.presence_in(self.state, room, el, now)
        if el.tag == stanza.MESSAGE:
            return fanout.message_in(self.state, room, el, now)
        return None

    def own_answer(self, iq: Element, now: float) -> list[Effect] | None:
        """The answer to an IQ the account sent a room itself; None when ``iq`` is not one."""
        room = self.rooms.get(jid.bare(iq.get("from", "")))
        if room is None or not iq.get("id"):
            return None
        if iq.get("id") == room.catchup_id:
            return catchup.done(room, iq)
        if iq.get("id") == room.ping_id:
            return recovery.ping_answer(self.state, room, iq, now)
        return None

    # ---- the account's own joins and leaves (SPEC §6.3, §8) --------------------------
    def hold(self, room_jid: str, nick: str, password: str | None = None) -> list[Effect]:
        return recovery.hold(self.state, jid.bare(room_jid), nick, password)

    def read_bookmarks(self, again: bool) -> list[Effect]:
        """Read the account's bookmarks; unless ``again``, only if this process has not
        (nor asked: a resumed stream still brings the answer)."""
        book = self.bookmarks
        return autojoin.read(book) if again or not (book.read_done or book.asked) else []

    def bookmarks_read(self, iq: Element, nick: str) -> list[Effect] | None:
        """The answer to ``read_bookmarks``; None: ``iq`` answers something else."""
        return autojoin.answer(self.state, self.bookmarks, iq, nick)

    def bookmarks_changed(self, change: Change, nick: str) -> list[Effect]:
        return autojoin.apply(self.state, self.bookmarks, change, nick)

    # ---- upstream lifecycle and time ----------------------------------------------
    def rejoin_all(self) -> list[Effect]:
        return recovery.rejoin_all(self.state)

    def join_unjoined(self) -> list[Effect]:
        return recovery.join_unjoined(self.state)

    def due(self, now: float) -> list[Effect]:
        return recovery.due(self.state, now)

    def prune(self, now: float) -> int:
        """Apply archive retention to every held room (SPEC §7: the database stays bounded)."""
        s = self.state.settings
        removed = sum(self.state.archive.prune(room, now, s.max_age_days, s.max_messages) for room in self.rooms)
        if removed:
            log.info("archive pruned", removed=removed)
        return removed

    def status(self) -> list[dict]:
        return [_room_status(room, self.state.archive.count(room.jid)) for room in self.rooms.values()]


def _room_status(room: Room, archived: int) -> dict:
    return {
        "room": room.jid,
        "nick": room.nick,
        "joined": room.phase is RoomPhase.JOINED,
        "occupants": len(room.occupants) + (1 if room.self_presence is not None else 0),
        "sessions": sorted(room.sessions),
        "last_message": room.last_message,
        "archived": archived,
    }


def self_ping_answer(room: Room, resource: str, iq: Element) -> Element:
    """XEP-0410 answered at once: joined sessions get a result, others not-acceptable (§13)."""
    if room.phase is RoomPhase.JOINED and resource in room.sessions:
        return stanza.iq_result(iq)
    return stanza.error_reply(iq, "not-acceptable")


def _is_ping(iq: Element) -> bool:
    body = stanza.payload(iq)
    return iq.get("type") == "get" and body is not None and body.tag == q(ns.PING, "ping")


