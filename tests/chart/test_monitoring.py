"""The chart's alerts and Grafana dashboard, and every metric name in the docs,
checked against what the exporter really exports.

The exported names come from running the real collector
(`felix_nat64.observe.metrics.NAT64Collector`) on a synthetic sample: a driver
in sync with applied settings, every nftables counter, one translator with
sessions in every protocol and every Jool stat felix-nat64 decodes. Rename a
metric, a label or a counter in the code and these tests fail.

PromQL is checked by Prometheus' own tool: `promtool check rules` parses the
rendered PrometheusRule, the dashboard's queries and the docs' ```promql
blocks; `promtool test rules` runs the alerts' unit tests
(tests/chart/promtool/alerts.test.yaml) and evaluates every dashboard query on
series shaped like the exporter's output. promtool comes from Debian's
`prometheus` package (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from felix_nat64.drivers.jool.constants import stat_names
from felix_nat64.drivers.nft.ruleset import COUNTERS
from felix_nat64.model.protocol import PROTOCOLS, Protocol
from felix_nat64.observe.census import OTHER, UNKNOWN, Census, TranslatorCensus
from felix_nat64.observe.kernel_stats import KernelStats, TranslatorStats
from felix_nat64.observe.metrics import ApplyTimes, NAT64Collector, registry_for
from tests.chart.test_chart import render
from tests.unit.test_observe import board_in_sync

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "felix-nat64"
DASHBOARD = CHART / "dashboards" / "felix-nat64.json"
ALERT_TESTS = Path(__file__).parent / "promtool" / "alerts.test.yaml"
# Where metric names may appear: what operators read and what the chart ships.
NAMED_IN = (REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
            *sorted((REPO / "docs" / "diagrams").glob("*.dot")),
            *sorted(p for p in CHART.rglob("*") if p.is_file()), *sorted((REPO / "deploy").glob("*.yaml")),
            ALERT_TESTS)
METRIC = re.compile(r"\bcalico_nat64_[a-z0-9_]*[a-z0-9]\b")
JSTAT = re.compile(r"\bJSTAT(?:64|46)?_[A-Z0-9_]*[A-Z0-9]\b")
MATCHER = re.compile(r"\b([a-z_]+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
# Jool 4.1.9 is the oldest release felix-nat64 supports; later 4.1.x renamed
# nothing but added session-synchronization counters.
JOOL_STATS = frozenset(name for revision in range(9, 16) for name in stat_names(revision))
# Labels the chart's ServiceMonitor adds to every series (job is the Service).
TARGET = {"job": "felix-nat64-metrics", "instance": "192.0.2.11:9096", "node": "node-1"}
GRAFANA_VARIABLES = {"$node": ".*", "$__rate_interval": "5m", "$__range": "1h"}


def promtool(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        raise RuntimeError("promtool is not installed: run scripts/install-system-deps.sh "
                           "(Debian's prometheus package ships it)")
    return subprocess.run([tool, *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False)


# -- what the exporter exports -------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    kind: str  # the family's type: counter, gauge, histogram, ...


def synthetic_kernel() -> KernelStats:
    jool = {name: index + 1 for index, name in enumerate(stat_names(9))}
    translator = TranslatorStats.from_counters(
        "felix-nat64-49f170ae", "64:ff9b::/96",
        {Protocol.TCP: 8 * 64512, Protocol.UDP: 8 * 64512, Protocol.ICMP: 8 * 65536}, jool)
    nft = {name: (index + 1, 100 * (index + 1)) for index, name in enumerate(COUNTERS)}
    return KernelStats(at=1_700_000_000.0, nft=nft, translators=(translator,))


@functools.cache
def exposition() -> str:
    """/metrics as the driver serves it, for the synthetic sample."""
    board = board_in_sync()
    board.update(endpoints=3, census=Census(
        1_700_000_000.0, 0.5, (TranslatorCensus("felix-nat64-49f170ae", "64:ff9b::/96",
                                                {p: 10 + i for i, p in enumerate(PROTOCOLS)},
                                                {p: 5 + i for i, p in enumerate(PROTOCOLS)}),),
        (("default", 20), (OTHER, 2), (UNKNOWN, 1))))
    board.stream.by_payload.update({"config_update": 1, "ipam_pool_update": 2, "in_sync": 1})
    board.stream.bytes = 4096
    times = ApplyTimes()
    for seconds in (0.004, 0.03, 0.2, 1.5):
        times.observe(seconds)
    kernel = synthetic_kernel()
    return generate_latest(registry_for(NAT64Collector(board, lambda: kernel, times, "node-1"))).decode()


@functools.cache
def exported() -> tuple[Sample, ...]:
    return tuple(Sample(s.name, tuple(sorted(s.labels.items())), s.value, family.type)
                 for family in text_string_to_metric_families(exposition()) for s in family.samples)


def exported_names() -> set[str]:
    """What a query can name: every sample name, and a histogram's own name."""
    histograms = {s.name.removesuffix("_bucket") for s in exported() if s.kind == "histogram"
                  and s.name.endswith("_bucket")}
    return {s.name for s in exported()} | histograms


def exported_label_values(label: str) -> set[str]:
    values = {value for s in exported() for key, value in s.labels if key == label}
    return values | JOOL_STATS if label == "stat" else values


def test_the_synthetic_sample_covers_every_family() -> None:
    # Each family with at least one series, so a missing one cannot hide.
    families = {s.name.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum")
                .removesuffix("_count") for s in exported()}
    assert len(families) >= 25, sorted(families)
    assert {"calico_nat64_dataplane_last_success_timestamp_seconds", "calico_nat64_jool_stats",
            "calico_nat64_felix_messages"} <= families
    assert exported_label_values("rule") == set(COUNTERS)
    assert exported_label_values("protocol") == set(PROTOCOLS)


def test_exported_metrics_pass_promtool_lint(tmp_path: Path) -> None:
    """promtool's naming and help checks (units, _total on counters, ...)."""
    done = promtool("check", "metrics", cwd=tmp_path, stdin=exposition())
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        done.stdout + done.stderr


# -- names in docs and chart ------------------------------------------------------


def occurrences(pattern: re.Pattern[str]) -> Iterator[tuple[str, int, str]]:
    for path in NAMED_IN:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for found in pattern.finditer(line):
                yield f"{path.relative_to(REPO)}:{number}", number, found.group(0)


def test_every_metric_named_in_docs_and_chart_is_exported() -> None:
    names = exported_names()
    seen = list(occurrences(METRIC))
    assert len(seen) > 50, "the scan found too few metric names to be looking at the right files"
    unknown = [f"{where}: {name}" for where, _, name in seen if name not in names]
    assert not unknown, "metric names the exporter does not have (exported: " \
                        f"{sorted(names)}):\n" + "\n".join(unknown)


def test_every_jool_stat_named_in_docs_and_chart_exists() -> None:
    unknown = [f"{where}: {name}" for where, _, name in occurrences(JSTAT) if name not in JOOL_STATS]
    assert not unknown, "Jool stat names felix-nat64 does not decode:\n" + "\n".join(unknown)


def test_follow_the_packet_shows_every_nftables_counter_and_no_other() -> None:
    source = (REPO / "docs" / "diagrams" / "packet-counters.dot").read_text()
    assert set(re.findall(r'rule=\\"(\w+)\\"', source)) == set(COUNTERS)


# -- PromQL found in the chart and the docs ------------------------------------------


def rendered_rules(**rule_values: Any) -> dict[str, Any]:
    values = {"metrics": {"host": "0.0.0.0", "serviceMonitor": {"enabled": True},
                          "prometheusRule": {"enabled": True, **rule_values}}}
    (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) with Grafana's variables replaced by PromQL."""
    found = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {target['expr']}"
            found.append((panel["title"], expr))
    return found


def docs_queries() -> list[tuple[str, str]]:
    """Every query in a ```promql block of the docs (one per line, # comments)."""
    found = []
    for path in sorted((REPO / "docs").rglob("*.md")):
        for block in re.findall(r"^```promql\n(.*?)^```", path.read_text(), re.S | re.M):
            for line in block.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((str(path.relative_to(REPO)), line.strip()))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    return [(r["alert"], str(r["expr"])) for g in rendered_rules()["groups"] for r in g["rules"]]


def check_as_rules(queries: list[tuple[str, str]], tmp_path: Path) -> None:
    rules = [{"record": f"query:{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    done = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_label_values_in_queries_exist() -> None:
    """stat, rule and protocol values in every query name something the exporter emits."""
    checked = 0
    for where, expr in [*alert_exprs(), *dashboard_queries(), *docs_queries()]:
        for label, _, value in MATCHER.findall(expr):
            if label not in ("stat", "rule", "protocol"):
                continue
            known = exported_label_values(label)
            for alternative in value.split("|"):
                checked += 1
                assert alternative in known, f"{where}: {label}={alternative!r} is never exported ({expr})"
    assert checked >= 20


def test_docs_queries_parse(tmp_path: Path) -> None:
    queries = docs_queries()
    assert len(queries) >= 8, queries
    check_as_rules(queries, tmp_path)


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "felix-nat64" and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    # The node variable lists the label the chart's ServiceMonitor adds.
    query = variables["node"]["query"]["query"]
    metric = re.fullmatch(r"label_values\((\w+), node\)", query)
    assert metric is not None and metric.group(1) in exported_names()
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    check_as_rules(dashboard_queries(), tmp_path)


def series(sample: Sample) -> dict[str, str]:
    labels = ", ".join(f'{k}="{v}"' for k, v in sorted({**dict(sample.labels), **TARGET}.items()))
    cumulative = sample.kind in ("counter", "histogram")
    step = sample.value + 1
    values = f"{sample.value}+{step}x60" if cumulative else f"{sample.value}x60"
    return {"series": f"{sample.name}{{{labels}}}", "values": values}


def test_every_dashboard_query_returns_data_from_the_exported_series(tmp_path: Path) -> None:
    """Evaluated by promtool on an hour of the exporter's series: a query that
    names a metric, label or value the exporter lacks comes back empty."""
    tests = [{"expr": f"count({expr}) > bool 0", "eval_time": "60m",
              "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in dashboard_queries()]
    spec = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [series(s) for s in exported()],
                       "promql_expr_test": tests}]}
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = promtool("test", "rules", "dashboard.test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the PrometheusRule -----------------------------------------------------------------


def write_rules(tmp_path: Path, spec: dict[str, Any]) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    write_rules(tmp_path, rendered_rules())
    done = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    write_rules(tmp_path, rendered_rules())
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet() -> None:
    alerts = {name for name, _ in alert_exprs()}
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {t["alertname"] for c in cases for t in c["alert_rule_test"] if t["exp_alerts"]}
    assert firing == alerts
    for case in cases:
        names = {str(s["series"]).split("{")[0] for s in case["input_series"]}
        assert names <= exported_names() | {"up"}, names


def test_thresholds_come_from_the_values(tmp_path: Path) -> None:
    # With a higher threshold the 90% pool4 case of the unit tests no longer fires.
    write_rules(tmp_path, rendered_rules(pool4UtilisationThreshold=0.95))
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "FelixNAT64Pool4UtilisationHigh" in done.stdout + done.stderr
    exprs = dict(alert_exprs())
    assert exprs["FelixNAT64Pool4UtilisationHigh"].endswith("> 0.8")
    spec = rendered_rules(refusedPacketsPerSecond=20, additionalRuleLabels={"team": "network"})
    rules = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert rules["FelixNAT64RefusedDestinations"]["expr"].endswith("> 20")
    assert all(r["labels"]["team"] == "network" and r["labels"]["severity"] for r in rules.values())


def test_the_scrape_alert_follows_the_service_monitor() -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "FelixNAT64MetricsDown" not in names and "FelixNAT64NotReady" in names
    objects = render({"metrics": {"host": "0.0.0.0", "serviceMonitor": {"enabled": True}}})
    service = next(o for o in objects if o["kind"] == "Service")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    # The alert's job label and the node label in every query come from here.
    assert service["metadata"]["name"] == TARGET["job"]
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in relabel


@pytest.mark.parametrize("values", [
    {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
     "cleanupOnly": True},
    {},
])
def test_monitoring_objects_are_off_by_default_and_in_cleanup_mode(values: dict[str, Any]) -> None:
    kinds = {o["kind"] for o in render(values)}
    assert not kinds & {"PrometheusRule", "ConfigMap"}


def test_dashboard_config_map_carries_the_dashboard() -> None:
    values = {"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                               "annotations": {"grafana_folder": "NAT64"}}}}
    (config_map,) = [o for o in render(values) if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "NAT64"}
    assert json.loads(config_map["data"]["felix-nat64.json"]) == dashboard()
