"""Counting connections that have not logged in, per address and in total."""

from bouncer.c2s.admission import Admission


def test_per_address_and_total_limits_and_release():
    a = Admission(max_total=3, max_per_address=2)
    assert a.admit("x") and a.admit("x") and not a.admit("x")  # x at its limit
    assert a.admit("y") and not a.admit("z")  # the total is reached
    assert a.pending == {"x": 2, "y": 1} and a.total == 3
    a.release("x")
    assert a.admit("z") and a.pending == {"x": 1, "y": 1, "z": 1}
    for host in ("x", "y", "z"):
        a.release(host)
    assert a.pending == {} and a.total == 0
