"""The downstream login secret, stored as SCRAM keys instead of a password.

The bouncer is the SASL server for its downstream clients. For SCRAM (RFC 5802) it needs
only the salt, iteration count, StoredKey and ServerKey of each mechanism, so that is all
the stored string holds: a leaked config does not reveal the password (it still allows
offline guessing, so keep it private). SASL PLAIN is checked by recomputing StoredKey.

Stored form, one line: ``scram:v1;SCRAM-SHA-256=<iter>,<salt>,<stored>,<server>;SCRAM-SHA-1=...``
with salt and keys in standard base64.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass, field

from scramp import ScramMechanism
from scramp.utils import ScramException

PREFIX = "scram:v1"
# Strongest first: the order offered to clients, and the one PLAIN is checked against.
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
DEFAULT_ITERATIONS = 4096
# scramp refuses to use counts outside this range, so a stored string must stay within it.
MIN_ITERATIONS, MAX_ITERATIONS = 4096, 10_000_000
# scramp refuses shorter salts at authentication time.
MIN_SALT_BYTES = 12
_PROCESS_KEY = secrets.token_bytes(32)  # for the accepted-password cache; never leaves the process


@dataclass(frozen=True)
class ScramKeys:
    """What a SCRAM server needs for one mechanism (RFC 5802 §3)."""

    mechanism: str
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, repr=False)
class Credentials:
    """The downstream account's secret, one ScramKeys per supported mechanism."""

    keys: tuple[ScramKeys, ...]
    # The last password PLAIN accepted, as an HMAC under a key of this process only: a
    # phone logging in again (after a network change, to resume) costs no PBKDF2. A wrong
    # password never matches it and still pays the full derivation.
    _accepted: list[bytes] = field(default_factory=list, compare=False)

    @classmethod
    def from_plain(cls, password: str, iterations: int = DEFAULT_ITERATIONS) -> Credentials:
        """Derive keys from a password, with a fresh random salt per mechanism."""
        return cls(tuple(_derive(name, password, iterations) for name in MECHANISMS))

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """SCRAM mechanism names these credentials serve, strongest first."""
        return tuple(keys.mechanism for keys in self.keys)

    def auth_info(self, mechanism: str) -> tuple[bytes, bytes, bytes, int]:
        """``(salt, stored_key, server_key, iterations)``: what scramp's ``auth_fn`` returns."""
        for keys in self.keys:
            if keys.mechanism == mechanism:
                return keys.salt, keys.stored_key, keys.server_key, keys.iterations
        raise KeyError(f"no credentials for {mechanism}")

    def check_plain(self, password: str) -> bool:
        """SASL PLAIN check: recompute StoredKey and compare it in constant time."""
        tag = hmac.new(_PROCESS_KEY, password.encode(), "sha256").digest()
        if self._accepted and hmac.compare_digest(tag, self._accepted[0]):
            return True
        keys = self.keys[0]
        try:
            derived = _derive(keys.mechanism, password, keys.iterations, keys.salt)
        except ValueError:
            return False
        if not hmac.compare_digest(derived.stored_key, keys.stored_key):
            return False
        self._accepted[:] = [tag]
        return True

    def serialize(self) -> str:
        """The one-line stored form that parse_credentials() reads back."""
        parts = [PREFIX]
        for keys in self.keys:
            encoded = (_b64(keys.salt), _b64(keys.stored_key), _b64(keys.server_key))
            parts.append(f"{keys.mechanism}={keys.iterations},{','.join(encoded)}")
        return ";".join(parts)

    def __repr__(self) -> str:
        # Keys allow offline guessing of the password: keep them out of logs and tracebacks.
        return f"Credentials(mechanisms={self.mechanisms!r})"


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The stored-credential string for ``password`` (what ``bouncer hash-password`` prints)."""
    return Credentials.from_plain(password, iterations).serialize()


def parse_credentials(text: str) -> Credentials:
    """Read a stored-credential string; ValueError says what is wrong with it."""
    head, _, body = text.strip().partition(";")
    if head != PREFIX:
        raise ValueError(
            f"not a password hash from `bouncer hash-password` (those start with '{PREFIX};')"
        )
    found: dict[str, ScramKeys] = {}
    for part in body.split(";"):
        name, _, value = part.partition("=")
        if name not in MECHANISMS:
            raise ValueError(f"unsupported mechanism {name!r}, expected {' or '.join(MECHANISMS)}")
        if name in found:
            raise ValueError(f"{name} is given twice")
        found[name] = _parse_keys(name, value)
    return Credentials(tuple(found[name] for name in MECHANISMS if name in found))


def _parse_keys(mechanism: str, value: str) -> ScramKeys:
    fields = value.split(",")
    if len(fields) != 4:
        raise ValueError(f"{mechanism}: expected <iterations>,<salt>,<stored key>,<server key>")
    count, *encoded = fields
    if not (count.isascii() and count.isdigit()) or not (
        MIN_ITERATIONS <= int(count) <= MAX_ITERATIONS
    ):
        raise ValueError(
            f"{mechanism}: iteration count must be from {MIN_ITERATIONS} to {MAX_ITERATIONS}"
        )
    try:
        salt, stored_key, server_key = (base64.b64decode(f, validate=True) for f in encoded)
    except binascii.Error:
        raise ValueError(f"{mechanism}: salt and keys must be base64") from None
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"{mechanism}: salt must be at least {MIN_SALT_BYTES} bytes")
    size = ScramMechanism(mechanism).hf().digest_size
    if len(stored_key) != size or len(server_key) != size:
        raise ValueError(f"{mechanism}: stored and server keys must be {size} bytes")
    return ScramKeys(mechanism, int(count), salt, stored_key, server_key)


def _derive(
    mechanism: str, password: str, iterations: int, salt: bytes | None = None
) -> ScramKeys:
    """Salt and hash ``password`` the SCRAM way (SASLprep, PBKDF2); ValueError if unusable."""
    if not password:
        raise ValueError("the password is empty")
    try:
        salt, stored_key, server_key, iterations = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
    except ScramException as e:
        raise ValueError(f"unusable password or iteration count: {e.args[0]}") from None
    return ScramKeys(mechanism, iterations, salt, stored_key, server_key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
