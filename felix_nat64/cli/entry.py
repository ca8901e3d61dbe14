"""`felix-nat64-driver`: what Felix execs, with no arguments.

Kept apart from the rest of the CLI and checked before anything else is
imported: if Felix did not pass fd 3 and 4, a library opening a file during
import could take those numbers, and the driver would read the wrong thing.
"""

from __future__ import annotations

import os
import sys

from felix_nat64.wire.felixfds import HOW_TO_RUN, felix_fds_problem

USAGE = 2
FAILURE = 1


def driver_main() -> None:
    if len(sys.argv) > 1:
        print("felix-nat64-driver takes no arguments (Felix starts it with its stream on fd 3); "
              "see 'felix-nat64 driver --help' for the other ways to run the driver", file=sys.stderr)
        sys.exit(USAGE)
    problem = felix_fds_problem()
    if problem:
        print(f"felix-nat64-driver: {problem}: {HOW_TO_RUN}", file=sys.stderr)
        sys.exit(FAILURE)
    from felix_nat64.cli.main import main  # noqa: PLC0415 - only once fd 3/4 are known to be Felix's

    status_file = os.environ.get("FELIX_NAT64_STATUS_FILE")
    sys.exit(main(["driver", *(["--status-file", status_file] if status_file else [])]))
