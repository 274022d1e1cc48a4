"""The ``bouncer`` command, and the logging that ``bouncer run`` sets up."""

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import bouncer
from bouncer import tls
from bouncer.cli import main
from bouncer.credentials import parse_credentials
from bouncer.log import configure_logging

REPO = Path(__file__).parents[2]
EXAMPLE = REPO / "bouncer.yaml"
VALID = """\
upstream: {jid: alice@example.org, password: secret}
downstream: {password: change-me}
log: {format: json}
"""


def bouncer_command(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m bouncer ...`` as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "bouncer", *args], input=stdin, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging() is process-wide: undo it so later tests log as before."""
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


# --- subprocess: what a user sees ---------------------------------------------------------

def test_check_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstream: {jid: alice@example.org, password: x, port: abc}\ndownstream: {password: y}\n")
    result = bouncer_command("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "bouncer: upstream.port: expected an integer, got 'abc'\n"


def test_check_config_reports_every_mistake_in_one_run(tmp_path: Path) -> None:
    """Issue 13: a missing upstream.jid, a listen.port that is no port and a misspelt
    section are three lines, not the first alone."""
    path = tmp_path / "bad.yaml"
    path.write_text("upstream: {password: x}\nlisten: {port: x}\ndownstream: {password: y}\nmucc: {}\n")
    result = bouncer_command("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bouncer: mucc: unknown key (did you mean 'muc'?)",
        "bouncer: upstream.jid: required key is missing",
        "bouncer: listen.port: expected an integer, got 'x'",
    ]


def test_run_with_a_broken_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream: [\n")
    result = bouncer_command("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"bouncer: {path}: invalid YAML at line 2")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_example_config_passes_check_config() -> None:
    result = bouncer_command("check-config", "-c", str(EXAMPLE))
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_hash_password_from_stdin() -> None:
    result = bouncer_command("hash-password", stdin="s3cret pass\n")
    assert result.returncode == 0
    stored = result.stdout.strip()
    assert "s3cret" not in result.stdout
    assert result.stdout.count("\n") == 1
    assert parse_credentials(stored).check_plain("s3cret pass")


# --- in-process ---------------------------------------------------------------------------

def test_check_config_prints_ok_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bouncer.yaml"
    path.write_text(VALID)
    assert main(["check-config", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n"
    assert err.startswith("bouncer: warning: downstream.password: ")
    assert err.count("\n") == 1


def test_config_defaults_to_bouncer_yaml_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == "bouncer: bouncer.yaml: cannot read the config file: No such file or directory\n"
    (tmp_path / "bouncer.yaml").write_text(VALID)
    assert main(["check-config"]) == 0


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("upstream: {jid: alice, password: x}\ndownstream: {password: y}\n", "bouncer: upstream.jid: expected a JID"),
        (VALID + "log: {level: loud}\n", "bouncer: {path}: invalid YAML at line 4, column 1: duplicate key 'log'"),
        (VALID.replace("format: json", "format: json, colour: true"), "bouncer: log.colour: unknown key"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: str, line: str
) -> None:
    path = tmp_path / "bouncer.yaml"
    path.write_text(content)
    assert main([command, "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(line.format(path=path))
    assert err.count("\n") == 1


def test_run_hands_the_config_to_the_app_on_uvloop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}

    async def run(config):
        seen["config"] = config
        seen["loop"] = type(asyncio.get_running_loop()).__module__

    fake_app = types.ModuleType("bouncer.app")
    fake_app.run = run
    monkeypatch.setitem(sys.modules, "bouncer.app", fake_app)
    monkeypatch.setattr(bouncer, "app", fake_app, raising=False)
    path = tmp_path / "bouncer.yaml"
    path.write_text(VALID)

    assert main(["run", "-c", str(path)]) == 0
    assert seen["config"].upstream.jid == "alice@example.org"
    assert seen["loop"].startswith("uvloop")
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "config_warning"
    assert event["level"] == "warning"
    assert event["problem"].startswith("downstream.password:")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().err


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_hash_password_prompts_twice_on_a_tty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["pw one", "pw one"])
    monkeypatch.setattr(sys, "stdin", FakeTty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["hash-password"]) == 0
    assert parse_credentials(capsys.readouterr().out).check_plain("pw one")


def test_hash_password_refuses_a_mismatch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["pw one", "pw two"])
    monkeypatch.setattr(sys, "stdin", FakeTty())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["hash-password"]) == 1
    assert capsys.readouterr() == ("", "bouncer: the passwords do not match\n")


def test_hash_password_refuses_an_empty_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-password"]) == 1
    assert capsys.readouterr() == ("", "bouncer: the password is empty\n")


# --- logging ------------------------------------------------------------------------------

def test_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = structlog.get_logger()
    log.debug("hidden")
    log.info("hello", session="laptop")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "hello" and first["level"] == "info"
    assert first["session"] == "laptop" and "timestamp" in first
    assert second["level"] == "error" and "RuntimeError: boom" in second["exception"]


def test_auto_is_console_on_a_tty_and_json_elsewhere() -> None:
    tty = FakeTty()
    configure_logging("auto", "info", stream=tty)
    structlog.get_logger().info("hello")
    assert not tty.getvalue().startswith("{")
    pipe = io.StringIO()
    configure_logging("auto", "info", stream=pipe)
    structlog.get_logger().info("hello")
    assert json.loads(pipe.getvalue())["event"] == "hello"


def test_console_has_timestamps_except_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    structlog.get_logger().info("hello")
    assert stream.getvalue()[:2] == "20"
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    structlog.get_logger().info("hello")
    assert stream.getvalue().split()[:2] == ["[info", "]"]


def test_console_keeps_each_event_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    log = structlog.get_logger()
    log.info("peer said", text="line one\nFAKE EVENT")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "line one\\nFAKE EVENT" in lines[0]
    assert "RuntimeError: boom" in lines[1]


def test_reconfiguring_changes_the_level_of_already_bound_loggers() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    session_log = structlog.get_logger().bind(session="phone")
    session_log.debug("before")
    configure_logging("json", "debug", stream=stream)
    session_log.debug("after")
    configure_logging("json", "error", stream=stream)
    session_log.warning("silenced")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["after"]


def test_stdlib_logging_shows_warnings_in_the_same_format() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    configure_logging("json", "debug", stream=stream)  # reconfiguring must not duplicate lines
    logger = logging.getLogger("aioxmpp.test")
    logger.info("chatter")
    logger.warning("trouble %s", "ahead")
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["logger"]) == ("trouble ahead", "warning", "aioxmpp.test")


def test_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("xml", "info", stream=io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("json", "trace", stream=io.StringIO())


def test_cert_prints_the_fingerprints_clients_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bouncer.yaml"
    path.write_text(VALID)
    assert main(["cert", "-c", str(path)]) == 1
    assert "the bouncer makes it on its first start" in capsys.readouterr().err
    cert, _, sha256 = tls.ensure_certificate(str(tmp_path), "example.org")
    assert main(["cert", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"certificate: {cert} (self-signed)"
    shown = tls.fingerprints(cert)
    assert out[1].split()[1] == sha256 and out[2].split()[1] == shown["sha1"]
    assert out[3].split()[0] == shown["sha1"].replace(":", "").lower()  # as Profanity prints it
    assert out[4].split()[2] == shown["spki_sha256"]
    assert main(["cert", "-c", str(path), "--pem"]) == 0
    assert capsys.readouterr().out == Path(cert).read_text()
