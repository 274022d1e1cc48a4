"""The traffic of ``phone.py``: occupants in busy rooms, and a contact, through Prosody.

Seeded, so that both routes (through the bouncer, direct) see the same changes in the
same order. Traffic clients read nothing they do not need (``Quiet``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

import common
from common import muc
from support.rawxmpp import RawClient
from support.prosody import Prosody

LEAVE_SHARE = 0.15  # of the presence changes not a rejoin: a leave (the occupant rejoins 2-10 changes later)
class Quiet:
    """A traffic client's data handler: drops what it reads unparsed, but notices the answer
    to its ping, so that a barrier knows Prosody has handled everything it sent before."""

    def __init__(self) -> None:
        self.want: bytes | None = None
        self.answered = asyncio.Event()
        self._tail = b""

    def __call__(self, data: bytes, _now: float) -> None:
        if self.want is None:
            return
        buf = self._tail + data
        if self.want in buf:
            self.want, self._tail = None, b""
            self.answered.set()
        else:
            self._tail = buf[-len(self.want):]

    def ping(self, client: RawClient, ident: str) -> None:
        self.want, self._tail = ident.encode(), b""
        self.answered.clear()
        client.send_xml(f"<iq type='get' id='{ident}' to='{client.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")


@dataclass
class Traffic:
    """The rooms' occupants and a contact of the account, making the same traffic on both routes."""

    rooms: list[str]
    owners: list[RawClient]  # one per room, always there: they send the room messages
    members: list[list[RawClient]]  # per room, nick occupant1.. (they churn)
    contact: RawClient
    account: str
    zipf: float = 1.0  # skew of who changes presence: occupant k of a room is picked with weight 1/k**zipf
    present: list[list[bool]] = field(default_factory=list)
    away: list[list[bool]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(20261201))
    _turn: itertools.count = field(default_factory=itertools.count)
    _rejoins: list[tuple[int, int, int]] = field(default_factory=list)  # (due change number, room, occupant)
    _quiet: dict[int, tuple[RawClient, Quiet]] = field(default_factory=dict)
    _barriers: itertools.count = field(default_factory=itertools.count)
    changes: int = 0

    def __post_init__(self) -> None:
        self.present = [[True] * len(m) for m in self.members]
        self.away = [[False] * len(m) for m in self.members]
        self._weights = [[1 / (k + 1) ** self.zipf for k in range(len(m))] for m in self.members]
        for client in [*self.owners, *(c for m in self.members for c in m), self.contact]:
            quiet = Quiet()
            client.on_data(quiet)
            self._quiet[id(client)] = (client, quiet)

    async def barrier(self, timeout: float = 120) -> None:
        """Until Prosody has handled everything every traffic client sent so far (each one's ping
        is answered after what it sent before)."""
        n = next(self._barriers)
        for k, (client, quiet) in enumerate(self._quiet.values()):
            quiet.ping(client, f"sync{n}x{k}z")
        await asyncio.wait_for(asyncio.gather(*(q.answered.wait() for _c, q in self._quiet.values())), timeout)

    def presence_change(self) -> None:
        """One occupant's presence changes: a rejoin that is due, else a picked occupant leaves
        (and rejoins 2-10 changes later: a client reconnecting) or goes away / comes back."""
        due = next((item for item in self._rejoins if item[0] <= self.changes), None)
        if due is not None:
            self._rejoins.remove(due)
            _, r, i = due
            self.members[r][i].send_xml(common.join_presence(self.rooms[r], f"occupant{i + 1}", common.NO_HISTORY))
            self.present[r][i], self.away[r][i] = True, False
        else:
            r = self.rng.randrange(len(self.rooms))
            i = self.rng.choices(range(len(self.members[r])), self._weights[r])[0]
            while not self.present[r][i]:
                i = self.rng.randrange(len(self.members[r]))
            to = f"{self.rooms[r]}/occupant{i + 1}"
            if self.rng.random() < LEAVE_SHARE:
                self.members[r][i].send_xml(f"<presence to='{to}' type='unavailable'/>")
                self.present[r][i] = False
                self._rejoins.append((self.changes + self.rng.randint(2, 10), r, i))
            elif self.away[r][i]:
                self.members[r][i].send_xml(f"<presence to='{to}'/>")
                self.away[r][i] = False
            else:
                show = self.rng.choice(("away", "away", "xa", "dnd"))
                self.members[r][i].send_xml(f"<presence to='{to}'><show>{show}</show>"
                                            f"<status>since change {self.changes}</status></presence>")
                self.away[r][i] = True
        self.changes += 1

    def room_message(self, body: str) -> None:
        r = next(self._turn) % len(self.rooms)
        muc.send_groupchat(self.owners[r], self.rooms[r], body)

    def chat(self, body: str) -> None:
        self.contact.send_xml(f"<message to='{self.account}' type='chat'><body>{body}</body></message>")

    async def run(self, tag: str, changes: int, per_message: int, chats: int, seconds: float) -> tuple[set[str], set[str]]:
        """``changes`` presence changes, a room message after every ``per_message``-th and
        ``chats`` 1:1 chats spread evenly, paced over ``seconds``, then a barrier (Prosody has
        handled all of it); returns the room bodies and chat bodies sent."""
        kinds: list[str] = []
        for n in range(1, changes + 1):
            kinds.append("p")
            if n % per_message == 0:
                kinds.append("m")
        if chats:
            step = len(kinds) / chats
            for k in range(chats):
                kinds.insert(int(k * step) + k + 1, "c")
        room_bodies, chat_bodies = set(), set()
        started = time.monotonic()
        for k, kind in enumerate(kinds):
            due = started + seconds * k / len(kinds)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "p":
                self.presence_change()
            elif kind == "m":
                body = f"{tag} room {len(room_bodies)}"
                room_bodies.add(body)
                self.room_message(body)
            else:
                body = f"{tag} chat {len(chat_bodies)}"
                chat_bodies.add(body)
                self.chat(body)
        await self.barrier()
        return room_bodies, chat_bodies


async def build_traffic(prosody: Prosody, rooms: int, occupants: int, account: str,
                        zipf: float) -> tuple[Traffic, list[RawClient]]:
    population = await common.populate(prosody, rooms, occupants, 0)
    per_room = occupants - 1
    assert len(population.others) == rooms * per_room
    members = [population.others[r * per_room:(r + 1) * per_room] for r in range(rooms)]
    contact = await common.occupant(prosody)
    traffic = Traffic(population.rooms, population.owners, members, contact, account, zipf)
    return traffic, population.clients + [contact]


# ---- the phone's connections -------------------------------------------------------------