"""The bouncer's own commands (SPEC §10): one tree for the control socket and for the
XEP-0050 ad-hoc commands the account's sessions find on the account's bare JID, as
soju's BouncerServ and sojuctl share one.

Each command takes at most one argument (a room, a resource), decides like the rest
of the account (effects, carried out by the one executor) and says what it did in
lines of text: ``bouncer rooms`` prints them, an ad-hoc command shows them in its
result form. Only the account's own sessions reach them (anyone else: ``forbidden``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from lxml import etree

from bouncer import report
from bouncer.account import resumption
from bouncer.account.devices import DeviceBook
from bouncer.account.router import Router
from bouncer.core.effects import CloseSession, Deliver, Effect
from bouncer.muc.routing import MucRouter
from bouncer.xmpp import adhoc, jid
from bouncer.xmpp.adhoc import Field, Form

Element = etree._Element
log = structlog.get_logger("bouncer.commands")
NODE_PREFIX = "urn:x-bouncer:command:"


class Managed(Protocol):
    """What the commands reach: the account that owns the state (``owner.Account``)."""

    router: Router
    devices: DeviceBook

    @property
    def muc(self) -> MucRouter: ...

    def full_status(self) -> dict: ...


@dataclass(frozen=True)
class Outcome:
    lines: tuple[str, ...]
    effects: tuple[Effect, ...] = ()
    failed: bool = False


@dataclass(frozen=True)
class Command:
    name: str  # the control socket's word, and the last part of the ad-hoc node
    title: str
    run: Callable[[Managed, str], Outcome]
    argument: str = ""  # what it needs (its form field's label); "": nothing
    # (label, value) offered to the session ``by`` (its own resource); None: free text
    choices: Callable[[Managed, str], list[tuple[str, str]]] | None = None

    @property
    def node(self) -> str:
        return NODE_PREFIX + self.name


# ---- the commands -------------------------------------------------------------------------
def _status(account: Managed, _arg: str) -> Outcome:
    return Outcome(tuple(report.format_status(account.full_status()).splitlines()))


def _rooms(account: Managed, _arg: str) -> Outcome:
    return Outcome(tuple(report.room_lines(account.full_status())))


def _sessions(account: Managed, _arg: str) -> Outcome:
    status, now = account.full_status(), time.time()
    return Outcome((*report.session_lines(status, now), *report.device_lines(status, now)))


def _leave(account: Managed, room: str) -> Outcome:
    room = jid.bare(room)
    if not account.muc.holds(room):
        return Outcome((f"{room} is not held by the account",), failed=True)
    return Outcome((f"the account left {room}",), tuple(account.muc.leave_room(room)))


def _hold(account: Managed, target: str) -> Outcome:
    room, nick = jid.bare(target), jid.resource(target) or account.router.nick()
    if jid.localpart(room) is None:
        return Outcome((f"{target!r} is not a room JID (room@service, or room@service/nick)",), failed=True)
    if account.muc.holds(room):
        return Outcome((f"{room} is held already",), failed=True)
    return Outcome((f"the account joins {room} as {nick}",), tuple(account.muc.hold(room, nick)))


def _disconnect(account: Managed, resource: str) -> Outcome:
    session = account.router.sessions.get(resource)
    if session is not None:
        # Ended, not hibernated: its client does not resume, and its rooms see it leave.
        effects = resumption.end(account.router, session, "disconnected by a command")
        return Outcome((f"session {resource} disconnected",),
                       (*effects, CloseSession(session.port, "reset", "disconnected by the account's owner")))
    if account.devices.forget(resource):
        return Outcome((f"device {resource} forgotten: its backlog is no longer kept",))
    return Outcome((f"no session or device {resource}",), failed=True)


def _held_rooms(account: Managed, _by: str) -> list[tuple[str, str]]:
    return [(room, room) for room in sorted(account.muc.rooms)]


def _sessions_and_devices(account: Managed, by: str) -> list[tuple[str, str]]:
    """Every session but the asker's own (a form's first option is often preselected)."""
    live = sorted(r for r in account.router.sessions if r != by)
    away = sorted(d for d in account.devices.known if d not in account.router.sessions)
    return [(f"disconnect session {r}", r) for r in live] + [(f"forget device {r}", r) for r in away]


COMMANDS = (
    Command("status", "Bouncer status", _status),
    Command("rooms", "Rooms held by the account", _rooms),
    Command("sessions", "Sessions and devices", _sessions),
    Command("leave", "Leave a room for the account", _leave, "Room", _held_rooms),
    Command("hold", "Hold a room (join it for the account)", _hold, "Room (room@service or room@service/nick)"),
    Command("disconnect", "Disconnect a session or forget a device", _disconnect, "Session or device",
            _sessions_and_devices),
)
BY_NAME = {c.name: c for c in COMMANDS}
BY_NODE = {c.node: c for c in COMMANDS}
LISTED = tuple((c.node, c.title) for c in COMMANDS)  # what disco#items shows


def run(account: Managed, name: str, argument: str = "") -> Outcome:
    """A command by its control-socket name."""
    command = BY_NAME.get(name)
    if command is None:
        return Outcome((f"unknown command {name!r} (known: {', '.join(BY_NAME)})",), failed=True)
    if command.argument and not argument:
        return Outcome((f"{name} needs an argument: {command.argument.lower()}",), failed=True)
    outcome = command.run(account, argument)
    log.info("command", command=name, argument=argument or None, by="control socket", failed=outcome.failed)
    return outcome


# ---- as XEP-0050 ad-hoc commands ---------------------------------------------------------------
def is_ours(iq: Element) -> bool:
    req = adhoc.request(iq)
    return req is not None and req.node.startswith(NODE_PREFIX)


def answer(account: Managed, resource: str, iq: Element) -> list[Effect]:
    """A session's command request: the form the command needs, or its outcome. The
    answer goes before the command's effects (disconnecting oneself still hears back)."""
    req = adhoc.request(iq)
    assert req is not None
    command = BY_NODE.get(req.node)
    if command is None:
        return [Deliver((resource,), adhoc.completed(iq, req, None, f"no command {req.node}", failed=True))]
    if req.action == "cancel":
        return [Deliver((resource,), adhoc.canceled(iq, req))]
    value = req.values.get("argument", "")
    if command.argument and not value:
        return [Deliver((resource,), adhoc.ask(iq, req, _form(account, command, resource)))]
    outcome = command.run(account, value)
    log.info("command", command=command.name, argument=value or None, by=resource, failed=outcome.failed)
    # One fixed field per line: clients show them as text (a text-multi is an editable box,
    # which poezio shows a line at a time), each with its own var (poezio keeps one field per var).
    result = Form(command.title, tuple(Field(f"line{n}", "fixed", values=(line,)) for n, line in enumerate(outcome.lines, 1)))
    note = outcome.lines[0] if outcome.failed else "done"
    return [Deliver((resource,), adhoc.completed(iq, req, result, note, outcome.failed)), *outcome.effects]


def _form(account: Managed, command: Command, by: str) -> Form:
    if command.choices is None:
        ask = Field("argument", "text-single", command.argument, required=True)
    else:
        options = tuple(command.choices(account, by))
        first = (options[0][1],) if options else ()  # Profanity lists the options only with a value
        ask = Field("argument", "list-single", command.argument, values=first, options=options, required=True)
    return Form(command.title, (ask,))
