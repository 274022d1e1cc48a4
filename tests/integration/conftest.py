"""Fixtures for end-to-end tests (helpers live in integration_setup.py)."""

from __future__ import annotations

import pytest

from integration_setup import make_setup


@pytest.fixture
def setup(server, tmp_path):
    """A bouncer process for a fresh account on a shared server (Prosody, then ejabberd),
    plus a contact bob."""
    s = make_setup(server, tmp_path)
    s.bouncer.start()
    yield s
    assert s.bouncer.stop() == 0, s.bouncer.log_tail()


@pytest.fixture
def private_setup(server_factory, tmp_path):
    """Like ``setup``, on a server of its own: for tests that kill or restart the server."""
    server = server_factory()
    server.start()
    s = make_setup(server, tmp_path)
    s.bouncer.start()
    yield s
    assert s.bouncer.stop() == 0, s.bouncer.log_tail()


@pytest.fixture(params=["prosody", "ejabberd"])
def server(request):
    """The shared server of each kind: tests of the upstream must hold on any server."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["prosody", "ejabberd"])
def server_factory(request):
    """Private servers of each kind, for tests that kill, pause or restart them."""
    return request.getfixturevalue(f"{request.param}_factory")
