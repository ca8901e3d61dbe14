"""The benchmark's statistics and tables (benchmarks/report.py)."""

from __future__ import annotations

import math

import pytest

from benchmarks import report
from benchmarks.report import Spread


def test_median_odd_even_and_empty() -> None:
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(report.median([]))


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50.0
    assert report.percentile(values, 99) == 99.0
    assert report.percentile(values, 100) == 100.0
    assert report.percentile(values, 0) == 1.0
    assert report.percentile([7.0], 99) == 7.0
    assert math.isnan(report.percentile([], 50))
    with pytest.raises(ValueError):
        report.percentile(values, 101)


def test_ratios_pair_rounds_and_skip_zero_denominators() -> None:
    assert report.paired_ratios([8.0, 9.0, 5.0], [10.0, 10.0, 0.0]) == [0.8, 0.9]
    with pytest.raises(ValueError):
        report.paired_ratios([1.0], [1.0, 2.0])


def test_spread() -> None:
    s = Spread.of([0.9, 0.7, 0.8])
    assert (s.median, s.low, s.high, s.n) == (0.8, 0.7, 0.9, 3)
    assert Spread.of([]).n == 0


def test_growth_exponent() -> None:
    sizes = [1.0, 10.0, 100.0, 1000.0]
    assert report.growth_exponent(sizes, [2.0 * n for n in sizes]) == pytest.approx(1.0)
    assert report.growth_exponent(sizes, [n * n for n in sizes]) == pytest.approx(2.0)
    assert report.growth_exponent(sizes, [5.0] * 4) == pytest.approx(0.0)
    assert math.isnan(report.growth_exponent([10.0], [1.0]))


def runs(key: str, *values: float) -> list[dict[str, float]]:
    return [{key: v} for v in values]


def test_rows_use_per_round_ratios_and_targets() -> None:
    datapath = {
        "tcp_1": {"nat64": runs("gbit_s", 0.8, 1.8), "routed": runs("gbit_s", 1.0, 2.0)},
        "udp_rr": {"nat64": [{"p50_ms": 0.2, "p99_ms": 1.2}, {"p50_ms": 0.2, "p99_ms": 1.5}],
                   "routed": [{"p50_ms": 0.1, "p99_ms": 1.0}, {"p50_ms": 0.1, "p99_ms": 1.0}]},
    }
    rows = {(r.metric.test, r.metric.key): r for r in report.datapath_rows(datapath)}
    tcp = rows[("tcp_1", "gbit_s")]
    # Medians of the values would give 1.3/1.5 = 0.87; the rounds say 0.8 and 0.9.
    assert tcp.ratio.median == pytest.approx(0.85)
    assert (tcp.ratio.low, tcp.ratio.high) == (pytest.approx(0.8), pytest.approx(0.9))
    assert tcp.met is True
    p99 = rows[("udp_rr", "p99_ms")]
    assert p99.ratio.median == pytest.approx(1.35)
    assert p99.met is False  # lower is better: 1.35 > 1.3
    assert rows[("udp_rr", "p50_ms")].met is None  # no target
    assert ("crr", "conn_s") not in rows  # not measured: no row


def test_lever_rows_compare_with_and_without() -> None:
    levers = {"flowtable": {"results": {"tcp_1": {
        "routed": runs("gbit_s", 2.0, 2.0),
        "nat64": runs("gbit_s", 1.4, 1.6),
        "nat64+lever": runs("gbit_s", 1.68, 1.76),
    }}}}
    (row,) = report.lever_rows(levers)
    assert row.without.median == pytest.approx(0.75)
    assert row.with_lever.median == pytest.approx(0.86)
    assert row.effect.low == pytest.approx(1.1)
    assert row.effect.high == pytest.approx(1.2)
    assert "+15%" in report.levers_table([row])
    assert report.verdict(row) == "better"  # both rounds gained


def test_lever_verdict_follows_the_direction_of_the_metric() -> None:
    def row(test: str, keys: tuple[str, ...], key: str, on: list[float]) -> report.LeverRow:
        def runs_of(values: list[float]) -> list[dict[str, float]]:
            return [dict.fromkeys(keys, v) for v in values]

        ones = [1.0] * len(on)
        levers = {"l": {"results": {test: {"routed": runs_of(ones), "nat64": runs_of(ones),
                                           "nat64+lever": runs_of(on)}}}}
        return next(r for r in report.lever_rows(levers) if r.metric.key == key)

    assert report.verdict(row("tcp_1", ("gbit_s",), "gbit_s", [0.9, 0.8])) == "worse"
    assert report.verdict(row("tcp_1", ("gbit_s",), "gbit_s", [0.9, 1.2])) == "unclear"
    # Lower latency is better.
    assert report.verdict(row("udp_rr", ("p50_ms", "p99_ms"), "p99_ms", [0.9, 0.8])) == "better"


def test_tables_render_text_and_markdown() -> None:
    datapath = {"crr": {"nat64": [{"conn_s": 700.0, "p50_ms": 1.0, "p99_ms": 3.0}],
                        "routed": [{"conn_s": 1000.0, "p50_ms": 0.8, "p99_ms": 2.0}]}}
    summary = report.summarize({"datapath": datapath})
    text = report.render_text(summary)
    assert "New TCP connections" in text
    assert "0.70 (0.70-0.70)" in text
    assert "yes" in text
    markdown = report.render_text(summary, markdown=True).splitlines()
    assert markdown[0].startswith("| Figure | Unit | NAT64 | Routed |")
    assert markdown[1] == "|---|---|---|---|---|---|---|"
    assert all(line.count("|") == 8 for line in markdown[:5])


def test_control_figures_and_targets() -> None:
    result = {
        "control": {
            "insync_to_working": [{"to_working_s": 9.0, "first_after_boot": 1.0}, {"to_working_s": 1.2},
                                  {"to_working_s": 1.5}, {"to_working_s": 2.4}],
            "settings_change": [{"to_kernel_s": 0.3}, {"to_kernel_s": 0.4}],
            "idle_rss": [{"VmRSS": 40.0}],
            "snapshot": {"rss_mb": 60.0, "peak_rss_mb": 70.0, "to_ready_s": 9.0, "frames": 100000,
                         "bytes": 40_000_000},
        },
        "scaling": {"pools": [{"n": n, "calc_s": 0.0, "cold_s": 1.0, "resync_s": [0.1 + n / 1e4],
                               "change_s": [0.2 + n / 1e4]} for n in (1, 10, 100, 1000)]},
    }
    figures = {f.label: f for f in report.control_figures(result, {"median_messages_per_second": 500_000})}
    assert figures["InSync -> working data path (cold node), p50"].value == 1.5
    insync = figures["InSync -> working data path (cold node), p95"]
    assert insync.value == 2.4  # nearest rank of three runs: the slowest
    assert insync.met is False
    assert insync.detail == "range 1.20-2.40 s, n=3"  # the run right after boot is shown apart
    assert figures["InSync -> working, first time after the VM boots"].value == 9.0
    assert figures["Settings change on the live stream -> in the kernel"].met is True
    assert figures["Driver RSS after a 100k-message snapshot"].met is True
    pools = figures["Apply after a pool change, 1000 pools"]
    assert pools.met is True
    assert "growth exponent" in pools.detail
    assert figures["Front end: messages decoded and folded per second"].met is True


def test_number_formatting() -> None:
    assert report._fmt(1234.5) == "1,234"
    assert report._fmt(0.01234) == "0.0123"
    assert report._fmt(math.nan) == "-"
    assert report._fmt(0) == "0"


def test_generated_section_replaces_only_the_marked_text() -> None:
    result = {"conditions": {"date": "2026-01-01 00:00", "rounds": 3, "seconds": 4, "reps": 2,
                             "kernel": {"kernel": "6.1.0", "jool": "4.1.8"}},
              "datapath": {"crr": {"nat64": [{"conn_s": 700.0, "p50_ms": 1.0, "p99_ms": 3.0}],
                                   "routed": [{"conn_s": 1000.0, "p50_ms": 0.8, "p99_ms": 2.0}]}},
              "errors": ["levers: RuntimeError('x')\nmore detail"]}
    section = report.generated_section(result, None, None, "bench/datapath.png")
    assert "kernel 6.1.0, Jool 4.1.8" in section
    assert "| conn/s | 700 | 1,000 | 0.70 (0.70-0.70) |" in section
    assert "- `levers: RuntimeError('x')`" in section  # first line of an error only
    assert section.endswith("![NAT64/routed ratios, apply-time scaling and levers](bench/datapath.png)")
    doc = f"# Title\n\nbefore\n{report.DOC_BEGIN}\nold figures\n{report.DOC_END}\nafter\n"
    new = report.replace_section(doc, section)
    assert new.startswith(f"# Title\n\nbefore\n{report.DOC_BEGIN}\n")
    assert new.endswith(f"{report.DOC_END}\nafter\n")
    assert "old figures" not in new
    assert report.replace_section(new, section) == new  # rewriting is stable
    with pytest.raises(ValueError):
        report.replace_section("# no markers\n", section)


def level(sessions: int, sample: float, status: float, rss: float, **more: object) -> dict[str, object]:
    return {"target": sessions, "sessions": sessions, "sample_s": [sample, sample * 1.1, sample * 0.9],
            "status_collect_s": [status] * 3, "rss_mb": {"VmRSS": rss, "VmHWM": rss + 1}, **more}


def test_busy_node_verdicts() -> None:
    crr = {"nat64": runs("conn_s", 400.0, 420.0), "routed": runs("conn_s", 1000.0, 1000.0)}
    busy = {"levels": [level(0, 0.30, 0.5, 40.0), level(1000, 0.30, 0.5, 41.0),
                       level(100_000, 0.32, 1.5, 79.5)],
            "crr_empty": crr, "crr_full": {"nat64": runs("conn_s", 300.0, 320.0), "routed": crr["routed"]},
            "crr_full_sessions": 102_345}
    figures = {f.label.split(" at ")[0]: f for f in report.busy_figures(busy)}
    sample = figures["One metrics sample (stats-poller)"]
    assert sample.met is True and sample.value == pytest.approx(0.32 / 0.30)
    assert figures["status (collection)"].met is False  # 3x: not the same within noise
    assert figures["Driver RSS, busiest table"].met is False  # the peak, 80.5 MB, counts
    assert figures["New TCP connections, NAT64/routed, empty table"].value == pytest.approx(0.41)
    full = figures["New TCP connections, NAT64/routed, 102,345 sessions"]
    assert full.value == pytest.approx(0.31)
    table = report.busy_table(busy, markdown=True)
    assert "| 100,000 sessions |" in table.splitlines()[0] and "One metrics sample" in table


def test_previous_run_ratios_sit_beside_the_new_ones() -> None:
    now = report.datapath_rows({"tcp_1": {"nat64": runs("gbit_s", 0.8), "routed": runs("gbit_s", 1.0)}})
    before = report.datapath_rows({"tcp_1": {"nat64": runs("gbit_s", 0.7), "routed": runs("gbit_s", 1.0)}})
    text = report.datapath_table(now, True, before)
    assert "| Previous run |" in text.splitlines()[0]
    assert "| 0.80 (0.80-0.80) | 0.70 (0.70-0.70) |" in text


def test_control_figures_carry_the_previous_runs_value() -> None:
    def result(*insync: float) -> dict[str, object]:
        return {"conditions": {"date": "then"},
                "control": {"insync_to_working": [{"to_working_s": s} for s in insync]}}

    now = report.control_figures(result(1.0, 1.1, 1.2), None)
    shown = {f.label: f for f in report.with_previous(now, result(1.6, 1.8, 2.1))}
    p95 = shown["InSync -> working data path (cold node), p95"]
    assert p95.value == 1.2 and p95.detail.endswith("previous run 2.10 s")
    assert report.with_previous(now, None) == now
    assert report.with_previous(now, {"conditions": {}, "datapath": {}}) == now
