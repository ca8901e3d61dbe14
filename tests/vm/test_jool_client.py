"""The Jool client against the real module (4.1.9 in the VM), with the jool
CLI as the independent oracle: what one writes, the other reads."""

from __future__ import annotations

import csv
import errno
import ipaddress
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator

import pytest

from felix_nat64.drivers.jool import (
    BibEntry,
    GlobalValue,
    JoolClient,
    JoolError,
    JoolExists,
    JoolNamespaceError,
    JoolNotFound,
    JoolWorker,
    Taddr4,
    Taddr6,
    TcpState,
    module_version,
)
from felix_nat64.drivers.jool.codec import JoolHeader, attr, attr_u8
from felix_nat64.drivers.jool.constants import Op, Pool4Attr, RootAttr
from felix_nat64.drivers.jool.global_config import BY_NAME, Kind, nat64_names
from felix_nat64.drivers.plan import Pool4Entry
from felix_nat64.model.ownership import JOOL_INSTANCE
from tests.vm.dataplane_fixtures import CountingTransport

NAME = JOOL_INSTANCE
POOL6 = ipaddress.IPv6Network("64:ff9b::/96")
V4 = ipaddress.IPv4Network


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs a command; on failure the assertion shows its output."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}"
    return done


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", netns, *argv, check=check)


def jool_cli(netns: str, *args: str) -> str:
    """Runs the jool CLI (the independent oracle) in `netns`; returns stdout."""
    return in_netns(netns, "jool", *args).stdout


def jool_cli_fails(netns: str, *args: str) -> str:
    """Runs a jool CLI command that must fail; returns its error text."""
    done = in_netns(netns, "jool", *args, check=False)
    assert done.returncode != 0, f"jool {' '.join(args)} unexpectedly succeeded: {done.stdout}"
    return done.stderr


def jool_csv(netns: str, *args: str) -> list[dict[str, str]]:
    """A `jool ... display --csv` table as rows keyed by its header."""
    return list(csv.DictReader(jool_cli(netns, *args, "--csv").splitlines()))


@pytest.fixture
def jool(netns: str) -> Iterator[JoolClient]:
    """A client whose worker thread lives in `netns`."""
    with JoolClient.open(netns) as client:
        yield client


@pytest.fixture
def counted(netns: str) -> Iterator[tuple[JoolClient, CountingTransport]]:
    transport = CountingTransport(JoolWorker(netns))
    with JoolClient(transport, module_version(), netns) as client:
        yield client, transport


def pool4_rows(netns: str, proto: str) -> list[Pool4Entry]:
    """`jool pool4 display --csv` as Pool4Entry values."""
    return [Pool4Entry(row["Protocol"].lower(), V4(row["Address"]), int(row["Min port"]),
                       int(row["Max port"]), int(row["Mark"]))
            for row in jool_csv(netns, "-i", NAME, "pool4", "display", f"--{proto}")]


def bib_rows(netns: str, proto: str) -> list[BibEntry]:
    return [BibEntry(row["Protocol"].lower(),
                     Taddr6(ipaddress.IPv6Address(row["IPv6 Address"]), int(row["IPv6 L4-ID"])),
                     Taddr4(ipaddress.IPv4Address(row["IPv4 Address"]), int(row["IPv4 L4-ID"])),
                     static=row["Static?"] == "1")
            for row in jool_csv(netns, "-i", NAME, "bib", "display", f"--{proto}", "--numeric")]


def cli_global_text(name: str, value: GlobalValue) -> str:
    """How `jool global display --csv` prints a value."""
    kind = BY_NAME[name].kind
    if kind is Kind.BOOL:
        return "TRUE" if value else "FALSE"
    if kind is Kind.TIMEOUT:
        assert isinstance(value, int)
        seconds, millis = divmod(value, 1000)
        text = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        return text + (f".{millis:03d}" if millis else "")
    if kind is Kind.PLATEAUS:
        assert isinstance(value, tuple)
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def cli_globals(netns: str) -> dict[str, str]:
    return {row["Field"]: row["Value"] for row in jool_csv(netns, "-i", NAME, "global", "display")}


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


# ------------------------------------------------------------------ instances


def test_module_version_is_what_sysfs_says(jool: JoolClient) -> None:
    with open("/sys/module/jool/version") as handle:
        assert str(jool.version) == handle.read().strip()
    assert (jool.version.major, jool.version.minor) == (4, 1)


def cli_instances(netns: str) -> set[tuple[int, str, str]]:
    """`jool instance display`: every namespace's instances, as the client lists them."""
    return {(int(row["Namespace"], 16), row["Name"], row["Framework"])
            for row in jool_csv(netns, "instance", "display")}


def test_instance_made_by_the_client_is_what_the_cli_shows(netns: str, jool: JoolClient) -> None:
    assert not jool.instance_exists(NAME)
    before = cli_instances(netns)
    jool.instance_add(NAME, POOL6)
    assert jool.instance_exists(NAME)

    new = cli_instances(netns) - before
    assert len(new) == 1
    ns_id, name, framework = new.pop()
    assert (name, framework) == (NAME, "netfilter")
    assert (ns_id, NAME, "netfilter") in {(i.namespace_id, i.name, i.framework) for i in jool.instance_list()}
    assert cli_globals(netns)["pool6"] == "64:ff9b::/96"
    assert jool_csv(netns, "-i", NAME, "pool4", "display") == []

    jool.instance_remove(NAME)
    assert not jool.instance_exists(NAME)
    assert "lacks an instance" in jool_cli_fails(netns, "-i", NAME, "global", "display")


def test_instance_made_by_the_cli_is_what_the_client_lists(netns: str, jool: JoolClient) -> None:
    before = {(i.namespace_id, i.name, i.framework) for i in jool.instance_list()}
    jool_cli(netns, "instance", "add", "from-cli", "--netfilter", "--pool6", "64:ff9b:1::/96")
    after = {(i.namespace_id, i.name, i.framework) for i in jool.instance_list()}
    assert after == cli_instances(netns)
    new = after - before
    assert [(name, framework) for _, name, framework in new] == [("from-cli", "netfilter")]
    assert jool.instance_exists("from-cli")
    assert jool.global_list("from-cli")["pool6"] == ipaddress.IPv6Network("64:ff9b:1::/96")


# ------------------------------------------------------------------ pool4


def test_pool4_written_by_either_side_reads_the_same(netns: str, jool: JoolClient) -> None:
    jool.instance_add(NAME, POOL6)
    jool.pool4_add(NAME, Pool4Entry("tcp", V4("192.0.2.0/31"), 61001, 65535, mark=7))
    jool.pool4_add(NAME, Pool4Entry("udp", V4("192.0.2.1/32"), 1024, 65535), force=True)
    jool.pool4_add(NAME, Pool4Entry("icmp", V4("192.0.2.1/32"), 0, 65535))
    jool_cli(netns, "-i", NAME, "pool4", "add", "198.51.100.8/30", "2000-3000", "--udp", "--mark", "9")

    for proto in ("tcp", "udp", "icmp"):
        assert list(jool.pool4_list(NAME, proto)) == pool4_rows(netns, proto), proto
    assert jool.pool4_list(NAME, "tcp") == (  # Jool keeps one range per address
        Pool4Entry("tcp", V4("192.0.2.0/32"), 61001, 65535, 7),
        Pool4Entry("tcp", V4("192.0.2.1/32"), 61001, 65535, 7),
    )
    assert len(jool.pool4_list(NAME, "udp")) == 1 + 4
    assert len(jool.pool4_list(NAME)) == 2 + 5 + 1

    jool.pool4_remove(NAME, Pool4Entry("udp", V4("198.51.100.8/30"), 2000, 3000, mark=9))
    assert pool4_rows(netns, "udp") == [Pool4Entry("udp", V4("192.0.2.1/32"), 1024, 65535)]
    jool.pool4_flush(NAME, quick=True)
    assert jool.pool4_list(NAME) == ()
    assert all(pool4_rows(netns, p) == [] for p in ("tcp", "udp", "icmp"))


def test_pool4_listing_spans_several_pages(netns: str, counted: tuple[JoolClient, CountingTransport]) -> None:
    jool, transport = counted
    jool.instance_add(NAME, POOL6)
    for mark, prefix in ((0, "203.0.113.0/26"), (3, "203.0.113.64/26"), (5, "198.51.100.0/27")):
        jool_cli(netns, "-i", NAME, "pool4", "add", prefix, "61001-65535", "--tcp", "--mark", str(mark))
    jool.pool4_add(NAME, Pool4Entry("tcp", V4("192.0.2.128/27"), 1024, 2047, mark=5))

    listed = jool.pool4_list(NAME, "tcp")
    assert len(listed) == 64 + 64 + 32 + 32
    assert list(listed) == pool4_rows(netns, "tcp")
    assert len(set(listed)) == len(listed)  # no page repeated an entry
    assert transport.requests[Op.POOL4_FOREACH] >= 3  # one page holds about 50 entries


# ------------------------------------------------------------------ globals


def test_globals_read_like_the_cli(netns: str, jool: JoolClient) -> None:
    jool.instance_add(NAME, POOL6)
    ours = jool.global_list(NAME)
    theirs = cli_globals(netns)
    assert set(ours) == set(theirs) == set(nat64_names(jool.version.revision))
    assert {name: cli_global_text(name, value) for name, value in ours.items()} == theirs
    assert ours["manually-enabled"] is True
    assert ours["tcp-est-timeout"] == 7_200_000
    assert ours["pool6"] == POOL6
    assert isinstance(ours["mtu-plateaus"], tuple) and 1280 not in ours["mtu-plateaus"]


def test_global_update_by_client_and_by_cli(netns: str, jool: JoolClient) -> None:
    jool.instance_add(NAME, POOL6)
    jool.global_update(NAME, {"tcp-est-timeout": 7_440_000, "tcp-trans-timeout": 300_000,
                              "udp-timeout": 600_000, "icmp-timeout": 30_500, "lowest-ipv6-mtu": 1400,
                              "logging-bib": True, "drop-icmpv6-info": True,
                              "mtu-plateaus": (1500, 1400, 9000)})
    jool.global_update(NAME, {"address-dependent-filtering": True})
    theirs = cli_globals(netns)
    assert theirs["tcp-est-timeout"] == "2:04:00"
    assert theirs["tcp-trans-timeout"] == "0:05:00"
    assert theirs["udp-timeout"] == "0:10:00"
    assert theirs["icmp-timeout"] == "0:00:30.500"
    assert theirs["lowest-ipv6-mtu"] == "1400"
    for name in ("logging-bib", "drop-icmpv6-info", "address-dependent-filtering"):
        assert theirs[name] == "TRUE", name
    assert theirs["mtu-plateaus"] == "9000,1500,1400"  # Jool sorts them

    jool_cli(netns, "-i", NAME, "global", "update", "udp-timeout", "2:00")
    jool_cli(netns, "-i", NAME, "global", "update", "logging-bib", "false")
    jool_cli(netns, "-i", NAME, "global", "update", "maximum-simultaneous-opens", "25")
    ours = jool.global_list(NAME)
    assert ours["udp-timeout"] == 120_000
    assert ours["logging-bib"] is False
    assert ours["maximum-simultaneous-opens"] == 25
    assert {name: cli_global_text(name, value) for name, value in ours.items()} == cli_globals(netns)


# ------------------------------------------------------------------ BIB and sessions


def test_static_bib_listing_spans_several_pages(netns: str,
                                                counted: tuple[JoolClient, CountingTransport]) -> None:
    jool, transport = counted
    jool.instance_add(NAME, POOL6)
    jool.pool4_add(NAME, Pool4Entry("tcp", V4("192.0.2.1/32"), 61001, 65535))
    # About 50 BIB entries fit in a reply page: 130 take three.
    script = textwrap.dedent(f"""
        for i in $(seq 1 25); do
            jool -i {NAME} bib add 2001:db8::$i#80 192.0.2.1#$((61000 + i)) --tcp || exit 1
        done
    """)
    in_netns(netns, "sh", "-c", script)
    for i in range(26, 131):  # the rest through the client: far quicker than 105 more processes
        jool.bib_add(NAME, BibEntry("tcp", Taddr6(ipaddress.IPv6Address(f"2001:db8::{i:x}"), 443),
                                    Taddr4(ipaddress.IPv4Address("192.0.2.1"), 62000 + i), static=True))

    listed = jool.bib_list(NAME, "tcp")
    assert len(listed) == 130
    assert list(listed) == bib_rows(netns, "tcp")
    assert all(entry.static for entry in listed)
    assert transport.requests[Op.BIB_FOREACH] >= 3
    assert jool.bib_list(NAME, "udp") == ()

    jool.bib_remove(NAME, listed[0])
    assert len(bib_rows(netns, "tcp")) == 129
    with pytest.raises(JoolNotFound) as gone:
        jool.bib_remove(NAME, listed[0])
    assert gone.value.message == "The entry wasn't in the database."


SENDER = textwrap.dedent("""
    import socket, sys
    count, dst = int(sys.argv[1]), sys.argv[2]
    for i in range(count):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("2001:db8:6::2", 20000 + i))
        s.sendto(b"ping", (dst, 9))
        s.close()
""")


def build_translator_path(make_netns: Callable[[], str]) -> tuple[str, str, str]:
    """client6 --veth-- translator (Jool) --veth-- server4; returns their names."""
    client6, xlat, server4 = make_netns(), make_netns(), make_netns()
    run("ip", "link", "add", "c6", "netns", client6, "type", "veth", "peer", "name", "x6", "netns", xlat)
    run("ip", "link", "add", "x4", "netns", xlat, "type", "veth", "peer", "name", "s4", "netns", server4)
    for ns, dev, addr in ((client6, "c6", "2001:db8:6::2/64"), (xlat, "x6", "2001:db8:6::1/64")):
        in_netns(ns, "ip", "-6", "addr", "add", addr, "dev", dev, "nodad")
    in_netns(xlat, "ip", "addr", "add", "192.0.2.1/24", "dev", "x4")
    in_netns(server4, "ip", "addr", "add", "192.0.2.2/24", "dev", "s4")
    for ns, dev in ((client6, "c6"), (xlat, "x6"), (xlat, "x4"), (server4, "s4")):
        in_netns(ns, "ip", "link", "set", dev, "up")
    in_netns(client6, "ip", "-6", "route", "add", "64:ff9b::/96", "via", "2001:db8:6::1")
    in_netns(xlat, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1")
    return client6, xlat, server4


def test_sessions_and_stats_after_real_udp_traffic(make_netns: Callable[[], str]) -> None:
    client6, xlat, _ = build_translator_path(make_netns)
    transport = CountingTransport(JoolWorker(xlat))
    with JoolClient(transport, module_version(), xlat) as jool:
        jool.instance_add(NAME, POOL6)
        jool.pool4_add(NAME, Pool4Entry("udp", V4("192.0.2.1/32"), 61001, 65535))
        flows = 60  # about 26 sessions fit in a reply page
        in_netns(client6, "python3", "-c", SENDER, str(flows), "64:ff9b::192.0.2.2")

        sessions = jool.session_list(NAME, "udp")
        assert len(sessions) == flows
        assert transport.requests[Op.SESSION_FOREACH] >= 3
        assert {s.src6.port for s in sessions} == set(range(20000, 20000 + flows))
        for s in sessions:
            assert (s.proto, s.state) == ("udp", TcpState.ESTABLISHED)
            assert s.src6.address == ipaddress.IPv6Address("2001:db8:6::2")
            assert s.dst6 == Taddr6(ipaddress.IPv6Address("64:ff9b::192.0.2.2"), 9)
            assert s.dst4 == Taddr4(ipaddress.IPv4Address("192.0.2.2"), 9)
            assert s.src4.address == ipaddress.IPv4Address("192.0.2.1") and 61001 <= s.src4.port <= 65535
            assert 0 < s.expiration_ms <= 300_000
        cli = jool_csv(xlat, "-i", NAME, "session", "display", "--udp", "--numeric")
        assert sorted((r["IPv6 Remote Address"], int(r["IPv6 Remote L4-ID"]), r["IPv6 Local Address"],
                       int(r["IPv4 Local L4-ID"]), r["IPv4 Remote Address"]) for r in cli) == sorted(
            (str(s.src6.address), s.src6.port, str(s.dst6.address), s.src4.port, str(s.dst4.address))
            for s in sessions)
        assert jool.session_list(NAME, "tcp") == ()

        bib = jool.bib_list(NAME, "udp")
        assert len(bib) == flows and not any(b.static for b in bib)
        assert list(bib) == bib_rows(xlat, "udp")

        stats = jool.stats(NAME)
        cli_stats = {row["Stat"]: int(row["Value"]) for row in
                     jool_csv(xlat, "-i", NAME, "stats", "display", "--all")}
        assert set(stats) == set(cli_stats)
        # Stray ICMPv6 (router solicitations, MLD) can bump a few counters between the two reads.
        assert all(cli_stats[name] >= value for name, value in stats.items())
        for name in ("JSTAT_SUCCESS", "JSTAT_BIB_ENTRIES", "JSTAT_SESSIONS", "JSTAT_RECEIVED4"):
            assert stats[name] == cli_stats[name], name
        assert stats["JSTAT_RECEIVED6"] >= flows and stats["JSTAT_SUCCESS"] >= flows
        assert stats["JSTAT_SESSIONS"] == flows == stats["JSTAT_BIB_ENTRIES"]


TCP_OPENER = textwrap.dedent("""
    import socket, sys
    count, dst = int(sys.argv[1]), sys.argv[2]
    held = []
    for i in range(count):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("2001:db8:6::2", 30000 + i))
        s.setblocking(False)
        s.connect_ex((dst, 80))  # nothing answers: the SYN alone opens a session
        held.append(s)
""")


def test_table_size_counters_follow_entries_as_they_come_and_go(make_netns: Callable[[], str]) -> None:
    """JSTAT_SESSIONS and JSTAT_BIB_ENTRIES, which metrics and status read instead
    of listing the tables, match the tables (and the jool CLI) as sessions of
    two protocols are added, a BIB entry is removed and a pool4 range goes."""
    client6, xlat, _ = build_translator_path(make_netns)
    with JoolClient.open(xlat) as jool:
        jool.instance_add(NAME, POOL6)
        tcp_range = Pool4Entry("tcp", V4("192.0.2.1/32"), 61001, 65535)
        jool.pool4_add(NAME, Pool4Entry("udp", V4("192.0.2.1/32"), 61001, 65535))
        jool.pool4_add(NAME, tcp_range)
        in_netns(client6, "python3", "-c", SENDER, "40", "64:ff9b::192.0.2.2")
        # 192.0.2.99 does not exist: the SYNs go unanswered and the sessions stay opening.
        in_netns(client6, "python3", "-c", TCP_OPENER, "30", "64:ff9b::192.0.2.99")

        def sizes() -> tuple[int, int]:
            stats = jool.stats(NAME)
            return stats["JSTAT_SESSIONS"], stats["JSTAT_BIB_ENTRIES"]

        def listed() -> tuple[int, int]:
            return len(jool.session_list(NAME)), len(jool.bib_list(NAME))

        assert sizes() == listed() == (70, 70)
        assert {s.proto for s in jool.session_list(NAME)} == {"tcp", "udp"}
        cli = {row["Stat"]: int(row["Value"])
               for row in jool_csv(xlat, "-i", NAME, "stats", "display", "--all")}
        assert (cli["JSTAT_SESSIONS"], cli["JSTAT_BIB_ENTRIES"]) == (70, 70)

        jool.bib_remove(NAME, jool.bib_list(NAME, "udp")[0])  # takes its session with it
        assert sizes() == listed() == (69, 69)
        jool.pool4_remove(NAME, tcp_range)  # not quick: Jool drops the BIB entries it held
        assert sizes() == listed() == (39, 39)


def test_empty_tables_and_stats_of_a_fresh_instance(jool: JoolClient) -> None:
    jool.instance_add(NAME, POOL6)
    assert jool.session_list(NAME) == ()
    assert jool.bib_list(NAME) == ()
    stats = jool.stats(NAME)
    assert stats["JSTAT_RECEIVED6"] == 0 and "JSTAT_UNKNOWN" in stats and len(stats) >= 69


# ------------------------------------------------------------------ errors


def test_jool_error_messages_are_surfaced(netns: str, jool: JoolClient) -> None:
    jool.instance_add(NAME, POOL6)

    with pytest.raises(JoolExists) as dup:
        jool.instance_add(NAME, POOL6)
    assert dup.value.errno == errno.EEXIST
    assert dup.value.message == f"This namespace already has a Jool instance named '{NAME}'."

    with pytest.raises(JoolExists, match=r"This namespace already has a Netfilter Jool instance\."):
        jool.instance_add("second", ipaddress.IPv6Network("64:ff9b:2::/96"))

    with pytest.raises(JoolNotFound) as missing:
        jool.instance_remove("nope")
    assert missing.value.errno == errno.ESRCH
    assert missing.value.message == "The requested instance does not exist."

    with pytest.raises(JoolNotFound, match=r"This namespace lacks an instance named 'nope'\."):
        jool.pool4_list("nope", "tcp")

    with pytest.raises(JoolError) as bad_pool4:
        jool.pool4_add(NAME, Pool4Entry("tcp", V4("192.0.2.1/32"), 61001, 65535), max_iterations=0)
    assert (bad_pool4.value.errno, bad_pool4.value.message) == (errno.EINVAL,
                                                                "Zero is not a legal Max Iterations value.")

    with pytest.raises(JoolError, match=r"192\.0\.2\.77#80' does not belong to pool4") as not_in_pool4:
        jool.bib_add(NAME, BibEntry("tcp", Taddr6(ipaddress.IPv6Address("2001:db8::1"), 80),
                                    Taddr4(ipaddress.IPv4Address("192.0.2.77"), 80)))
    assert not_in_pool4.value.errno == errno.EINVAL

    with pytest.raises(JoolError, match=r"The 'udp' timeout \(1000\) is too small. \(min: 120000\)"):
        jool.global_update(NAME, {"udp-timeout": 1000})
    with pytest.raises(JoolError, match=r"lowest-ipv6-mtu \(1000\) is too small \(min: 1280\)."):
        jool.global_update(NAME, {"lowest-ipv6-mtu": 1000})
    # Failed updates change nothing.
    assert jool.global_list(NAME)["udp-timeout"] == 300_000


def test_policy_failure_is_a_bare_netlink_error(netns: str, jool: JoolClient) -> None:
    """A nest without NLA_F_NESTED never reaches Jool: the kernel's strict
    validation answers with NLMSG_ERROR (and an extended ack)."""
    jool.instance_add(NAME, POOL6)
    unflagged = attr(RootAttr.OPERAND, attr_u8(Pool4Attr.PROTO, 0))
    header = JoolHeader(version=jool.version.wire, iname=NAME)
    with JoolWorker(netns) as worker, pytest.raises(JoolError) as caught:
        worker.exchange(Op.POOL4_ADD, header, unflagged, "pool4 add")
    assert caught.value.errno == errno.EINVAL
    assert "NLA_F_NESTED" in caught.value.message


# ------------------------------------------------------------------ namespaces and threads


def test_two_namespaces_addressed_independently(make_netns: Callable[[], str]) -> None:
    ns1, ns2 = make_netns(), make_netns()
    with JoolClient.open(ns1) as one, JoolClient.open(ns2) as two:
        one.instance_add(NAME, POOL6)
        two.instance_add(NAME, ipaddress.IPv6Network("2001:db8:64::/96"))
        one.pool4_add(NAME, Pool4Entry("tcp", V4("192.0.2.1/32"), 61001, 65535))
        two.pool4_add(NAME, Pool4Entry("tcp", V4("198.51.100.1/32"), 61001, 65535))
        two.global_update(NAME, {"udp-timeout": 900_000})

        assert one.global_list(NAME)["pool6"] == POOL6
        assert two.global_list(NAME)["pool6"] == ipaddress.IPv6Network("2001:db8:64::/96")
        assert [e.prefix for e in one.pool4_list(NAME)] == [V4("192.0.2.1/32")]
        assert [e.prefix for e in two.pool4_list(NAME)] == [V4("198.51.100.1/32")]
        assert one.global_list(NAME)["udp-timeout"] == 300_000
        assert two.global_list(NAME)["udp-timeout"] == 900_000
        assert cli_globals(ns1)["pool6"] == "64:ff9b::/96"
        assert cli_globals(ns2)["pool6"] == "2001:db8:64::/96"

        ids = {i.namespace_id for i in one.instance_list() if i.name == NAME}
        # Both see one table that spans all namespaces.
        assert ids == {i.namespace_id for i in two.instance_list() if i.name == NAME}
        assert len(ids) >= 2

        one.instance_remove(NAME)
        assert not one.instance_exists(NAME)
        assert two.instance_exists(NAME)
        assert [e.prefix for e in two.pool4_list(NAME)] == [V4("198.51.100.1/32")]


def test_worker_acts_in_its_own_namespace(make_netns: Callable[[], str]) -> None:
    ns1, ns2 = make_netns(), make_netns()
    with JoolWorker(ns1) as w1, JoolWorker(ns2) as w2:
        assert w1.call(lambda _sock: os.stat("/proc/thread-self/ns/net").st_ino) == netns_inode(ns1)
        assert w2.call(lambda _sock: os.stat("/proc/thread-self/ns/net").st_ino) == netns_inode(ns2)
        # The calling thread itself never moved.
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
        version = module_version()
        with JoolClient(w1, version, ns1) as one, JoolClient(w2, version, ns2) as two:
            one.instance_add(NAME, POOL6)
            assert one.instance_exists(NAME)
            assert not two.instance_exists(NAME)
            with pytest.raises(JoolNotFound, match="lacks an instance"):
                two.pool4_list(NAME, "tcp")
    assert jool_cli(ns1, "-i", NAME, "global", "display")
    assert "lacks an instance" in jool_cli_fails(ns2, "-i", NAME, "global", "display")
    with JoolClient.open() as here:  # the VM's own namespace has none either
        assert not here.instance_exists(NAME)


def test_client_for_the_current_namespace() -> None:
    name = "fn64-current"
    with JoolClient.open() as jool:
        try:
            jool.instance_add(name, POOL6)
            assert jool.instance_exists(name)
            assert jool.global_list(name)["pool6"] == POOL6
            assert "64:ff9b::/96" in run("jool", "-i", name, "global", "display").stdout
        finally:
            if jool.instance_exists(name):
                jool.instance_remove(name)
        assert not jool.instance_exists(name)


def test_worker_errors_and_close(make_netns: Callable[[], str]) -> None:
    with pytest.raises(JoolNamespaceError) as caught:
        JoolWorker("jooltest-missing")
    assert caught.value.errno == errno.ENOENT
    assert "jooltest-missing" in str(caught.value)

    worker = JoolWorker(make_netns())
    assert worker.running
    worker.close()
    worker.close()  # idempotent
    assert not worker.running
    with pytest.raises(JoolError) as closed:
        worker.call(lambda sock: None)
    assert closed.value.errno == errno.ESHUTDOWN
