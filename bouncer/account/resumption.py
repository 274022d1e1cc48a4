"""XEP-0198 for the account's sessions: hibernate a dropped one, resume it, end it (SPEC §9).

Decisions over the Router's table of sessions, returning effects. A session whose
connection dropped without ``</stream>`` and that enabled resumption hibernates
(``Hibernation``); a ``<resume/>`` naming it moves it onto the new connection; when
its hibernation time is over, or its queue overflowed, it ends as a disconnected
session does, and its device's backlog has whatever it had not acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from bouncer.account.hibernation import Hibernation
from bouncer.account.router import Router, Session
from bouncer.core.effects import CloseSession, Effect, Resumed, ResumeFailed
from bouncer.core.ports import SessionPort
from bouncer.xmpp.sm import MOD

log = structlog.get_logger("bouncer.account")


@dataclass(frozen=True)
class HibernationLimits:
    seconds: float  # how long a dropped session waits (advertised as <enabled max=/>)
    max_stanzas: int  # what it holds meanwhile
    max_bytes: int


def resumable(session: Session) -> bool:
    return session.sm is not None and session.sm.id is not None


def hibernate(session: Session, limits: HibernationLimits, now: float) -> None:
    """The session's connection is gone: it waits for its client, as it was."""
    assert session.sm is not None
    port = session.port
    session.port = Hibernation(session.jid, port.address, port.since, session.sm, limits.max_stanzas, limits.max_bytes)
    session.hibernated_at = now
    log.info("session hibernated", session=session.resource, unacked=len(session.sm.unacked), seconds=limits.seconds)


def resume(router: Router, port: SessionPort, previd: str, h: int) -> list[Effect]:
    """A ``<resume/>``: the session moves onto ``port``, or the client is told to bind anew."""
    session = next((s for s in router.sessions.values() if s.sm is not None and s.sm.id == previd), None)
    if session is None or session.sm is None:
        log.info("resume refused", reason="unknown or ended session")
        return [ResumeFailed(port)]
    if isinstance(session.port, Hibernation) and session.port.overflowed:
        # Its queue stopped taking stanzas: resuming would skip them. It ends now, and its
        # device's backlog has the 1:1 messages (what rooms said is in their archive).
        log.info("resume refused", session=session.resource, reason="queue full")
        return [ResumeFailed(port, session.sm.inbound), *end(router, session, "queue full")]
    if (h - session.sm.acked) % MOD > len(session.sm.unacked):
        # The client counts stanzas it was never sent: it and the session disagree for good.
        log.warning("resume refused", session=session.resource, reason="h too high", h=h, sent=session.sm.sent)
        return [ResumeFailed(port, session.sm.inbound), *end(router, session, "resume with a wrong h")]
    old = session.port
    session.port, session.hibernated_at = port, None
    session.csi_active = True  # XEP-0352: not restored on resume
    effects: list[Effect] = []
    if not isinstance(old, Hibernation):
        effects.append(CloseSession(old, "conflict", "resumed on another connection"))
    return effects + [Resumed(port, session.resource)]


def expired(router: Router, limits: HibernationLimits, now: float) -> list[Effect]:
    """Hibernated sessions whose time is over or whose queue overflowed end."""
    effects: list[Effect] = []
    for session in list(router.sessions.values()):
        port = session.port
        if session.hibernated_at is None or not isinstance(port, Hibernation):
            continue
        if port.overflowed:
            effects += end(router, session, "queue full")
        elif now - session.hibernated_at >= limits.seconds:
            effects += end(router, session, "hibernation over")
    return effects


def end(router: Router, session: Session, reason: str) -> list[Effect]:
    log.info("session ended", session=session.resource, reason=reason)
    return router.session_gone(session.port)
