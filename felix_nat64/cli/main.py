"""`felix-nat64`: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from felix_nat64 import __version__
from felix_nat64.cli import cleanup, demo, driver, exitcodes, render, sessions, status, stream
from felix_nat64.cli.errors import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="felix-nat64",
        description="Stateful NAT64 for pod egress on Calico nodes (a Felix external dataplane driver).",
        epilog=exitcodes.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"felix-nat64 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, status, sessions, render, stream, cleanup, driver):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"felix-nat64 {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return exitcodes.FAILURE
    except BrokenPipeError:
        return exitcodes.OK
    return code


if __name__ == "__main__":
    sys.exit(main())
