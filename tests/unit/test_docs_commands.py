"""What the docs tell operators to type exists in the code.

Every `felix-nat64` command line in the docs (code blocks and inline code) is
checked against the real argparse parser, every NAT64 setting name against
the settings specs, every `--set` key against the chart's values.yaml, every
`make` target against the Makefile, every repository path and every relative
link (with its anchor) against the tree. The DNS64 examples are checked
against felix-nat64's own prefix rules and RFC 7050's `ipv4only.arpa`
addresses. The chart's NOTES, which need Helm's engine to render, are checked
in tests/chart/test_docs_chart.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from felix_nat64.cli.main import build_parser
from felix_nat64.model import special_ipv4
from felix_nat64.model.settings import SPECS, resolve_settings
from felix_nat64.wire.messages import ConfigUpdate

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "felix-nat64"
DOCS = sorted((REPO / "docs").rglob("*.md"))
READ_BY_OPERATORS = (REPO / "README.md", *DOCS, CHART / "README.md", CHART / "values.yaml",
                     CHART / "templates" / "NOTES.txt")
QUICKSTART = REPO / "docs" / "quickstart.md"
SETTING_KEYS = {spec.key for spec in SPECS}
# A felix-nat64 token starts a command line at the start of a line, or after
# these (kubectl exec ... --, the VM runner); elsewhere it is a release,
# container, instance or label name, or prose in a log line.
COMMAND_AFTER = {"--", "sudo", "testbed.vm"}
STOP_TOKENS = {"|", "||", "&&", ";", "\\", "#", ">", "2>&1"}
REPO_TOP = ("charts/", "docs/", "scripts/", "tests/", "deploy/", "examples/", "felix_nat64/", "testbed/",
            "benchmarks/", "proto/")
# RFC 7050 section 2.2: the only addresses of ipv4only.arpa.
IPV4ONLY_ARPA = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))


def code_in(text: str) -> Iterator[str]:
    """Lines of fenced blocks, and inline code spans outside them."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield line
        else:
            yield from re.findall(r"`([^`]+)`", line)


def code_lines() -> Iterator[tuple[str, str]]:
    for path in READ_BY_OPERATORS:
        for line in code_in(path.read_text()):
            yield str(path.relative_to(REPO)), line


# -- felix-nat64 commands --------------------------------------------------------------


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after felix-nat64) for every felix-nat64 invocation in code."""
    for where, line in code_lines():
        tokens = line.replace("$ ", "", 1).split()
        for i, token in enumerate(tokens):
            if token != "felix-nat64" and not token.endswith("bin/felix-nat64"):
                continue
            if i and tokens[i - 1] not in COMMAND_AFTER:
                continue
            argv = []
            for arg in tokens[i + 1:]:
                if arg in STOP_TOKENS:
                    break
                argv.append(arg.strip("'\""))
            if argv and "=" in argv[0] and not argv[0].startswith("-"):
                continue  # a name=value label, e.g. a link alias, not a command
            yield where, argv


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_argv(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """'' when every subcommand and option in argv exists, else what does not."""
    if not argv or argv[0] in ("...", "COMMAND"):
        return ""
    commands = subparsers(parser)
    if argv[0].startswith("-"):
        known = set(parser._option_string_actions)
        return "" if argv[0].split("=")[0] in known else f"no option {argv[0]}"
    if argv[0] not in commands:
        return f"no command {argv[0]!r} (commands: {sorted(commands)})"
    sub = commands[argv[0]]
    rest = argv[1:]
    if subparsers(sub) and rest and not rest[0].startswith("-"):
        return check_argv(sub, rest)
    known = set(sub._option_string_actions)
    unknown = [a for a in rest if a.startswith("--") and a.split("=")[0] not in known]
    return f"{argv[0]}: no option {unknown}" if unknown else ""


def test_every_felix_nat64_command_in_the_docs_exists() -> None:
    parser = build_parser()
    found = list(command_lines())
    assert len(found) >= 30, "the scan found too few felix-nat64 commands"
    wrong = [f"{where}: felix-nat64 {' '.join(argv)}: {problem}"
             for where, argv in found if (problem := check_argv(parser, argv))]
    assert not wrong, "\n".join(wrong)


def test_the_command_check_catches_what_does_not_exist() -> None:
    parser = build_parser()
    assert check_argv(parser, ["sessions", "--pod", "fd00::1", "--proto", "tcp"]) == ""
    assert check_argv(parser, ["stream", "build", "x.yaml", "-o", "x.stream"]) == ""
    assert "no command" in check_argv(parser, ["sesions"])
    assert "no option" in check_argv(parser, ["status", "--kernel-only"])
    assert "no command" in check_argv(parser, ["stream", "convert"])


def test_the_quickstart_uses_the_commands_it_should() -> None:
    argvs = [argv for where, argv in command_lines() if where == "docs/quickstart.md"]
    assert ["status"] in argvs and ["sessions", "--proto", "tcp"] in argvs


# -- settings, chart values, make targets, paths --------------------------------------------


def test_every_nat64_setting_named_in_the_docs_exists() -> None:
    wrong = []
    named = 0
    for path in READ_BY_OPERATORS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for key in re.findall(r"\b(?:FELIX_)?(NAT64[A-Za-z0-9]+)\b", line):
                named += 1
                if not any(key.casefold() == k.casefold() for k in SETTING_KEYS):
                    wrong.append(f"{path.relative_to(REPO)}:{number}: {key}")
    assert named > 50
    assert not wrong, "settings felix-nat64 does not have:\n" + "\n".join(wrong)


def value_paths(values: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(values, dict):
        for key, value in values.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= value_paths(value, path + ".")
    return paths


def test_every_chart_value_set_in_the_docs_exists() -> None:
    known = value_paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    wrong, seen = [], 0
    for where, line in code_lines():
        for key in re.findall(r"--set(?:-string)?[ =]'?([A-Za-z][\w.\[\]]*)=", line):
            seen += 1
            # A list value: what is set inside its items is not in values.yaml.
            path = key.split("[")[0]
            # Map values (labels, annotations) take any key below them.
            maps = [k for k in known if k.endswith(("labels", "annotations"))]
            if path not in known and not any(path.startswith(k + ".") for k in maps):
                wrong.append(f"{where}: {key}")
    assert seen >= 20
    assert not wrong, "chart values that do not exist:\n" + "\n".join(wrong)


def test_every_make_target_in_the_docs_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    wrong, seen = [], 0
    for where, line in code_lines():
        for found in re.finditer(r"(?:^|\s)make((?:\s+[a-z][\w-]*)+)", line):
            for target in found.group(1).split():
                seen += 1
                if target not in targets:
                    wrong.append(f"{where}: make {target}")
    assert seen >= 5
    assert not wrong, "\n".join(wrong)


def test_every_repository_path_in_the_docs_exists() -> None:
    wrong, seen = [], 0
    for where, line in code_lines():
        for token in re.findall(r"(?<![\w/.-])((?:\.venv/bin/)?[\w.-]+(?:/[\w.*-]+)+)", line):
            if not token.startswith(REPO_TOP):
                continue
            seen += 1
            if not list(REPO.glob(token.rstrip("/"))):
                wrong.append(f"{where}: {token}")
    assert seen >= 20
    assert not wrong, "paths that are not in the repository:\n" + "\n".join(wrong)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors for a Markdown file."""
    found = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_relative_link_and_anchor_in_the_docs_exists() -> None:
    wrong, seen = [], 0
    for path in (REPO / "README.md", *DOCS, CHART / "README.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            seen += 1
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                wrong.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                wrong.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert seen >= 40
    assert not wrong, "\n".join(wrong)


# -- DNS64 ------------------------------------------------------------------------------------


def dns64_prefixes() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"dns64\s*\{([^}]*)\}", text):
            found += [(path.name, p) for p in re.findall(r"prefix\s+(\S+)", block)]
        found += [(path.name, p) for p in re.findall(r"dns64\s+([0-9a-f:]+/\d+)", text)]
    return found


def test_every_dns64_prefix_in_the_docs_is_one_felix_nat64_translates() -> None:
    found = dns64_prefixes()
    assert len(found) >= 5, found
    for where, prefix in found:
        network = ipaddress.IPv6Network(prefix)
        # felix-nat64 reads the IPv4 address from the last 32 bits: DNS64 must
        # use a /96 (CoreDNS also accepts /32 to /64, which place it elsewhere).
        assert network.prefixlen == 96, f"{where}: dns64 prefix {prefix} is not a /96"
        result = resolve_settings(ConfigUpdate(MappingProxyType({"NAT64Prefixes": prefix})))
        assert result.settings is not None, f"{where}: {prefix}: {result.errors}"


def test_documented_ipv4only_arpa_answers_are_the_synthesized_addresses() -> None:
    """Every IPv6 address the docs show as DNS64's answer for ipv4only.arpa is
    192.0.0.170 or .171 behind a documented dns64 prefix."""
    prefixes = {ipaddress.IPv6Network(p) for _, p in dns64_prefixes()}
    expected = {ipaddress.IPv6Address(int(p.network_address) | int(v4))
                for p in prefixes for v4 in IPV4ONLY_ARPA}
    shown = 0
    for path in (QUICKSTART, REPO / "docs" / "dns64.md"):
        text = path.read_text()
        assert "ipv4only.arpa" in text
        for address in re.findall(r"\b64:ff9b::c000:a[ab]\b", text):
            shown += 1
            assert ipaddress.IPv6Address(address) in expected
    assert shown >= 4
    wkp = ipaddress.IPv6Network("64:ff9b::/96")
    assert {str(a) for a in expected if a in wkp} == {"64:ff9b::c000:aa", "64:ff9b::c000:ab"}


@dataclass(frozen=True)
class ServerBlock:
    where: str
    zones: tuple[str, ...]
    body: str

    def plugins(self) -> list[str]:
        """Plugin names at the block's top level (nested blocks skipped)."""
        names, depth = [], 0
        for line in self.body.splitlines():
            words = line.split()
            if depth == 0 and words and words[0] != "}":
                names.append(words[0])
            depth += line.count("{") - line.count("}")
        return names


def corefile_blocks() -> list[ServerBlock]:
    """Every CoreDNS server block in the docs' plain code blocks."""
    blocks = []
    for path in DOCS:
        for code in re.findall(r"^```\n(.*?)^```", path.read_text(), re.S | re.M):
            lines = code.splitlines()
            i = 0
            while i < len(lines):
                head = re.fullmatch(r"((?:[\w.-]+:53\s*)+)\{", lines[i].strip())
                if head is None:
                    i += 1
                    continue
                depth, body = 1, []
                i += 1
                while depth and i < len(lines):
                    depth += lines[i].count("{") - lines[i].count("}")
                    body.append(lines[i])
                    i += 1
                assert depth == 0, f"{path.name}: unbalanced braces in the block for {head.group(1)}"
                zones = tuple(z.removesuffix(":53") for z in head.group(1).split())
                blocks.append(ServerBlock(path.name, zones, "\n".join(body[:-1])))
    return blocks


def test_corefiles_keep_cluster_zones_out_of_dns64() -> None:
    blocks = corefile_blocks()
    assert len(blocks) >= 5, [b.zones for b in blocks]
    for block in blocks:
        plugins = block.plugins()
        for once in ("reload", "prometheus", "health", "dns64"):
            assert plugins.count(once) <= 1, f"{block.where} {block.zones}: {once} twice"
        if "cluster.local" in block.zones or "kubernetes" in plugins:
            # Synthesis there would hand out NAT64 addresses for IPv4-only
            # Services (refused behind the well-known prefix) and, with
            # translate_all, hide dual-stack Services' IPv6 addresses.
            assert "dns64" not in plugins, f"{block.where} {block.zones}"
    assert any("." in b.zones and "dns64" in b.plugins() for b in blocks)
    by_file: dict[str, int] = {}
    for block in blocks:
        by_file[block.where] = by_file.get(block.where, 0) + block.plugins().count("health")
    assert all(count <= 1 for count in by_file.values()), by_file


def test_corefile_upstreams_behind_a_prefix_are_not_refused_by_felix_nat64() -> None:
    """A forward target written behind a NAT64 prefix must be an IPv4 address
    that felix-nat64 translates there (link-local and, behind the well-known
    prefix, private resolvers are refused)."""
    prefixes = {ipaddress.IPv6Network(p) for _, p in dns64_prefixes()}
    checked = 0
    for block in corefile_blocks():
        for line in block.body.splitlines():
            words = line.split()
            if words[:2] != ["forward", "."]:
                continue
            for target in words[2:]:
                if target in ("{", "/etc/resolv.conf"):
                    continue
                address = ipaddress.IPv6Address(target)
                behind = [p for p in prefixes if address in p]
                if not behind:
                    continue
                checked += 1
                ipv4 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # RFC 6052, /96: the last 32 bits
                refused = [r for r in special_ipv4.refused_for(behind[0]) if ipv4 in r.network]
                assert not refused, f"{block.where} {block.zones}: {target} = {ipv4}: {refused[0].reason}"
    assert checked >= 4
