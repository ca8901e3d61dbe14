import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from felix_nat64.cli.main import main
from felix_nat64.cli.render import render_stream
from felix_nat64.testing import protowire as pw
from felix_nat64.testing.scenario import ScenarioError, build_scenario
from felix_nat64.testing.streams import FELIX_VERSIONS, StreamBuilder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def render_bytes(data: bytes, hostname: str = "node-1") -> tuple[dict, bool]:  # type: ignore[type-arg]
    return render_stream(io.BytesIO(data), hostname)


@pytest.mark.parametrize("name", ["two-prefixes", "bad-settings"])
def test_bundled_streams_match_their_scenarios(name: str) -> None:
    scenario = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    fresh = build_scenario(scenario)
    assert (EXAMPLES / f"{name}.stream").read_bytes() == fresh, \
        f"stale: run felix-nat64 stream build examples/{name}.yaml -o examples/{name}.stream"


def test_render_two_prefixes_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES / "two-prefixes.stream")]) == 0
    report = json.loads(capsys.readouterr().out)
    stream = report["stream"]
    assert stream["in_sync"] and stream["config_update_seen"] and not stream["framing_error"]
    assert stream["by_payload"]["active_policy_update"] == 20
    assert stream["by_payload"]["ipset_update"] == 10
    assert stream["by_payload"]["workload_endpoint_update"] == 10
    assert report["settings"]["ok"]
    assert report["settings"]["origins"]["NAT64UDPTimeout"]["source"] == "environment variable"
    desired = report["desired"]
    assert [t["parent"] for t in desired["translators"]] == ["64:ff9b::/96", "2001:db8:64::/96"]
    assert desired["sources"] == ["fd00:10:244::/56"]
    assert desired["warnings"] == []
    program = report["program"]
    assert program["routing"]["rule"] == {"fwmark": 4096, "mask": 4096, "table": 6464, "priority": 96,
                                          "family": "inet6"}
    jool = program["translators"][1]["jool"]
    assert jool["pool6"] == "2001:db8:64::/96"
    assert jool["globals"]["udp-timeout"] == 600_000
    assert {e["proto"] for e in jool["pool4"]} == {"tcp", "udp", "icmp"}
    cmds = program["nftables"]["nftables"]
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "felix-nat64"}}}
    # both nodes' addresses are refused behind the network-specific prefix
    refused = {r["network"] for r in desired["refused"]}
    assert "2001:db8:64::c000:201/128" in refused and "2001:db8:64::c000:202/128" in refused


def test_render_bad_settings_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES / "bad-settings.stream")]) == 3
    report = json.loads(capsys.readouterr().out)
    errors = {e["key"]: e for e in report["settings"]["errors"]}
    assert set(errors) == {"nat64prefix", "NAT64Prefixes", "NAT64UDPTimeout"}
    assert "did you mean NAT64Prefixes" in errors["nat64prefix"]["reason"]
    assert report["desired"] is None
    assert any("untouched" in n for n in report["notes"])


@pytest.mark.parametrize("version", FELIX_VERSIONS)
def test_every_felix_version_renders_the_same_state(version: str) -> None:
    def stream(v: str) -> bytes:
        b = StreamBuilder(v).env_config(NAT64Prefixes="2001:db8:64::/96", FelixHostname="node-1")
        b.host("node-1", "192.0.2.1/24", "2001:db8:1::1/64").host("node-2", "192.0.2.2/24")
        b.pool("fd00:10:244::/56", masquerade=True).pool("2001:db8:64::/96")
        b.policy("default", "p").ipset("s", ["10.0.0.1/32"]).in_sync()
        return b.data()

    reference, ok_ref = render_bytes(stream("master"))
    report, ok = render_bytes(stream(version))
    assert ok and ok_ref
    assert report["desired"] == reference["desired"]
    assert report["hosts"] == reference["hosts"]


def test_host_removal_and_ipv6_only_removal() -> None:
    b = StreamBuilder("v3.29").env_config(NAT64Prefixes="2001:db8:64::/96")
    b.host("node-2", "192.0.2.2/24", "2001:db8:1::2/64").in_sync().remove_host("node-2")
    report, _ = render_bytes(b.data())
    assert report["hosts"] == []


def test_truncated_stream_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = StreamBuilder().env_config(NAT64Prefixes="64:ff9b::/96").in_sync().data()
    path = tmp_path / "cut.stream"
    path.write_bytes(data[:-1])
    assert main(["render", str(path)]) == 3
    report = json.loads(capsys.readouterr().out)
    assert "stream ended inside a frame" in report["stream"]["framing_error"]


def test_undecodable_used_payload_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    b = StreamBuilder().env_config(NAT64Prefixes="64:ff9b::/96")
    b.raw_frame(pw.length_delimited(16, b"\x12\x50zz")).in_sync()
    path = tmp_path / "bad.stream"
    b.write(str(path))
    assert main(["render", str(path)]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["stream"]["undecodable"] and "ipam_pool_update" in report["stream"]["undecodable"][0]


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "/nonexistent/stream"]) == 1
    assert "cannot read stream /nonexistent/stream" in capsys.readouterr().err


def test_render_needs_neither_root_nor_kernel_libraries() -> None:
    code = (
        "import sys; sys.modules['nftables'] = None; sys.modules['pyroute2'] = None\n"
        "from felix_nat64.cli.main import main\n"
        f"sys.exit(main(['render', '--section', 'desired', {str(EXAMPLES / 'two-prefixes.stream')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["translators"]


def test_stream_dump_and_build_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("config: {environment variable: {nat64prefixes: '64:ff9b::/96'}}\n"
                        "pools: [{cidr: 'fd00::/64'}]\nskipped: {policies: 2}\n")
    out = tmp_path / "s.stream"
    assert main(["stream", "build", str(scenario), "-o", str(out)]) == 0
    assert main(["stream", "dump", "--all", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["payload"] for x in lines] == ["config_update", "active_policy_update", "active_policy_update",
                                             "ipam_pool_update", "in_sync"]
    assert lines[0]["message"]["config_update"]["config"] == {"nat64prefixes": "64:ff9b::/96"}


@pytest.mark.parametrize("scenario,message", [
    ([], "mapping at the top level"),
    ({"bogus": 1}, "unknown keys"),
    ({"felix_version": "v2"}, "felix_version"),
    ({"pools": [{"masquerade": True}]}, "cidr"),
    ({"after_sync": [{"explode": 1}]}, "after_sync step"),
    ({"skipped": {"routes": 1}}, "unknown kind"),
    ({"config": {"nowhere": {"a": "b"}}}, "unknown Felix config source"),
])
def test_bad_scenarios(scenario: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        build_scenario(scenario)


def test_bpf_dataplane_renders_nothing_and_says_why(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    # As the operator sets it for linuxDataplane: BPF: in FelixConfiguration `default`.
    b = StreamBuilder().config({"datastore (global)": {"BPFEnabled": "true"},
                                "environment variable": {"nat64prefixes": "64:ff9b::/96"}})
    path = tmp_path / "bpf.stream"
    path.write_bytes(b.pool("fd00::/64").in_sync().data())
    assert main(["render", str(path)]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["ok"] is True
    assert report["desired"] is None and report["program"] is None
    assert "BPFEnabled=true" in report["desired_error"]
