"""Shared fixtures: a real Prosody (and ejabberd) for integration tests.

``prosody`` is started once per test session (startup ~0.1 s, but hundreds of
tests add up) and stopped at the end; tests never share accounts, they call
``prosody.new_user()``. Tests that kill, pause or restart the server use
``prosody_factory`` instead, so that they cannot break the shared one.
``ejabberd``/``ejabberd_factory`` are the same for ejabberd (startup ~1 s), for
tests that must hold against both servers.
"""

from __future__ import annotations

import pytest

from support.bouncer import kill_leftovers
from support.ejabberd import Ejabberd
from support.prosody import Prosody, client_ssl_context


def _shared_server(cls):
    """One server of that kind for the whole test session (tests never share accounts)."""

    @pytest.fixture(scope="session", name=cls.kind)
    def fixture(tmp_path_factory):
        server = cls(base_dir=tmp_path_factory.mktemp(cls.kind))
        server.start()
        yield server
        server.cleanup()

    return fixture


def _server_factory(cls):
    """Private servers of that kind (not started), all removed afterwards: for tests
    that kill, pause or restart them."""

    @pytest.fixture(name=f"{cls.kind}_factory")
    def fixture(tmp_path):
        servers = []

        def make(**options):
            servers.append(cls(base_dir=tmp_path, **options))
            return servers[-1]

        yield make
        for server in servers:
            server.cleanup()

    return fixture


prosody, ejabberd = _shared_server(Prosody), _shared_server(Ejabberd)
prosody_factory, ejabberd_factory = _server_factory(Prosody), _server_factory(Ejabberd)


@pytest.fixture(scope="session")
def tls_client_context():
    """The shared permissive ``ssl.SSLContext`` for test peers (no verification)."""
    return client_ssl_context()


@pytest.fixture(autouse=True)
def _no_leftover_bouncers():
    """A test that fails before stopping its bouncer must not leave it running."""
    yield
    kill_leftovers()
