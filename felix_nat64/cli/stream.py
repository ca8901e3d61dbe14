"""`felix-nat64 stream`: build Felix streams from scenarios, and dump them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from felix_nat64.cli import exitcodes
from felix_nat64.cli.errors import CliError
from felix_nat64.testing.scenario import ScenarioError, build_scenario, dump_stream


def add_parser(sub: Any) -> None:
    p = sub.add_parser("stream", help="build Felix streams from scenario files, or dump one as JSON")
    ssub = p.add_subparsers(dest="stream_cmd", required=True, metavar="{build,dump}")
    b = ssub.add_parser(
        "build", help="write a framed Felix stream from a YAML/JSON scenario",
        description="A scenario lists what Felix would send: felix_version, config (by Felix "
                    "source name), pools, hosts, in_sync and later updates. See "
                    "docs/streams.md for the format.",
    )
    b.add_argument("scenario", help="scenario file (YAML or JSON), or - for standard input")
    b.add_argument("-o", "--output", required=True, help="stream file to write (- for standard output)")
    b.set_defaults(func=run_build)
    d = ssub.add_parser("dump", help="print each message of a stream as one JSON line")
    d.add_argument("stream", help="stream file, or - for standard input")
    d.add_argument("--all", action="store_true", help="also list payloads felix-nat64 skips")
    d.set_defaults(func=run_dump)


def run_build(args: argparse.Namespace) -> int:
    try:
        if args.scenario == "-":
            text = sys.stdin.read()
        else:
            with open(args.scenario) as handle:
                text = handle.read()
    except OSError as exc:
        raise CliError(f"cannot read scenario {args.scenario}: {exc.strerror}") from None
    try:
        data = build_scenario(_parse_scenario(text, args.scenario))
    except ScenarioError as exc:
        raise CliError(f"scenario {args.scenario}: {exc}", exitcodes.INVALID_INPUT) from None
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(args.output, "wb") as handle:
            handle.write(data)
    return exitcodes.OK


def _parse_scenario(text: str, name: str) -> Any:
    """JSON needs only the standard library; YAML needs PyYAML, an optional extra."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # noqa: PLC0415 - scenario files in YAML are a development feature
    except ImportError:
        raise CliError(f"scenario {name} is not JSON, and reading YAML needs PyYAML, which the runtime "
                       "install leaves out: pip install 'felix-nat64[scenarios]' (or PyYAML), or write "
                       "the scenario as JSON", exitcodes.FAILURE) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"scenario {name} is not valid YAML/JSON: {exc}", exitcodes.INVALID_INPUT) from None


def run_dump(args: argparse.Namespace) -> int:
    try:
        if args.stream == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.stream, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise CliError(f"cannot read stream {args.stream}: {exc.strerror}") from None
    ok = True
    for line in dump_stream(data, include_skipped=args.all):
        ok = ok and "error" not in line
        print(json.dumps(line, sort_keys=True))
    return exitcodes.OK if ok else exitcodes.INVALID_INPUT
