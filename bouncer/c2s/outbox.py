"""A session's outbound queue: bounded, and coalescing what waits into one write.

Fan-out queues one stanza per delivery; writing each alone costs a TLS record
and a syscall apiece (measured: 20,000 writes for a 20-session burst of 1000
messages). Bytes queued back to back are merged, so the writer sends whatever
accumulated since its last write in one go. Markers (callbacks, close) keep
their place in the order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Chunk:
    data: bytearray
    count: int = 1  # how many queued pieces (stanzas) it holds
    counted: bool = True  # False: outside the caps (what a resume sends again)


@dataclass
class Outbox:
    cap: int  # pieces waiting, at most
    cap_bytes: int = 1 << 20  # bytes waiting, at most
    waiting: int = 0
    waiting_bytes: int = 0
    _items: deque[_Chunk | object] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def full(self) -> bool:
        return self.waiting >= self.cap or self.waiting_bytes >= self.cap_bytes

    def put_bytes(self, data: bytes) -> None:
        last = self._items[-1] if self._items else None
        if isinstance(last, _Chunk) and last.counted:
            last.data += data
            last.count += 1
        else:
            self._items.append(_Chunk(bytearray(data)))
        self.waiting += 1
        self.waiting_bytes += len(data)
        self._wake()

    def put_exempt(self, data: bytes) -> None:
        """Bytes that do not count against the caps: an XEP-0198 resume sends again what a
        hibernated session held, which its own bound already limited; counting it would
        cut the resumed connection at the next stanza, before its client could read."""
        self._items.append(_Chunk(bytearray(data), counted=False))
        self._wake()

    def put_marker(self, marker: object) -> None:
        self._items.append(marker)
        self._wake()

    async def get(self) -> bytes | object:
        """The next thing to do: all bytes queued in a row, or a marker."""
        while not self._items:
            self._idle.set()
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, _Chunk):
            if item.counted:
                self.waiting -= item.count
                self.waiting_bytes -= len(item.data)
            return bytes(item.data)
        return item

    def empty(self) -> bool:
        return not self._items

    async def idle(self) -> None:
        """Until the writer has finished everything queued so far and waits for more."""
        await self._idle.wait()

    def _wake(self) -> None:
        self._idle.clear()
        self._ready.set()
