"""The cached state of one room the account is in (or joining), as Prosody's MUC keeps it.

Occupants by nick, our own self-presence, the subject, and which downstream
sessions joined. Every occupant presence from the room updates it, so that a
late session's replay is always exact (SPEC §6.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from lxml import etree

from bouncer.core.ports import ArchivedMessage
from bouncer.muc import history
from bouncer.xmpp import jid, ns, stanza, wire
from bouncer.xmpp.ns import q
from bouncer.xmpp.wire import Prepared

Element = etree._Element

# Archived messages kept serialised for local joins, per room, at most.
_HISTORY_CACHE = 500

# Why the room let go of the account (SPEC §6.5), for the log.
_GONE_REASONS = ("301", "307", "321", "322")


class RoomPhase(Enum):
    JOINING = auto()  # join sent upstream, self-presence not yet back
    JOINED = auto()  # self-presence seen; history and subject follow


@dataclass
class JoinRequest:
    """A session's join presence, kept until it is answered."""

    resource: str
    nick: str
    presence_id: str | None
    history: Element | None  # the client's <history/> element, if any
    away_since: float | None = None  # its device was last seen then (None: a new device)


@dataclass
class Room:
    jid: str
    nick: str
    password: str | None = None
    phase: RoomPhase = RoomPhase.JOINING
    occupants: dict[str, Element] = field(default_factory=dict)  # other nicks -> presence
    self_presence: Element | None = None
    subject: Element | None = None
    sessions: set[str] = field(default_factory=set)  # joined downstream resources
    pending: dict[str, JoinRequest] = field(default_factory=dict)  # waiting for the upstream join
    join_sent: bool = False  # this process sent a join for it (restored rooms have not)
    session_presence: dict[str, Element] = field(default_factory=dict)  # for the aggregate (§6.7)
    sent_presence: bytes | None = None
    nick_change_by: str | None = None  # session that asked for a nick change
    last_message: float | None = None
    own_mam: bool = False  # the room has no MAM: the bouncer's archive answers queries (§7)
    rejoin_at: float | None = None  # after a 332 (service shut down): when to try again
    heard_at: float = 0.0  # when the room last sent the account anything
    ping_id: str | None = None  # the account's self-ping in flight (XEP-0410)
    ping_sent: float = 0.0
    catchup_after: str | None = None  # after a rejoin: page the room's MAM from this stanza-id
    catchup_id: str | None = None  # the catch-up query in flight (its IQ id and queryid)
    catchup_ts: float = 0.0  # archive time of the last caught-up message: keeps MAM order
    rejoin_delay: float = 0.0  # the current backoff; 0 when not recovering
    check_at: float | None = None  # a self-ping is due then, silence or not (after a resume)
    recheck_delay: float = 0.0  # the backoff of self-pings that proved nothing
    # While the account rejoins after an upstream outage: the occupants the
    # sessions already know (each one seen again is dropped from here), and the
    # sessions that still need a subject to end their join.
    previous: dict[str, Element] | None = None
    awaiting_subject: set[str] = field(default_factory=set)
    # Sessions whose join the room's subject completes: each gets, from the archive, the
    # history it asked for, whatever the account asked the room for (SPEC §6, §7).
    history_wanted: dict[str, JoinRequest] = field(default_factory=dict)
    # Occupant presences and the subject serialised once for every local join, with the
    # element each was made from: a presence that changed is a new element, written again.
    _occupant_wire: dict[str, tuple[Element, Prepared]] = field(default_factory=dict, repr=False)
    _subject_wire: tuple[Element, Prepared] | None = field(default=None, repr=False)
    _history_wire: dict[int, Prepared] = field(default_factory=dict, repr=False)  # by archive row

    @property
    def occupant_jid(self) -> str:
        return f"{self.jid}/{self.nick}"

    def audience(self) -> tuple[str, ...]:
        """Sessions that get room traffic: joined ones and those whose join is under way."""
        return tuple(sorted(self.sessions | set(self.pending)))

    def prepared_occupants(self) -> list[Prepared]:
        """The occupants' presences as bytes to address per session (the local join replay)."""
        self._occupant_wire = {nick: _reuse(self._occupant_wire.get(nick), el) for nick, el in self.occupants.items()}
        return [prep for _, prep in self._occupant_wire.values()]

    def prepared_history(self, rows: list[ArchivedMessage]) -> list[Prepared]:
        """Archived messages with their delay, as bytes to address per session; the cache
        holds the rows recent joins asked for (archived rows never change)."""
        if len(self._history_wire) > _HISTORY_CACHE:
            self._history_wire.clear()
        for row in rows:
            if row.id not in self._history_wire:
                self._history_wire[row.id] = wire.prepare(history.with_delay(row, self.jid))
        return [self._history_wire[row.id] for row in rows]

    def prepared_subject(self) -> Prepared | None:
        if self.subject is None:
            return None
        self._subject_wire = _reuse(self._subject_wire, self.subject)
        return self._subject_wire[1]


def _reuse(cached: tuple[Element, Prepared] | None, el: Element) -> tuple[Element, Prepared]:
    """The cached bytes while ``el`` is the very element they were made from."""
    return cached if cached is not None and cached[0] is el else (el, wire.prepare(el))


def muc_user(el: Element) -> Element | None:
    return stanza.find(el, ns.MUC_USER, "x")


def status_codes(el: Element) -> set[str]:
    x = muc_user(el)
    if x is None:
        return set()
    return {s.get("code", "") for s in x.iter(q(ns.MUC_USER, "status"))}


def is_join(el: Element) -> bool:
    """A presence carrying ``<x xmlns='http://jabber.org/protocol/muc'>``: a join (XEP-0045 §7.2)."""
    return el.tag == stanza.PRESENCE and stanza.find(el, ns.MUC, "x") is not None and el.get("type") is None


def new_nick(el: Element) -> str | None:
    """The new nick announced in a 303 unavailable presence."""
    x = muc_user(el)
    item = None if x is None else x.find(q(ns.MUC_USER, "item"))
    return None if item is None else item.get("nick")


def is_self_presence(room: Room, el: Element) -> bool:
    return "110" in status_codes(el) or el.get("from") == room.occupant_jid


def track_occupant(room: Room, el: Element) -> None:
    """Update the occupant cache from a presence of another occupant."""
    nick = jid.resource(el.get("from", ""))
    if nick is None:
        return
    if el.get("type") == "unavailable":
        room.occupants.pop(nick, None)
    elif el.get("type") is None:
        room.occupants[nick] = el


def subject_message(el: Element) -> bool:
    """A room subject: a groupchat message with ``<subject/>`` and no body (XEP-0045 §8.1)."""
    return (
        el.get("type") == "groupchat"
        and stanza.find(el, ns.CLIENT, "subject") is not None
        and stanza.find(el, ns.CLIENT, "body") is None
    )


def error_condition(el: Element) -> str | None:
    """The defined condition of a stanza error, e.g. ``not-acceptable``."""
    error = el.find(q(ns.CLIENT, "error"))
    return None if error is None or len(error) == 0 else etree.QName(error[0]).localname


def gone_reason(el: Element, codes: set[str]) -> str:
    """Why an unavailable self-presence put the account out (SPEC §6.5)."""
    x = muc_user(el)
    if x is not None and x.find(q(ns.MUC_USER, "destroy")) is not None:
        return "destroyed"
    return next((c for c in _GONE_REASONS if c in codes), "unavailable")


def same(a: Element | None, b: Element) -> bool:
    """Whether a room stanza says the same again (after a rejoin), for a client's eyes.

    Compared on what clients show: availability, status text, role and
    affiliation, or the subject; a rejoin changes status codes, ids and
    server-added payloads, which mean nothing to a session already in the room.
    """
    return a is not None and _meaning(a) == _meaning(b)


def _meaning(el: Element) -> tuple:
    x = muc_user(el)
    item = None if x is None else x.find(q(ns.MUC_USER, "item"))
    return (
        el.get("from"),
        el.get("type"),
        stanza.text_of(el, ns.CLIENT, "show"),
        stanza.text_of(el, ns.CLIENT, "status"),
        stanza.text_of(el, ns.CLIENT, "subject"),
        None if item is None else (item.get("affiliation"), item.get("role"), item.get("jid"), item.get("nick")),
    )


def stanza_id(el: Element, room_jid: str) -> str | None:
    """The room's XEP-0359 stanza-id (``by`` the room), which the archive keys on."""
    for sid in el.iter(q(ns.STANZA_ID, "stanza-id")):
        if sid.get("by") == room_jid:
            return sid.get("id")
    return None
