"""Stored downstream credentials: format, SCRAM exchanges through scramp, PLAIN checks."""

import pytest
from scramp import ScramClient, ScramMechanism
from scramp.utils import ScramException

from bouncer.credentials import (
    MECHANISMS,
    Credentials,
    hash_password,
    parse_credentials,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


def scram_exchange(credentials: Credentials, mechanism: str, password: str) -> None:
    """Run a whole SCRAM exchange; raises ScramException when authentication fails."""
    client = ScramClient([mechanism], "alice", password)
    server = ScramMechanism(mechanism).make_server(lambda _user: credentials.auth_info(mechanism))
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # the client checks the server too


def test_hash_is_one_self_describing_line_without_the_password(stored: str) -> None:
    assert stored.startswith("scram:v1;SCRAM-SHA-256=4096,")
    assert ";SCRAM-SHA-1=4096," in stored
    assert "\n" not in stored
    assert PASSWORD not in stored


def test_salts_are_fresh_for_each_hash(stored: str) -> None:
    assert hash_password(PASSWORD) != stored


def test_round_trip(stored: str) -> None:
    credentials = parse_credentials(stored)
    assert credentials.mechanisms == MECHANISMS == ("SCRAM-SHA-256", "SCRAM-SHA-1")
    assert credentials.serialize() == stored
    assert parse_credentials(f"  {stored}\n") == credentials


def test_iterations_are_recorded() -> None:
    credentials = parse_credentials(hash_password(PASSWORD, iterations=5000))
    assert {credentials.auth_info(m)[3] for m in MECHANISMS} == {5000}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_scram_exchange_succeeds_with_the_right_password(stored: str, mechanism: str) -> None:
    scram_exchange(parse_credentials(stored), mechanism, PASSWORD)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_scram_exchange_fails_with_a_wrong_password(stored: str, mechanism: str) -> None:
    with pytest.raises(ScramException):
        scram_exchange(parse_credentials(stored), mechanism, "wrong")


def test_from_plain_serves_scram_too() -> None:
    scram_exchange(Credentials.from_plain("change-me"), "SCRAM-SHA-256", "change-me")


def test_check_plain(stored: str) -> None:
    credentials = parse_credentials(stored)
    assert credentials.check_plain(PASSWORD)
    assert not credentials.check_plain("wrong")
    assert not credentials.check_plain("")
    assert not credentials.check_plain("bad\x07control")


def test_check_plain_applies_saslprep_like_scram() -> None:
    # SASLprep maps a non-ASCII space to an ASCII one, so both spellings are the same password.
    assert Credentials.from_plain("pass word").check_plain("pass\u00a0word")


def test_unknown_mechanism_is_a_key_error(stored: str) -> None:
    with pytest.raises(KeyError):
        parse_credentials(stored).auth_info("SCRAM-SHA-512")


def test_only_one_mechanism_is_accepted(stored: str) -> None:
    sha1_only = "scram:v1;" + stored.split(";")[2]
    assert parse_credentials(sha1_only).mechanisms == ("SCRAM-SHA-1",)


def test_repr_shows_no_keys(stored: str) -> None:
    credentials = parse_credentials(stored)
    assert repr(credentials) == "Credentials(mechanisms=('SCRAM-SHA-256', 'SCRAM-SHA-1'))"


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_too_few_iterations_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_password(PASSWORD, iterations=1000)


def _sha256_part(stored: str) -> str:
    return stored.split(";")[1]


def _with_sha256_field(stored: str, index: int, value: str) -> str:
    """``stored`` with field ``index`` (iterations, salt, stored key, server key) replaced."""
    prefix, part, rest = stored.split(";")
    name, values = part.split("=", 1)
    fields = values.split(",")
    fields[index] = value
    return ";".join([prefix, f"{name}={','.join(fields)}", rest])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda s: "", "scram:v1"),
        (lambda s: "hunter2", "scram:v1"),
        (lambda s: s.replace("scram:v1", "scram:v2"), "scram:v1"),
        (lambda s: "scram:v1;", "unsupported mechanism ''"),
        (lambda s: s.replace("SCRAM-SHA-1=", "SCRAM-MD5="), "unsupported mechanism 'SCRAM-MD5'"),
        (lambda s: f"{s};{_sha256_part(s)}", "twice"),
        (lambda s: s.replace("SCRAM-SHA-256=4096", "SCRAM-SHA-256=4096,x"), "expected <iterations>"),
        (lambda s: _with_sha256_field(s, 0, "10"), "iteration count"),
        (lambda s: _with_sha256_field(s, 0, "20000000"), "iteration count"),
        (lambda s: _with_sha256_field(s, 0, "abc"), "iteration count"),
        (lambda s: _with_sha256_field(s, 1, "!!"), "base64"),
        (lambda s: _with_sha256_field(s, 1, "AAAA"), "salt must be at least 12 bytes"),
        (lambda s: _with_sha256_field(s, 2, "AAAA"), "stored and server keys must be 32 bytes"),
        (lambda s: _with_sha256_field(s, 3, ""), "stored and server keys must be 32 bytes"),
    ],
)
def test_junk_is_a_clear_value_error(stored: str, mangle, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_credentials(mangle(stored))
    assert "\n" not in str(raised.value)


def test_a_password_plain_accepted_is_not_derived_again_and_a_wrong_one_always_is(stored, monkeypatch) -> None:
    import bouncer.credentials as module

    credentials = parse_credentials(stored)
    derivations = []
    real = module._derive
    monkeypatch.setattr(module, "_derive", lambda *a: derivations.append(a[1]) or real(*a))
    assert credentials.check_plain(PASSWORD) and credentials.check_plain(PASSWORD)
    assert derivations == [PASSWORD]  # the second login (a phone reconnecting) costs no PBKDF2
    assert not credentials.check_plain("wrong") and not credentials.check_plain("wrong")
    assert derivations == [PASSWORD, "wrong", "wrong"]
    assert credentials == parse_credentials(stored)  # the cache is not part of what they are
