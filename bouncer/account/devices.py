"""Devices and their cursors into the mailbox: a backlog per device (SPEC §14, soju's
per-client delivery cursor).

A device is a resource that bound once. Its cursor is the id of the last stored
stanza it received: written to its socket, or, on an XEP-0198 stream, acknowledged.
Stanzas reach a device in id order and are confirmed in that order, so the cursor
only moves forward. A device that comes back without resuming gets what lies past
its cursor, each stanza exactly once per device; a device seen for the first time
starts where the most advanced one is (it gets what nobody got, as a server's offline
storage would give the first resource to come online).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from bouncer.core.ports import Device, Mailbox, StoredStanza

log = structlog.get_logger("bouncer.devices")


@dataclass(frozen=True)
class Retention:
    max_age: float  # seconds a stored stanza is kept for a device that does not come back
    forget_after: float  # seconds after which a device unseen is forgotten


@dataclass
class DeviceBook:
    mailbox: Mailbox
    known: dict[str, Device] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known = {d.resource: d for d in self.mailbox.devices()}

    def bound(self, resource: str, now: float) -> float | None:
        """A session bound as ``resource``: a known device comes back (returns when it was
        last seen), or a new one starts (None)."""
        device = self.known.get(resource)
        if device is None:
            cursor = max((d.cursor for d in self.known.values()), default=0)
            log.info("new device", device=resource, cursor=cursor)
        else:
            cursor = device.cursor
        self._save(Device(resource, cursor, now))
        return None if device is None else device.last_seen

    def missed(self, resource: str) -> list[StoredStanza]:
        """What the device has not received yet, in order."""
        device = self.known.get(resource)
        return [] if device is None else self.mailbox.since(device.cursor)

    def received(self, resource: str, stored_id: int, now: float) -> None:
        """The device has stored stanza ``stored_id`` (and every one before it)."""
        device = self.known.get(resource)
        if device is not None and stored_id > device.cursor:
            self._save(Device(resource, stored_id, now))

    def seen(self, resource: str, now: float) -> None:
        device = self.known.get(resource)
        if device is not None:
            self._save(Device(resource, device.cursor, now))

    def forget(self, resource: str) -> bool:
        """Forget a device now (its owner said so): nothing is kept for it any more."""
        if self.known.pop(resource, None) is None:
            return False
        log.info("device forgotten", device=resource, by="command")
        self.mailbox.forget_device(resource)
        return True

    def backlog(self, resource: str) -> int:
        device = self.known.get(resource)
        return 0 if device is None else self.mailbox.count(device.cursor)

    def prune(self, now: float, retention: Retention, live: set[str]) -> int:
        """Forget devices unseen for long (not ``live`` ones), then delete what every
        remaining device has and what is older than the retention."""
        for device in list(self.known.values()):
            if device.resource not in live and now - device.last_seen > retention.forget_after:
                log.info("device forgotten", device=device.resource, last_seen=device.last_seen)
                del self.known[device.resource]
                self.mailbox.forget_device(device.resource)
        upto = min((d.cursor for d in self.known.values()), default=0)
        return self.mailbox.prune(upto, now - retention.max_age)

    def status(self) -> list[dict]:
        return [{"resource": d.resource, "last_seen": d.last_seen, "backlog": self.mailbox.count(d.cursor)}
                for d in sorted(self.known.values(), key=lambda d: d.resource)]

    def _save(self, device: Device) -> None:
        self.known[device.resource] = device
        self.mailbox.save_device(device)
