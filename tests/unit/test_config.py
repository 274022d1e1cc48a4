"""load_config(): defaults, path handling, and an error naming the key for each mistake."""

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bouncer.config import (
    ConfigError,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    PresenceConfig,
    UpstreamConfig,
    load_config,
)
from bouncer.credentials import hash_password
from bouncer.tls import ensure_certificate

HASH = hash_password("change-me")
DELETE = object()


def document(**sections: dict[str, Any] | Any) -> dict[str, Any]:
    """A valid minimal config with ``sections`` merged in; DELETE removes a key or section."""
    doc: dict[str, Any] = {
        "upstream": {"jid": "alice@example.org", "password": "secret"},
        "downstream": {"password_hash": HASH},
    }
    for name, update in sections.items():
        if update is DELETE:
            del doc[name]
        elif isinstance(update, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **update}
            doc[name] = {k: v for k, v in doc[name].items() if v is not DELETE}
        else:
            doc[name] = update
    return doc


def write(tmp_path: Path, content: dict[str, Any] | str, name: str = "bouncer.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with the files configs below refer to."""
    (tmp_path / "password.txt").write_text("from-file\n")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    ensure_certificate(str(tmp_path / "tls"), "example.org")
    return tmp_path


# --- valid configs ------------------------------------------------------------------------

def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, document()))
    assert config.upstream == UpstreamConfig(jid="alice@example.org", password="secret")
    assert config.listen == ListenConfig()
    assert config.presence == PresenceConfig()
    assert config.limits == LimitsConfig()
    assert config.log == LogConfig()
    assert config.storage.path == str(tmp_path / "bouncer.sqlite")
    assert config.downstream.credentials.check_plain("change-me")
    assert config.warnings == ()


def test_every_key_can_be_set(files: Path) -> None:
    config = load_config(write(files, document(
        upstream={"jid": "alice@example.org/bouncer", "host": "xmpp.example.org", "port": 5223,
                  "tls": "direct", "verify": False, "ca_file": "tls/bouncer-cert.pem"},
        listen={"address": "::1", "port": 15222, "direct_tls_port": 15223, "tls": "optional",
                "cert": "tls/bouncer-cert.pem", "key": "tls/bouncer-key.pem"},
        storage={"path": "state.db"},
        presence={"idle_show": "xa", "idle_status": "gone fishing"},
        limits={"max_stanza_size": 10000, "iq_timeout": 5, "upstream_queue": 1,
                "session_queue": 2},
        log={"format": "json", "level": "debug"},
    )))
    assert config.upstream == UpstreamConfig(
        jid="alice@example.org/bouncer", password="secret", host="xmpp.example.org",
        port=5223, tls="direct", verify=False, ca_file=str(files / "tls/bouncer-cert.pem"))
    assert config.listen == ListenConfig(
        address="::1", port=15222, direct_tls_port=15223, tls="optional",
        cert=str(files / "tls/bouncer-cert.pem"), key=str(files / "tls/bouncer-key.pem"))
    assert config.storage.path == str(files / "state.db")
    assert config.presence == PresenceConfig(idle_show="xa", idle_status="gone fishing")
    assert config.limits == LimitsConfig(10000, 5.0, 1, 2)
    assert isinstance(config.limits.iq_timeout, float)
    assert config.log == LogConfig(format="json", level="debug")


def test_relative_paths_follow_the_config_file_not_the_cwd(
    files: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = write(files, document(upstream={"password": DELETE, "password_file": "password.txt"}))
    config = load_config(os.path.relpath(path))
    assert config.upstream.password == "from-file"  # trailing newline stripped
    assert config.storage.path == str(files / "bouncer.sqlite")


def test_empty_values_and_sections_mean_defaults(tmp_path: Path) -> None:
    text = yaml.safe_dump(document()) + "listen:\nlog:\n  level:\npresence: {idle_status: null}\n"
    config = load_config(write(tmp_path, text))
    assert (config.listen, config.log, config.presence) == (ListenConfig(), LogConfig(), PresenceConfig())


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1", "::1"])
def test_plain_upstream_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    config = load_config(write(tmp_path, document(upstream={"tls": "plain", "host": host})))
    assert config.upstream.tls == "plain"


def test_plain_upstream_is_allowed_for_a_localhost_jid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, document(upstream={"jid": "a@localhost", "tls": "plain"})))
    assert config.upstream.tls == "plain"


def test_plain_downstream_password_is_accepted_with_a_warning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, document(
        downstream={"password_hash": DELETE, "password": "change-me"})))
    assert config.downstream.credentials.check_plain("change-me")
    [warning] = config.warnings
    assert warning.startswith("downstream.password:") and "hash-password" in warning
    assert "change-me" not in warning


def test_passwords_stay_out_of_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, document()))
    assert "secret" not in repr(config)
    assert HASH.split(";")[1] not in repr(config)


def test_example_file_at_the_repo_root_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "bouncer.yaml")
    assert config.upstream.jid == "alice@example.org"
    assert config.downstream.credentials.check_plain("change-me")
    assert config.warnings == ()


# --- mistakes: one ConfigError naming the key ---------------------------------------------

# Not writable even for root, unlike a chmod-ed directory.
NOT_WRITABLE = "/proc/self/bouncer.sqlite"

ERRORS = [
    # upstream
    (document(upstream={"jid": DELETE}), "upstream.jid", "required key is missing"),
    (document(upstream=DELETE), "upstream.jid", "required key is missing"),
    (document(upstream={"jid": "alice"}), "upstream.jid", "expected a JID"),
    (document(upstream={"jid": "alice@"}), "upstream.jid", "expected a JID"),
    (document(upstream={"jid": "@example.org"}), "upstream.jid", "expected a JID"),
    (document(upstream={"jid": "alice@example.org/"}), "upstream.jid", "expected a JID"),
    (document(upstream={"jid": 42}), "upstream.jid", "got 42"),
    (document(upstream={"password": DELETE}), "upstream.password", "upstream.password_file"),
    (document(upstream={"password_file": "password.txt"}), "upstream.password_file",
     "cannot be used together with upstream.password"),
    (document(upstream={"password": DELETE, "password_file": "missing.txt"}),
     "upstream.password_file", "cannot read"),
    (document(upstream={"password": DELETE, "password_file": "empty.txt"}),
     "upstream.password_file", "is empty"),
    (document(upstream={"password": ""}), "upstream.password", "expected a non-empty string"),
    (document(upstream={"port": "abc"}), "upstream.port", "expected an integer, got 'abc'"),
    (document(upstream={"port": True}), "upstream.port", "expected an integer, got True"),
    (document(upstream={"port": 5222.0}), "upstream.port", "expected an integer, got 5222.0"),
    (document(upstream={"port": 0}), "upstream.port", "from 1 to 65535, got 0"),
    (document(upstream={"port": 70000}), "upstream.port", "from 1 to 65535, got 70000"),
    (document(upstream={"host": 5}), "upstream.host", "expected a non-empty string, got 5"),
    (document(upstream={"tls": "ssl"}), "upstream.tls",
     "expected one of 'starttls', 'direct', 'plain', got 'ssl'"),
    (document(upstream={"tls": "plain"}), "upstream.tls", "loopback"),
    (document(upstream={"tls": "plain", "host": "example.org"}), "upstream.tls", "loopback"),
    (document(upstream={"tls": "plain", "host": "10.0.0.1"}), "upstream.tls", "loopback"),
    (document(upstream={"verify": "no"}), "upstream.verify", "expected true or false, got 'no'"),
    (document(upstream={"verify": 1}), "upstream.verify", "expected true or false, got 1"),
    (document(upstream={"ca_file": "missing.pem"}), "upstream.ca_file", "cannot read"),
    (document(upstream={"ca_file": "garbage.pem"}), "upstream.ca_file", "no usable PEM"),
    (document(upstream={"pasword": "x"}), "upstream.pasword",
     "unknown key (did you mean 'upstream.password'?)"),
    (document(upstream="alice@example.org"), "upstream", "expected a mapping"),
    # listen
    (document(listen={"address": ""}), "listen.address", "non-empty string"),
    (document(listen={"port": "5222/tcp"}), "listen.port", "expected an integer"),
    (document(listen={"direct_tls_port": 5222}), "listen.direct_tls_port", "differ"),
    (document(listen={"tls": "none"}), "listen.tls", "expected one of 'required', 'optional'"),
    (document(listen={"tls": "optional", "address": "0.0.0.0"}), "listen.tls", "loopback"),
    (document(listen={"cert": "tls/bouncer-cert.pem"}), "listen.key", "set together"),
    (document(listen={"key": "tls/bouncer-key.pem"}), "listen.cert", "set together"),
    (document(listen={"cert": "missing.pem", "key": "tls/bouncer-key.pem"}), "listen.cert",
     "cannot read"),
    (document(listen={"cert": "tls/bouncer-cert.pem", "key": "missing.pem"}), "listen.key",
     "cannot read"),
    (document(listen={"cert": "garbage.pem", "key": "tls/bouncer-key.pem"}), "listen.cert",
     "cannot use"),
    (document(listen={"verify": True}), "listen.verify", "unknown key"),
    (document(listen=["127.0.0.1"]), "listen", "expected a mapping"),
    # downstream
    (document(downstream=DELETE), "downstream.password_hash", "downstream.password"),
    (document(downstream={"password_hash": DELETE}), "downstream.password_hash", "required"),
    (document(downstream={"password": "x"}), "downstream.password",
     "cannot be used together with downstream.password_hash"),
    (document(downstream={"password_hash": "junk"}), "downstream.password_hash",
     "not a password hash"),
    (document(downstream={"password_hash": HASH.replace("4096", "10", 1)}),
     "downstream.password_hash", "iteration count"),
    (document(downstream={"password_hash": DELETE, "password": "bad\x07"}),
     "downstream.password", "control characters"),
    # storage
    (document(storage={"path": "missing-dir/bouncer.sqlite"}), "storage.path", "does not exist"),
    (document(storage={"path": "tls"}), "storage.path", "is a directory"),
    (document(storage={"path": NOT_WRITABLE}), "storage.path", "not writable"),
    (document(storage={"path": 1}), "storage.path", "expected a non-empty string"),
    # presence
    (document(presence={"idle_show": "busy"}), "presence.idle_show",
     "expected one of 'away', 'xa', 'dnd', 'chat', 'available', got 'busy'"),
    (document(presence={"idle_show": False}), "presence.idle_show", "got False"),
    (document(presence={"idle_status": 5}), "presence.idle_status", "got 5"),
    # limits
    (document(limits={"max_stanza_size": 100}), "limits.max_stanza_size",
     "expected an integer of at least 10000, got 100"),
    (document(limits={"max_stanza_size": "256k"}), "limits.max_stanza_size", "expected an integer"),
    (document(limits={"iq_timeout": 0}), "limits.iq_timeout", "expected a positive number, got 0"),
    (document(limits={"iq_timeout": "60s"}), "limits.iq_timeout", "positive number"),
    (document(limits={"iq_timeout": True}), "limits.iq_timeout", "positive number"),
    (document(limits={"iq_timeout": float("inf")}), "limits.iq_timeout", "positive number"),
    (document(limits={"upstream_queue": 0}), "limits.upstream_queue", "at least 1"),
    (document(limits={"session_queue": 1.5}), "limits.session_queue", "expected an integer"),
    # log
    (document(log={"format": "text"}), "log.format", "expected one of 'auto', 'console', 'json'"),
    (document(log={"level": "trace"}), "log.level", "'debug', 'info', 'warning', 'error'"),
    (document(log={"level": "INFO"}), "log.level", "got 'INFO'"),
    # top level
    (document(pubsub={}), "pubsub", "unknown key (known keys: upstream, listen"),
    (document(upstrem={}), "upstrem", "did you mean 'upstream'?"),
]


@pytest.mark.parametrize(("content", "key", "problem"), ERRORS)
def test_error_names_the_key(files: Path, content: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(files, content))
    error = raised.value
    assert error.key == key
    assert problem in error.problem
    assert str(error) == f"{key}: {error.problem}"
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("upstream: [\n", "invalid YAML at line 2"),
        ("upstream:\n  jid: a@b\n jid: c@d\n", "invalid YAML at line 3"),
        ("upstream: {jid: a@b}\nupstream: {jid: c@d}\n", "line 2, column 1: duplicate key 'upstream'"),
        ("upstream: !!python/object:os.system {}\n", "invalid YAML at line 1"),
        ("- upstream\n", "expected a mapping of sections, got ['upstream']"),
        ("just a string\n", "expected a mapping of sections"),
    ],
)
def test_file_level_errors_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.key == str(path)
    assert problem in raised.value.problem
    assert "\n" not in str(raised.value)


def test_empty_file_asks_for_the_first_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, ""))
    assert raised.value.key == "upstream.jid"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "nope.yaml")
    assert raised.value.key == str(tmp_path / "nope.yaml")
    assert "No such file" in raised.value.problem


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert raised.value.key == str(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("upstream: {jid: jürgen@example.org}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.key == str(path)
    assert "UTF-8" in raised.value.problem


@pytest.mark.parametrize(
    ("section", "value"),
    [("upstream", {"password": 12345678}), ("downstream", {"password_hash": 12345678}),
     ("downstream", {"password_hash": DELETE, "password": ["12345678"]})],
)
def test_secrets_are_not_echoed_in_errors(tmp_path: Path, section: str, value: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, document(**{section: value})))
    assert "12345678" not in str(raised.value)
    assert "got a value of type" in str(raised.value)


def test_long_values_are_shortened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, document(log={"level": "x" * 500})))
    assert len(str(raised.value)) < 200


def test_history_and_muc_sections(tmp_path: Path) -> None:
    from bouncer.config import HistoryConfig, MucConfig

    config = load_config(write(tmp_path, yaml.safe_dump(document())))
    assert config.history == HistoryConfig() and config.muc == MucConfig()
    text = yaml.safe_dump(document(history={"max_age_days": 7, "max_messages": 500, "default_messages": 0},
                                   muc={"leave_when_unused": True}))
    config = load_config(write(tmp_path, text))
    assert config.history == HistoryConfig(max_age_days=7.0, max_messages=500, default_messages=0)
    assert config.muc.leave_when_unused is True
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, yaml.safe_dump(document(muc={"leave_when_unused": "yes"}))))
    assert err.value.key == "muc.leave_when_unused"
