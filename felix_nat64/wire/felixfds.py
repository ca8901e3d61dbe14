"""The two file descriptors Felix hands its external dataplane driver.

Felix creates two pipes and passes their driver ends as fd 3 (its
ToDataplane stream) and fd 4 (FromDataplane, back to Felix)
(felix/dataplane/external/ext_dataplane.go, StartExtDataplaneDriver:
os.Pipe() and cmd.ExtraFiles); a relay such as Calico/VPP's proxy may pass
sockets instead. Anything else means the driver was not started by Felix.
Only the standard library is imported here: `felix-nat64-driver` checks the
descriptors before importing anything that could open a file and take
those numbers.
"""

from __future__ import annotations

import os
import stat

FELIX_READ_FD = 3
FELIX_WRITE_FD = 4
HOW_TO_RUN = ("felix-nat64-driver is started by Felix as its external dataplane driver "
              "(FELIX_USEINTERNALDATAPLANEDRIVER=false, FELIX_DATAPLANEDRIVER=felix-nat64-driver); "
              "to feed it by hand use 'felix-nat64 driver --socket PATH' or "
              "'felix-nat64 driver --input FILE'")


def felix_fds_problem() -> str | None:
    """What is wrong with fd 3 and 4 for a driver started by Felix, or None."""
    for fd in (FELIX_READ_FD, FELIX_WRITE_FD):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return f"fd {fd} is not open"
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return f"fd {fd} is not a pipe or socket"
    return None
