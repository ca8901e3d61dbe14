"""Managers fold Felix messages into in-memory state; they never touch the kernel."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from felix_nat64.logs import EventLogger
from felix_nat64.model.settings import Settings, SettingsResult, resolve_settings
from felix_nat64.model.state import Host, Inputs, Pool, TunnelAddress
from felix_nat64.model.workloads import (
    MAX_ENDPOINTS,
    MAX_NETS_PER_ENDPOINT,
    Workload,
    WorkloadEndpoint,
    WorkloadIndex,
)
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


class EndpointManager:
    """This node's workload endpoints by id, at most MAX_ENDPOINTS of them.

    Past the bound an update for an endpoint not yet known is counted and
    dropped (its sessions show no pod name); known endpoints keep being
    updated, and a remove makes room for the next new one. `version` moves
    on every change, so readers rebuild their index only when it did.
    """

    def __init__(self, limit: int = MAX_ENDPOINTS) -> None:
        self._log = EventLogger("endpoints")
        self._limit = limit
        self.endpoints: dict[m.EndpointId, WorkloadEndpoint] = {}
        self._sent: dict[m.EndpointId, tuple[str, ...]] = {}  # the nets as last sent, of kept endpoints
        # Ids of endpoints not kept, themselves bounded: past `limit` of them
        # the count stops growing.
        self._dropped: set[m.EndpointId] = set()
        self.version = 0
        self._warned_full = False

    @property
    def dropped(self) -> int:
        """Endpoints Felix sent that are not kept (at most `limit` are counted)."""
        return len(self._dropped)

    def on_update(self, msg: m.EndpointUpdate) -> None:
        # Felix sends an endpoint again whenever its policy changes: the
        # addresses as sent are compared first, so those cost no parsing.
        if self._sent.get(msg.endpoint_id) == msg.ipv6_nets:
            return
        if msg.endpoint_id not in self.endpoints and len(self.endpoints) >= self._limit:
            if msg.endpoint_id not in self._dropped and len(self._dropped) < self._limit:
                self._dropped.add(msg.endpoint_id)
                self.version += 1
            if not self._warned_full:
                self._warned_full = True
                self._log.warning("too many workload endpoints: new ones are not named", limit=self._limit,
                                  endpoint=msg.endpoint_id.workload)
            return
        nets = [net for net in map(_ipv6_net, msg.ipv6_nets) if net is not None]
        if len(nets) != len(msg.ipv6_nets) or len(nets) > MAX_NETS_PER_ENDPOINT:
            self._log.debug("endpoint networks not kept", endpoint=msg.endpoint_id.workload,
                            unparsable=len(msg.ipv6_nets) - len(nets),
                            beyond_limit=max(0, len(nets) - MAX_NETS_PER_ENDPOINT))
        endpoint = WorkloadEndpoint(Workload.from_workload_id(msg.endpoint_id.workload),
                                    msg.endpoint_id.endpoint, tuple(nets[:MAX_NETS_PER_ENDPOINT]))
        self._sent[msg.endpoint_id] = msg.ipv6_nets
        if self.endpoints.get(msg.endpoint_id) != endpoint:
            self.endpoints[msg.endpoint_id] = endpoint
            self.version += 1

    def on_remove(self, msg: m.EndpointRemove) -> None:
        self._sent.pop(msg.endpoint_id, None)
        if msg.endpoint_id in self._dropped:
            self._dropped.discard(msg.endpoint_id)
            self.version += 1
        if self.endpoints.pop(msg.endpoint_id, None) is not None:
            self.version += 1
            if len(self.endpoints) < self._limit:
                self._warned_full = False

    def index(self) -> WorkloadIndex:
        """A frozen lookup of what is known now."""
        return WorkloadIndex.build(self.endpoints.values(), self.dropped)


class NetworkManager:
    """Other nodes' tunnel addresses and the cluster's service CIDRs."""

    def __init__(self) -> None:
        self.tunnels: dict[tuple[str, str], tuple[ipaddress.IPv4Address, ...]] = {}
        self.service_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def on_tunnel(self, msg: m.TunnelUpdate) -> bool:
        key = (msg.hostname, msg.kind)
        if self.tunnels.get(key) == msg.addresses:
            return False
        self.tunnels[key] = msg.addresses
        return True

    def on_tunnel_remove(self, msg: m.TunnelRemove) -> bool:
        return self.tunnels.pop((msg.hostname, msg.kind), None) is not None

    def on_services(self, msg: m.ServiceCidrs) -> bool:
        changed = msg.cidrs != self.service_cidrs
        self.service_cidrs = msg.cidrs
        return changed

    def tunnel_addresses(self) -> tuple[TunnelAddress, ...]:
        return tuple(sorted({TunnelAddress(host, kind, addr)
                             for (host, kind), addrs in self.tunnels.items() for addr in addrs}))


class FelixView:
    """Everything Felix has told this driver, folded from its messages."""

    def __init__(self, default_hostname: str | None = None) -> None:
        self.settings = SettingsManager(default_hostname)
        self.pools = PoolManager()
        self.hosts = HostManager()
        self.endpoints = EndpointManager()
        self.network = NetworkManager()
        self.in_sync = False
        self.config_seen = False

    def on_message(self, msg: m.FelixMessage) -> bool:
        """Folds one message; True if the desired state may have changed."""
        # Endpoints come first: a snapshot holds more of them than of anything
        # else used. They only name the pods behind sessions: never a recalculation.
        if isinstance(msg, m.EndpointUpdate):
            self.endpoints.on_update(msg)
            return False
        if isinstance(msg, m.EndpointRemove):
            self.endpoints.on_remove(msg)
            return False
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
        if isinstance(msg, m.TunnelUpdate):
            return self.network.on_tunnel(msg)
        if isinstance(msg, m.TunnelRemove):
            return self.network.on_tunnel_remove(msg)
        if isinstance(msg, m.ServiceCidrs):
            return self.network.on_services(msg)
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
            tunnels=self.network.tunnel_addresses(),
            service_cidrs=tuple(sorted(self.network.service_cidrs, key=str)),
            previous_blocks=dict(previous_blocks),
        )


def _ipv6_net(text: str) -> ipaddress.IPv6Network | None:
    """An endpoint's IPv6 net; None for anything else (Felix sends none)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv6Network) else None
