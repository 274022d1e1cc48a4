"""Server side of SASL for the one configured account (SCRAM via scramp, PLAIN).

Pure: bytes of the client in, a step out. The stream core maps steps onto
``<challenge/>``, ``<success/>`` and ``<failure/>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scramp import ScramException, ScramMechanism


class AccountCredentials(Protocol):
    """What SASL needs of the stored downstream credential."""

    mechanisms: tuple[str, ...]

    def auth_info(self, mechanism: str) -> tuple[bytes, bytes, bytes, int]: ...

    def check_plain(self, password: str) -> bool: ...


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Success:
    data: bytes
    username: str


@dataclass(frozen=True)
class Failure:
    condition: str  # RFC 6120 §6.5 SASL error condition
    username: str | None
    reason: str


Step = Challenge | Success | Failure


def offered_mechanisms(credentials: AccountCredentials, tls_active: bool) -> list[str]:
    """SCRAM always; PLAIN only under TLS (SPEC §3)."""
    return list(credentials.mechanisms) + (["PLAIN"] if tls_active else [])


class SaslExchange:
    """One authentication attempt. ``start`` then ``respond`` until a final step."""

    def __init__(self, credentials: AccountCredentials, username: str) -> None:
        self._credentials = credentials
        self._username = username.lower()
        self._scram = None
        self._mechanism: str | None = None
        self._user: str | None = None

    def start(self, mechanism: str, initial: bytes, tls_active: bool) -> Step:
        if mechanism not in offered_mechanisms(self._credentials, tls_active):
            return Failure("invalid-mechanism", None, f"mechanism {mechanism!r} not offered")
        self._mechanism = mechanism
        if mechanism == "PLAIN":
            return self._plain(initial)
        self._scram = ScramMechanism(mechanism).make_server(self._auth_fn)
        try:
            self._scram.set_client_first(initial.decode())
            return Challenge(self._scram.get_server_first().encode())
        except (ScramException, UnicodeDecodeError) as exc:
            return Failure("not-authorized", self._user, str(exc))

    def respond(self, data: bytes) -> Step:
        if self._scram is None:
            return Failure("malformed-request", self._user, "no exchange in progress")
        try:
            self._scram.set_client_final(data.decode())
            final = self._scram.get_server_final().encode()
        except (ScramException, UnicodeDecodeError) as exc:
            return Failure("not-authorized", self._user, str(exc))
        return Success(final, self._user or "")

    def _auth_fn(self, username: str) -> tuple[bytes, bytes, bytes, int] | None:
        self._user = username
        if username.lower() != self._username:
            return None
        assert self._mechanism is not None
        return self._credentials.auth_info(self._mechanism)

    def _plain(self, initial: bytes) -> Step:
        try:
            authzid, authcid, password = initial.decode().split("\x00")
        except ValueError:
            return Failure("malformed-request", None, "PLAIN message is not authzid\\0authcid\\0password")
        self._user = authcid
        if authzid and authzid.split("@", 1)[0].lower() != self._username:
            return Failure("invalid-authzid", authcid, "authorization identity is not the account")
        if authcid.lower() != self._username or not self._credentials.check_plain(password):
            return Failure("not-authorized", authcid, "wrong user or password")
        return Success(b"", authcid)
