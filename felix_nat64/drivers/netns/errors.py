"""Kernel errors as messages an operator can act on."""

from __future__ import annotations

import errno
import os

from pyroute2.netlink.exceptions import NetlinkError


def describe(exc: BaseException) -> str:
    """One line for a netlink or OS error: errno name and text."""
    if isinstance(exc, NetlinkError):
        code = exc.code
        name = errno.errorcode.get(code, str(code))
        return f"{name}: {os.strerror(code)}"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    return str(exc) or type(exc).__name__
