"""Managers fold Felix messages into in-memory state; they never touch the kernel."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from felix_nat64.logs import EventLogger
from felix_nat64.model.settings import Settings, SettingsResult, resolve_settings
from felix_nat64.model.state import Host, Inputs, Pool
from felix_nat64.wire import messages as m


class SettingsManager:
    """Keeps the last good settings; a rejected update leaves them in force."""

    def __init__(self, default_hostname: str | None = None) -> None:
        self._log = EventLogger("settings")
        self.default_hostname = default_hostname
        self.in_force: Settings | None = None
        self.last_result: SettingsResult | None = None
        self.rejections = 0

    def on_config(self, msg: m.ConfigUpdate) -> bool:
        """Returns True if the settings in force changed."""
        result = resolve_settings(msg, self.default_hostname)
        self.last_result = result
        for warning in result.warnings:
            self._log.warning("setting warning", detail=warning)
        if not result.ok:
            self.rejections += 1
            for error in result.errors:
                self._log.error("invalid setting", key=error.key, value=error.value,
                                source=error.source or "unknown", reason=error.reason)
            self._log.error(
                "settings rejected",
                errors=len(result.errors),
                keeping="last good settings" if self.in_force else "dataplane untouched",
                action="fix the values above (FelixConfiguration annotations or FELIX_NAT64* "
                       "environment), then restart felix-nat64",
            )
            return False
        assert result.settings is not None
        changed = result.settings != self.in_force
        self.in_force = result.settings
        if changed:
            s = result.settings
            self._log.info("settings in force", enabled=s.enabled,
                           prefixes=",".join(map(str, s.prefixes)) or "none")
        return changed


class PoolManager:
    """Calico IP pools by id (like Felix's masqManager, without the kernel)."""

    def __init__(self) -> None:
        self._log = EventLogger("pools")
        self.pools: dict[str, Pool] = {}

    def on_update(self, msg: m.PoolUpdate) -> bool:
        pool = Pool(msg.pool_id, msg.cidr, msg.masquerade, msg.allowed_uses)
        if self.pools.get(msg.pool_id) == pool:
            return False
        self.pools[msg.pool_id] = pool
        self._log.debug("pool updated", id=msg.pool_id, cidr=msg.cidr)
        return True

    def on_remove(self, msg: m.PoolRemove) -> bool:
        if self.pools.pop(msg.pool_id, None) is None:
            self._log.debug("remove of unknown pool ignored", id=msg.pool_id)
            return False
        self._log.debug("pool removed", id=msg.pool_id)
        return True


class HostManager:
    """Node addresses by hostname, merged over Felix's wire variants."""

    def __init__(self) -> None:
        self._log = EventLogger("hosts")
        self.hosts: dict[str, Host] = {}

    def on_update(self, msg: m.HostUpdate) -> bool:
        old = self.hosts.get(msg.hostname, Host(msg.hostname))
        new = Host(
            msg.hostname,
            msg.ipv4 if msg.sets_ipv4 else old.ipv4,
            msg.ipv6 if msg.sets_ipv6 else old.ipv6,
        )
        if new == self.hosts.get(msg.hostname):
            return False
        self.hosts[msg.hostname] = new
        return True

    def on_remove(self, msg: m.HostRemove) -> bool:
        old = self.hosts.get(msg.hostname)
        if old is None:
            self._log.debug("remove of unknown host ignored", host=msg.hostname)
            return False
        if msg.ipv6_only:
            self.hosts[msg.hostname] = Host(old.hostname, old.ipv4, None)
            return old.ipv6 is not None
        del self.hosts[msg.hostname]
        return True


class FelixView:
    """Everything Felix has told this driver, folded from its messages."""

    def __init__(self, default_hostname: str | None = None) -> None:
        self.settings = SettingsManager(default_hostname)
        self.pools = PoolManager()
        self.hosts = HostManager()
        self.in_sync = False
        self.config_seen = False

    def on_message(self, msg: m.FelixMessage) -> bool:
        """Folds one message; True if the desired state may have changed."""
        if isinstance(msg, m.InSync):
            first = not self.in_sync
            self.in_sync = True
            return first
        if isinstance(msg, m.ConfigUpdate):
            self.config_seen = True
            return self.settings.on_config(msg)
        if isinstance(msg, m.PoolUpdate):
            return self.pools.on_update(msg)
        if isinstance(msg, m.PoolRemove):
            return self.pools.on_remove(msg)
        if isinstance(msg, m.HostUpdate):
            return self.hosts.on_update(msg)
        if isinstance(msg, m.HostRemove):
            return self.hosts.on_remove(msg)
        return False

    def inputs(self, previous_blocks: Mapping[ipaddress.IPv6Network, ipaddress.IPv4Network]) -> Inputs | None:
        """The calculation's inputs, or None while no good settings exist."""
        settings = self.settings.in_force
        if settings is None:
            return None
        return Inputs(
            settings=settings,
            pools=tuple(sorted(self.pools.pools.values(), key=lambda p: p.pool_id)),
            hosts=tuple(sorted(self.hosts.hosts.values(), key=lambda h: h.hostname)),
            previous_blocks=dict(previous_blocks),
        )
