"""Faults: the driver killed part-way through an apply, Felix gone before
InSync, the Jool module unloaded, kernel state changed by others, and a node
the dataplane cannot be applied to.

What a driver killed after step k of an apply leaves is built exactly, with
the project's own drivers run step by step; then the real driver (started as
Felix starts it) must converge to what a clean apply gives, object for
object, read back with ip, nft, sysctl and the jool tool.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from pyroute2 import IPRoute

from felix_nat64.dataplane.fold import desired_from
from felix_nat64.model.state import DesiredState, Translator
from felix_nat64.wire.framing import HEADER_LEN
from testbed.traffic import tcp_request
from tests.vm.dataplane_fixtures import (
    NSP,
    Node,
    RunningDriver,
    kernel_leftovers,
    metric,
    nat64,
    node_stream,
    scrape,
    start_driver,
    stream_frames,
)
from tests.vm.reliability.conftest import (
    JOOL_INSTANCE,
    SOAK,
    DriverPool,
    clean_kernel,
    jool_cli,
    kernel_state,
    log_events,
    log_time,
    pod,
    quick_state,
    ready_driver,
    record,
    run,
    state_difference,
    status_json,
    wait_for,
)

pytestmark = pytest.mark.reliability

DOC = "198.51.100.10"
RESYNC_SECONDS = 2.0  # node_stream() sets NAT64ResyncInterval=2s
STREAM = node_stream()
DESIRED = desired_from(STREAM, {})
JOOL_NOT_LOADED = "Jool kernel module not loaded: run modprobe jool"


@dataclass(frozen=True)
class Reference:
    """The kernel after a clean apply of STREAM, and how long that took."""

    state: dict[str, Any]  # kernel_state(): read back with ip, nft, sysctl and jool
    quick: dict[str, Any]  # quick_state(): the same objects read in-process, for polling
    apply_seconds: float
    ready_seconds: float


@pytest.fixture(scope="module")
def reference(node: Node) -> Reference:
    """Applies STREAM on a clean kernel and leaves the result in place (the
    tests that need a clean kernel clean it themselves)."""
    clean_kernel()
    began = time.monotonic()
    driver = start_driver(STREAM, node.status_file)
    try:
        status = driver.wait_ready()
        ready = time.monotonic() - began
    finally:
        driver.stop()
    began = time.monotonic()
    state = kernel_state()
    reading = time.monotonic() - began
    assert state["nft"] and len(state["translators"]) == 2, state
    record("faults", "clean_apply", {"apply_seconds": status["last_apply"]["duration_seconds"],
                                     "changes": status["last_apply"]["changes"],
                                     "start_to_ready_seconds": round(ready, 2),
                                     "objects": len(state["objects"]),
                                     "reading_kernel_state_seconds": round(reading, 2)})
    return Reference(state, quick_state(), status["last_apply"]["duration_seconds"], ready)


def assert_converged(reference: Reference, node: Node, what: str) -> None:
    """The kernel is object for object what a clean apply gives, and carries traffic."""
    state = kernel_state()
    assert state == reference.state, f"{what}: kernel differs from a clean apply:\n" + \
        state_difference(state, reference.state)
    assert len(state["fwmark_rules"]) == 1
    assert state["jool_instances"] == [f"{JOOL_INSTANCE} netfilter"] * 2
    assert state["jool_instance_namespaces"] == 2
    result = tcp_request(pod(node), nat64(NSP, DOC), timeout=20)
    assert result.ok, f"{what}: no traffic after convergence: {result.error}"


# ---------------------------------------------------------------------------
# (b) Felix goes away before InSync
# ---------------------------------------------------------------------------





def cut_stream(data: bytes, cut: str) -> bytes:
    """`data` as a Felix that died before InSync left it."""
    parts = stream_frames(data)
    if cut == "after-config":
        return parts[0]
    if cut == "before-insync":
        return b"".join(parts[:-1])
    assert cut == "mid-frame"
    return b"".join(parts[:-2]) + parts[-2][:HEADER_LEN + 3]


def run_until_eof(node: Node, data: bytes) -> tuple[int, RunningDriver]:
    """A driver fed `data`, then EOF; returns its exit code."""
    driver = start_driver(data, node.status_file)
    driver.felix.end_stream()
    code = driver.felix.wait(120)
    if code is None:
        driver.felix.kill()
        raise AssertionError(f"the driver did not exit after EOF:\n{driver.felix.output}")
    return code, driver


EOF_CUTS = ("after-config", "before-insync", "mid-frame") if SOAK else ("before-insync", "mid-frame")


def test_felix_eof_before_insync_leaves_a_converged_kernel_alone(node: Node, reference: Reference) -> None:
    # A whole snapshot that, once in sync, would remove every translator.
    teardown = node_stream(extra={"NAT64Enabled": "false"})
    assert quick_state() == reference.quick, "precondition: the reference kernel is in place"
    for cut in EOF_CUTS:
        code, driver = run_until_eof(node, cut_stream(teardown, cut))
        if cut == "mid-frame":
            # A truncated frame is a broken stream: exit non-zero so Felix restarts us.
            assert code == 1 and "stream ended inside a frame" in driver.felix.output, driver.felix.output
        else:
            assert code == 0, driver.felix.output
        assert quick_state() == reference.quick, f"{cut}: the kernel changed"
        status = driver.status()
        assert status.get("applies", 0) == 0 and not status.get("in_sync"), status
        record("faults.felix_eof_before_insync", f"converged/{cut}", {"exit_code": code, "changed": False})
    state = kernel_state()
    assert state == reference.state, state_difference(state, reference.state)


def test_felix_eof_before_insync_on_a_clean_kernel_creates_nothing(node: Node, drivers: DriverPool) -> None:
    code, driver = run_until_eof(node, cut_stream(STREAM, "before-insync"))
    assert code == 0, driver.felix.output
    assert kernel_leftovers() == []
    record("faults.felix_eof_before_insync", "clean/before-insync", {"exit_code": code, "changed": False})


# ---------------------------------------------------------------------------
# (a) Killed after each step of an apply
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], object]


def _bare_veth(t: Translator) -> None:
    # What a kill right after the link was created leaves: the pair exists,
    # with no alias, no address, down (the same call TranslatorLinks makes).
    with IPRoute() as ipr:
        ipr.link("add", ifname=t.node_link, kind="veth",
                 peer={"ifname": t.ns_link, "net_ns_fd": f"/run/netns/{t.namespace}"})


def apply_steps(desired: DesiredState) -> list[Step]:
    """An apply cut into the steps a kill can fall between, in the driver's
    order: per translator the namespace, the veth pair, the configured link,
    the Jool instance, its pool4 (TCP first, then all), its globals; then the
    node's routes (first one, then all), the fwmark rule and the nftables table."""
    from felix_nat64.drivers.jool.instances import JoolInstances  # noqa: PLC0415
    from felix_nat64.drivers.kernel import KernelDataplane  # noqa: PLC0415
    from felix_nat64.drivers.netns.links import TranslatorLinks  # noqa: PLC0415
    from felix_nat64.drivers.netns.namespaces import create_namespace  # noqa: PLC0415
    from felix_nat64.drivers.nft.ruleset import render  # noqa: PLC0415
    from felix_nat64.drivers.nft.table import NftTable  # noqa: PLC0415
    from felix_nat64.drivers.plan import jool_config, node_routes  # noqa: PLC0415
    from felix_nat64.drivers.routing import NodeRouting, RuleSpec  # noqa: PLC0415

    jool = JoolInstances()
    links, routing, nft = TranslatorLinks(), NodeRouting(), NftTable()
    mtu = KernelDataplane(jool).mtu_for(desired)
    steps: list[Step] = []
    for t in desired.translators:
        config = jool_config(t, desired)
        only = partial(dataclasses.replace, config, globals={})
        steps += [
            Step(f"{t.parent} namespace", partial(create_namespace, t.namespace)),
            Step(f"{t.parent} veth pair", partial(_bare_veth, t)),
            Step(f"{t.parent} link configured", partial(links.ensure, t, mtu)),
            Step(f"{t.parent} Jool instance", partial(jool.ensure, t.namespace, only(pool4=()))),
            Step(f"{t.parent} pool4 TCP", partial(jool.ensure, t.namespace, only(pool4=config.pool4[:1]))),
            Step(f"{t.parent} pool4", partial(jool.ensure, t.namespace, only())),
            Step(f"{t.parent} globals", partial(jool.ensure, t.namespace, config)),
        ]
    routes = node_routes(desired)
    rule = RuleSpec(desired.firewall_mark, desired.routing_table, desired.rule_priority)
    return [
        *steps,
        Step("first node route", partial(routing.apply, None, routes[:1])),
        Step("node routes", partial(routing.apply, None, routes)),
        Step("fwmark rule", partial(routing.apply, rule, routes)),
        Step("nftables table", partial(nft.apply, render(desired))),
    ]


def _step_names() -> list[str]:
    names = []
    for t in DESIRED.translators:
        names += [f"{t.parent} {s}" for s in ("namespace", "veth pair", "link configured", "Jool instance",
                                               "pool4 TCP", "pool4", "globals")]
    return [*names, "first node route", "node routes", "fwmark rule", "nftables table"]


STEP_NAMES = _step_names()
WKP_FIRST, NSP_SECOND = (str(t.parent) for t in DESIRED.translators)
# By default one cut inside each stage (a bare link, a Jool instance without
# pool4, a half-filled pool4 of the second translator, half the node routes);
# FELIX_NAT64_SOAK=1 cuts after every step.
DEFAULT_CUT_NAMES = (f"{WKP_FIRST} veth pair", f"{WKP_FIRST} Jool instance", f"{NSP_SECOND} pool4 TCP",
                     "first node route")
CUTS = list(range(1, len(STEP_NAMES) + 1)) if SOAK else [STEP_NAMES.index(n) + 1 for n in DEFAULT_CUT_NAMES]


@pytest.mark.parametrize("cut", CUTS, ids=[f"after-{STEP_NAMES[k - 1].replace(' ', '-')}" for k in CUTS])
def test_restart_after_a_kill_between_apply_steps_converges(node: Node, drivers: DriverPool,
                                                            reference: Reference, cut: int) -> None:
    steps = apply_steps(DESIRED)
    assert [s.name for s in steps] == STEP_NAMES
    for step in steps[:cut]:
        step.run()
    left = len(kernel_leftovers())
    began = time.monotonic()
    driver = drivers.start(STREAM)
    status = driver.wait_ready()
    took = time.monotonic() - began
    assert_converged(reference, node, f"killed after {STEP_NAMES[cut - 1]}")
    changes = status["last_apply"]["changes"]
    if cut == len(steps):
        assert changes == 0, "a complete kernel state must be adopted without a change"
    else:
        assert changes > 0
    assert status["apply_failures"] == 0, status["last_error"]
    record("faults.kill_between_steps", STEP_NAMES[cut - 1],
           {"objects_left": left, "changes": changes, "start_to_ready_seconds": round(took, 2)})


def test_sigkill_during_a_real_apply_converges(node: Node, drivers: DriverPool, reference: Reference) -> None:
    """Real SIGKILLs while a driver applies: each as soon as the kernel shows
    `target` of the objects a clean apply makes (a translator namespace, the
    second translator's link, the first routes...)."""
    total = len(reference.state["objects"])
    rng = random.Random(6146)
    # The namespaces and links come first, then each translator's Jool set-up
    # (the slow part), then routes, the rule and the table in a few
    # milliseconds: a kill is only sure to land inside the apply while at most
    # half of the objects exist.
    targets = [rng.randint(1, total // 2) for _ in range(20)] if SOAK else [1, 3]
    kills = []
    for target in targets:
        clean_kernel()
        doomed = drivers.start(STREAM)
        wait_for(lambda d=doomed, n=target: len(kernel_leftovers()) >= n or not d.felix.running(),
                 timeout=300, interval=0.02, what=f"{target} objects")
        doomed.felix.kill()
        left = len(kernel_leftovers())
        driver = drivers.start(STREAM)
        status = driver.wait_ready()
        assert_converged(reference, node, f"SIGKILL once {target} objects existed")
        assert status["apply_failures"] == 0, status["last_error"]
        driver.stop()
        kills.append({"kill_at_objects": target, "objects_left": left,
                      "changes_after_restart": status["last_apply"]["changes"]})
    record("faults", "sigkill_mid_apply", kills)
    assert all(k["objects_left"] < total for k in kills), f"a kill came after the apply ended: {kills}"


def _namespace_file_left_by_a_kill(t: Translator) -> str:
    """What a kill inside the namespace creation leaves (the driver's, or
    `ip netns add`'s): /run/netns/NAME created but never bind-mounted, an
    empty regular file."""
    path = f"/run/netns/{t.namespace}"
    os.makedirs("/run/netns", exist_ok=True)
    with open(path, "x"):
        pass
    return path


def test_a_namespace_file_left_by_a_kill_is_replaced_by_a_namespace(node: Node, drivers: DriverPool,
                                                                     reference: Reference) -> None:
    path = _namespace_file_left_by_a_kill(DESIRED.translators[0])
    status = drivers.start(STREAM).wait_ready()
    assert_converged(reference, node, "a namespace file left by a kill")
    assert status["apply_failures"] == 0, status["last_error"]
    assert os.stat(path).st_dev != os.stat("/run/netns").st_dev, "not a namespace mount"


def test_cleanup_removes_a_namespace_file_left_by_a_kill(node: Node, drivers: DriverPool) -> None:
    path = _namespace_file_left_by_a_kill(DESIRED.translators[0])
    done = subprocess.run(["felix-nat64", "cleanup", "--force"], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not os.path.lexists(path)
    assert kernel_leftovers() == []


# ---------------------------------------------------------------------------
# A running driver: (d) drift made by others, (c) the Jool module unloaded,
# (e) a node the dataplane cannot be applied to
# ---------------------------------------------------------------------------


def _nsp() -> Translator:
    return next(t for t in DESIRED.translators if str(t.parent) == NSP)


@dataclass(frozen=True)
class Drift:
    name: str
    make: Callable[[Translator], object]


TABLE = ("inet", "felix-nat64")
DRIFTS = [
    Drift("translator namespace deleted", lambda t: run("ip", "netns", "del", t.namespace)),
    Drift("nftables table flushed", lambda t: run("nft", "flush", "table", *TABLE)),
    Drift("nftables table deleted", lambda t: run("nft", "delete", "table", *TABLE)),
    Drift("prefix removed from the steering set",
          lambda t: run("nft", "delete", "element", *TABLE, "prefixes6", "{", NSP, "}")),
    Drift("prefix route removed",
          lambda t: run("ip", "-6", "route", "del", NSP, "table", str(DESIRED.routing_table))),
    Drift("pool4 return route removed", lambda t: run("ip", "route", "del", str(t.pool4))),
    Drift("fwmark rule removed",
          lambda t: run("ip", "-6", "rule", "del", "priority", str(DESIRED.rule_priority))),
    Drift("Jool instance removed",
          lambda t: jool_cli(t.namespace, "-i", JOOL_INSTANCE, "instance", "remove")),
    Drift("pool4 entry removed", lambda t: jool_cli(t.namespace, "-i", JOOL_INSTANCE, "pool4", "remove",
                                                    "--udp", f"{t.pool4.network_address}/32")),
    Drift("Jool global changed", lambda t: jool_cli(t.namespace, "-i", JOOL_INSTANCE, "global", "update",
                                                    "udp-timeout", "3:00")),
    Drift("translator link down", lambda t: run("ip", "link", "set", t.node_link, "down")),
    Drift("translator link address removed",
          lambda t: run("ip", "addr", "del", str(t.link_node_addr), "dev", t.node_link)),
    Drift("translator link forwarding off",
          lambda t: run("sysctl", "-w", f"net.ipv4.conf.{t.node_link}.forwarding=0")),
]
DRIFT = "repaired drift in kernel state"


def unload_jool(namespaces: list[str]) -> int:
    """Removes our Jool instances and the module; returns the attempts it took
    (the running driver recreates the instances at its next resync)."""
    for attempt in range(1, 51):
        for ns in namespaces:
            jool_cli(ns, "-i", JOOL_INSTANCE, "instance", "remove", check=False)
        done = subprocess.run(["modprobe", "-r", "jool"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and not os.path.exists("/sys/module/jool"):
            return attempt
        time.sleep(0.05)
    raise AssertionError("could not unload the jool module")


def backoff_failures(driver: RunningDriver, since: float) -> list[dict[str, Any]]:
    """The failed applies logged after `since` (wall clock): when, the retry
    delay announced, and the error."""
    return [{"at": round(log_time(f) - since, 3), "retry_in": float(f["retry_in"]), "error": f["error"]}
            for f in log_events(driver.felix.output, "apply failed") if log_time(f) >= since - 0.01]


def check_backoff(failures: list[dict[str, Any]]) -> None:
    assert len(failures) >= 3, failures
    delays = [f["retry_in"] for f in failures]
    assert delays[0] == 0.5, delays
    for previous, current in itertools.pairwise(delays):
        assert current == min(previous * 2, 30.0), delays
    for a, b in itertools.pairwise(failures):
        gap = b["at"] - a["at"]
        # The retry waits the announced delay, then the apply takes its time.
        assert a["retry_in"] - 0.05 <= gap <= a["retry_in"] + 3.0, failures


def not_ready_because(driver: RunningDriver, text: str) -> bool:
    status = driver.status()
    return not status.get("ready") and any(text in r for r in status.get("not_ready_reasons") or [])


@pytest.fixture(scope="class")
def running(node: Node, reference: Reference) -> Iterator[RunningDriver]:
    """One driver for a whole class: each test breaks something under it."""
    with ready_driver(node, STREAM) as driver:
        yield driver


class TestRunningDriver:
    @pytest.mark.parametrize("drift", DRIFTS, ids=[d.name.replace(" ", "-") for d in DRIFTS])
    def test_drift_is_detected_repaired_counted_and_logged(self, running: RunningDriver,
                                                           reference: Reference, drift: Drift) -> None:
        before = running.status()
        logged = len(log_events(running.felix.output, DRIFT))
        made_at = time.time()
        drift.make(_nsp())
        wait_for(lambda: len(log_events(running.felix.output, DRIFT)) > logged, timeout=60, interval=0.05,
                 what=f"repair of '{drift.name}'")
        line = log_events(running.felix.output, DRIFT)[logged]
        repaired_after = log_time(line) - made_at
        wait_for(lambda: quick_state() == reference.quick, timeout=10, what="the reference kernel state")
        after = running.status()
        assert after["drift_repairs"] > before["drift_repairs"]
        assert after["ready"], after["not_ready_reasons"]
        record("faults.drift", drift.name, {
            "repair_seconds": round(repaired_after, 3), "changes": int(line["changes"]),
            "failed_applies": after["apply_failures"] - before["apply_failures"]})
        # Found by the next resync (every 2 s here) and repaired by that apply.
        assert repaired_after <= RESYNC_SECONDS + reference.apply_seconds + 2.0, repaired_after

    def test_jool_module_unloaded_at_runtime_then_reloaded(self, node: Node, running: RunningDriver,
                                                           reference: Reference) -> None:
        namespaces = [t.namespace for t in DESIRED.translators]
        try:
            attempts = unload_jool(namespaces)
            unloaded_at = time.time()
            wait_for(lambda: not_ready_because(running, JOOL_NOT_LOADED), timeout=30,
                     what="readiness to name the missing module")
            code, body = scrape("/readiness")
            assert code == 503 and JOOL_NOT_LOADED in body, body
            wait_for(lambda: running.status().get("consecutive_failures", 0) >= 4, timeout=60,
                     what="four failed applies")
            status = status_json(node)
            assert status["exit_code"] == 4, status  # running, not ready
            assert running.felix.running()
        finally:
            run("modprobe", "jool")
        reloaded_at = time.time()
        status = running.wait_ready(since=reloaded_at)
        recovered = status["last_success_at"] - reloaded_at
        failures = backoff_failures(running, unloaded_at)
        assert all(JOOL_NOT_LOADED in f["error"] for f in failures), failures
        check_backoff(failures)
        # The next retry after the reload succeeds: no later than the last delay announced.
        assert recovered <= failures[-1]["retry_in"] + reference.apply_seconds + 2.0, (recovered, failures)
        wait_for(lambda: quick_state() == reference.quick, timeout=10, what="the reference kernel state")
        assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
        record("faults", "jool_module_unloaded", {
            "unload_attempts": attempts, "failed_applies": len(failures),
            "retry_delays": [f["retry_in"] for f in failures],
            "recovered_seconds_after_reload": round(recovered, 2)})

    def test_ipv6_forwarding_off_is_refused_and_retried_until_fixed(self, node: Node, running: RunningDriver,
                                                                   reference: Reference) -> None:
        path = "/proc/sys/net/ipv6/conf/all/forwarding"
        with open(path) as handle:
            saved = handle.read().strip()
        assert saved == "1"
        try:
            with open(path, "w") as handle:
                handle.write("0")
            off_at = time.time()
            wait_for(lambda: not_ready_because(running, "IPv6 forwarding is off on this node"), timeout=30,
                     what="readiness to name the forwarding problem")
            wait_for(lambda: running.status().get("consecutive_failures", 0) >= 4, timeout=60,
                     what="four failed applies")
            assert running.felix.running()
            # Refusing to apply removes nothing either.
            assert quick_state() == reference.quick
        finally:
            with open(path, "w") as handle:
                handle.write(saved)
        fixed_at = time.time()
        status = running.wait_ready(since=fixed_at)
        recovered = status["last_success_at"] - fixed_at
        failures = backoff_failures(running, off_at)
        assert all("net.ipv6.conf.all.forwarding=0" in f["error"] for f in failures), failures
        check_backoff(failures)
        assert recovered <= failures[-1]["retry_in"] + reference.apply_seconds + 2.0, (recovered, failures)
        assert tcp_request(pod(node), nat64(NSP, DOC), timeout=20).ok
        record("faults", "ipv6_forwarding_off", {
            "failed_applies": len(failures), "retry_delays": [f["retry_in"] for f in failures],
            "recovered_seconds_after_fix": round(recovered, 2)})

    def test_after_all_of_it_the_kernel_is_what_a_clean_apply_gives(self, node: Node, running: RunningDriver,
                                                                     reference: Reference) -> None:
        assert_converged(reference, node, "after every drift, the module reload and forwarding back on")

    def test_repairs_and_failures_are_exported(self, running: RunningDriver) -> None:
        status = running.status()
        _, text = scrape()
        assert status["drift_repairs"] >= len(DRIFTS)
        assert metric(text, "calico_nat64_dataplane_drift_repairs_total") == status["drift_repairs"]
        assert metric(text, "calico_nat64_dataplane_apply_failures_total") == status["apply_failures"] > 0
        human = subprocess.run(["felix-nat64", "status", "--no-kernel", "--status-file", running.status_file],
                               capture_output=True, text=True, check=False, timeout=300).stdout
        assert f"drift repairs {status['drift_repairs']}" in human, human
        record("faults", "counted", {"drift_repairs": status["drift_repairs"],
                                     "apply_failures": status["apply_failures"]})
