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
from dataclasses import dataclass, field
from typing import Any

DATAPATH_JSON = "docs/bench/datapath.json"
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
        figures.append(Figure("InSync -> working data path (cold node)", s.median, "s", "< 2 s", s.high < 2,
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


def datapath_table(rows: Sequence[Row], markdown: bool = False) -> str:
    body = []
    for r in rows:
        target = ""
        if r.metric.target is not None:
            target = ("≥ " if r.metric.higher_is_better else "≤ ") + f"{r.metric.target:g}"
        body.append([r.metric.label, r.metric.unit, _fmt(r.nat64.median), _fmt(r.routed.median),
                     _ratio_text(r.ratio), target, _mark(r.met)])
    return table(["Figure", "Unit", "NAT64", "Routed", "NAT64/routed (range)", "Target", "Met"], body,
                 markdown)


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
                      levers: Mapping[str, Any] | None, png: str = "") -> str:
    """The Markdown that `make bench` writes between the markers of docs/performance.md."""
    summary = summarize(result, frontend)
    c = summary.conditions
    kernel = c.get("kernel") or {}
    lines = [f"Run of {c.get('date', '?')}: {c.get('emulation', '')}; kernel {kernel.get('kernel', '?')}, "
             f"Jool {kernel.get('jool', '?')}, Python {c.get('python', '?')}; "
             f"{c.get('rounds')} interleaved rounds of every data path test, {c.get('seconds')} s per "
             f"bulk run; {c.get('reps')} repetitions of each control plane figure; "
             f"{c.get('wall_seconds', '?')} s in all.", ""]
    if summary.rows:
        lines += ["Data path, NAT64 against plain IPv6 routing (medians over the rounds; the ratio is "
                  "taken per round, then its median and range):", "", datapath_table(summary.rows, True), ""]
    if summary.figures:
        lines += ["Control plane and footprint:", "", figures_table(summary.figures, True), ""]
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
    lever_list = lever_rows(levers["levers"]) if levers else []
    conditions = summary.conditions
    print(f"Conditions: {conditions.get('emulation', '')}; {conditions.get('rounds')} interleaved rounds, "
          f"{conditions.get('seconds')} s per bulk run; {conditions.get('date', '')}")
    print(render_text(summary, args.markdown))
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
    if args.doc:
        with open(args.doc) as handle:
            doc = handle.read()
        png = os.path.relpath(args.png, os.path.dirname(args.doc) or ".") if args.png else ""
        section = generated_section(result, _load(args.frontend), levers, png)
        with open(args.doc, "w") as handle:
            handle.write(replace_section(doc, section))
        print(f"figures written into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
