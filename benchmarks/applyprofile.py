"""Where a cold apply spends its time: wall time per step of the kernel dataplane.

Run as root where Jool is loaded (the test VM):

    .venv/bin/python -m testbed.vm .venv/bin/python -m benchmarks.applyprofile --prefixes 16

It removes every felix-nat64 object, then applies a desired state with N
prefixes (a cold apply) and a no-op resync of it, `--reps` times, with a
timer around each step of the dataplane (namespace creation, netlink
sockets, link and address changes, sysctls, ethtool, the Jool requests,
routing, nftables, discovery). Times are inclusive (a step's time contains
the steps it calls) and summed over the threads that ran them; the table
gives calls and total seconds per step, slowest first, for each kind of apply.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.datapath import cleanup_kernel, desired_for
from testbed.netns_exec import write_sysctls

WIDE_POOL4 = {"NAT64Pool4CIDR": "169.254.64.0/22"}  # 64 blocks: room for 16 translators


class Timers:
    """Calls and seconds per label, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self.calls[label] += 1
                    self.seconds[label] += elapsed
        return timed

    def take(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out = {k: {"calls": self.calls[k], "seconds": round(self.seconds[k], 4)} for k in self.seconds}
            self.calls.clear()
            self.seconds.clear()
        return out


@contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    """Replaces each step with a timed one for the duration."""
    from felix_nat64.drivers import discovery  # noqa: PLC0415
    from felix_nat64.drivers.jool import client, instances, worker  # noqa: PLC0415
    from felix_nat64.drivers.netns import executor, links  # noqa: PLC0415
    from felix_nat64.drivers.nft import table  # noqa: PLC0415
    from felix_nat64.drivers.routing import NodeRouting  # noqa: PLC0415

    targets: list[tuple[Any, str, str]] = [
        (links, "create_namespace", "netns: create namespace"),
        (links, "namespace_exists", "netns: namespace exists?"),
        (links, "IPRoute", "netns: open IPRoute (node and inner)"),
        (links, "_offloads_off", "netns: ethtool offloads"),
        (links, "write_sysctl", "netns: sysctl"),
        (links.TranslatorLinks, "ensure", "links: ensure (whole)"),
        (links.TranslatorLinks, "_pair", "links: veth pair"),
        (links.TranslatorLinks, "_converge_link", "links: link mtu/alias/up"),
        (links.TranslatorLinks, "_converge_inner", "links: inner side (link, lo, addrs, routes)"),
        (links.TranslatorLinks, "_converge_addrs", "links: addresses"),
        (links.TranslatorLinks, "_converge_routes", "links: routes in namespace"),
        (links.TranslatorLinks, "_node_side_settings", "links: node-side sysctl+offloads"),
        (links.TranslatorLinks, "_inner_settings", "links: inner sysctls+offloads"),
        (executor.NamespaceExecutor, "__init__", "executor: start thread in namespace"),
        (executor.NamespaceExecutor, "close", "executor: close"),
        (instances.JoolInstances, "ensure", "jool: ensure (whole)"),
        (client.JoolClient, "open", "jool: open client"),
        (client, "module_version", "jool: read module version"),
        (worker.JoolWorker, "__init__", "jool: worker start"),
        (worker.JoolWorker, "close", "jool: worker close"),
        (worker.JoolWorker, "exchange", "jool: request round trip"),
        (client.JoolClient, "instance_exists", "jool: instance exists?"),
        (client.JoolClient, "instance_add", "jool: instance add"),
        (client.JoolClient, "pool4_list", "jool: pool4 list"),
        (client.JoolClient, "pool4_add", "jool: pool4 add"),
        (client.JoolClient, "global_list", "jool: global list"),
        (client.JoolClient, "global_update", "jool: global update"),
        (NodeRouting, "apply", "node routing"),
        (table.NftTable, "apply", "nftables table"),
        (links, "forwarding_problems", "forwarding check"),
        (discovery, "translators", "discovery: translators"),
    ]
    saved = []
    for owner, name, label in targets:
        if not hasattr(owner, name):
            continue
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(original, classmethod):
            wrapped: Any = classmethod(timers.wrap(label, original.__func__))
        elif isinstance(original, staticmethod):
            wrapped = staticmethod(timers.wrap(label, original.__func__))
        else:
            wrapped = timers.wrap(label, original)
        saved.append((owner, name, original))
        setattr(owner, name, wrapped)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def profile(prefixes: int, reps: int, parallelism: int) -> dict[str, Any]:
    from felix_nat64.drivers import discovery  # noqa: PLC0415
    from felix_nat64.drivers.jool.instances import JoolInstances  # noqa: PLC0415
    from felix_nat64.drivers.kernel import KernelDataplane  # noqa: PLC0415
    from felix_nat64.drivers.netns import links  # noqa: PLC0415

    desired = desired_for(prefixes=[f"2001:db8:64:{i:x}::/96" for i in range(prefixes)], extra=WIDE_POOL4)
    # Calico turns forwarding on on its nodes; the apply checks it.
    write_sysctls(None, {"net/ipv4/ip_forward": 1, "net/ipv6/conf/all/forwarding": 1})
    timers = Timers()
    runs: list[dict[str, Any]] = []
    for _ in range(reps):
        cleanup_kernel()
        with instrumented(timers):
            dataplane = KernelDataplane(JoolInstances(), mtu_file="/nonexistent", parallelism=parallelism,
                                        find_translators=discovery.translators,
                                        check_forwarding=links.forwarding_problems)
            timers.take()
            for kind in ("cold", "resync"):
                t0 = time.perf_counter()
                changes = dataplane.apply(desired).changes
                total = time.perf_counter() - t0
                runs.append({"kind": kind, "seconds": round(total, 3), "changes": changes,
                             "steps": timers.take()})
                print(f"{kind}: {total:.3f}s, {changes} changes", flush=True)
    cleanup_kernel()
    return {"conditions": {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": _commit()},
            "prefixes": prefixes, "parallelism": parallelism, "runs": runs}


def _commit() -> str:
    """The checkout's commit (and whether it had changes), to tell runs apart."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" with uncommitted changes" if dirty else "")


def render(result: dict[str, Any]) -> str:
    lines = []
    for kind in ("cold", "resync"):
        runs = [r for r in result["runs"] if r["kind"] == kind]
        if not runs:
            continue
        totals = [r["seconds"] for r in runs]
        lines.append(f"{kind} apply, {result['prefixes']} prefixes, parallelism {result['parallelism']}: "
                     f"{', '.join(f'{t:.2f}' for t in totals)} s")
        steps: dict[str, list[float]] = defaultdict(list)
        calls: dict[str, int] = {}
        for r in runs:
            for label, v in r["steps"].items():
                steps[label].append(v["seconds"])
                calls[label] = int(v["calls"])
        for label in sorted(steps, key=lambda k: -sum(steps[k])):
            mean = sum(steps[label]) / len(runs)
            lines.append(f"  {mean:8.3f} s  {calls[label]:5d} calls  {label}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--json", default="", help="also write the raw timings here")
    args = parser.parse_args(argv)
    result = profile(args.prefixes, args.reps, args.parallelism)
    print(render(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
