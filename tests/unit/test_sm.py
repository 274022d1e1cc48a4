"""Unit tests of the sans-IO XEP-0198 module (bouncer.xmpp.sm).

No sockets, no clock: times are plain floats. The stateful test drives a
sender and a receiver ``StreamManagement`` against each other (the module is
shared by both roles), starting anywhere in the 2^32 counter space so that the
wrap-around is exercised as well.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from lxml import etree

from bouncer.xmpp import sm
from bouncer.xmpp.ns import SM as NS
from bouncer.xmpp.sm import MOD, SmViolation, StreamManagement

STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TOP = MOD - 1  # the largest h


# ---- helpers -------------------------------------------------------------------------
def element(local: str, **attrs: str) -> etree._Element:
    el = etree.Element(sm.tag(local))
    for name, value in attrs.items():
        el.set(name.replace("_", "-"), value)
    return el


def with_h(value: str) -> etree._Element:
    return element("a", h=value)


def sent_from(start: int, count: int, prefix: str = "m") -> StreamManagement[str]:
    """A stream whose peer acknowledged up to ``start``, then ``count`` more went out."""
    s: StreamManagement[str] = StreamManagement(sent=start, acked=start)
    for i in range(count):
        s.on_sent(f"{prefix}{i}")
    return s


def snapshot(s: StreamManagement) -> tuple:
    return (s.inbound, s.sent, s.acked, list(s.unacked), s.id, s.max, s.location, s.requested_at)


def holds_invariant(s: StreamManagement) -> bool:
    return (s.acked + len(s.unacked)) % MOD == s.sent


def violation_detail(exc: SmViolation) -> dict[str, str]:
    """The ``<handled-count-too-high/>`` of a violation, as its attributes."""
    el = etree.fromstring(exc.detail)
    assert el.tag == sm.tag("handled-count-too-high")
    assert len(el) == 0 and not el.text
    return dict(el.attrib)


# ---- construction ------------------------------------------------------------------------
def test_fresh_stream_is_empty():
    s = StreamManagement()
    assert snapshot(s) == (0, 0, 0, [], None, None, None, None)
    assert holds_invariant(s)


def test_instances_do_not_share_the_queue():
    a, b = StreamManagement(), StreamManagement()
    a.on_sent("x")
    assert list(b.unacked) == []


def test_tag_is_clark_notation():
    assert sm.tag("r") == "{urn:xmpp:sm:3}r"
    assert NS == "urn:xmpp:sm:3"


# ---- counting ---------------------------------------------------------------------------------
def test_on_sent_counts_and_queues_in_order():
    s = sent_from(0, 3)
    assert s.sent == 3
    assert s.acked == 0
    assert list(s.unacked) == ["m0", "m1", "m2"]
    assert s.inbound == 0


def test_on_received_counts_inbound_only():
    s = StreamManagement()
    for _ in range(4):
        s.on_received()
    assert (s.inbound, s.sent, s.acked, list(s.unacked)) == (4, 0, 0, [])
    assert etree.fromstring(s.answer()).get("h") == "4"


def test_on_ack_returns_the_very_objects_sent():
    s: StreamManagement[object] = StreamManagement()
    items = [object(), object()]
    for item in items:
        s.on_sent(item)
    acked = s.on_ack(2)
    assert len(acked) == 2 and all(a is b for a, b in zip(acked, items))


@pytest.mark.parametrize(
    "steps, expected",
    [
        ([1], [["m0"]]),
        ([2, 5], [["m0", "m1"], ["m2", "m3", "m4"]]),
        ([1, 1, 3], [["m0"], [], ["m1", "m2"]]),
        ([0, 5], [[], ["m0", "m1", "m2", "m3", "m4"]]),
        ([5, 5], [["m0", "m1", "m2", "m3", "m4"], []]),
    ],
)
def test_partial_acks_return_exactly_the_acknowledged_items(steps, expected):
    s = sent_from(0, 5)
    for h, items in zip(steps, expected):
        assert s.on_ack(h) == items
        assert s.acked == h
        assert holds_invariant(s)
    assert s.sent == 5


def test_same_h_twice_is_a_no_op_the_second_time():
    s = sent_from(0, 4)
    assert s.on_ack(2) == ["m0", "m1"]
    before = snapshot(s)
    assert s.on_ack(2) == []
    assert snapshot(s) == before


def test_ack_clears_outstanding_request():
    s = sent_from(0, 2)
    s.request(1.0)
    s.on_ack(1)
    assert s.requested_at is None


# ---- acknowledgement violations ----------------------------------------------------------------
@pytest.mark.parametrize(
    "start, count, acked_before, h",
    [
        (0, 0, 0, 1),  # nothing sent at all
        (0, 3, 0, 4),  # one too many
        (0, 3, 2, 4),  # one too many after a partial ack
        (0, 3, 0, TOP),  # "-1": far ahead (mod 2^32 this is also backwards)
        (0, 3, 2, 1),  # goes backwards
        (0, 3, 3, 0),  # goes back to the start
        (MOD - 2, 4, MOD - 2, 3),  # one too many across the wrap
        (MOD - 2, 4, 1, MOD - 1),  # backwards across the wrap
        (10, 2, 10, 9),  # backwards before anything was acknowledged
    ],
)
def test_invalid_h_raises_handled_count_too_high_and_changes_nothing(start, count, acked_before, h):
    s = sent_from(start, count)
    s.on_ack(acked_before)
    s.on_received()
    s.request(3.5)
    before = snapshot(s)

    with pytest.raises(SmViolation) as info:
        s.on_ack(h)

    exc = info.value
    assert exc.condition == "undefined-condition"
    assert violation_detail(exc) == {"h": str(h), "send-count": str(s.sent)}
    assert exc.text == str(exc)
    assert snapshot(s) == before
    assert holds_invariant(s)


def test_violation_defaults():
    exc = SmViolation("boom")
    assert (exc.text, exc.detail, exc.condition) == ("boom", b"", "undefined-condition")


# ---- wrap-around ------------------------------------------------------------------------------------
def test_send_across_the_wrap_and_ack_a_wrapped_h():
    s = sent_from(MOD - 2, 0)
    for item in ["a", "b", "c", "d"]:
        s.on_sent(item)
    assert s.sent == 2  # MOD-2 + 4
    assert holds_invariant(s)

    assert s.on_ack(1) == ["a", "b", "c"]  # MOD-2 -> MOD-1 -> 0 -> 1
    assert (s.acked, list(s.unacked)) == (1, ["d"])
    assert holds_invariant(s)

    assert s.on_ack(2) == ["d"]
    assert (s.acked, s.sent, list(s.unacked)) == (2, 2, [])


def test_ack_exactly_at_the_top():
    s = sent_from(MOD - 3, 2)
    assert s.sent == TOP
    assert s.on_ack(TOP) == ["m0", "m1"]
    s.on_sent("next")
    assert s.sent == 0
    assert s.on_ack(0) == ["next"]


def test_constructed_with_a_queue_near_the_top():
    s: StreamManagement[str] = StreamManagement(sent=1, acked=MOD - 2, unacked=deque(["x", "y", "z"]))
    assert holds_invariant(s)
    assert s.on_ack(MOD - 1) == ["x"]
    assert s.on_ack(1) == ["y", "z"]


@pytest.mark.parametrize("received, expected_h", [(1, "0"), (2, "1"), (3, "2")])
def test_answer_after_inbound_wrapped(received, expected_h):
    s = StreamManagement(inbound=TOP)
    assert etree.fromstring(s.answer()).get("h") == str(TOP)
    for _ in range(received):
        s.on_received()
    assert etree.fromstring(s.answer()).get("h") == expected_h
    assert s.inbound == int(expected_h)


# ---- requests and timeouts ---------------------------------------------------------------------------
def test_wants_request_follows_the_queue_and_outstanding_request():
    s = StreamManagement()
    assert not s.wants_request()  # nothing to acknowledge
    s.on_sent("a")
    s.on_sent("b")
    assert s.wants_request()
    s.request(0.0)
    assert not s.wants_request()  # one is outstanding
    s.on_ack(1)
    assert s.wants_request()  # answered, "b" still unacknowledged
    s.request(1.0)
    s.on_ack(2)
    assert not s.wants_request()  # everything acknowledged


def test_request_bytes_and_time():
    s = StreamManagement()
    el = etree.fromstring(s.request(12.5))
    assert el.tag == sm.tag("r") and dict(el.attrib) == {} and len(el) == 0
    assert s.requested_at == 12.5
    s.request(20.0)  # a later request moves the clock of the outstanding one
    assert s.requested_at == 20.0


@pytest.mark.parametrize(
    "now, overdue",
    [(10.0, False), (14.75, False), (15.0, True), (15.25, True), (1e9, True)],
)
def test_overdue_at_and_around_the_timeout(now, overdue):
    s = sent_from(0, 1)
    s.request(10.0)
    assert s.overdue(now, 5.0) is overdue


def test_not_overdue_without_an_outstanding_request():
    s = sent_from(0, 1)
    assert s.overdue(1e9, 0.0) is False
    s.request(10.0)
    assert s.overdue(100.0, 5.0)
    s.on_ack(0)  # even an ack acknowledging nothing answers the <r/>
    assert s.overdue(100.0, 5.0) is False


def test_failed_ack_leaves_the_request_outstanding():
    s = sent_from(0, 1)
    s.request(10.0)
    with pytest.raises(SmViolation):
        s.on_ack(2)
    assert s.overdue(15.0, 5.0)


# ---- resumption ----------------------------------------------------------------------------------------
def test_resume_returns_the_remainder_which_stays_unacked_and_counted_once():
    s = sent_from(0, 5)
    s.on_ack(1)
    s.request(7.0)

    again = s.resume(3)

    assert again == ["m3", "m4"]
    assert (s.sent, s.acked, list(s.unacked)) == (5, 3, ["m3", "m4"])
    assert s.requested_at is None  # the old stream's <r/> is gone
    assert holds_invariant(s)
    # the peer counts the resent stanzas from its h on: a later ack covers them
    assert s.on_ack(5) == ["m3", "m4"]
    assert (s.sent, s.acked, list(s.unacked)) == (5, 5, [])


@pytest.mark.parametrize("h, expected", [(0, ["m0", "m1", "m2"]), (3, [])])
def test_resume_with_nothing_or_everything_acknowledged(h, expected):
    s = sent_from(0, 3)
    assert s.resume(h) == expected
    assert s.sent == 3


def test_resume_returns_a_copy():
    s = sent_from(0, 2)
    again = s.resume(0)
    again.clear()
    assert list(s.unacked) == ["m0", "m1"]


def test_resume_across_the_wrap():
    s = sent_from(MOD - 2, 4)
    assert s.resume(0) == ["m2", "m3"]
    assert (s.sent, s.acked) == (2, 0)
    assert s.on_ack(2) == ["m2", "m3"]


@pytest.mark.parametrize("h", [4, 100, TOP])
def test_resume_with_an_over_ack_raises_and_changes_nothing(h):
    s = sent_from(0, 3)
    s.on_ack(1)
    before = snapshot(s)
    with pytest.raises(SmViolation) as info:
        s.resume(h)
    assert violation_detail(info.value) == {"h": str(h), "send-count": "3"}
    assert snapshot(s) == before


# ---- failed resumption ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "h, lost",
    [
        (None, ["m1", "m2", "m3"]),  # no h: everything unacknowledged
        (1, ["m1", "m2", "m3"]),  # what was already acknowledged
        (2, ["m2", "m3"]),  # the peer got one more
        (4, []),  # the peer got everything
        (5, ["m1", "m2", "m3"]),  # impossible (too high): not trusted
        (0, ["m1", "m2", "m3"]),  # impossible (backwards): not trusted
        (TOP, ["m1", "m2", "m3"]),
    ],
)
def test_fail_returns_what_the_peer_never_got_and_clears_the_queue(h, lost):
    s = sent_from(0, 4)
    s.on_ack(1)
    assert s.fail(h) == lost
    assert list(s.unacked) == []


def test_fail_across_the_wrap():
    s = sent_from(MOD - 1, 3)
    assert s.fail(1) == ["m2"]


# ---- parsing h ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [("0", 0), ("1", 1), ("42", 42), ("007", 7), (str(TOP), TOP), ("0" * 20 + "5", 5)],
)
def test_parse_h_valid(value, expected):
    assert sm.parse_h(with_h(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        str(MOD),
        str(MOD + 1),
        "99999999999999999999",
        "-1",
        "-0",
        "",
        "abc",
        "1a",
        "1.5",
        "1e3",
        "+5",
        " 5",
        "5 ",
        "0x10",
        "\u00b2",  # superscript two: str.isdigit() but not a decimal digit
        "\u0661",  # Arabic-Indic one: not an xs:unsignedInt digit
        "\uff11",  # fullwidth one
        "1" * 5000,  # longer than Python's int-from-str limit
    ],
)
def test_parse_h_rejects(value):
    with pytest.raises(SmViolation) as info:
        sm.parse_h(with_h(value))
    assert info.value.condition == "invalid-xml"


def test_parse_h_rejects_a_missing_h():
    with pytest.raises(SmViolation):
        sm.parse_h(element("a"))


@pytest.mark.parametrize("attrs, expected", [({}, None), ({"h": "0"}, 0), ({"h": "9"}, 9), ({"h": str(TOP)}, TOP)])
def test_optional_h(attrs, expected):
    assert sm.optional_h(element("failed", **attrs)) == expected


@pytest.mark.parametrize("value", ["", "x", "-3", str(MOD)])
def test_optional_h_rejects_a_present_but_invalid_h(value):
    with pytest.raises(SmViolation):
        sm.optional_h(element("failed", h=value))


# ---- parsing <enabled/> and <failed/> ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({}, (None, None, None)),
        ({"id": "abc", "resume": "true"}, ("abc", None, None)),
        ({"id": "abc", "resume": "1"}, ("abc", None, None)),
        ({"id": "abc", "resume": "TRUE"}, ("abc", None, None)),
        ({"id": "abc", "resume": "false"}, (None, None, None)),
        ({"id": "abc", "resume": "0"}, (None, None, None)),
        ({"id": "abc"}, (None, None, None)),  # id without resume
        ({"resume": "true"}, (None, None, None)),  # resume without id
        ({"id": "", "resume": "true"}, (None, None, None)),  # empty id
        ({"id": "abc", "resume": "true", "max": "300"}, ("abc", 300, None)),
        ({"id": "abc", "resume": "true", "max": "0"}, ("abc", 0, None)),
        ({"max": "300"}, (None, 300, None)),
        ({"id": "abc", "resume": "true", "max": "soon"}, ("abc", None, None)),
        ({"max": "-5"}, (None, None, None)),
        ({"max": "3.5"}, (None, None, None)),
        ({"max": ""}, (None, None, None)),
        ({"max": "\u00b2"}, (None, None, None)),  # not a decimal digit: ignored, no crash
        ({"max": "1" * 5000}, (None, None, None)),  # absurd: ignored, no crash
        (
            {"id": "abc", "resume": "true", "max": "600", "location": "[2001:db8::1]:5222"},
            ("abc", 600, "[2001:db8::1]:5222"),
        ),
        ({"location": "example.net"}, (None, None, "example.net")),
    ],
)
def test_parse_enabled(attrs, expected):
    s = StreamManagement()
    sm.parse_enabled(element("enabled", **attrs), s)
    assert (s.id, s.max, s.location) == expected


def test_parse_enabled_overwrites_earlier_values_and_leaves_counters():
    s = sent_from(0, 2)
    s.id, s.max, s.location = "old", 10, "old.example"
    sm.parse_enabled(element("enabled"), s)
    assert (s.id, s.max, s.location) == (None, None, None)
    assert (s.sent, list(s.unacked)) == (2, ["m0", "m1"])


@pytest.mark.parametrize(
    "xml, condition",
    [
        (f"<failed xmlns='{NS}'><item-not-found xmlns='{STANZAS_NS}'/></failed>", "item-not-found"),
        (f"<failed xmlns='{NS}' h='3'><unexpected-request xmlns='{STANZAS_NS}'/></failed>", "unexpected-request"),
        (f"<failed xmlns='{NS}'><!-- c --><?pi x?><feature-not-implemented xmlns='{STANZAS_NS}'/></failed>",
         "feature-not-implemented"),
        (f"<failed xmlns='{NS}'>text</failed>", "undefined-condition"),
        (f"<failed xmlns='{NS}'/>", "undefined-condition"),
        (f"<failed xmlns='{NS}'><!-- only a comment --></failed>", "undefined-condition"),
    ],
)
def test_failure_condition(xml, condition):
    assert sm.failure_condition(etree.fromstring(xml)) == condition


# ---- builders ----------------------------------------------------------------------------------------------------------
BUILT = [
    pytest.param(sm.enable(False), "enable", {}, id="enable"),
    pytest.param(sm.enable(True), "enable", {"resume": "true"}, id="enable-resume"),
    pytest.param(sm.enable(True, 300), "enable", {"resume": "true", "max": "300"}, id="enable-resume-max"),
    pytest.param(sm.enable(False, 0), "enable", {"max": "0"}, id="enable-max-0"),
    pytest.param(sm.enabled(None), "enabled", {}, id="enabled"),
    pytest.param(sm.enabled(None, 60), "enabled", {"max": "60"}, id="enabled-max"),
    pytest.param(sm.enabled("s1"), "enabled", {"id": "s1", "resume": "true"}, id="enabled-id"),
    pytest.param(
        sm.enabled("s1", 600, "example.net:5222"),
        "enabled",
        {"id": "s1", "resume": "true", "max": "600", "location": "example.net:5222"},
        id="enabled-all",
    ),
    pytest.param(sm.resume("s1", 0), "resume", {"previd": "s1", "h": "0"}, id="resume"),
    pytest.param(sm.resume("s1", TOP), "resume", {"previd": "s1", "h": str(TOP)}, id="resume-top"),
    pytest.param(sm.resumed("s1", 17), "resumed", {"previd": "s1", "h": "17"}, id="resumed"),
    pytest.param(sm.failed("item-not-found"), "failed", {}, id="failed"),
    pytest.param(sm.failed("item-not-found", 0), "failed", {"h": "0"}, id="failed-h-0"),
    pytest.param(sm.failed("unexpected-request", 9), "failed", {"h": "9"}, id="failed-h"),
    pytest.param(
        sm.handled_count_too_high(5, 3), "handled-count-too-high", {"h": "5", "send-count": "3"}, id="hcth"
    ),
    pytest.param(StreamManagement().request(0.0), "r", {}, id="request"),
    pytest.param(StreamManagement().answer(), "a", {"h": "0"}, id="answer"),
    pytest.param(StreamManagement(inbound=TOP).answer(), "a", {"h": str(TOP)}, id="answer-top"),
]


@pytest.mark.parametrize("data, local, attrs", BUILT)
def test_builder_output(data, local, attrs):
    assert isinstance(data, bytes)
    el = etree.fromstring(data)
    assert el.tag == sm.tag(local)
    assert el.nsmap == {None: NS}
    assert dict(el.attrib) == attrs
    assert not el.text and not el.tail
    if local != "failed":
        assert len(el) == 0


@pytest.mark.parametrize("condition", ["item-not-found", "unexpected-request"])
def test_failed_carries_a_stanza_error_condition(condition):
    el = etree.fromstring(sm.failed(condition, 2))
    [child] = el
    assert child.tag == f"{{{STANZAS_NS}}}{condition}"
    assert len(child) == 0 and not child.text
    assert sm.failure_condition(el) == condition
    assert sm.optional_h(el) == 2
    assert sm.optional_h(etree.fromstring(sm.failed(condition))) is None


AWKWARD = [
    "it's",
    'say "hi"',
    "<b>&amp;</b>",
    "a&b;c",
    "]]>",
    "tab\there",
    "line\nbreak",
    "cr\rlf\r\n",
    "  spaced  ",
    "caf\u00e9 \u2603 \U0001f600",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_attribute_values_are_escaped_and_round_trip(value):
    s = StreamManagement()
    sm.parse_enabled(etree.fromstring(sm.enabled(value, location=value)), s)
    assert (s.id, s.location) == (value, value)
    for build in (sm.resume, sm.resumed):
        assert etree.fromstring(build(value, 1)).get("previd") == value


XML_CHAR = st.characters(blacklist_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\t\n\r")


@given(st.text(XML_CHAR, min_size=1))
def test_any_xml_string_round_trips_as_an_id(value):
    assert etree.fromstring(sm.resume(value, 0)).get("previd") == value
    s = StreamManagement()
    sm.parse_enabled(etree.fromstring(sm.enabled(value, location=value)), s)
    assert (s.id, s.location) == (value, value)


@given(st.integers(0, TOP))
def test_h_round_trips_through_every_builder_with_h(h):
    for data in (sm.resume("x", h), sm.resumed("x", h), sm.failed("item-not-found", h),
                 sm.handled_count_too_high(h, 0), StreamManagement(inbound=h).answer()):
        assert sm.parse_h(etree.fromstring(data)) == h


# ---- property: a sender and a receiver against each other -----------------------------------------------------
class SenderReceiver(RuleBasedStateMachine):
    """``sender`` sends to ``receiver`` over a link that may hold stanzas in flight.

    The receiver's ``<a/>`` (its real bytes) acknowledges the sender's queue;
    the counters start anywhere, so they wrap during runs started near 2^32.
    """

    @initialize(
        start=st.sampled_from([0, 1, MOD - 3, MOD - 1]) | st.integers(0, TOP),
        inbound=st.sampled_from([0, TOP]) | st.integers(0, TOP),
    )
    def setup(self, start, inbound):
        self.start = start
        self.sender: StreamManagement[int] = StreamManagement(sent=start, acked=start, inbound=inbound)
        self.receiver: StreamManagement[int] = StreamManagement(inbound=start)
        self.initial_inbound = inbound
        self.next_item = 0
        self.in_flight: list[int] = []  # sent, not yet received
        self.received_unacked: list[int] = []  # received, not yet acknowledged to the sender
        self.received_by_sender = 0

    # -- traffic
    @rule()
    def send(self):
        self.sender.on_sent(self.next_item)
        self.in_flight.append(self.next_item)
        self.next_item += 1

    @precondition(lambda self: self.in_flight)
    @rule()
    def deliver(self):
        self.receiver.on_received()
        self.received_unacked.append(self.in_flight.pop(0))

    @rule()
    def sender_receives(self):
        self.sender.on_received()
        self.received_by_sender += 1

    # -- acknowledgements
    @rule()
    def ack(self):
        h = sm.parse_h(etree.fromstring(self.receiver.answer()))
        assert self.sender.on_ack(h) == self.received_unacked
        self.received_unacked = []
        assert self.sender.requested_at is None

    @rule(data=st.data())
    def ack_valid_h(self, data):
        """Any ``h`` in the valid window: the receiver may answer late, with less than it has."""
        k = data.draw(st.integers(0, len(self.sender.unacked)))
        while len(self.received_unacked) < k:
            self.deliver()
        expected = list(self.sender.unacked)[:k]
        assert self.sender.on_ack((self.sender.acked + k) % MOD) == expected
        del self.received_unacked[:k]

    @rule(data=st.data())
    def bad_ack(self, data):
        lo = len(self.sender.unacked) + 1
        offset = data.draw(st.sampled_from([lo, TOP]) | st.integers(lo, TOP))
        h = (self.sender.acked + offset) % MOD
        before = snapshot(self.sender)
        try:
            self.sender.on_ack(h)
        except SmViolation as exc:
            assert violation_detail(exc) == {"h": str(h), "send-count": str(self.sender.sent)}
        else:
            raise AssertionError(f"h={h} was accepted")
        assert snapshot(self.sender) == before

    # -- requests
    @rule(now=st.floats(0, 1e6, allow_nan=False))
    def request(self, now):
        wanted = self.sender.wants_request()
        assert wanted == (bool(self.sender.unacked) and self.sender.requested_at is None)
        self.sender.request(now)
        assert not self.sender.wants_request()
        assert self.sender.overdue(now, 0.0) and not self.sender.overdue(now, 1.0)

    # -- resumption: the link drops whatever was in flight, the receiver reports its h
    @rule()
    def resume(self):
        again = self.sender.resume(self.receiver.inbound)
        self.received_unacked = []
        assert again == self.in_flight  # exactly what the receiver never got, in order
        assert list(self.sender.unacked) == again
        # they go out again on the resumed stream, without being counted again
        self.in_flight = list(again)

    # -- invariants
    @invariant()
    def counted(self):
        s = self.sender
        assert holds_invariant(s)
        assert s.sent == (self.start + self.next_item) % MOD
        assert s.inbound == (self.initial_inbound + self.received_by_sender) % MOD
        assert list(s.unacked) == sorted(s.unacked)
        assert 0 <= s.sent < MOD and 0 <= s.acked < MOD and 0 <= s.inbound < MOD
        # what the sender still holds is what the receiver has not acknowledged yet
        assert list(s.unacked) == self.received_unacked + self.in_flight
        assert self.receiver.inbound == (s.acked + len(self.received_unacked)) % MOD


TestSenderReceiver = SenderReceiver.TestCase
TestSenderReceiver.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
