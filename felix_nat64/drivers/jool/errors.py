"""What can go wrong talking to Jool, as a small hierarchy.

Callers that reconcile treat JoolExists on create and JoolNotFound on delete
as success, so those two get their own classes.
"""

from __future__ import annotations

import errno as errno_mod
import os


class JoolError(Exception):
    """Jool (or the kernel's netlink layer in front of it) refused a request.

    `errno` is the positive error code and `message` the text Jool gave with
    it, verbatim (it may be empty: some failures carry only a code).
    """

    def __init__(self, errno: int, message: str, op: str | None = None, instance: str | None = None) -> None:
        self.errno = errno
        self.message = message
        self.op = op
        self.instance = instance
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.op:
            where = self.op + (f" on instance {self.instance!r}" if self.instance else "") + ": "
        text = self.message or os.strerror(self.errno)
        name = errno_mod.errorcode.get(self.errno, str(self.errno))
        return f"{where}{text} (errno {self.errno} {name})"


class JoolExists(JoolError):
    """EEXIST: the instance (or entry) is already there."""


class JoolNotFound(JoolError):
    """ESRCH: no such instance in this namespace, or no such entry."""


class JoolNotLoaded(JoolError):
    """The jool kernel module is not loaded, so there is no "Jool" family."""

    MESSAGE = "Jool kernel module not loaded: run modprobe jool (package jool-dkms)"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail
        super().__init__(errno_mod.ENOENT, self.MESSAGE + (f" ({detail})" if detail else ""))

    def _render(self) -> str:
        return self.message


class JoolVersionUnsupported(JoolError):
    """The loaded module speaks a protocol this client does not know."""

    def __init__(self, found: str, supported: str) -> None:
        self.found = found
        self.supported = supported
        super().__init__(errno_mod.EPROTONOSUPPORT,
                         f"Jool kernel module version {found} is not supported; supported: {supported}")

    def _render(self) -> str:
        return self.message


class JoolProtocolError(JoolError):
    """A reply this client cannot make sense of (a bug here or in the module)."""

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(errno_mod.EPROTO, message, op)


class JoolNamespaceError(JoolError):
    """The worker could not enter the named network namespace."""

    def __init__(self, netns: str, err: OSError) -> None:
        self.netns = netns
        code = err.errno or errno_mod.EINVAL
        super().__init__(code, f"cannot enter network namespace {netns!r}: {err.strerror or err}")


def error_for(errno: int, message: str, op: str | None = None, instance: str | None = None) -> JoolError:
    """The JoolError subclass that fits `errno`."""
    cls: type[JoolError] = JoolError
    if errno == errno_mod.EEXIST:
        cls = JoolExists
    elif errno == errno_mod.ESRCH:
        cls = JoolNotFound
    return cls(errno, message, op, instance)
