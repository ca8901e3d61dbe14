"""Statistics, tables and the plot of the data path benchmark.

Everything here except `plot()` is pure: it reads the JSON that
benchmarks/datapath.py wrote (plus benchmarks/frontend.py's) and turns it
into figures. Ratios are always NAT64 / routed, computed per interleaved
round (the two runs of a round are seconds apart, so they share the
machine's mood) and then summarised by their median and their range.

    python -m benchmarks.report [--datapath docs/bench/datapath.json] [--png docs/bench/datapath.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

DATAPATH_JSON = "docs/bench/datapath.json"
PREVIOUS_JSON = "docs/bench/datapath-previous.json"
BUSY_JSON = "docs/bench/busy.json"
BUSY_PNG = "docs/bench/busy.png"
FRONTEND_JSON = "docs/bench/frontend.json"
LEVERS_JSON = "docs/bench/levers.json"
PNG = "docs/bench/datapath.png"

Runs = Sequence[Mapping[str, float]]


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN if empty."""
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios; rounds where the denominator is 0 are left out."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} values against {len(denominators)}: rounds must pair up")
    return [n / d for n, d in zip(numerators, denominators, strict=True) if d]


@dataclass(frozen=True)
class Spread:
    """Median and range of a set of measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(median(values), min(values), max(values), len(values))


def growth_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) over log(size): 1 is linear growth, 0 flat."""
    points = [(math.log(s), math.log(t)) for s, t in zip(sizes, times, strict=True) if s > 0 and t > 0]
    if len(points) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One data path figure: which test, which number, which way is better."""

    test: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None = None  # on the NAT64/routed ratio

    def met(self, ratio: float) -> bool | None:
        if self.target is None or math.isnan(ratio):
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target


METRICS = (
    Metric("tcp_1", "gbit_s", "Bulk TCP, 1 stream, pod -> server", "Gbit/s", True, 0.8),
    Metric("tcp_4", "gbit_s", "Bulk TCP, 4 streams, pod -> server", "Gbit/s", True, 0.8),
    Metric("tcp_1_down", "gbit_s", "Bulk TCP, 1 stream, server -> pod", "Gbit/s", True, 0.8),
    Metric("udp_up", "kpps", "UDP 64 B, pod -> server (received)", "kpps", True),
    Metric("udp_down", "kpps", "UDP 64 B, server -> pod (received)", "kpps", True),
    Metric("crr", "conn_s", "New TCP connections (connect, request, close)", "conn/s", True, 0.7),
    Metric("crr", "p50_ms", "  connection latency p50", "ms", False),
    Metric("crr", "p99_ms", "  connection latency p99", "ms", False),
    Metric("udp_rr", "p50_ms", "UDP request/response p50", "ms", False),
    Metric("udp_rr", "p99_ms", "UDP request/response p99", "ms", False, 1.3),
)


@dataclass(frozen=True)
class Row:
    """A line of the data path table."""

    metric: Metric
    nat64: Spread
    routed: Spread
    ratio: Spread

    @property
    def met(self) -> bool | None:
        return self.metric.met(self.ratio.median)


def values(runs: Runs, key: str) -> list[float]:
    return [float(run[key]) for run in runs]


def compare(runs_a: Runs, runs_b: Runs, key: str) -> tuple[Spread, Spread, Spread]:
    """Spreads of A, B and of the per-round ratio A/B."""
    a, b = values(runs_a, key), values(runs_b, key)
    return Spread.of(a), Spread.of(b), Spread.of(paired_ratios(a, b))


def datapath_rows(datapath: Mapping[str, Mapping[str, Runs]]) -> list[Row]:
    rows = []
    for metric in METRICS:
        test = datapath.get(metric.test)
        if not test or "nat64" not in test or "routed" not in test:
            continue
        nat, routed, ratio = compare(test["nat64"], test["routed"], metric.key)
        rows.append(Row(metric, nat, routed, ratio))
    return rows


@dataclass(frozen=True)
class Figure:
    """A control plane or footprint figure with its target."""

    label: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""


def _fmt(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def control_figures(result: Mapping[str, Any], frontend: Mapping[str, Any] | None) -> list[Figure]:
    figures: list[Figure] = []
    control = result.get("control") or {}
    runs = control.get("insync_to_working", [])
    boot = [r["to_working_s"] for r in runs if r.get("first_after_boot")]
    insync = [r["to_working_s"] for r in runs if not r.get("first_after_boot")]
    if insync:
        s = Spread.of(insync)
        p95 = percentile(insync, 95)
        figures.append(Figure("InSync -> working data path (cold node), p50", s.median, "s"))
        figures.append(Figure("InSync -> working data path (cold node), p95", p95, "s", "< 2 s", p95 < 2,
                              f"range {_fmt(s.low)}-{_fmt(s.high)} s, n={s.n}"))
    if boot:
        figures.append(Figure("InSync -> working, first time after the VM boots", boot[0], "s", "", None,
                              "also loads nf_tables modules, cold caches"))
    change = [r["to_kernel_s"] for r in control.get("settings_change", [])]
    if change:
        s = Spread.of(change)
        figures.append(Figure("Settings change on the live stream -> in the kernel", s.median, "s", "< 1 s",
                              s.high < 1, f"range {_fmt(s.low)}-{_fmt(s.high)} s, n={s.n}"))
    idle = [r["VmRSS"] for r in control.get("idle_rss", [])]
    if idle:
        figures.append(Figure("Driver RSS, idle (2 translators)", max(idle), "MB", "< 80 MB", max(idle) < 80))
    snap = control.get("snapshot")
    if snap:
        figures.append(Figure("Driver RSS after a 100k-message snapshot", snap["rss_mb"], "MB", "< 80 MB",
                              snap["peak_rss_mb"] < 80, f"peak {_fmt(snap['peak_rss_mb'])} MB"))
        figures.append(Figure("100k-message snapshot -> ready (in the VM)", snap["to_ready_s"], "s", "",
                              None, f"{snap['frames']:,} frames, {snap['bytes'] / 1e6:.1f} MB"))
    scaling = result.get("scaling") or {}
    pools = scaling.get("pools") or []
    if pools:
        sizes = [p["n"] for p in pools]
        change_t = [median(p["change_s"]) for p in pools]
        exponent = growth_exponent(sizes, change_t)
        last = pools[-1]
        figures.append(Figure(f"Apply after a pool change, {last['n']} pools", median(last["change_s"]), "s",
                              "<= linear", exponent <= 1.0,
                              f"growth exponent {exponent:.2f} over {sizes[0]}-{sizes[-1]} pools"))
        resync_t = [median(p["resync_s"]) for p in pools]
        figures.append(Figure(f"No-op resync apply, {last['n']} pools", resync_t[-1], "s", "<= linear",
                              growth_exponent(sizes, resync_t) <= 1.0,
                              f"growth exponent {growth_exponent(sizes, resync_t):.2f}"))
    prefixes = scaling.get("prefixes") or []
    if prefixes:
        sizes = [p["n"] for p in prefixes]
        cold = [p["cold_s"] for p in prefixes]
        exponent = growth_exponent(sizes, cold)
        figures.append(Figure(f"Cold apply, {prefixes[-1]['n']} prefixes (translators)", cold[-1], "s",
                              "<= linear", exponent <= 1.0, f"growth exponent {exponent:.2f}"))
    if frontend:
        rate = frontend["median_messages_per_second"]
        figures.append(Figure("Front end: messages decoded and folded per second", rate, "msg/s",
                              ">= 200,000", rate >= 200_000, "host, not the VM"))
    sample = result.get("stats_sample")
    if sample:
        figures.append(Figure("One metrics sample (stats-poller)", sample["seconds"], "s", "", None,
                              f"{int(sample['sessions']):,} Jool sessions"))
    return figures


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    conditions: Mapping[str, Any] = field(default_factory=dict)


def summarize(result: Mapping[str, Any], frontend: Mapping[str, Any] | None = None) -> Summary:
    return Summary(datapath_rows(result.get("datapath") or {}), control_figures(result, frontend),
                   result.get("conditions") or {})


# ---------------------------------------------------------------------------
# Levers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LeverRow:
    lever: str
    metric: Metric
    without: Spread  # NAT64/routed ratio without the lever
    with_lever: Spread  # ... and with it
    effect: Spread  # (NAT64 with lever) / (NAT64 without), per round


def lever_rows(levers: Mapping[str, Any]) -> list[LeverRow]:
    rows = []
    for name, lever in levers.items():
        results = lever["results"]
        for metric in METRICS:
            test = results.get(metric.test)
            if not test:
                continue
            base = values(test["nat64"], metric.key)
            on = values(test["nat64+lever"], metric.key)
            routed = values(test["routed"], metric.key)
            rows.append(LeverRow(name, metric, Spread.of(paired_ratios(base, routed)),
                                 Spread.of(paired_ratios(on, routed)), Spread.of(paired_ratios(on, base))))
    return rows


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def _mark(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


def _ratio_text(s: Spread) -> str:
    return f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})" if s.n else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])


def datapath_table(rows: Sequence[Row], markdown: bool = False, previous: Sequence[Row] = ()) -> str:
    """The data path table; with `previous` (the last run's rows), its ratios
    beside this run's."""
    before = {(r.metric.test, r.metric.key): r.ratio for r in previous}
    body = []
    for r in rows:
        target = ""
        if r.metric.target is not None:
            target = ("≥ " if r.metric.higher_is_better else "≤ ") + f"{r.metric.target:g}"
        line = [r.metric.label, r.metric.unit, _fmt(r.nat64.median), _fmt(r.routed.median),
                _ratio_text(r.ratio)]
        if previous:
            old = before.get((r.metric.test, r.metric.key))
            line.append(_ratio_text(old) if old is not None else "-")
        body.append([*line, target, _mark(r.met)])
    headers = ["Figure", "Unit", "NAT64", "Routed", "NAT64/routed (range)"]
    if previous:
        headers.append("Previous run")
    return table([*headers, "Target", "Met"], body, markdown)


def with_previous(figures: Sequence[Figure], previous: Mapping[str, Any] | None,
                  frontend: Mapping[str, Any] | None = None) -> list[Figure]:
    """The figures, each with the previous run's value of the same figure in its detail."""
    if not previous or not (previous.get("control") or previous.get("scaling")):
        return list(figures)
    before = {f.label: f for f in control_figures(previous, frontend)}
    out = []
    for f in figures:
        old = before.get(f.label)
        if old is not None and old.unit == f.unit and not math.isnan(old.value) and f.label.startswith(
                ("InSync", "Settings", "Driver RSS", "Apply", "No-op", "Cold apply")):
            detail = "; ".join(x for x in (f.detail, f"previous run {_fmt(old.value)} {old.unit}") if x)
            out.append(replace(f, detail=detail))
        else:
            out.append(f)
    return out


def figures_table(figures: Sequence[Figure], markdown: bool = False) -> str:
    body = [[f.label, f"{_fmt(f.value)} {f.unit}", f.target, _mark(f.met), f.detail] for f in figures]
    return table(["Figure", "Result", "Target", "Met", "Detail"], body, markdown)


def _effect_text(s: Spread) -> str:
    if not s.n:
        return "-"
    return f"{(s.median - 1) * 100:+.0f}% ({(s.low - 1) * 100:+.0f}..{(s.high - 1) * 100:+.0f})"


def verdict(row: LeverRow) -> str:
    """"better" or "worse" when every round moved the same way, else "unclear"."""
    if not row.effect.n:
        return "-"
    up, down = row.effect.low > 1, row.effect.high < 1
    if not (up or down):
        return "unclear"
    return "better" if up == row.metric.higher_is_better else "worse"


def levers_table(rows: Sequence[LeverRow], markdown: bool = False) -> str:
    body = [[r.lever, r.metric.label.strip(), _ratio_text(r.without), _ratio_text(r.with_lever),
             _effect_text(r.effect), verdict(r)] for r in rows]
    return table(["Lever", "Figure", "NAT64/routed without", "with", "Effect on NAT64", "Every round"], body,
                 markdown)


def render_text(summary: Summary, markdown: bool = False) -> str:
    parts = []
    if summary.rows:
        parts.append(datapath_table(summary.rows, markdown))
    if summary.figures:
        parts.append(figures_table(summary.figures, markdown))
    return "\n\n".join(parts)


def scaling_table(scaling: Mapping[str, Any], markdown: bool = False) -> str:
    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    body = [[count(p["n"], "pool", "pools"), _fmt(p["cold_s"] * 1e3), _fmt(median(p["resync_s"]) * 1e3),
             _fmt(median(p["change_s"]) * 1e3), _fmt(p["calc_s"] * 1e3)] for p in scaling.get("pools", [])]
    body += [[count(p["n"], "prefix", "prefixes"), _fmt(p["cold_s"] * 1e3), _fmt(median(p["resync_s"]) * 1e3),
              _fmt(p["add_one_s"] * 1e3), "-"] for p in scaling.get("prefixes", [])]
    headers = ["State", "Cold apply ms", "No-op resync ms", "One change ms", "Decode + calculation ms"]
    return table(headers, body, markdown)


# ---------------------------------------------------------------------------
# The busy node (docs/bench/busy.json)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BusyCost:
    """A cost measured at every table size: its name and how to read it from a level."""

    label: str
    unit: str
    scale: float  # from seconds (or MB) to `unit`
    read: Any  # level -> list of measurements

    def median_at(self, level: Mapping[str, Any]) -> float:
        return median([v * self.scale for v in self.read(level)])


def _list(key: str) -> Any:
    return lambda level: list(level.get(key) or [])


def _one(key: str) -> Any:
    return lambda level: [level[key]] if key in level else []


BUSY_COSTS = (
    BusyCost("One metrics sample (stats-poller)", "ms", 1e3, _list("sample_s")),
    BusyCost("/metrics scrape", "ms", 1e3, _list("scrape_s")),
    BusyCost("status (collection)", "ms", 1e3, _list("status_collect_s")),
    BusyCost("felix-nat64 status (command)", "s", 1.0, _one("status_cli_s")),
    BusyCost("sessions --limit 100 (page)", "ms", 1e3, _list("sessions_page_s")),
    BusyCost("felix-nat64 sessions --limit 100 (command)", "s", 1.0, _one("sessions_cli_s")),
    BusyCost("No-op resync apply", "ms", 1e3, _list("resync_s")),
    BusyCost("Settings change -> in the kernel", "ms", 1e3,
             lambda level: [r["to_kernel_s"] for r in level.get("settings_change") or []]),
    BusyCost("Driver RSS", "MB", 1.0, lambda level: [level["rss_mb"]["VmRSS"]] if "rss_mb" in level else []),
    BusyCost("Session census (walks every session)", "s", 1.0, _list("census_s")),
)
FLAT_COSTS = ("One metrics sample (stats-poller)", "status (collection)")


def busy_levels(busy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The levels measured with a filled table (the empty one apart)."""
    return [level for level in busy.get("levels") or [] if level.get("target")]


def busy_table(busy: Mapping[str, Any], markdown: bool = False) -> str:
    levels = busy.get("levels") or []
    headers = ["Figure", *(f"{int(level['sessions']):,} sessions" for level in levels)]
    body = [[f"{cost.label}, {cost.unit}", *(_fmt(cost.median_at(level)) for level in levels)]
            for cost in BUSY_COSTS]
    body.append(["Time to fill to this size, s",
                 *(_fmt(level["fill_s"]) if "fill_s" in level else "-" for level in levels)])
    return table(headers, body, markdown)


def crr_ratio(runs: Mapping[str, Runs]) -> Spread:
    return Spread.of(paired_ratios(values(runs["nat64"], "conn_s"), values(runs["routed"], "conn_s")))


def busy_figures(busy: Mapping[str, Any]) -> list[Figure]:
    """The busy node's verdicts: flat costs, memory, the connection rate."""
    figures: list[Figure] = []
    levels = busy_levels(busy)
    if len(levels) >= 2:
        small, big = levels[0], levels[-1]
        for cost in BUSY_COSTS:
            if cost.label not in FLAT_COSTS:
                continue
            a, b = cost.read(small), cost.read(big)
            ratio = median(b) / median(a) if a and b and median(a) else math.nan
            # Within noise: the big table's median inside the small one's range
            # widened by a quarter, or no more than 25% above its median.
            same = bool(a and b) and (median(b) <= max(a) * 1.25 or ratio <= 1.25)
            detail = f"{_fmt(cost.median_at(small))} -> {_fmt(cost.median_at(big))} {cost.unit}"
            figures.append(Figure(f"{cost.label} at {int(big['sessions']):,} / at {int(small['sessions']):,} "
                                  "sessions", ratio, "x", "same within noise", same, detail))
    rss = [level["rss_mb"]["VmRSS"] for level in busy.get("levels") or [] if "rss_mb" in level]
    peak = [level["rss_mb"].get("VmHWM", 0) for level in busy.get("levels") or [] if "rss_mb" in level]
    if rss:
        figures.append(Figure("Driver RSS, busiest table", max(rss), "MB", "< 80 MB", max(peak + rss) < 80,
                              f"peak {_fmt(max(peak + rss))} MB"))
    if busy.get("crr_empty") and busy.get("crr_full"):
        empty, full = crr_ratio(busy["crr_empty"]), crr_ratio(busy["crr_full"])
        figures.append(Figure("New TCP connections, NAT64/routed, empty table", empty.median, "", "", None,
                              f"range {_fmt(empty.low)}-{_fmt(empty.high)}, n={empty.n}"))
        figures.append(Figure(f"New TCP connections, NAT64/routed, {int(busy.get('crr_full_sessions', 0)):,} "
                              "sessions", full.median, "", "", None,
                              f"range {_fmt(full.low)}-{_fmt(full.high)}, n={full.n}"))
    return figures


def _flat_reps(busy: Mapping[str, Any]) -> int:
    levels = busy_levels(busy)
    return len(levels[-1].get("sample_s") or []) if levels else 0


def busy_section(busy: Mapping[str, Any], png: str = "") -> list[str]:
    c = busy.get("conditions") or {}
    lines = [f"Busy node, run of {c.get('date', '?')} ({c.get('busy_seconds', '?')} s; settings "
             f"{', '.join(f'{k}={v}' for k, v in (busy.get('settings') or {}).items())}; medians of "
             f"{c.get('reps', '?')} repetitions, of {_flat_reps(busy)} for the metrics sample, the "
             "scrape and status; commands and census once):", "",
             busy_table(busy, True), "", figures_table(busy_figures(busy), True), ""]
    if busy.get("errors"):
        lines += ["Parts of the busy node that failed:", "", *(f"- `{e}`" for e in busy["errors"]), ""]
    if png:
        lines += [f"![Costs against the size of Jool's session table]({png})", ""]
    return lines


def plot_busy(busy: Mapping[str, Any], path: str) -> None:
    """Each cost against the table size, and the connection rate ratio empty and full."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    levels = busy_levels(busy)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    ax = axes[0]
    sizes = [level["sessions"] for level in levels]
    for cost, marker in zip(BUSY_COSTS, "os^vD<>ph*", strict=False):
        if cost.unit == "MB":
            continue
        ms = [cost.median_at(level) * (1e3 if cost.unit == "s" else 1.0) for level in levels]
        ax.plot(sizes, ms, marker + "-", label=cost.label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Jool sessions on the node")
    ax.set_ylabel("ms (in the emulated VM)")
    ax.set_title("Cost against the size of Jool's session table", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    rss = [level["rss_mb"]["VmRSS"] for level in levels]
    ax.plot(sizes, rss, "o-", color="tab:blue", label="driver RSS, MB")
    ax.axhline(80, color="tab:red", linestyle=":", label="80 MB target")
    ax.set_xscale("log")
    ax.set_xlabel("Jool sessions on the node")
    ax.set_ylabel("MB")
    if busy.get("crr_empty") and busy.get("crr_full"):
        twin = ax.twinx()
        empty, full = crr_ratio(busy["crr_empty"]), crr_ratio(busy["crr_full"])
        xs = [max(min(sizes) / 3, 1), busy.get("crr_full_sessions") or max(sizes)]
        for x, s, label in ((xs[0], empty, "empty table"), (xs[1], full, "full table")):
            twin.errorbar([x], [s.median], yerr=[[s.median - s.low], [s.high - s.median]], fmt="s",
                          color="tab:green", capsize=4)
            twin.annotate(label, (x, s.median), textcoords="offset points", xytext=(6, 6), fontsize=8)
        twin.set_ylabel("new TCP connections, NAT64/routed", color="tab:green")
        twin.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Driver memory, and the connection rate ratio empty and full", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------

def plot(summary: Summary, scaling: Mapping[str, Any], lever_list: Sequence[LeverRow], path: str) -> None:
    """Ratios with their ranges and targets, apply-time scaling, lever effects, into one PNG."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = 3 if lever_list else 2
    height = max(5.2, 0.2 * len(lever_list) + 1.5)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, height), constrained_layout=True)
    ax = axes[0]
    rows = list(summary.rows)
    labels = [f"{r.metric.label.strip()} ({r.metric.unit})" for r in rows]
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        colour = "tab:green" if r.metric.higher_is_better else "tab:purple"
        xerr = [[r.ratio.median - r.ratio.low], [r.ratio.high - r.ratio.median]]
        ax.errorbar(r.ratio.median, y, xerr=xerr, fmt="o", color=colour, capsize=3)
        if r.metric.target is not None:
            ax.plot([r.metric.target], [y], marker="|", markersize=16, color="tab:red")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("NAT64 / routed (median of interleaved rounds, bar = range; red tick = target)")
    ax.set_title("Data path: NAT64 against plain routing\n(green: higher is better, purple: lower is better)",
                 fontsize=10)

    ax = axes[1]
    pools = scaling.get("pools") or []
    if pools:
        n = [p["n"] for p in pools]
        ax.plot(n, [p["cold_s"] * 1e3 for p in pools], "o-", label="cold apply (pools)")
        ax.plot(n, [median(p["resync_s"]) * 1e3 for p in pools], "s-", label="no-op resync (pools)")
        ax.plot(n, [median(p["change_s"]) * 1e3 for p in pools], "^-", label="one pool changed")
    prefixes = scaling.get("prefixes") or []
    if prefixes:
        n = [p["n"] for p in prefixes]
        ax.plot(n, [p["cold_s"] * 1e3 for p in prefixes], "o--", label="cold apply (prefixes)")
        ax.plot(n, [median(p["resync_s"]) * 1e3 for p in prefixes], "s--", label="no-op resync (prefixes)")
    if pools or prefixes:
        lo = min([p["n"] for p in pools] + [p["n"] for p in prefixes])
        base = min([p["cold_s"] for p in pools] + [p["cold_s"] for p in prefixes]) * 1e3
        ax.plot([lo, 1000], [base, base * 1000 / lo], color="grey", linestyle=":",
                label="linear from the smallest")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("pools (solid) or NAT64 /96 prefixes (dashed)")
    ax.set_ylabel("apply time, ms (in the emulated VM)")
    ax.set_title("Control plane: apply time as the state grows", fontsize=10)

    if lever_list:
        ax = axes[2]
        ys = list(range(len(lever_list)))[::-1]
        for y, r in zip(ys, lever_list, strict=True):
            colour = {"better": "tab:green", "worse": "tab:red"}.get(verdict(r), "tab:grey")
            xerr = [[(r.effect.median - r.effect.low) * 100], [(r.effect.high - r.effect.median) * 100]]
            ax.errorbar((r.effect.median - 1) * 100, y, xerr=xerr, fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yticks(ys, [f"{r.lever}: {r.metric.label.strip()}" for r in lever_list], fontsize=7)
        ax.set_xlabel("NAT64 figure with the lever, % change\n(green/red: better/worse in every round)")
        ax.set_title("Levers tried (interleaved with and without)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


DOC = "docs/performance.md"
DOC_BEGIN = "<!-- make bench: generated from docs/bench/*.json, begin -->"
DOC_END = "<!-- make bench: generated, end -->"


def generated_section(result: Mapping[str, Any], frontend: Mapping[str, Any] | None,
                      levers: Mapping[str, Any] | None, png: str = "", busy: Mapping[str, Any] | None = None,
                      busy_png: str = "", previous: Mapping[str, Any] | None = None) -> str:
    """The Markdown that `make bench` writes between the markers of docs/performance.md."""
    summary = summarize(result, frontend)
    before = datapath_rows(previous.get("datapath") or {}) if previous else []
    c = summary.conditions
    kernel = c.get("kernel") or {}
    lines = [f"Run of {c.get('date', '?')}: {c.get('emulation', '')}; kernel {kernel.get('kernel', '?')}, "
             f"Jool {kernel.get('jool', '?')}, Python {c.get('python', '?')}; "
             f"{c.get('rounds')} interleaved rounds of every data path test, {c.get('seconds')} s per "
             f"bulk run; {c.get('reps')} repetitions of each control plane figure; "
             f"{c.get('wall_seconds', '?')} s in all.", ""]
    if c.get("merged_from"):
        lines[0] = lines[0].rstrip(".") + (f"; only the control plane was measured again in this run, "
                                           f"the rest is from the run of {c['merged_from']}.")
    if summary.rows:
        was = f"; \"Previous run\" is the ratio of the run of {previous['conditions'].get('date', '?')}" \
            if before and previous else ""
        lines += ["Data path, NAT64 against plain IPv6 routing (medians over the rounds; the ratio is "
                  f"taken per round, then its median and range{was}):", "",
                  datapath_table(summary.rows, True, before), ""]
    if summary.figures:
        figures = with_previous(summary.figures, previous, frontend)
        was = f" (\"previous run\": the run of {previous['conditions'].get('date', '?')})" \
            if previous and figures != summary.figures else ""
        lines += [f"Control plane and footprint{was}:", "", figures_table(figures, True), ""]
    if result.get("scaling"):
        lines += ["Apply time as the state grows (one apply each; resync and change: median of the "
                  "repetitions):", "", scaling_table(result["scaling"], True), ""]
    lever_list = lever_rows(levers["levers"]) if levers else []
    if lever_list:
        lines += ["Levers (each measured interleaved: routed, NAT64, NAT64 with the lever; the effect is "
                  "per round):", "", levers_table(lever_list, True), ""]
    if result.get("errors"):
        lines += ["Parts that failed in this run:", ""]
        lines += [f"- `{e.splitlines()[0]}`" for e in result["errors"]]
        lines.append("")
    if png:
        lines += [f"![NAT64/routed ratios, apply-time scaling and levers]({png})", ""]
    if busy:
        lines += busy_section(busy, busy_png)
    return "\n".join(lines).rstrip("\n")


def replace_section(doc: str, section: str) -> str:
    """`doc` with the text between the generated-section markers replaced by `section`."""
    start, end = doc.find(DOC_BEGIN), doc.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {DOC_BEGIN!r} and {DOC_END!r} are missing")
    return doc[:start + len(DOC_BEGIN)] + "\n" + section + "\n" + doc[end:]


def _load(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        data: dict[str, Any] = json.load(handle)
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datapath", default=DATAPATH_JSON)
    parser.add_argument("--frontend", default=FRONTEND_JSON)
    parser.add_argument("--levers", default=LEVERS_JSON)
    parser.add_argument("--png", default=PNG)
    parser.add_argument("--previous", default=PREVIOUS_JSON)
    parser.add_argument("--busy", default=BUSY_JSON)
    parser.add_argument("--busy-png", default=BUSY_PNG)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the docs)")
    parser.add_argument("--doc", default=DOC, help="Markdown file whose generated section is rewritten "
                        "('' to leave it alone)")
    args = parser.parse_args(argv)
    result = _load(args.datapath)
    if result is None:
        print(f"{args.datapath} is missing: run the benchmark first (make bench)", file=sys.stderr)
        return 2
    summary = summarize(result, _load(args.frontend))
    levers = _load(args.levers)
    busy = _load(args.busy)
    previous = _load(args.previous)
    lever_list = lever_rows(levers["levers"]) if levers else []
    conditions = summary.conditions
    print(f"Conditions: {conditions.get('emulation', '')}; {conditions.get('rounds')} interleaved rounds, "
          f"{conditions.get('seconds')} s per bulk run; {conditions.get('date', '')}")
    print(render_text(summary, args.markdown))
    if busy:
        print()
        print(busy_table(busy, args.markdown))
        print(figures_table(busy_figures(busy), args.markdown))
    if result.get("scaling"):
        print()
        print(scaling_table(result["scaling"], args.markdown))
    if lever_list:
        print()
        print(levers_table(lever_list, args.markdown))
        exhaustion = levers.get("pool4_exhaustion") if levers else None
        if exhaustion:
            print(f"\npool4 of {exhaustion['transport_addresses']:,} TCP transport addresses: "
                  f"{int(exhaustion['completed']):,} connections completed, "
                  f"{int(exhaustion['failed']):,} failed in {exhaustion['seconds']} s")
    if args.png:
        plot(summary, result.get("scaling") or {}, lever_list, args.png)
        print(f"\nplot: {args.png}")
    if busy and args.busy_png and len(busy_levels(busy)) >= 1:
        plot_busy(busy, args.busy_png)
        print(f"plot: {args.busy_png}")
    if args.doc:
        with open(args.doc) as handle:
            doc = handle.read()
        def rel(path: str) -> str:
            return os.path.relpath(path, os.path.dirname(args.doc) or ".") if path else ""

        busy_png = rel(args.busy_png) if busy and busy_levels(busy) else ""
        section = generated_section(result, _load(args.frontend), levers, rel(args.png), busy, busy_png,
                                    previous)
        with open(args.doc, "w") as handle:
            handle.write(replace_section(doc, section))
        print(f"figures written into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
