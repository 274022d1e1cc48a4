"""End-to-end test setup: a bouncer process for a fresh account, and a contact bob."""

from __future__ import annotations

from dataclasses import dataclass

from support.bouncer import DOWNSTREAM_PASSWORD, Bouncer
from support.prosody import Prosody


@dataclass
class Setup:
    prosody: Prosody
    bouncer: Bouncer
    alice: str  # the bouncer's account (bare JID)
    bob: str
    bob_password: str
    password: str = DOWNSTREAM_PASSWORD

    @property
    def port(self) -> int:
        return self.bouncer.port


def make_setup(prosody: Prosody, tmp_path, befriend: bool = False, **overrides) -> Setup:
    alice, alice_pw = prosody.new_user("alice")
    bob, bob_pw = prosody.new_user("bob")
    if befriend:
        from support.roster import befriend as write_roster

        write_roster(prosody, alice, bob)
    bouncer = Bouncer(tmp_path / "bouncer", prosody, alice, alice_pw, **overrides)
    return Setup(prosody, bouncer, alice, bob, bob_pw)


def kill_upstream(s: Setup) -> None:
    """SIGKILL the server and wait until the bouncer noticed."""
    s.prosody.kill()
    s.bouncer.wait_event("upstream down")


def restart_upstream(s: Setup, restarts: int = 1) -> None:
    """Start the killed server again and wait for the bouncer's new upstream session."""
    s.prosody.start()
    s.bouncer.wait_event("upstream established", after=restarts, timeout=30)
