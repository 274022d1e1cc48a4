"""End-to-end test setup: a bouncer process for a fresh account, and a contact bob.

``server`` is a Prosody or an ejabberd (tests/support/): the upstream must work
with any server.
"""

from __future__ import annotations

from dataclasses import dataclass

from support.bouncer import DOWNSTREAM_PASSWORD, Bouncer


@dataclass
class Setup:
    server: object  # support.prosody.Prosody or support.ejabberd.Ejabberd
    bouncer: Bouncer
    alice: str  # the bouncer's account (bare JID)
    bob: str
    bob_password: str
    password: str = DOWNSTREAM_PASSWORD

    @property
    def port(self) -> int:
        return self.bouncer.port


def make_setup(server, tmp_path, befriend: bool = False, **overrides) -> Setup:
    alice, alice_pw = server.new_user("alice")
    bob, bob_pw = server.new_user("bob")
    if befriend:
        server.befriend(alice, bob)
    bouncer = Bouncer(tmp_path / "bouncer", server, alice, alice_pw, **overrides)
    return Setup(server, bouncer, alice, bob, bob_pw)


def kill_upstream(s: Setup) -> None:
    """SIGKILL the server and wait until the bouncer noticed."""
    s.server.kill()
    s.bouncer.wait_event("upstream down")


def restart_upstream(s: Setup, restarts: int = 1) -> None:
    """Start the killed server again and wait for the bouncer's new upstream session."""
    s.server.start()
    s.bouncer.wait_event("upstream established", after=restarts, timeout=30)
