"""The session outbox: bytes in a row merge into one write, markers keep order, the cap counts stanzas."""

from bouncer.c2s.outbox import Outbox

MARK = object()


async def test_coalesces_bytes_between_markers():
    box = Outbox(cap=10)
    for piece in (b"<a/>", b"<b/>", b"<c/>"):
        box.put_bytes(piece)
    box.put_marker(MARK)
    box.put_bytes(b"<d/>")
    assert box.waiting == 4 and not box.full()
    assert await box.get() == b"<a/><b/><c/>"
    assert box.waiting == 1
    assert await box.get() is MARK
    assert await box.get() == b"<d/>"
    assert box.empty() and box.waiting == 0


async def test_full_at_cap_and_idle_when_drained():
    import asyncio

    box = Outbox(cap=2)
    box.put_bytes(b"1")
    box.put_bytes(b"2")
    assert box.full()
    idle = asyncio.ensure_future(box.idle())
    await asyncio.sleep(0)
    assert not idle.done()  # something is queued
    await box.get()
    getter = asyncio.ensure_future(box.get())  # the writer asks for more: everything went out
    await asyncio.wait_for(idle, 1)
    box.put_bytes(b"3")
    assert await getter == b"3"


async def test_a_resumes_resend_is_outside_the_caps_and_kept_apart():
    box = Outbox(cap=2, cap_bytes=8)
    box.put_exempt(b"<resumed/>" + b"x" * 100)  # far past the byte cap
    assert not box.full() and box.waiting == 0
    box.put_bytes(b"<n/>")  # a new stanza right after: not merged into the resend
    assert box.waiting == 1 and box.waiting_bytes == 4
    assert await box.get() == b"<resumed/>" + b"x" * 100
    assert box.waiting == 1
    assert await box.get() == b"<n/>"
    assert box.waiting == 0 and box.waiting_bytes == 0
