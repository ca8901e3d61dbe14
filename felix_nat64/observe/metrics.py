"""Prometheus metrics, named calico_nat64_<subsystem>_<name>_<unit>.

A custom collector builds every family at scrape time from the status board
and the last kernel sample, so scraping never touches the kernel or blocks
the driver loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from felix_nat64 import __version__
from felix_nat64.drivers.nft.ruleset import COUNTERS
from felix_nat64.model.protocol import PROTOCOLS
from felix_nat64.observe.census import OTHER, TOP_NAMESPACES, UNKNOWN, Census
from felix_nat64.observe.kernel_stats import KernelStats
from felix_nat64.observe.status import StatusBoard, StatusSnapshot
from felix_nat64.wire.transport import StreamSnapshot

PREFIX = "calico_nat64"

JOOL_STATS_HELP = "Jool's own event counters (JSTAT_*) by name, per translator (the table sizes are " \
                  "calico_nat64_jool_sessions and calico_nat64_jool_bib_entries)."

APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class ApplyTimes:
    """Histogram state for apply durations (written by the loop thread only)."""

    def __init__(self) -> None:
        self.counts = [0] * len(APPLY_BUCKETS)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.n += 1
        self.total += seconds
        for i, bound in enumerate(APPLY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


class NAT64Collector(Collector):
    """Everything felix-nat64 exports."""

    def __init__(self, status: StatusBoard, stats: Callable[[], KernelStats | None],
                 apply_times: ApplyTimes, host: str) -> None:
        self._status = status
        self._stats = stats
        self._apply = apply_times
        self._host = host

    def collect(self) -> Iterator[Metric]:
        snap = self._status.snapshot()
        yield from self._driver_families(snap)
        yield from self._stream_families(snap.stream)
        yield _gauge("felix_workload_endpoints", "This node's workload endpoints (pods) known by name.",
                     snap.driver.endpoints)
        yield _gauge("felix_workload_endpoints_dropped", "Workload endpoints not kept because the driver "
                     "already knew its maximum; their sessions show no pod name.",
                     snap.driver.endpoints_dropped)
        if snap.driver.census is not None:
            yield from self._census_families(snap.driver.census)
        stats = self._stats()
        if stats is not None:
            yield from self._kernel_families(stats)

    def _driver_families(self, snap: StatusSnapshot) -> Iterator[Metric]:
        d = snap.driver
        info = GaugeMetricFamily(f"{PREFIX}_info", "felix-nat64 version and the NAT64 prefixes in force.",
                                 labels=["version", "host", "prefixes"])
        prefixes = d.settings.prefixes if d.settings is not None else ()
        info.add_metric([__version__, self._host, ",".join(map(str, prefixes))], 1)
        yield info
        yield _gauge("felix_in_sync", "1 once Felix has sent its whole snapshot (InSync).",
                     1 if d.in_sync else 0)
        yield _gauge("ready", "1 when NAT64 is applied and nothing is wrong (see /readiness).",
                     1 if snap.ready else 0)
        yield _gauge("settings_errors", "Settings rejected in Felix's last ConfigUpdate.",
                     len(d.settings_errors))
        yield _gauge("unsupported_dataplane", "1 when this node's Calico dataplane is one felix-nat64 "
                     "cannot work with (the eBPF dataplane): nothing is programmed.",
                     1 if d.unsupported_dataplane else 0)
        yield _counter("settings_rejections", "ConfigUpdates whose settings were rejected.",
                       d.settings_rejections)
        yield _gauge("config_warnings", "Configuration warnings (e.g. no IP pool covering a prefix).",
                     len(d.warnings) + len(d.settings_warnings))
        yield _gauge("translators_desired", "Translators (one per /96 parent) the settings call for.",
                     len(d.desired.translators) if d.desired is not None else 0)
        yield _counter("dataplane_applies", "Attempts to program the kernel.", d.applies)
        yield _counter("dataplane_apply_failures", "Failed attempts to program the kernel.", d.apply_failures)
        yield _counter("dataplane_drift_repairs", "Periodic resyncs that found and repaired kernel drift.",
                       d.drift_repairs)
        if d.last_success_at:
            yield _gauge("dataplane_last_success_timestamp_seconds",
                         "When the kernel was last brought to the desired state.", d.last_success_at)
        hist = HistogramMetricFamily(f"{PREFIX}_dataplane_apply_duration_seconds",
                                     "Time to converge the kernel on the desired state.")
        cumulative = []
        for bound, count in zip(APPLY_BUCKETS, self._apply.counts, strict=True):
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), count))
        hist.add_metric([], cumulative, self._apply.total)
        yield hist

    def _stream_families(self, stream: StreamSnapshot) -> Iterator[Metric]:
        msgs = CounterMetricFamily(f"{PREFIX}_felix_messages", "Felix messages received, by payload type.",
                                   labels=["payload"])
        for payload, count in sorted(stream.by_payload.items()):
            msgs.add_metric([payload], count)
        yield msgs
        bad = CounterMetricFamily(f"{PREFIX}_felix_undecodable_messages",
                                  "Well-framed Felix messages that could not be decoded.", labels=["used"])
        bad.add_metric(["true"], stream.undecodable_used)
        bad.add_metric(["false"], stream.undecodable_other)
        yield bad
        yield _counter("felix_bytes", "Bytes read from Felix's stream.", stream.bytes)

    def _census_families(self, census: Census) -> Iterator[Metric]:
        yield _gauge("census_timestamp_seconds", "When the last session census ended.", census.at)
        yield _gauge("census_duration_seconds", "How long the last session census took.", census.duration)
        yield _gauge("census_error", "1 if part of the last session census could not be read.",
                     1 if census.error else 0)
        labels = ["translator", "prefix", "protocol"]
        sessions = GaugeMetricFamily(f"{PREFIX}_census_sessions", "Jool sessions per protocol, as of the "
                                     "last census.", labels=labels)
        bib = GaugeMetricFamily(f"{PREFIX}_census_bib_entries", "Jool BIB entries per protocol, as of the "
                                "last census.", labels=labels)
        for t in census.translators:
            for proto in PROTOCOLS:
                sessions.add_metric([t.namespace, t.parent, proto], t.sessions.get(proto, 0))
                bib.add_metric([t.namespace, t.parent, proto], t.bib_entries.get(proto, 0))
        namespaces = GaugeMetricFamily(
            f"{PREFIX}_census_namespace_sessions", f"Jool sessions by the pod's namespace, as of the last "
            f"census: the {TOP_NAMESPACES} busiest namespaces, then {OTHER} and {UNKNOWN} (no known pod).",
            labels=["namespace"])
        for namespace, count in census.namespaces:
            namespaces.add_metric([namespace], count)
        yield from (sessions, bib, namespaces)

    def _kernel_families(self, stats: KernelStats) -> Iterator[Metric]:
        yield _gauge("kernel_sample_timestamp_seconds", "When kernel state was last sampled.", stats.at)
        yield _gauge("kernel_sample_error", "1 if the last kernel sample failed.", 1 if stats.error else 0)
        packets = CounterMetricFamily(f"{PREFIX}_nft_packets",
                                      "Packets counted by felix-nat64's nftables rules.", labels=["rule"])
        nbytes = CounterMetricFamily(f"{PREFIX}_nft_bytes",
                                     "Bytes counted by felix-nat64's nftables rules.", labels=["rule"])
        for name in COUNTERS:
            p, b = stats.nft.get(name, (0, 0))
            packets.add_metric([name], p)
            nbytes.add_metric([name], b)
        yield packets
        yield nbytes
        labels = ["translator", "prefix"]
        sessions = GaugeMetricFamily(f"{PREFIX}_jool_sessions", "Jool sessions, every protocol (Jool's "
                                     "JSTAT_SESSIONS).", labels=labels)
        bib = GaugeMetricFamily(f"{PREFIX}_jool_bib_entries", "Jool BIB entries (pool4 transport addresses "
                                "in use), every protocol (Jool's JSTAT_BIB_ENTRIES).", labels=labels)
        ports = GaugeMetricFamily(f"{PREFIX}_jool_pool4_transport_addresses",
                                  "Pool4 capacity: addresses times ports (ICMP: identifiers).",
                                  labels=[*labels, "protocol"])
        util = GaugeMetricFamily(f"{PREFIX}_jool_pool4_utilisation_ratio",
                                 "Upper bound of the share of pool4 in use: every BIB entry counted against "
                                 "this protocol's capacity (1 means exhausted).",
                                 labels=[*labels, "protocol"])
        jstats = CounterMetricFamily(f"{PREFIX}_jool_stats", JOOL_STATS_HELP,
                                     labels=["translator", "prefix", "stat"])
        up = GaugeMetricFamily(f"{PREFIX}_jool_instance_up", "1 if the translator's Jool instance exists.",
                               labels=labels)
        for t in stats.translators:
            lab = [t.namespace, t.parent]
            up.add_metric(lab, 1 if t.instance else 0)
            sessions.add_metric(lab, t.sessions)
            bib.add_metric(lab, t.bib_entries)
            for proto in PROTOCOLS:
                ports.add_metric([*lab, proto], t.pool4_ports.get(proto, 0))
                util.add_metric([*lab, proto], t.pool4_use_bound(proto))
            for name, value in sorted(t.jool.items()):
                jstats.add_metric([*lab, name], value)
        yield from (up, sessions, bib, ports, util, jstats)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def registry_for(collector: NAT64Collector) -> CollectorRegistry:
    """A private registry (no process-wide globals) holding our collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
