"""What a SIGHUP may change in the running process, and what needs a restart.

Pure functions over two Config values, so the rules are unit-tested without a process.
Only the keys listed in APPLIED are applied to the running process; every other key (the
upstream session, the listening sockets, the open database, and any section this module
does not know yet) keeps its old value until the next start, and the caller logs it as
needing a restart.
"""

from __future__ import annotations

import dataclasses

from bouncer.config import Config

# Keys (section.key, or a whole section) that app.Service applies on reload.
APPLIED = ("listen.tls", "listen.cert", "listen.key", "downstream", "presence", "limits", "history", "muc", "log")


def sections(config: Config) -> list[str]:
    """Names of the config's sections (its dataclass-valued fields)."""
    return [f.name for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))]


def differences(old: Config, new: Config) -> list[str]:
    """``section.key`` for every value that differs (values never appear: some are secrets)."""
    changed = []
    for section in sections(old):
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"{section}.{f.name}")
    return changed


def needs_restart(key: str) -> bool:
    return not (key in APPLIED or key.split(".", 1)[0] in APPLIED)


def in_force(old: Config, new: Config) -> Config:
    """``new`` with the values only a restart may change taken from ``old``."""
    kept = {}
    for section in sections(old):
        a, b = getattr(old, section), getattr(new, section)
        values = {f.name: getattr(a if needs_restart(f"{section}.{f.name}") else b, f.name)
                  for f in dataclasses.fields(a) if f.init}
        kept[section] = dataclasses.replace(b, **values)
    return dataclasses.replace(new, **kept)
