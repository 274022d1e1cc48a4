"""Failed-login rate limiting: per address and in total, whatever the number of connections."""

from bouncer.c2s.throttle import FREE_FAILURES, FREE_TOTAL, MAX_DELAY, TOTAL_STEP, WINDOW, LoginThrottle


def guesses_answered(throttle: LoginThrottle, addresses: list[str], seconds: float) -> int:
    """Guesses whose answer an attacker has within ``seconds``, failing as fast as it can:
    all at time 0 over parallel connections, each connection guessing again as soon as
    its answer comes."""
    pending = [(0.0, a) for a in addresses]  # (time of the next guess, address)
    answered = 0
    while pending:
        pending.sort()
        now, address = pending.pop(0)
        answer_at = now + throttle.failed(address, now)
        if answer_at > seconds:
            continue
        answered += 1
        pending.append((answer_at, address))
    return answered


def test_free_failures_then_growing_slots_per_address():
    t = LoginThrottle()
    delays = [t.failed("10.0.0.1", now=0.0) for _ in range(FREE_FAILURES + 3)]
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES:] == [0.5, 1.5, 3.5]  # slots 0.5, then 1 and 2 further apart
    assert t.failed("10.0.0.2", now=0.0) == 0.0  # another address has its own count


def test_more_connections_buy_nothing():
    """100 parallel connections from one address get what one connection gets."""
    one = guesses_answered(LoginThrottle(), ["10.0.0.1"], 60.0)
    hundred = guesses_answered(LoginThrottle(), ["10.0.0.1"] * 100, 60.0)
    assert hundred == one == 9  # 3 free, then slots at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (61.5 ...) s
    later = guesses_answered(LoginThrottle(), ["10.0.0.1"] * 100, 600.0) - hundred
    assert later <= (600 - 60) / MAX_DELAY + 1  # 2 a minute after the first


def test_many_addresses_share_the_total_budget():
    botnet = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    answered = guesses_answered(LoginThrottle(), botnet, 60.0)
    assert answered <= FREE_TOTAL + 60 / TOTAL_STEP + 1


def test_a_success_resets_nothing_and_time_forgives():
    t = LoginThrottle()
    for _ in range(FREE_FAILURES):
        t.failed("a", now=0.0)
    assert t.failed("a", now=1.0) > 0  # nobody's success in between clears it
    assert t.failed("a", now=WINDOW + 100.0) == 0.0  # a quiet window does
    assert list(t.addresses) == ["a"]
    t.failed("b", now=2 * WINDOW + 200.0)
    assert list(t.addresses) == ["b"]  # "a", quiet for a window, was forgotten
