"""Mutual subscriptions written straight into a stopped-user Prosody's storage.

Presence tests need bob to see alice's presence; negotiating subscriptions
over XMPP in every test would be slow and beside the point. Prosody reads a
user's roster from storage at login, so the file must exist before either
account logs in.
"""

from __future__ import annotations

from support.prosody import Prosody


def befriend(prosody: Prosody, a: str, b: str) -> None:
    """Make bare JIDs ``a`` and ``b`` (both on prosody's domain) subscribed both ways."""
    for user, contact in ((a, b), (b, a)):
        path = prosody.datadir / prosody.domain.replace(".", "%2e") / "roster" / f"{user.split('@')[0]}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "return {\n"
            '  [false] = { ["version"] = 1; };\n'
            f'  ["{contact}"] = {{ ["subscription"] = "both"; ["groups"] = {{}}; }};\n'
            "};\n"
        )
