"""The ``bouncer`` command: run, check-config, status, hash-password.

User mistakes (config errors, mismatched passwords) end with one ``bouncer: ...`` line on
stderr and a non-zero exit code, never a traceback (SPEC §2).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

import structlog

from bouncer import control, report, tls
from bouncer.account import commands as account_commands
from bouncer.config import ConfigError, load_config
from bouncer.credentials import hash_password
from bouncer.log import configure_logging

DEFAULT_CONFIG = "bouncer.yaml"
EXIT_USAGE = 2  # also for config errors: the user has to fix how bouncer is invoked


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bouncer`` and ``python -m bouncer``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except ConfigError as e:
        for line in str(e).splitlines():  # one line per mistake (ConfigErrors has several)
            _fail(line)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bouncer", description="XMPP multi-session proxy: one upstream, many clients."
    )
    parser.set_defaults(command=lambda _args: _usage(parser))
    commands = parser.add_subparsers(title="commands")
    for name, command, summary in (
        ("run", _run, "run in the foreground"),
        ("check-config", _check_config, "validate the config file and exit"),
        ("status", _status, "show the running bouncer's upstream, sessions and rooms"),
        ("cert", _cert, "print the fingerprints of the certificate clients are shown"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                         help=f"config file (default: ./{DEFAULT_CONFIG})")
        sub.set_defaults(command=command)
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print the status as JSON")
        if name == "cert":
            sub.add_argument("--pem", action="store_true", help="print the certificate itself (PEM)")
    for tree_command in account_commands.COMMANDS:  # the running bouncer's own, as its ad-hoc commands
        if tree_command.name == "status":
            continue
        sub = commands.add_parser(tree_command.name, help=tree_command.title.lower(), description=tree_command.title)
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                         help=f"config file (default: ./{DEFAULT_CONFIG})")
        if tree_command.argument:
            sub.add_argument("argument", metavar=tree_command.argument.split(" ")[0].upper(), help=tree_command.argument)
        sub.set_defaults(command=_operate, name=tree_command.name)
    summary = "print a stored credential for downstream.password_hash"
    sub = commands.add_parser("hash-password", help=summary, description=summary)
    sub.set_defaults(command=_hash_password)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log.format, config.log.level)
    log = structlog.get_logger()
    for warning in config.warnings:
        log.warning("config_warning", problem=warning)
    from bouncer import app  # imported late: only `run` needs the whole proxy loaded

    try:
        from uvloop import run
    except ImportError:
        from asyncio import run
    try:
        run(app.run(config))
    except KeyboardInterrupt:
        return 130
    except app.StartupError as e:
        return _fail(str(e))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print("ok")
    for warning in config.warnings:
        print(f"bouncer: warning: {warning}", file=sys.stderr)
    return 0


def _cert(args: argparse.Namespace) -> int:
    """The certificate clients see (``listen.cert``, or the self-signed one made on first
    start next to the database), with the fingerprints clients show before trusting it."""
    config = load_config(args.config)
    path = config.listen.cert or os.path.join(os.path.dirname(config.storage.path), tls.CERT_FILE)
    if not os.path.exists(path):
        return _fail(f"no certificate at {path} yet: the bouncer makes it on its first start")
    if args.pem:  # for clients that must be given the file (poezio's ca_cert_path, Dino)
        with open(path, encoding="ascii") as f:
            print(f.read(), end="")
        return 0
    shown = tls.fingerprints(path)
    print(f"certificate: {path}" + ("" if config.listen.cert else " (self-signed)"))
    print(f"SHA-256:      {shown['sha256']}  (Conversations, Gajim)")
    print(f"SHA-1:        {shown['sha1']}  (Gajim)")
    print(f"              {shown['sha1'].replace(':', '').lower()}  (Profanity)")
    print(f"SPKI SHA-256: {shown['spki_sha256']}  (poezio's certificate option)")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Ask the bouncer running with this config over its control socket."""
    path = control.socket_path(control.storage_path_of(args.config))
    try:
        response = control.request(path, "status")
    except control.NotRunning as e:
        return _fail(f"no bouncer is running for {args.config}: {e}")
    if not response.get("ok"):
        return _fail(f"the bouncer answered with an error: {response.get('error')}")
    status = response.get("status") or {}
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(report.format_status(status))
    return 0


def _operate(args: argparse.Namespace) -> int:
    """A command of the running bouncer's command tree (``bouncer leave ROOM``)."""
    path = control.socket_path(control.storage_path_of(args.config))
    try:
        response = control.request(path, args.name, getattr(args, "argument", None))
    except control.NotRunning as e:
        return _fail(f"no bouncer is running for {args.config}: {e}")
    if not response.get("ok"):
        return _fail(str(response.get("error")))
    print("\n".join(response.get("lines") or []))
    return 0


def _hash_password(_args: argparse.Namespace) -> int:
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat password: ") != password:
                return _fail("the passwords do not match")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        print(hash_password(password))
    except ValueError as e:
        return _fail(str(e))
    except (EOFError, KeyboardInterrupt):
        return _fail("no password given")
    return 0


def _fail(message: str) -> int:
    print(f"bouncer: {message}", file=sys.stderr)
    return 1
