"""Finding the upstream server: SRV records (RFC 6120 §3.2, XEP-0368) from a real DNS
server on loopback (dnspython answering queries), RFC 2782 ordering, fallbacks."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from bouncer.upstream.connect import Target, order, targets


class TinyDns(asyncio.DatagramProtocol):
    """Answers SRV queries from ``zone`` (name -> records); NXDOMAIN for anything else."""

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = zone
        self.asked: list[str] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text()
        self.asked.append(name)
        records = self.zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "SRV", *records))
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server():
    servers = []

    async def start(zone):
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: TinyDns(zone), local_addr=("127.0.0.1", 0))
        servers.append(transport)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = transport.get_extra_info("sockname")[1]
        resolver.lifetime = 2
        return protocol, resolver

    yield start
    for transport in servers:
        transport.close()


async def test_srv_records_of_both_services_by_priority(dns_server):
    dns_, resolver = await dns_server({
        "_xmpps-client._tcp.example.org.": ["10 0 443 tls.example.org."],
        "_xmpp-client._tcp.example.org.": ["5 0 5222 a.example.org.", "20 0 5222 b.example.org."],
    })
    got = await targets("alice@example.org", "starttls", None, None, resolver)
    assert got == [Target("a.example.org", 5222, False), Target("tls.example.org", 443, True),
                   Target("b.example.org", 5222, False)]
    assert set(dns_.asked) == {"_xmpps-client._tcp.example.org.", "_xmpp-client._tcp.example.org."}


async def test_tls_mode_decides_which_services_count(dns_server):
    _, resolver = await dns_server({
        "_xmpps-client._tcp.example.org.": ["10 0 5223 tls.example.org."],
        "_xmpp-client._tcp.example.org.": ["10 0 5222 plain.example.org."],
    })
    assert await targets("alice@example.org", "direct", None, None, resolver) == [
        Target("tls.example.org", 5223, True)]
    assert await targets("alice@example.org", "plain", None, None, resolver) == [
        Target("plain.example.org", 5222, False)]


async def test_no_records_means_the_domain_itself(dns_server):
    _, resolver = await dns_server({})
    assert await targets("alice@example.org", "starttls", None, None, resolver) == [
        Target("example.org", 5222, False)]
    assert await targets("alice@example.org", "direct", None, None, resolver) == [
        Target("example.org", 5223, True)]


async def test_a_dot_target_means_no_service_there(dns_server):
    """RFC 2782: a target of "." says the service is decidedly not available."""
    _, resolver = await dns_server({"_xmpp-client._tcp.example.org.": ["0 0 0 ."]})
    assert await targets("alice@example.org", "plain", None, None, resolver) == [
        Target("example.org", 5222, False)]


async def test_configured_host_skips_dns(dns_server):
    dns_, resolver = await dns_server({})
    assert await targets("alice@example.org", "direct", "10.0.0.1", None, resolver) == [
        Target("10.0.0.1", 5223, True)]
    assert await targets("alice@example.org", "starttls", "h", 5999, resolver) == [Target("h", 5999, False)]
    assert dns_.asked == []


def test_weights_order_within_a_priority():
    a, b, c = (Target(n, 5222, False) for n in "abc")
    records = [(1, 0, a), (0, 10, b), (0, 90, c)]
    # rand() picks the point on the running weight sum: below 10 -> b first, else c first
    assert order(records, rand=lambda: 0.05) == [b, c, a]
    assert order(records, rand=lambda: 0.5) == [c, b, a]
    assert order([(0, 0, a), (0, 0, b)], rand=lambda: 0.99) == [a, b]  # all weight 0: as listed
