"""The socket: pyroute2's Generic Netlink socket resolves the "Jool" family
and carries one request and its one reply at a time.

pyroute2 packs the netlink, genetlink and Jool headers (the Jool header is
declared as extra genlmsg fields, like connector/cn_proc.py does for its
header); the attributes are encoded by `codec` and appended as bytes, and the
reply is handed back raw to `codec.parse_reply`, because its attribute
numbers only make sense for the command that was sent.

A socket must be used by the thread that created it: pyroute2 keeps its
event loop per thread, and Jool acts in the namespace of the calling thread.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from typing import Any, Protocol

from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from felix_nat64.drivers.jool.codec import JoolHeader, Reply, parse_reply
from felix_nat64.drivers.jool.constants import FAMILY_NAME, GENL_VERSION, HEADER_MAGIC
from felix_nat64.drivers.jool.errors import JoolError, JoolNotLoaded, JoolProtocolError, error_for


class Transport(Protocol):
    """Sends one Jool request and returns its reply (raising JoolError for a
    bare netlink error). Implemented by JoolSocket and by the namespace worker."""

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply: ...

    def close(self) -> None: ...


class JoolMessage(genlmsg):  # type: ignore[misc]
    """genlmsghdr followed by struct joolnlhdr; attributes ride in "payload"."""

    fields = (
        *genlmsg.fields,
        ("magic", "4s"),
        ("jool_version", ">I"),  # the only big-endian field of the protocol
        ("xt", "B"),
        ("jool_flags", "B"),  # not "flags": that key belongs to the nlmsg header
        ("reserved1", "B"),
        ("reserved2", "B"),
        ("iname", "16s"),
    )
    nla_map = ()  # attributes are codec's business

    def encode(self) -> None:
        super().encode()
        payload = bytes(dict.get(self, "payload", b""))
        self.data.extend(payload)
        length = self["header"]["length"] + len(payload)
        struct.pack_into("=I", self.data, self.offset, length)
        self["header"]["length"] = length
        self.length = length

    def raw(self) -> bytes:
        """This message's bytes as received, nlmsghdr included."""
        return bytes(self.data[self.offset:self.offset + self["header"]["length"]])


def build_message(cmd: int, header: JoolHeader, attrs: bytes) -> JoolMessage:
    """A request ready for pyroute2 to number, encode and send."""
    msg = JoolMessage()
    msg["cmd"] = cmd
    msg["version"] = GENL_VERSION
    msg["reserved"] = 0
    msg["magic"] = HEADER_MAGIC
    msg["jool_version"] = header.version
    msg["xt"] = header.xt
    msg["jool_flags"] = int(header.flags)
    msg["reserved1"] = 0
    msg["reserved2"] = 0
    msg["iname"] = header.iname.encode("ascii")
    msg["payload"] = attrs
    return msg


def _netlink_text(exc: NetlinkError) -> str:
    # pyroute2 fills args[1] with the extended ack text, or strerror if none.
    text = str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else ""
    return "" if text == os.strerror(exc.code) else text


class JoolSocket(GenericNetlinkSocket):  # type: ignore[misc]
    """A Generic Netlink socket bound to the "Jool" family."""

    # We raise JoolNotLoaded ourselves; pyroute2 would also log at error level.
    module_err_level = "debug"

    def __init__(self) -> None:
        super().__init__(ext_ack=True)
        self._owner = threading.get_ident()
        try:
            self.bind(FAMILY_NAME, JoolMessage)
        except NetlinkError as exc:
            self.close()
            if exc.code == errno.ENOENT:
                raise JoolNotLoaded('no Generic Netlink family "Jool"') from None
            raise JoolError(exc.code, f"cannot resolve the Jool family: {_netlink_text(exc)}") from None

    def exchange(self, cmd: int, header: JoolHeader, attrs: bytes, op: str) -> Reply:
        """Sends one request (NLM_F_REQUEST, no ACK) and returns Jool's reply."""
        if threading.get_ident() != self._owner:
            # Another thread may sit in another namespace, and pyroute2's loop is per thread.
            raise RuntimeError("a JoolSocket must be used by the thread that created it; "
                               "JoolClient.open(netns) gives a client backed by a worker thread")
        msg = build_message(cmd, header, attrs)
        try:
            replies: Any = self.nlm_request(msg, msg_type=self.prid, msg_flags=NLM_F_REQUEST)
        except NetlinkError as exc:
            raise error_for(exc.code, _netlink_text(exc), op, header.iname or None) from None
        replies = list(replies)
        if len(replies) != 1:
            raise JoolProtocolError(f"expected one reply, got {len(replies)}", op)
        return parse_reply(replies[0].raw(), op)
