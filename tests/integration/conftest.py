"""Fixtures for end-to-end tests (helpers live in integration_setup.py)."""

from __future__ import annotations

import pytest

from integration_setup import make_setup


@pytest.fixture
def setup(prosody, tmp_path):
    """A bouncer process for a fresh account on the shared Prosody, plus a contact bob."""
    s = make_setup(prosody, tmp_path)
    s.bouncer.start()
    yield s
    assert s.bouncer.stop() == 0, s.bouncer.log_tail()
