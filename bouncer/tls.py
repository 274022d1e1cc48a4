"""TLS for the downstream listener: a self-signed certificate when none is configured.

Downstream clients talk to the bouncer as if it were their server, and STARTTLS is required
off loopback (SPEC §3). Most users will not have a certificate for that, so on first start
the bouncer makes one and prints its fingerprint for the user to compare when a client asks
whether to trust it. It is kept and reused so clients that pinned it keep trusting it.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE = "bouncer-cert.pem"
KEY_FILE = "bouncer-key.pem"
VALIDITY = datetime.timedelta(days=3650)


def ensure_certificate(storage_dir: str, domain: str) -> tuple[str, str, str]:
    """``(cert_path, key_path, sha256_fingerprint)`` of the self-signed certificate for ``domain``.

    Made under ``storage_dir`` on first use and reused afterwards. It is remade only when it
    is missing or does not name ``domain`` (the account's domain changed), because clients
    check the name against the stream's domain.
    """
    cert_path = os.path.join(storage_dir, CERT_FILE)
    key_path = os.path.join(storage_dir, KEY_FILE)
    hostname = _a_label(domain)
    if not (os.path.exists(key_path) and _names(cert_path, hostname)):
        os.makedirs(storage_dir, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        _write(key_path, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        _write(cert_path, _self_signed(key, hostname).public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, fingerprint(cert_path)


def fingerprint(cert_path: str) -> str:
    """SHA-256 fingerprint of a PEM certificate as most clients show it: ``AB:CD:...``."""
    return fingerprints(cert_path)["sha256"]


def fingerprints(cert_path: str) -> dict[str, str]:
    """The fingerprints clients show, to compare before trusting the certificate.

    ``sha256`` of the certificate (Conversations, Gajim, Dino), ``sha1`` of it
    (Profanity), and ``spki_sha256`` of its public key (poezio).
    """
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return {
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        "sha1": cert.fingerprint(hashes.SHA1()).hex(":").upper(),  # noqa: S303 - display only
        "spki_sha256": digest.finalize().hex(":").upper(),
    }


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A fresh server context (TLS 1.2+); build a new one to pick up a replaced certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    # XEP-0368: direct-TLS clients may ask for this ALPN protocol.
    context.set_alpn_protocols(["xmpp-client"])
    return context


def _self_signed(key: ec.EllipticCurvePrivateKey, hostname: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for clients whose clock runs behind.
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _names(cert_path: str, hostname: str) -> bool:
    """Whether ``cert_path`` is a readable certificate whose SAN holds ``hostname``."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return hostname in san.get_values_for_type(x509.DNSName)


def _write(path: str, data: bytes) -> None:
    """Write atomically with mode 0600, so an interrupted start never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _a_label(domain: str) -> str:
    """The ASCII form certificates carry for an internationalised domain."""
    return domain.encode("idna").decode("ascii").lower()
