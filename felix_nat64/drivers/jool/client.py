"""The Jool NAT64 client: one method per Jool table and verb.

Every request is answered by exactly one Jool message, either empty (done),
carrying entries (a foreach page, with the M flag while more remain) or
flagged as an error with Jool's errno and message text. Listings follow the M
flag with the offset each table documents, and restart from scratch, a
bounded number of times, when the table changed between pages.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, TypeVar

from felix_nat64.drivers.jool import codec, global_config
from felix_nat64.drivers.jool.codec import Attr, JoolHeader, Reply
from felix_nat64.drivers.jool.constants import (
    FRAMEWORK_NAMES,
    HeaderFlag,
    InstanceAddAttr,
    InstanceStatus,
    InstanceStatusAttr,
    IterationFlag,
    ListAttr,
    Op,
    RootAttr,
    stat_names,
)
from felix_nat64.drivers.jool.entries import BibEntry, InstanceInfo, SessionEntry
from felix_nat64.drivers.jool.errors import JoolError, JoolProtocolError, error_for
from felix_nat64.drivers.jool.global_config import GlobalValue
from felix_nat64.drivers.jool.transport import JoolSocket, Transport
from felix_nat64.drivers.jool.version import JoolVersion, module_version
from felix_nat64.drivers.jool.worker import JoolWorker
from felix_nat64.drivers.plan import Pool4Entry
from felix_nat64.logs import EventLogger
from felix_nat64.model.protocol import PROTOCOLS, Protocol

T = TypeVar("T")

# A listing restarts when the kernel says the table moved under it (EAGAIN);
# past this many attempts the caller gets the error.
MAX_RESTARTS = 5

MaxIterations = int | Literal["auto", "infinite"] | None


def _op_name(op: Op) -> str:
    return op.name.lower().replace("_", " ")


class JoolClient:
    """Manages Jool NAT64 instances in one network namespace.

    Build it with `JoolClient.open()`. Requests act in the namespace of the
    thread that sends them: a client opened with a namespace name sends from
    a worker thread inside that namespace; one opened without sends from the
    calling thread and must stay on it.
    """

    def __init__(self, transport: Transport, version: JoolVersion, netns: str | None = None) -> None:
        self._transport = transport
        self._version = version
        self.netns = netns
        self._log = EventLogger("jool", netns=netns or "-")

    @classmethod
    def open(cls, netns: str | None = None) -> JoolClient:
        """A client for namespace `netns` (/run/netns/NAME), or for the calling
        thread's namespace when None. Raises JoolNotLoaded if the module is not
        loaded, JoolVersionUnsupported if it is not a supported 4.1 release and
        JoolNamespaceError if the namespace cannot be entered."""
        version = module_version()
        transport: Transport = JoolSocket() if netns is None else JoolWorker(netns)
        return cls(transport, version, netns)

    @property
    def version(self) -> JoolVersion:
        """The loaded module's version, which every request header carries."""
        return self._version

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> JoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _request(self, op: Op, instance: str = "", attrs: bytes = b"",
                 flags: HeaderFlag = HeaderFlag.NONE) -> Reply:
        header = JoolHeader(version=self._version.wire, iname=instance, flags=flags)
        name = _op_name(op)
        self._log.debug("jool request", op=name, instance=instance or "-", bytes=len(attrs))
        reply = self._transport.exchange(op, header, attrs, name)
        if reply.header.flags & HeaderFlag.ERROR:
            code, message = codec.decode_error(reply.attrs)
            raise error_for(code or errno.EINVAL, message, name, instance or None)
        return reply

    def _collect(self, op: Op, instance: str, first: bytes, items: Callable[[Reply], list[T]],
                 follow_up: Callable[[T], bytes]) -> list[T]:
        """All entries of a foreach, page after page while the M flag is set."""
        for attempt in range(MAX_RESTARTS + 1):
            out: list[T] = []
            attrs = first
            try:
                while True:
                    reply = self._request(op, instance, attrs)
                    page = items(reply)
                    out += page
                    if not reply.more:
                        return out
                    if not page:
                        raise JoolProtocolError("reply has the M flag but no entries", _op_name(op))
                    attrs = follow_up(page[-1])
            except JoolError as exc:
                # INSTANCE_FOREACH reports a vanished offset instance as ESRCH.
                changed = exc.errno == errno.EAGAIN or (
                    exc.errno == errno.ESRCH and op is Op.INSTANCE_FOREACH and bool(out))
                if not changed or attempt == MAX_RESTARTS:
                    raise
                self._log.warning("jool listing changed while paging, restarting", op=_op_name(op),
                               instance=instance or "-", attempt=attempt + 1)
        raise AssertionError("unreachable")

    def _per_protocol(self, proto: Protocol | None, list_one: Callable[[Protocol], list[T]]) -> tuple[T, ...]:
        protos = PROTOCOLS if proto is None else (Protocol(proto),)  # ValueError for anything else
        out: list[T] = []
        for p in protos:
            out += list_one(p)
        return tuple(out)

    def _pages(self, op: Op, instance: str, first: bytes,
               follow_up: Callable[[Attr], bytes]) -> Iterator[list[Attr]]:
        """The raw JNLAL_ENTRY elements of a foreach, one reply at a time, each
        requested only when the caller asks for it (a caller that stops early
        never makes Jool list the rest). `follow_up` turns a page's last entry
        into the next request's attributes."""
        attrs = first
        while True:
            reply = self._request(op, instance, attrs)
            page = [item for item in codec.parse_attrs(reply.attrs) if item.type == ListAttr.ENTRY]
            yield page
            if not reply.more:
                return
            if not page:
                raise JoolProtocolError("reply has the M flag but no entries", _op_name(op))
            attrs = follow_up(page[-1])

    # ------------------------------------------------------------ instances

    def instance_add(self, name: str, pool6: ipaddress.IPv6Network, framework: str = "netfilter") -> None:
        """Creates NAT64 instance `name` in this namespace. Raises JoolExists if
        the namespace already has that name, or (netfilter) any netfilter instance."""
        codec.validate_iname(name)
        if framework not in FRAMEWORK_NAMES:
            raise ValueError(f"unknown Jool framework {framework!r}: expected netfilter or iptables")
        operand = codec.attr_nested(
            RootAttr.OPERAND,
            codec.attr_u8(InstanceAddAttr.XF, FRAMEWORK_NAMES[framework]),
            codec.attr_prefix6(InstanceAddAttr.POOL6, pool6),
        )
        self._request(Op.INSTANCE_ADD, name, operand)
        self._log.info("jool instance added", instance=name, pool6=pool6, framework=framework)

    def instance_remove(self, name: str) -> None:
        """Removes instance `name` from this namespace (JoolNotFound if absent)."""
        codec.validate_iname(name)
        self._request(Op.INSTANCE_RM, name)
        self._log.info("jool instance removed", instance=name)

    def instance_exists(self, name: str) -> bool:
        """Whether this namespace has a NAT64 instance called `name`."""
        codec.validate_iname(name)
        reply = self._request(Op.INSTANCE_HELLO, name)
        status = codec.attr_map(reply.attrs).get(InstanceStatusAttr.STATUS)
        if status is None:
            raise JoolProtocolError("hello reply lacks a status", "instance hello")
        return status.u8() == InstanceStatus.ALIVE

    def instance_list(self) -> tuple[InstanceInfo, ...]:
        """Every NAT64 instance the module has, in every namespace."""
        return tuple(self._collect(
            Op.INSTANCE_FOREACH, "", b"",
            lambda reply: codec.decode_entries(reply.attrs, codec.decode_instance),
            lambda last: codec.attr_nested(RootAttr.OFFSET, codec.instance_body(last)),
        ))

    # ------------------------------------------------------------ pool4

    def pool4_add(self, instance: str, entry: Pool4Entry, *, force: bool = False,
                  max_iterations: MaxIterations = None) -> None:
        """Adds a pool4 entry. `force` sets Jool's FORCE flag, which 4.1.15 needs
        to accept TCP/UDP ranges that overlap the namespace's ephemeral ports
        (4.1.9 does not check). `max_iterations` sets the mark's iteration cap:
        None leaves it alone, "auto", "infinite" or a positive count."""
        flags, iterations = _iteration_flags(max_iterations)
        operand = codec.attr_nested(RootAttr.OPERAND, codec.pool4_body(entry, iterations, flags))
        self._request(Op.POOL4_ADD, instance, operand, HeaderFlag.FORCE if force else HeaderFlag.NONE)
        self._log.info("jool pool4 entry added", instance=instance, proto=entry.proto, prefix=entry.prefix,
                       ports=f"{entry.port_min}-{entry.port_max}", mark=entry.mark)

    def pool4_remove(self, instance: str, entry: Pool4Entry, *, quick: bool = False) -> None:
        """Removes a pool4 range. Unless `quick`, Jool also drops the BIB entries
        (and their sessions) that used it."""
        operand = codec.attr_nested(RootAttr.OPERAND, codec.pool4_body(entry))
        self._request(Op.POOL4_RM, instance, operand, HeaderFlag.QUICK if quick else HeaderFlag.NONE)
        self._log.info("jool pool4 entry removed", instance=instance, proto=entry.proto, prefix=entry.prefix,
                       ports=f"{entry.port_min}-{entry.port_max}", mark=entry.mark, quick=quick)

    def pool4_flush(self, instance: str, *, quick: bool = False) -> None:
        """Empties pool4. Unless `quick`, Jool also empties the whole BIB."""
        self._request(Op.POOL4_FLUSH, instance, b"", HeaderFlag.QUICK if quick else HeaderFlag.NONE)
        self._log.info("jool pool4 flushed", instance=instance, quick=quick)

    def pool4_list(self, instance: str, proto: Protocol | None = None) -> tuple[Pool4Entry, ...]:
        """pool4 of one protocol, or of tcp, udp and icmp in turn when None.
        Jool stores ranges per address, so a /30 added comes back as four /32s."""
        def one(p: Protocol) -> list[Pool4Entry]:
            return self._collect(
                Op.POOL4_FOREACH, instance, codec.attr_u8(RootAttr.PROTO, codec.proto_number(p)),
                lambda reply: codec.decode_entries(reply.attrs, codec.decode_pool4),
                lambda last: codec.attr_nested(RootAttr.OFFSET, codec.pool4_body(last)),
            )
        return self._per_protocol(proto, one)

    # ------------------------------------------------------------ globals

    def global_list(self, instance: str) -> dict[str, GlobalValue]:
        """Every global of the instance by its CLI name: bools, ints (timeouts in
        ms), pool6 as IPv6Network, mtu-plateaus as a tuple of ints."""
        items = self._collect(
            Op.GLOBAL_FOREACH, instance, b"",
            lambda reply: codec.parse_attrs(reply.attrs),
            lambda last: codec.attr_u8(RootAttr.OFFSET_U8, last.type),
        )
        return {spec.name: value for spec, value in global_config.decode_globals(items)}

    def global_update(self, instance: str, values: Mapping[str, GlobalValue], *, force: bool = False) -> None:
        """Sets one or several globals in one request (Jool swaps the whole
        configuration atomically). Names are the CLI's; timeouts in ms.
        Raises ValueError before sending for unknown names or wrong types."""
        body = global_config.encode_globals(values, self._version.revision)
        self._request(Op.GLOBAL_UPDATE, instance, codec.attr_nested(RootAttr.GLOBALS, body),
                      HeaderFlag.FORCE if force else HeaderFlag.NONE)
        self._log.info("jool globals updated", instance=instance,
                       values=",".join(f"{k}={v}" for k, v in sorted(values.items())))

    # ------------------------------------------------------------ BIB

    def bib_list(self, instance: str, proto: Protocol | None = None) -> tuple[BibEntry, ...]:
        """BIB entries of one protocol, or of tcp, udp and icmp in turn when None."""
        def one(p: Protocol) -> list[BibEntry]:
            return self._collect(
                Op.BIB_FOREACH, instance, codec.attr_u8(RootAttr.PROTO, codec.proto_number(p)),
                lambda reply: codec.decode_entries(reply.attrs, codec.decode_bib),
                lambda last: codec.attr_nested(RootAttr.OFFSET, codec.bib_body(last)),
            )
        return self._per_protocol(proto, one)

    def bib_pages(self, instance: str, proto: Protocol) -> Iterator[list[Attr]]:
        """BIB entries of one protocol as raw entries (`codec.decode_bib` reads
        one), a reply at a time and only as far as the caller reads. Jool lists
        them by pool4 transport address and resumes after the last one even if
        it expired meanwhile."""
        return self._pages(
            Op.BIB_FOREACH, instance, codec.attr_u8(RootAttr.PROTO, codec.proto_number(proto)),
            lambda last: codec.attr_nested(RootAttr.OFFSET, codec.bib_body(codec.decode_bib(last))),
        )

    def bib_add(self, instance: str, entry: BibEntry) -> None:
        """Adds a static BIB entry; its IPv4 side must be inside pool4."""
        self._request(Op.BIB_ADD, instance, codec.attr_nested(RootAttr.OPERAND, codec.bib_body(entry)))
        self._log.info("jool static BIB entry added", instance=instance, proto=entry.proto,
                       ipv6=entry.ipv6, ipv4=entry.ipv4)

    def bib_remove(self, instance: str, entry: BibEntry) -> None:
        """Removes a BIB entry and its sessions (JoolNotFound if absent)."""
        self._request(Op.BIB_RM, instance, codec.attr_nested(RootAttr.OPERAND, codec.bib_body(entry)))
        self._log.info("jool BIB entry removed", instance=instance, proto=entry.proto,
                       ipv6=entry.ipv6, ipv4=entry.ipv4)

    # ------------------------------------------------------------ sessions

    def session_list(self, instance: str, proto: Protocol | None = None) -> tuple[SessionEntry, ...]:
        """Sessions of one protocol, or of tcp, udp and icmp in turn when None."""
        def one(p: Protocol) -> list[SessionEntry]:
            return [codec.decode_session(item) for page in self.session_pages(instance, p) for item in page]
        return self._per_protocol(proto, one)

    def session_pages(self, instance: str, proto: Protocol) -> Iterator[list[Attr]]:
        """Sessions of one protocol as raw entries (`codec.decode_session` reads
        one), a reply (a few dozen sessions) at a time and only as far as the
        caller reads. Jool lists them by BIB entry (pool4 transport address),
        then by IPv4 destination, and resumes after the last one even if it
        expired meanwhile (`find_session_offset` in its bib/db.c), so a walk
        never has to restart."""
        proto_attr = codec.attr_u8(RootAttr.PROTO, codec.proto_number(proto))

        # Unlike the other tables, every session page repeats the protocol.
        return self._pages(Op.SESSION_FOREACH, instance, proto_attr,
                           lambda last: proto_attr + codec.attr_nested(RootAttr.OFFSET,
                                                                        codec.session_offset_body(last)))

    # ------------------------------------------------------------ stats

    def stats(self, instance: str) -> dict[str, int]:
        """Every JSTAT counter of the instance by its kernel name (JSTAT_RECEIVED6, ...)."""
        names = stat_names(self._version.revision)
        padding = len(names) + 1  # JSTAT_PADDING follows JSTAT_UNKNOWN

        def counters(reply: Reply) -> list[Attr]:
            return [a for a in codec.parse_attrs(reply.attrs) if a.type != padding]

        items = self._collect(
            Op.STATS_FOREACH, instance, b"", counters,
            lambda last: codec.attr_u8(RootAttr.OFFSET_U8, last.type),
        )
        return {(names[a.type - 1] if 0 < a.type <= len(names) else f"JSTAT_{a.type}"): a.u64()
                for a in items}


def _iteration_flags(max_iterations: MaxIterations) -> tuple[IterationFlag, int]:
    if max_iterations is None:
        return IterationFlag.NONE, 0
    if max_iterations == "auto":
        return IterationFlag.SET | IterationFlag.AUTO, 0
    if max_iterations == "infinite":
        return IterationFlag.SET | IterationFlag.INFINITE, 0
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 0:
        raise ValueError(f"max_iterations takes None, 'auto', 'infinite' or a count, not {max_iterations!r}")
    # 0 is passed through on purpose: Jool rejects it with its own message.
    return IterationFlag.SET, max_iterations
