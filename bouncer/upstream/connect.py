"""Reaching the account's server: where to connect (SRV, XEP-0368), TLS, channel binding.

RFC 6120 §3.2: SRV records of ``_xmpp-client._tcp`` (STARTTLS) and, per
XEP-0368, ``_xmpps-client._tcp`` (TLS from the first byte), ordered by priority
and weight; without records, the domain itself on the default port (asyncio's
``open_connection`` then tries its A/AAAA addresses). ``upstream.host`` and
``upstream.port`` override the lookup.

The certificate is checked against the JID's domain (RFC 6125, RFC 7590), not
against the SRV target: that is what the user asked to talk to.
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from bouncer.xmpp import jid

DEFAULT_PORTS = {"starttls": 5222, "plain": 5222, "direct": 5223}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    direct_tls: bool

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (" (direct TLS)" if self.direct_tls else "")


async def targets(account_jid: str, tls: str, host: str | None, port: int | None,
                  resolver: dns.asyncresolver.Resolver | None = None) -> list[Target]:
    """Where to try, in order (RFC 2782 for SRV records); ``resolver``: the system's by default."""
    if host is not None:
        return [Target(host, port or DEFAULT_PORTS[tls], tls == "direct")]
    domain = jid.domain(account_jid)
    services = [("_xmpps-client._tcp", True)] if tls != "plain" else []
    if tls != "direct":
        services.append(("_xmpp-client._tcp", False))
    records: list[tuple[int, int, Target]] = []
    for service, direct in services:
        for priority, weight, target, target_port in await _srv(f"{service}.{domain}", resolver):
            records.append((priority, weight, Target(target, target_port, direct)))
    if records:
        return order(records)
    return [Target(domain, port or DEFAULT_PORTS[tls], tls == "direct")]


async def _srv(name: str, resolver: dns.asyncresolver.Resolver | None) -> list[tuple[int, int, str, int]]:
    """``(priority, weight, host, port)`` records; none when absent or when ``.`` says so."""
    try:
        answer = await (resolver or dns.asyncresolver.get_default_resolver()).resolve(name, "SRV")
    except (dns.exception.DNSException, OSError):
        return []
    out = []
    for rr in answer:
        host = rr.target.to_text(omit_final_dot=True)
        if host in ("", "."):
            return []  # RFC 2782: the service is decidedly not available here
        out.append((rr.priority, rr.weight, host, rr.port))
    return out


def order(records: list[tuple[int, int, Target]], rand=random.random) -> list[Target]:
    """RFC 2782: ascending priority; within one, a weighted random order."""
    result: list[Target] = []
    for priority in sorted({p for p, _, _ in records}):
        group = [(w, t) for p, w, t in records if p == priority]
        while group:
            total = sum(w for w, _ in group)
            pick, running = rand() * total, 0.0
            for i, (weight, target) in enumerate(group):
                running += weight
                if total == 0 or running >= pick:
                    result.append(target)
                    del group[i]
                    break
    return result


def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The TLS context for the upstream: the system's CAs, or only those of ``ca_file``
    (a private CA or the server's own certificate: pinned, as bouncer.yaml says); or no
    checks at all with ``verify=False``."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["xmpp-client"])  # XEP-0368
    return context


def channel_bindings(ssl_object: ssl.SSLObject | None) -> dict[str, bytes]:
    """The channel-binding data this TLS connection allows (RFC 5929, RFC 5056).

    ``tls-server-end-point``: the hash of the server's certificate, with the hash
    of its signature (SHA-256 for MD5 and SHA-1). ``tls-unique``: TLS 1.2 only
    (RFC 9266 forbids it with 1.3). ``tls-exporter`` needs keying-material export,
    which Python's ``ssl`` does not offer.
    """
    if ssl_object is None:
        return {}
    out: dict[str, bytes] = {}
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
        if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
            algorithm = hashes.SHA256()
        digest = hashes.Hash(algorithm)
        digest.update(der)
        out["tls-server-end-point"] = digest.finalize()
    if ssl_object.version() == "TLSv1.2":
        unique = ssl_object.get_channel_binding("tls-unique")
        if unique:
            out["tls-unique"] = unique
    return out
