"""Which config changes a SIGHUP applies and which need a restart."""

from __future__ import annotations

from pathlib import Path

from bouncer.config import load_config
from bouncer.reload import differences, in_force, needs_restart

BASE = """\
upstream: {jid: alice@example.org, password: secret}
downstream: {password_hash: "%s"}
listen: {port: 5222}
storage: {path: ./bouncer.sqlite}
log: {format: json, level: info}
"""
HASH = ("scram:v1;SCRAM-SHA-256=4096,HIqlfrsGASqRFrieMmdsXTTggsoO8gWZTkot2yua/ac=,"
        "Tj3A4DA76uBx4KlHMTSBWOks8oQnpE9WeBU1AkGK4WE=,fuunXdfimD8OziFuwFbakLmCkCFJVgd4Xpe9Wl0MUUM=")


def config(tmp_path: Path, text: str, name: str = "bouncer.yaml"):
    path = tmp_path / name
    path.write_text(text.replace("%s", HASH))
    return load_config(path)


def test_the_config_remembers_its_file(tmp_path: Path) -> None:
    assert config(tmp_path, BASE).source == str(tmp_path / "bouncer.yaml")


def test_same_file_no_differences(tmp_path: Path) -> None:
    assert differences(config(tmp_path, BASE), config(tmp_path, BASE)) == []


def test_applied_and_restart_keys(tmp_path: Path) -> None:
    old = config(tmp_path, BASE)
    new = config(tmp_path, BASE.replace("level: info", "level: debug")
                 .replace("port: 5222", "port: 5269, tls: required")
                 .replace("password: secret", "password: other, host: xmpp.example.org")
                 + "presence: {idle_show: xa}\nlimits: {iq_timeout: 5}\n")
    changed = differences(old, new)
    assert changed == ["upstream.password", "upstream.host", "listen.port",
                       "presence.idle_show", "limits.iq_timeout", "log.level"]
    assert [key for key in changed if needs_restart(key)] == [
        "upstream.password", "upstream.host", "listen.port"]

    kept = in_force(old, new)
    assert kept.upstream == old.upstream and kept.listen.port == 5222
    assert kept.log.level == "debug" and kept.presence.idle_show == "xa"
    assert kept.limits.iq_timeout == 5.0
    assert differences(old, kept) == ["presence.idle_show", "limits.iq_timeout", "log.level"]


def test_storage_and_listen_address_need_a_restart(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    old = config(tmp_path, BASE)
    new = config(tmp_path, BASE.replace("./bouncer.sqlite", "./other/b.sqlite")
                 .replace("port: 5222", "port: 5222, address: '::1', direct_tls_port: 5223"))
    changed = differences(old, new)
    assert changed == ["listen.address", "listen.direct_tls_port", "storage.path"]
    assert all(needs_restart(key) for key in changed)
    assert differences(old, in_force(old, new)) == []


def test_certificate_and_credentials_apply(tmp_path: Path) -> None:
    assert not needs_restart("listen.cert") and not needs_restart("listen.key")
    assert not needs_restart("downstream.credentials") and not needs_restart("listen.tls")


def test_keys_nobody_applies_need_a_restart() -> None:
    assert needs_restart("push.endpoint")  # a section reload does not know yet
    assert needs_restart("upstream.ca_file") and needs_restart("storage.path")
