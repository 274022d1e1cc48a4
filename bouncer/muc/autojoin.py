"""Bookmarks drive the account's rooms (SPEC §8).

On every upstream session the account reads its bookmarks (XEP-0402 from PEP; if
the server refuses that, XEP-0048 from private XML) and holds every room bookmarked
with autojoin, with the bookmark's nick and password, before any session asks.
Changes seen later (notified by the server, whichever of the account's clients made
them, through the bouncer or not; or a session storing XEP-0048 private XML) join
or leave at the account level. A room whose bookmark goes from autojoin to not, or
whose autojoin bookmark is removed, is left by the account, and every session in it
sees its own leave. A bookmark never seen with autojoin leaves nothing: a client that
bookmarks the room it is in without autojoin keeps its room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from lxml import etree

from bouncer.core.effects import Effect, ToUpstream
from bouncer.muc import joins, recovery
from bouncer.muc.room import RoomPhase, error_condition
from bouncer.muc.state import MucState
from bouncer.xmpp import bookmarks, ids
from bouncer.xmpp.bookmarks import Bookmark, Change

Element = etree._Element
log = structlog.get_logger("bouncer.muc")


@dataclass
class BookmarkBook:
    """The account's bookmarks as last seen, and the read in flight."""

    known: dict[str, Bookmark] = field(default_factory=dict)
    asked: str | None = None  # the id of the read in flight
    private: bool = False  # that read is the XEP-0048 fallback
    read_done: bool = False  # this process has read them once


def read(book: BookmarkBook) -> list[Effect]:
    """Read every bookmark (XEP-0402 first)."""
    book.asked, book.private = ids.new("bookmarks"), False
    return [ToUpstream(bookmarks.pep_request(book.asked))]


def answer(state: MucState, book: BookmarkBook, iq: Element, nick: str) -> list[Effect] | None:
    """The server's answer to ``read``; None: ``iq`` answers something else."""
    if book.asked is None or iq.get("id") != book.asked:
        return None
    book.asked, book.read_done = None, True
    if iq.get("type") == "error":
        if book.private:
            log.info("no bookmarks readable", condition=error_condition(iq))
            return []
        # No XEP-0402 node (or no PEP): the bookmarks may be in private XML.
        book.asked, book.private = ids.new("bookmarks"), True
        return [ToUpstream(bookmarks.private_request(book.asked))]
    found = bookmarks.from_result(iq)
    log.info("bookmarks read", rooms=len(found), autojoin=sum(b.autojoin for b in found), private=book.private)
    return apply(state, book, Change(found, complete=True), nick)


def apply(state: MucState, book: BookmarkBook, change: Change, nick: str) -> list[Effect]:
    """Hold every room bookmarked with autojoin; leave those whose autojoin went."""
    before = dict(book.known)
    removed = set(change.removed)
    if change.complete:
        removed |= set(before) - {b.room for b in change.bookmarks}
    effects: list[Effect] = []
    for mark in change.bookmarks:
        book.known[mark.room] = mark
        if mark.autojoin and mark.room in state.rooms:
            effects += _renick(state, before.get(mark.room), mark)
        elif mark.autojoin:
            effects += recovery.hold(state, mark.room, mark.nick or nick, mark.password)
        elif _was_autojoin(before, mark.room):
            effects += _leave(state, mark.room, "autojoin off")
    for room in removed:
        book.known.pop(room, None)
        if _was_autojoin(before, room):
            effects += _leave(state, room, "bookmark removed")
    state.autojoin = {room for room, mark in book.known.items() if mark.autojoin}
    return effects


def _renick(state: MucState, was: Bookmark | None, mark: Bookmark) -> list[Effect]:
    """The bookmark's nick changed for a room the account is in: the account's nick
    changes too (every session sees the 303); one a session chose is left alone."""
    room = state.rooms[mark.room]
    if was is None or not mark.nick or mark.nick == was.nick or mark.nick == room.nick or room.phase is not RoomPhase.JOINED:
        return []
    log.info("changing the account's nick", room=room.jid, nick=mark.nick)
    mine = [p for r, p in room.session_presence.items() if r in room.sessions]
    change = joins.presence_to_room(room, mine)
    change.set("to", f"{room.jid}/{mark.nick}")
    return [ToUpstream(change)]


def _was_autojoin(before: dict[str, Bookmark], room: str) -> bool:
    mark = before.get(room)
    return mark is not None and mark.autojoin


def _leave(state: MucState, room: str, why: str) -> list[Effect]:
    if room in state.rooms:
        log.info("leaving room for the account", room=room, why=why)
    return joins.leave_room(state, room)
