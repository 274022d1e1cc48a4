"""Load and validate ``bouncer.yaml``.

Every user mistake becomes one ConfigError naming the key, so start-up and
``bouncer check-config`` print one line per mistake instead of a traceback (SPEC §2),
every mistake of the file in one run (``ConfigErrors``). The _SECTIONS
table drives validation: each key has a parser for its own value; rules that involve
several keys or the filesystem live in one builder per section. Defaults live only on
the dataclasses below.
"""

from __future__ import annotations

import difflib
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import yaml

from bouncer import config_values as check, strict_yaml
from bouncer.credentials import Credentials, parse_credentials
from bouncer.tls import server_context

UpstreamTls = Literal["starttls", "direct", "plain"]
ListenTls = Literal["required", "optional"]
IdleShow = Literal["away", "xa", "dnd", "chat", "available"]
LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """A mistake in the config file; ``str()`` is the single line ``key: problem``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = " ".join(problem.splitlines())
        super().__init__(f"{key}: {self.problem}")

    @property
    def errors(self) -> list[ConfigError]:
        """Each mistake this stands for: itself (``ConfigErrors``: several)."""
        return [self]

    @staticmethod
    def of(errors: list[ConfigError]) -> ConfigError:
        """One exception for these mistakes (at least one)."""
        return errors[0] if len(errors) == 1 else ConfigErrors(errors)


class ConfigErrors(ConfigError):
    """Several mistakes found in one read; ``str()`` is one ``key: problem`` line each, and
    ``key``/``problem`` are the first's."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(errors[0].key, errors[0].problem)
        self._errors = errors
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return self.args[0]

    @property
    def errors(self) -> list[ConfigError]:
        return self._errors


@dataclass(frozen=True)
class UpstreamConfig:
    """The real account and how to reach its server (host/port unset: SRV/A lookup)."""

    jid: str
    password: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    tls: UpstreamTls = "starttls"
    verify: bool = True
    ca_file: str | None = None
    keepalive: float = 60.0  # seconds of silence before the server is probed


@dataclass(frozen=True)
class ListenConfig:
    """Where downstream clients connect; no cert/key means a generated self-signed one."""

    address: str = "127.0.0.1"
    port: int = 5222
    direct_tls_port: int | None = None
    tls: ListenTls = "required"
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class DownstreamConfig:
    """The secret downstream clients log in with."""

    credentials: Credentials


@dataclass(frozen=True)
class StorageConfig:
    """The SQLite file; absolute once loaded (relative paths follow the config file)."""

    path: str = "./bouncer.sqlite"


@dataclass(frozen=True)
class PresenceConfig:
    """The presence the account keeps upstream while no client is connected."""

    idle_show: IdleShow = "away"
    idle_status: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds that keep one peer from growing the process without limit (SPEC §11)."""

    max_stanza_size: int = 262144
    iq_timeout: float = 60.0
    upstream_queue: int = 1000
    session_queue: int = 10000
    session_queue_bytes: int = 1 << 20  # ... and bytes; with the send buffer, what a stuck client holds
    session_send_buffer: int = 128 * 1024  # kernel send buffer per client socket (SO_SNDBUF)
    login_timeout: float = 30.0  # seconds a connection may take to log in
    idle_timeout: float = 900.0  # seconds of silence before a session is pinged
    max_unauthenticated: int = 200  # connections not logged in yet, in total
    max_unauthenticated_per_address: int = 20  # ... and from one client address


@dataclass(frozen=True)
class HistoryConfig:
    """The room archive (SPEC §7): how long it keeps messages, and history on a local join."""

    max_age_days: float = 90.0
    max_messages: int = 10000  # per room
    default_messages: int = 20  # history for a join that asks for no particular amount


@dataclass(frozen=True)
class MucConfig:
    """Account-level rooms (SPEC §6)."""

    leave_when_unused: bool = False  # leave upstream once the last session left the room
    self_ping_after: float = 900.0  # seconds of silence before the account checks it is in (XEP-0410)
    recheck_delay: float = 30.0  # seconds before a self-ping that proved nothing is tried again (doubling)


@dataclass(frozen=True)
class SessionsConfig:
    """Phones (SPEC §9, §14): how long a dropped XEP-0198 session waits to be resumed,
    what it may hold meanwhile, and how long stored stanzas wait for a device."""

    # A day: a phone that was off overnight or on a flight resumes where it was. What a
    # hibernated session holds is bounded below, and beyond that it is in the device's
    # backlog on disk, so a long hibernation costs no unbounded memory.
    hibernation: float = 86400.0  # seconds
    hibernation_queue: int = 2000  # stanzas a hibernated session holds for its phone
    hibernation_queue_bytes: int = 4 << 20  # ... and bytes
    backlog_max_age: float = 30.0  # days a stored stanza waits for a device that is away
    forget_after: float = 90.0  # days after which a device not seen is forgotten


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (SPEC §10): off unless ``listen`` is set; a bare port is on loopback."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class LogConfig:
    """Output format (auto: console on a TTY, else JSON lines) and level."""

    format: LogFormat = "auto"
    level: LogLevel = "info"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole file; sections other than upstream and downstream default when absent."""

    upstream: UpstreamConfig
    downstream: DownstreamConfig
    listen: ListenConfig = field(default_factory=ListenConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    muc: MucConfig = field(default_factory=MucConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Accepted but unwise settings, for the caller to log.
    warnings: tuple[str, ...] = ()
    # The file this was read from (absolute), so SIGHUP can read it again.
    source: str | None = field(default=None, compare=False)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML file at ``path``; raises ConfigError."""
    shown = os.fspath(path)
    document = _read_yaml(shown)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(shown, f"expected a mapping of sections, got {_show(document)}")
    errors = _unknown(document, _SECTIONS, "")
    context = _Context(os.path.dirname(os.path.abspath(shown)), [])
    built = {}
    for name, section in _SECTIONS.items():
        try:
            values = _parse_section(name, document.get(name), section.keys)
            built[name] = section.build(values, context)
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError.of(errors)
    return Config(**built, warnings=tuple(context.warnings), source=os.path.abspath(shown))


# --- reading YAML -------------------------------------------------------------------------

def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return strict_yaml.load(f)
    except OSError as e:
        raise ConfigError(path, f"cannot read the config file: {_reason(e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "the config file is not UTF-8 text") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, f"invalid YAML at {where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"invalid YAML: {e}") from None


# --- sections: key parsers, then a builder for the rules that span keys ------------------

@dataclass(frozen=True)
class _Key:
    parse: check.Parser
    required: bool = False
    # Never echo the value in an error: it is a password or a password hash.
    secret: bool = False


@dataclass(frozen=True)
class _Context:
    base_dir: str
    warnings: list[str]


@dataclass(frozen=True)
class _Section:
    keys: dict[str, _Key]
    build: Callable[[dict[str, Any], _Context], Any]


def _parse_section(name: str, raw: Any, keys: dict[str, _Key]) -> dict[str, Any]:
    """Parsed values of the keys present; an absent section or a null value means default.
    Raises every mistake of the section's keys at once."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a mapping of keys, got {_show(raw)}")
    errors = _unknown(raw, keys, f"{name}.")
    values = {}
    for key_name, key in keys.items():
        value = raw.get(key_name)
        if value is None:
            if key.required:
                errors.append(ConfigError(f"{name}.{key_name}", "required key is missing"))
            continue
        try:
            values[key_name] = key.parse(value)
        except check.Expected as e:
            errors.append(ConfigError(f"{name}.{key_name}", f"expected {e}, got {_show(value, key.secret)}"))
    if errors:
        raise ConfigError.of(errors)
    return values


def _unknown(raw: dict[Any, Any], known: dict[str, Any], prefix: str) -> list[ConfigError]:
    """One error per key that is not one of ``known``, with the likely one it meant."""
    errors = []
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"known keys: {', '.join(known)}"
            if close:
                hint = f"did you mean '{prefix}{close[0]}'?"
            errors.append(ConfigError(f"{prefix}{name}", f"unknown key ({hint})"))
    return errors


def _upstream(values: dict[str, Any], context: _Context) -> UpstreamConfig:
    key, secret = _one_of("upstream", values, "password", "password_file")
    if key == "password_file":
        secret = _read_secret("upstream.password_file", _resolve(context, secret))
    if "ca_file" in values:
        values["ca_file"] = _trust_file("upstream.ca_file", _resolve(context, values["ca_file"]))
    config = UpstreamConfig(password=secret, **values)
    if config.tls == "plain" and not check.is_loopback(config.host or _domain(config.jid)):
        raise ConfigError("upstream.tls", "'plain' is only allowed when upstream.host is "
                          "a loopback address or localhost")
    return config


def _listen(values: dict[str, Any], context: _Context) -> ListenConfig:
    if ("cert" in values) != ("key" in values):
        missing = "listen.key" if "cert" in values else "listen.cert"
        raise ConfigError(missing, "listen.cert and listen.key must be set together")
    if "cert" in values:
        for name in ("cert", "key"):
            values[name] = _readable(f"listen.{name}", _resolve(context, values[name]))
        try:
            server_context(values["cert"], values["key"])
        except (OSError, ValueError) as e:
            problem = f"cannot use this certificate and key: {_reason(e)}"
            raise ConfigError("listen.cert", problem) from None
    config = ListenConfig(**values)
    if config.tls == "optional" and not check.is_loopback(config.address):
        raise ConfigError("listen.tls", "'optional' is only allowed on a loopback listen.address")
    if config.direct_tls_port == config.port:
        raise ConfigError("listen.direct_tls_port", "must differ from listen.port")
    return config


def _downstream(values: dict[str, Any], context: _Context) -> DownstreamConfig:
    key, secret = _one_of("downstream", values, "password_hash", "password")
    try:
        if key == "password_hash":
            return DownstreamConfig(parse_credentials(secret))
        credentials = Credentials.from_plain(secret)
    except ValueError as e:
        raise ConfigError(f"downstream.{key}", str(e)) from None
    context.warnings.append(
        "downstream.password: the password is stored in plain text; put the output of "
        "`bouncer hash-password` in downstream.password_hash instead"
    )
    return DownstreamConfig(credentials)


def _storage(values: dict[str, Any], context: _Context) -> StorageConfig:
    path = _resolve(context, values.get("path", StorageConfig.path))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError("storage.path", f"directory {parent} does not exist")
    if os.path.isdir(path):
        raise ConfigError("storage.path", f"{path} is a directory, expected a file name")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise ConfigError("storage.path", f"{path} is not writable")
    return StorageConfig(path)


def _defaults_apply(cls: type) -> Callable[[dict[str, Any], _Context], Any]:
    """Builder for sections with no rules beyond their keys' own."""
    return lambda values, _context: cls(**values)


_SECTIONS: dict[str, _Section] = {
    "upstream": _Section({
        "jid": _Key(check.account_jid, required=True),
        "password": _Key(check.text, secret=True),
        "password_file": _Key(check.text),
        "host": _Key(check.text),
        "port": _Key(check.PORT),
        "tls": _Key(check.choice(UpstreamTls)),
        "verify": _Key(check.boolean),
        "ca_file": _Key(check.text),
        "keepalive": _Key(check.positive_number),
    }, _upstream),
    "listen": _Section({
        "address": _Key(check.text),
        "port": _Key(check.PORT),
        "direct_tls_port": _Key(check.PORT),
        "tls": _Key(check.choice(ListenTls)),
        "cert": _Key(check.text),
        "key": _Key(check.text),
    }, _listen),
    "downstream": _Section({
        "password_hash": _Key(check.text, secret=True),
        "password": _Key(check.text, secret=True),
    }, _downstream),
    "storage": _Section({"path": _Key(check.text)}, _storage),
    "presence": _Section({
        "idle_show": _Key(check.choice(IdleShow)),
        "idle_status": _Key(check.text),
    }, _defaults_apply(PresenceConfig)),
    "limits": _Section({
        # RFC 6120 §13.12: a server must accept stanzas of at least 10000 bytes.
        "max_stanza_size": _Key(check.integer(10000)),
        "iq_timeout": _Key(check.positive_number),
        "upstream_queue": _Key(check.integer(1)),
        "session_queue": _Key(check.integer(1)),
        "session_queue_bytes": _Key(check.integer(65536)),
        "session_send_buffer": _Key(check.integer(4096)),
        "login_timeout": _Key(check.positive_number),
        "idle_timeout": _Key(check.positive_number),
        "max_unauthenticated": _Key(check.integer(1)),
        "max_unauthenticated_per_address": _Key(check.integer(1)),
    }, _defaults_apply(LimitsConfig)),
    "history": _Section({
        "max_age_days": _Key(check.positive_number),
        "max_messages": _Key(check.integer(1)),
        "default_messages": _Key(check.integer(0)),
    }, _defaults_apply(HistoryConfig)),
    "muc": _Section({
        "leave_when_unused": _Key(check.boolean),
        "self_ping_after": _Key(check.positive_number),
        "recheck_delay": _Key(check.positive_number),
    }, _defaults_apply(MucConfig)),
    "sessions": _Section({
        "hibernation": _Key(check.positive_number),
        "hibernation_queue": _Key(check.integer(1)),
        "hibernation_queue_bytes": _Key(check.integer(65536)),
        "backlog_max_age": _Key(check.positive_number),
        "forget_after": _Key(check.positive_number),
    }, _defaults_apply(SessionsConfig)),
    "metrics": _Section({"listen": _Key(check.listen_address)}, _defaults_apply(MetricsConfig)),
    "log": _Section({
        "format": _Key(check.choice(LogFormat)),
        "level": _Key(check.choice(LogLevel)),
    }, _defaults_apply(LogConfig)),
}


# --- helpers ------------------------------------------------------------------------------

def _one_of(section: str, values: dict[str, Any], first: str, second: str) -> tuple[str, Any]:
    """Take whichever of two alternative keys is set; exactly one must be."""
    a, b = values.pop(first, None), values.pop(second, None)
    if a is None and b is None:
        problem = f"required key is missing (or set {section}.{second})"
        raise ConfigError(f"{section}.{first}", problem)
    if a is not None and b is not None:
        problem = f"cannot be used together with {section}.{first}"
        raise ConfigError(f"{section}.{second}", problem)
    return (first, a) if a is not None else (second, b)


def _resolve(context: _Context, path: str) -> str:
    """Absolute path; relative ones follow the config file, not the (service's) working dir."""
    return os.path.normpath(os.path.join(context.base_dir, os.path.expanduser(path)))


def _readable(key: str, path: str) -> str:
    try:
        with open(path, "rb"):
            return path
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {_reason(e)}") from None


def _read_secret(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {_reason(e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


def _trust_file(key: str, path: str) -> str:
    """A CA bundle or the server's own certificate, checked now rather than at connect time."""
    _readable(key, path)
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ValueError) as e:
        raise ConfigError(key, f"{path} holds no usable PEM certificate: {_reason(e)}") from None
    return path


def _domain(jid: str) -> str:
    return jid.split("@", 1)[1].split("/", 1)[0]


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _show(value: Any, secret: bool = False) -> str:
    """The offending value for an error message; secrets only by type."""
    if secret:
        return f"a value of type {type(value).__name__}"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
