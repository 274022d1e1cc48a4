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


@pytest.fixture(scope="session")
def prosody(tmp_path_factory):
    server = Prosody(base_dir=tmp_path_factory.mktemp("prosody"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def prosody_factory(tmp_path):
    """Create private Prosody instances (not started); all are removed afterwards."""
    servers: list[Prosody] = []

    def make() -> Prosody:
        server = Prosody(base_dir=tmp_path)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory):
    server = Ejabberd(base_dir=tmp_path_factory.mktemp("ejabberd"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def ejabberd_factory(tmp_path):
    """Create private ejabberd instances (not started); all are removed afterwards."""
    servers: list[Ejabberd] = []

    def make() -> Ejabberd:
        server = Ejabberd(base_dir=tmp_path)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture(scope="session")
def tls_client_context():
    """The shared permissive ``ssl.SSLContext`` for test peers (no verification)."""
    return client_ssl_context()


@pytest.fixture(autouse=True)
def _no_leftover_bouncers():
    """A test that fails before stopping its bouncer must not leave it running."""
    yield
    kill_leftovers()
