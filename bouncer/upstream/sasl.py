"""Client side of SASL for the upstream login: SCRAM (with channel binding) via scramp, PLAIN.

Pure: the server's offer in, the client's messages out. The choice follows what
a careful client does (RFC 5802, RFC 9266, XEP-0440):

* SCRAM-SHA-256-PLUS / SCRAM-SHA-1-PLUS when the server offers them and a
  channel-binding type both sides support is known: the SCRAM proof then covers
  the TLS channel, so a man-in-the-middle holding a certificate the client would
  accept still cannot log in as the account. Python's ``ssl`` cannot export
  keying material, so ``tls-exporter`` is out of reach; ``tls-server-end-point``
  (a hash of the server's certificate, any TLS version) and ``tls-unique`` (TLS
  1.2) are what the edge can compute.
* Plain SCRAM otherwise, with the GS2 flag ``y`` when we could bind but the
  server offers no PLUS (a server that did offer it detects the downgrade).
* PLAIN only under TLS, and only when no SCRAM is offered.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from scramp import ScramClient, ScramException

SCRAM = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1")
# Without XEP-0440, RFC 5802's default type: tls-unique (defined for TLS 1.2 only).
_DEFAULT_BINDING = "tls-unique"


class SaslError(Exception):
    """The login cannot go on: nothing acceptable offered, or the server's proof is wrong."""


@dataclass(frozen=True)
class Offer:
    """What the server's features said about authentication."""

    mechanisms: tuple[str, ...]
    binding_types: tuple[str, ...] | None  # XEP-0440; None when not advertised


class ClientSasl:
    """One authentication attempt: ``initial()`` then ``challenge()``, then ``success()``."""

    def __init__(
        self,
        offer: Offer,
        username: str,
        password: str,
        *,
        tls: bool,
        bindings: dict[str, bytes],
        nonce: str | None = None,
    ) -> None:
        self.binding: str | None = None
        self._scram: ScramClient | None = None
        self._plain: bytes | None = None
        scram = [m for m in SCRAM if m in offer.mechanisms]
        if scram:
            plus_offered = any(m.endswith("-PLUS") for m in scram)
            self.binding = _binding_type(offer, bindings) if plus_offered else None
            if self.binding is not None:
                cb: tuple[str, bytes] | None = (self.binding, bindings[self.binding])
            else:
                scram = [m for m in scram if not m.endswith("-PLUS")]
                # We could bind and the server offers no PLUS: the GS2 flag 'y' lets a
                # server whose PLUS offer was stripped on the way detect it. Where PLUS was
                # offered but no type is common, flag 'n' (no false downgrade alarm).
                usable = bindings.get("tls-server-end-point") or bindings.get("tls-unique")
                cb = ("tls-server-end-point", usable) if usable and not plus_offered else None
            if not scram:
                raise SaslError("the server offers only SCRAM with channel binding we cannot do")
            try:
                self._scram = ScramClient(scram, username, password, channel_binding=cb, c_nonce=nonce)
            except ScramException as exc:
                raise SaslError(str(exc)) from None
            self.mechanism = self._scram.mechanism_name
        elif "PLAIN" in offer.mechanisms and tls:
            self.mechanism = "PLAIN"
            self._plain = b"\0" + username.encode() + b"\0" + password.encode()
        else:
            raise SaslError(f"no acceptable mechanism among {', '.join(offer.mechanisms) or 'none'}"
                            + ("" if tls else " (PLAIN needs TLS)"))

    def initial(self) -> bytes:
        """The initial response sent with ``<auth/>``."""
        if self._plain is not None:
            return self._plain
        assert self._scram is not None
        return self._scram.get_client_first().encode()

    def challenge(self, data: bytes) -> bytes:
        """The response to a ``<challenge/>``."""
        if self._scram is None:
            raise SaslError("unexpected challenge")
        try:
            self._scram.set_server_first(data.decode())
            return self._scram.get_client_final().encode()
        except (ScramException, UnicodeDecodeError) as exc:
            raise SaslError(f"bad server-first message: {exc}") from None

    def success(self, data: bytes) -> None:
        """Check the server's final message (SCRAM: the server proves it knows the key)."""
        if self._scram is None:
            return
        try:
            self._scram.set_server_final(data.decode())
        except (ScramException, UnicodeDecodeError) as exc:
            raise SaslError(f"the server's SCRAM proof is wrong: {exc}") from None


def _binding_type(offer: Offer, bindings: dict[str, bytes]) -> str | None:
    """The channel-binding type to use with a PLUS mechanism, or None."""
    if offer.binding_types is None:
        return _DEFAULT_BINDING if _DEFAULT_BINDING in bindings else None
    for kind in ("tls-server-end-point", "tls-unique"):  # tls-exporter: not in Python's ssl
        if kind in offer.binding_types and kind in bindings:
            return kind
    return None


def encode(data: bytes) -> str:
    """SASL payloads in XMPP: base64, ``=`` for empty (RFC 6120 §6.4.2)."""
    return base64.b64encode(data).decode() if data else "="


def decode(text: str | None) -> bytes:
    """The inverse of :func:`encode`; raises :class:`SaslError` on bad base64."""
    text = (text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SaslError("the server sent bad base64") from None
