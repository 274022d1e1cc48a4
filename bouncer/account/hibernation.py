"""A session whose connection dropped, kept for an XEP-0198 resume (SPEC §9).

While its phone is away the session stays what it was: in its rooms (which see
nothing), available to its contacts and siblings. What it is sent goes to the SM
queue of its stream, counted as sent, exactly as if the connection were still
there: a resume sends the unacknowledged stanzas again in order, then what came
meanwhile, and nothing twice. The queue is bounded in stanzas and bytes; past
either, it stops taking stanzas and the account ends the session at its next
tick. Nothing is lost then: 1:1 messages wait in the device's backlog (the
mailbox), room messages in the room archive.
"""

from __future__ import annotations

from collections.abc import Callable

from bouncer.xmpp.sm import StreamManagement


class Hibernation:
    """``core.ports.SessionPort`` for a session without a connection."""

    def __init__(self, jid: str, address: str, since: float, state: StreamManagement[bytes],
                 max_stanzas: int, max_bytes: int) -> None:
        self._jid = jid
        self.address = address
        self.since = since
        self.state = state
        self._max_stanzas = max_stanzas
        self._max_bytes = max_bytes
        self.held_bytes = sum(len(wire) for wire in state.unacked)
        self.overflowed = self._over()

    @property
    def jid(self) -> str | None:
        return self._jid

    def send_serialized(self, wire: bytes) -> None:
        if self.overflowed:
            return
        self.state.on_sent(wire)
        self.held_bytes += len(wire)
        self.overflowed = self._over()

    def send_series(self, wires: list[bytes]) -> None:
        for wire in wires:
            self.send_serialized(wire)

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Nothing reaches a socket while hibernated: the device has nothing new yet."""

    def stream_error(self, condition: str, text: str | None = None) -> None:
        """No stream to end: the account ends the session itself."""

    def cut(self) -> None:
        """No connection to cut."""

    def bound(self, resource: str) -> None:
        raise RuntimeError("a hibernated session does not bind")

    def resumed(self, state: StreamManagement[bytes], resource: str) -> None:
        raise RuntimeError("a hibernated session is resumed on a new connection")

    def resume_failed(self, h: int | None) -> None:
        raise RuntimeError("a hibernated session asks no resume")

    def _over(self) -> bool:
        return len(self.state.unacked) > self._max_stanzas or self.held_bytes > self._max_bytes
