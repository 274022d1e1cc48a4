"""Failed-login rate limiting: free failures, then doubling delays, per address."""

from bouncer.c2s.throttle import FREE_FAILURES, MAX_DELAY, WINDOW, LoginThrottle


def test_delay_grows_after_free_failures_and_is_capped():
    t = LoginThrottle()
    delays = [t.failed("10.0.0.1", now=float(i)) for i in range(FREE_FAILURES + 8)]
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES] > 0 and delays[FREE_FAILURES + 1] == 2 * delays[FREE_FAILURES]
    assert max(delays) == MAX_DELAY
    assert t.failed("10.0.0.2", now=0.0) == 0.0  # other addresses are not punished


def test_success_and_time_forgive():
    t = LoginThrottle()
    for i in range(FREE_FAILURES + 2):
        t.failed("a", now=float(i))
    t.succeeded("a")
    assert t.failed("a", now=10.0) == 0.0
    for i in range(FREE_FAILURES + 2):
        t.failed("b", now=float(i))
    assert t.failed("b", now=WINDOW + 100.0) == 0.0
