"""The generated self-signed certificate and the server context."""

import os
import re
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bouncer.tls import ensure_certificate, fingerprint, server_context


def _load(cert_path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(cert_path).read_bytes())


def test_generates_a_p256_certificate_for_the_domain(tmp_path: Path) -> None:
    cert_path, key_path, digest = ensure_certificate(str(tmp_path), "example.org")
    cert = _load(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org"]
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert re.fullmatch(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}", digest)
    assert sorted(os.listdir(tmp_path)) == ["bouncer-cert.pem", "bouncer-key.pem"]  # no temp files


def test_is_generated_once_and_reused(tmp_path: Path) -> None:
    first = ensure_certificate(str(tmp_path), "example.org")
    pem = Path(first[0]).read_bytes()
    assert ensure_certificate(str(tmp_path), "example.org") == first
    assert Path(first[0]).read_bytes() == pem
    assert fingerprint(first[0]) == first[2]


def test_is_remade_for_another_domain(tmp_path: Path) -> None:
    first = ensure_certificate(str(tmp_path), "example.org")
    second = ensure_certificate(str(tmp_path), "example.net")
    assert second[2] != first[2]
    san = _load(second[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["example.net"]


def test_is_remade_when_the_key_is_missing(tmp_path: Path) -> None:
    cert_path, key_path, digest = ensure_certificate(str(tmp_path), "example.org")
    os.unlink(key_path)
    assert ensure_certificate(str(tmp_path), "example.org")[2] != digest


def test_internationalised_domain_uses_its_ascii_form(tmp_path: Path) -> None:
    cert_path, _, _ = ensure_certificate(str(tmp_path), "bücher.example")
    san = _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]


def test_server_context_serves_the_certificate(tmp_path: Path) -> None:
    cert_path, key_path, digest = ensure_certificate(str(tmp_path), "example.org")
    server = server_context(cert_path, key_path)
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2

    client = ssl.create_default_context(cafile=cert_path)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname="example.org")
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # pump the handshake between the two in-memory ends
        for side in (client_side, server_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    assert fingerprint(cert_path) == digest
    assert x509.load_der_x509_certificate(der) == _load(cert_path)


def test_fingerprints_as_clients_show_them(tmp_path):
    import hashlib
    import subprocess

    from bouncer.tls import ensure_certificate, fingerprints

    cert, _key, sha256 = ensure_certificate(str(tmp_path), "example.org")
    shown = fingerprints(cert)
    assert shown["sha256"] == sha256 and len(shown["sha1"].split(":")) == 20
    pub = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True, check=True).stdout
    assert shown["spki_sha256"] == hashlib.sha256(der).digest().hex(":").upper()
