"""Which pod holds an IPv6 address: the names behind NAT64 sessions.

Felix sends the driver this node's workload endpoints (pods) with their IPv6
networks; the driver keeps them in a bounded map and publishes it as a
`WorkloadIndex`, a frozen value that the session census, the metrics and
`felix-nat64 sessions` look addresses up in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# A node runs at most a few hundred pods (kubelet's maxPods is 110 by
# default); past this many endpoints new ones are not kept, so a runaway
# stream cannot grow the driver without bound. Their sessions show no name.
MAX_ENDPOINTS = 4096
# Calico gives a pod one IPv6 address per IPv6 pool; more than this many per
# endpoint are not kept.
MAX_NETS_PER_ENDPOINT = 8


@dataclass(frozen=True, order=True)
class Workload:
    """A pod, by namespace and name."""

    namespace: str  # "" when the orchestrator's workload id has no namespace
    name: str

    @classmethod
    def from_workload_id(cls, workload_id: str) -> Workload:
        """Felix's workload id: "<namespace>/<pod>" for Kubernetes (libcalico-go's
        names.ConvertWorkloadEndpointV3KeyToV1Key); other orchestrators' ids
        are kept whole as the name."""
        namespace, slash, name = workload_id.partition("/")
        return cls(namespace, name) if slash else cls("", workload_id)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class WorkloadEndpoint:
    """One endpoint as kept: its pod, its endpoint id and its IPv6 networks."""

    workload: Workload
    endpoint: str
    ipv6: tuple[ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class WorkloadIndex:
    """Address -> pod lookups over a frozen set of endpoints.

    `dropped` counts the endpoints not kept because MAX_ENDPOINTS were
    already known when they arrived."""

    endpoints: tuple[WorkloadEndpoint, ...] = ()
    dropped: int = 0
    _hosts: Mapping[bytes, Workload] = field(  # by packed address
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    _nets: tuple[tuple[ipaddress.IPv6Network, Workload], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def build(cls, endpoints: Iterable[WorkloadEndpoint], dropped: int = 0) -> WorkloadIndex:
        kept = tuple(sorted(endpoints, key=lambda e: (e.workload, e.endpoint)))
        hosts: dict[bytes, Workload] = {}
        nets: list[tuple[ipaddress.IPv6Network, Workload]] = []
        for ep in kept:
            for net in ep.ipv6:
                # Calico hands pods /128s: an exact lookup; anything wider is searched.
                if net.prefixlen == 128:
                    hosts[net.network_address.packed] = ep.workload
                else:
                    nets.append((net, ep.workload))
        return cls(kept, dropped, MappingProxyType(hosts), tuple(nets))

    def lookup(self, address: ipaddress.IPv6Address) -> Workload | None:
        """The pod holding `address`, or None when no kept endpoint does."""
        return self.lookup_packed(address.packed)

    def lookup_packed(self, packed: bytes) -> Workload | None:
        """`lookup` for an address as its 16 bytes (what Jool's replies carry)."""
        found = self._hosts.get(packed)
        if found is not None or not self._nets:
            return found
        address = ipaddress.IPv6Address(packed)
        for net, workload in self._nets:
            if address in net:
                return workload
        return None

    def to_json(self) -> dict[str, Any]:
        return {"limit": MAX_ENDPOINTS, "dropped": self.dropped,
                "endpoints": [{"namespace": e.workload.namespace, "pod": e.workload.name,
                               "endpoint": e.endpoint, "ipv6": [str(n) for n in e.ipv6]}
                              for e in self.endpoints]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkloadIndex:
        """Reads back `to_json()`; raises ValueError, KeyError or TypeError on
        anything else."""
        endpoints = [WorkloadEndpoint(Workload(str(e["namespace"]), str(e["pod"])), str(e["endpoint"]),
                                      tuple(ipaddress.IPv6Network(n) for n in e["ipv6"]))
                     for e in data["endpoints"]]
        return cls.build(endpoints, int(data.get("dropped", 0)))
