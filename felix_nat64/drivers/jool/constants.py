"""Numbers of Jool 4.1's Generic Netlink protocol (src/common/config.h, types.h,
session.h, stats.h), checked against the 4.1.9 module Debian ships and the
4.1.15 sources. The 4.2 development line renumbers several of these, which is
why `version.py` refuses it.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

FAMILY_NAME = "Jool"
HEADER_MAGIC = b"jool"
INAME_MAX_LEN = 15  # plus the NUL: INAME_MAX_SIZE is 16

# genlmsghdr.version: Jool's own client sends 1 and the kernel ignores it.
GENL_VERSION = 1


class Op(IntEnum):
    """enum joolnl_operation: genlmsghdr.cmd."""

    INSTANCE_FOREACH = 0
    INSTANCE_ADD = 1
    INSTANCE_HELLO = 2
    INSTANCE_RM = 3
    INSTANCE_FLUSH = 4
    ADDRESS_QUERY64 = 5
    ADDRESS_QUERY46 = 6
    STATS_FOREACH = 7
    GLOBAL_FOREACH = 8
    GLOBAL_UPDATE = 9
    EAMT_FOREACH = 10
    EAMT_ADD = 11
    EAMT_RM = 12
    EAMT_FLUSH = 13
    BL4_FOREACH = 14
    BL4_ADD = 15
    BL4_RM = 16
    BL4_FLUSH = 17
    POOL4_FOREACH = 18
    POOL4_ADD = 19
    POOL4_RM = 20
    POOL4_FLUSH = 21
    BIB_FOREACH = 22
    BIB_ADD = 23
    BIB_RM = 24
    SESSION_FOREACH = 25
    FILE_HANDLE = 26


class RootAttr(IntEnum):
    """enum joolnl_attr_root: top-level attributes of requests."""

    ADDR_QUERY = 1
    GLOBALS = 2
    BL4_ENTRIES = 3
    EAMT_ENTRIES = 4
    POOL4_ENTRIES = 5
    BIB_ENTRIES = 6
    SESSION_ENTRIES = 7
    OFFSET = 8
    OFFSET_U8 = 9
    OPERAND = 10
    PROTO = 11
    ATOMIC_INIT = 12
    ATOMIC_END = 13


class ListAttr(IntEnum):
    """enum joolnl_attr_list: every element of a list, and of foreach replies."""

    ENTRY = 1


class PrefixAttr(IntEnum):
    ADDR = 1
    LEN = 2


class TaddrAttr(IntEnum):
    ADDR = 1
    PORT = 2


class InstanceEntryAttr(IntEnum):
    NS = 1
    XF = 2
    INAME = 3


class InstanceStatusAttr(IntEnum):
    STATUS = 1


class InstanceAddAttr(IntEnum):
    XF = 1
    POOL6 = 2


class Pool4Attr(IntEnum):
    MARK = 1
    ITERATIONS = 2
    FLAGS = 3
    PROTO = 4
    PREFIX = 5
    PORT_MIN = 6
    PORT_MAX = 7


class BibAttr(IntEnum):
    SRC6 = 1
    SRC4 = 2
    PROTO = 3
    STATIC = 4


class SessionAttr(IntEnum):
    SRC6 = 1
    DST6 = 2
    SRC4 = 3
    DST4 = 4
    PROTO = 5
    STATE = 6
    TIMER = 7
    EXPIRATION = 8


class GlobalAttr(IntEnum):
    """enum joolnl_attr_global: one attribute per global value."""

    ENABLED = 1
    POOL6 = 2
    LOWEST_IPV6_MTU = 3
    DEBUG = 4
    RESET_TC = 5
    RESET_TOS = 6
    TOS = 7
    PLATEAUS = 8
    COMPUTE_CSUM_ZERO = 9
    HAIRPIN_MODE = 10
    RANDOMIZE_ERROR_ADDR = 11
    POOL6791V6 = 12
    POOL6791V4 = 13
    DROP_BY_ADDR = 14
    DROP_EXTERNAL_TCP = 15
    DROP_ICMP6_INFO = 16
    SRC_ICMP6_BETTER = 17
    F_ARGS = 18
    HANDLE_RST = 19
    TTL_TCP_EST = 20
    TTL_TCP_TRANS = 21
    TTL_UDP = 22
    TTL_ICMP = 23
    BIB_LOGGING = 24
    SESSION_LOGGING = 25
    MAX_STORED_PKTS = 26
    JOOLD_ENABLED = 27
    JOOLD_FLUSH_ASAP = 28
    JOOLD_FLUSH_DEADLINE = 29
    JOOLD_CAPACITY = 30
    JOOLD_MAX_PAYLOAD = 31
    JOOLD_MAX_SESSIONS_PER_PACKET = 32  # 4.1.11 and later


class ErrorAttr(IntEnum):
    CODE = 1
    MSG = 2


class HeaderFlag(IntFlag):
    """joolnlhdr.flags."""

    NONE = 0
    ERROR = 1  # reply: this is an error report
    FORCE = 2  # request: skip validations that have an override
    QUICK = 4  # request: pool4 rm/flush leave the BIB alone
    M = 8  # reply: more entries remain, ask again from the last one


class Translator(IntEnum):
    """xlator_type (joolnlhdr.xt)."""

    SIIT = 1
    NAT64 = 2


class Framework(IntEnum):
    """xlator_framework, 4.1 numbering (4.2 shifts these left by one)."""

    NETFILTER = 4
    IPTABLES = 8


class L4Proto(IntEnum):
    """Jool's l4_protocol: the protocol attributes use these, not IPPROTO_*."""

    TCP = 0
    UDP = 1
    ICMP = 2
    OTHER = 3


class InstanceStatus(IntEnum):
    ALIVE = 0
    DEAD = 1


class IterationFlag(IntFlag):
    """pool4 max-iterations flags."""

    NONE = 0
    SET = 1
    AUTO = 2
    INFINITE = 4


class TcpState(IntEnum):
    """RFC 6146 TCP states as Jool numbers them (UDP and ICMP report 0)."""

    ESTABLISHED = 0
    V6_INIT = 1
    V4_INIT = 2
    V4_FIN_RCV = 3
    V6_FIN_RCV = 4
    V4_FIN_V6_FIN_RCV = 5
    TRANS = 6


class SessionTimer(IntEnum):
    EST = 0
    TRANS = 1
    SYN4 = 2


FRAMEWORK_NAMES: dict[str, Framework] = {"netfilter": Framework.NETFILTER, "iptables": Framework.IPTABLES}

# enum jool_stat_id, ids 1..68: identical from 4.1.9 to 4.1.15.
_STATS_COMMON: tuple[str, ...] = (
    "JSTAT_RECEIVED6", "JSTAT_RECEIVED4", "JSTAT_SUCCESS",
    "JSTAT_BIB_ENTRIES", "JSTAT_SESSIONS",
    "JSTAT_ENOMEM",
    "JSTAT_XLATOR_DISABLED", "JSTAT_POOL6_UNSET",
    "JSTAT_SKB_SHARED", "JSTAT_L3HDR_OFFSET", "JSTAT_SKB_TRUNCATED", "JSTAT_HDR6", "JSTAT_HDR4",
    "JSTAT_UNKNOWN_L4_PROTO", "JSTAT_UNKNOWN_ICMP6_TYPE", "JSTAT_UNKNOWN_ICMP4_TYPE",
    "JSTAT_DOUBLE_ICMP6_ERROR", "JSTAT_DOUBLE_ICMP4_ERROR", "JSTAT_UNKNOWN_PROTO_INNER",
    "JSTAT_HAIRPIN_LOOP", "JSTAT_POOL6_MISMATCH", "JSTAT_POOL4_MISMATCH", "JSTAT_ICMP6_FILTER",
    "JSTAT_UNTRANSLATABLE_DST6", "JSTAT_UNTRANSLATABLE_DST4", "JSTAT_6056_F",
    "JSTAT_MASK_DOMAIN_NOT_FOUND", "JSTAT_BIB6_NOT_FOUND", "JSTAT_BIB4_NOT_FOUND",
    "JSTAT_SESSION_NOT_FOUND", "JSTAT_ADF", "JSTAT_V4_SYN", "JSTAT_SYN6_EXPECTED", "JSTAT_SYN4_EXPECTED",
    "JSTAT_TYPE1PKT", "JSTAT_TYPE2PKT", "JSTAT_SO_EXISTS", "JSTAT_SO_FULL",
    "JSTAT64_SRC", "JSTAT64_DST", "JSTAT64_PSKB_COPY", "JSTAT64_6791_ENOENT", "JSTAT64_ICMP_CSUM",
    "JSTAT64_UNTRANSLATABLE_PARAM_PROB_PTR", "JSTAT64_TTL", "JSTAT64_FRAGMENTED_ICMP", "JSTAT64_2XFRAG",
    "JSTAT64_FRAG_THEN_EXT", "JSTAT64_SEGMENTS_LEFT",
    "JSTAT46_SRC", "JSTAT46_DST", "JSTAT46_PSKB_COPY", "JSTAT46_6791_ENOENT", "JSTAT46_ICMP_CSUM",
    "JSTAT46_UNTRANSLATABLE_PARAM_PROBLEM_PTR", "JSTAT46_TTL", "JSTAT46_FRAGMENTED_ICMP",
    "JSTAT46_SRC_ROUTE", "JSTAT46_FRAGMENTED_ZERO_CSUM", "JSTAT46_BAD_MTU",
    "JSTAT_FAILED_ROUTES", "JSTAT_PKT_TOO_BIG", "JSTAT_DST_OUTPUT",
    "JSTAT_ICMP6ERR_SUCCESS", "JSTAT_ICMP6ERR_FAILURE", "JSTAT_ICMP4ERR_SUCCESS", "JSTAT_ICMP4ERR_FAILURE",
    "JSTAT_ICMPEXT_BIG",
)  # fmt: skip

# Session-synchronization counters were inserted before JSTAT_UNKNOWN in 4.1.12
# (with FLUSH_ASAP, dropped again in 4.1.13), which moves JSTAT_UNKNOWN and the
# padding attribute type.
_STATS_JOOLD_HEAD = ("JSTAT_JOOLD_EMPTY", "JSTAT_JOOLD_TIMEOUT", "JSTAT_JOOLD_MISSING_ACK",
                     "JSTAT_JOOLD_AD_ONGOING")
_STATS_JOOLD_TAIL = ("JSTAT_JOOLD_PKT_FULL", "JSTAT_JOOLD_QUEUING",
                     "JSTAT_JOOLD_SSS_QUEUED", "JSTAT_JOOLD_SSS_SENT", "JSTAT_JOOLD_SSS_RCVD",
                     "JSTAT_JOOLD_SSS_ENOSPC", "JSTAT_JOOLD_PKT_SENT", "JSTAT_JOOLD_PKT_RCVD",
                     "JSTAT_JOOLD_ADS", "JSTAT_JOOLD_ACKS")


def stat_names(revision: int) -> tuple[str, ...]:
    """Stat names indexed by id - 1 for Jool 4.1.`revision`, ending with
    JSTAT_UNKNOWN (the last id the kernel reports; the next one is padding)."""
    if revision <= 11:
        joold: tuple[str, ...] = ()
    elif revision == 12:
        joold = (*_STATS_JOOLD_HEAD, "JSTAT_JOOLD_FLUSH_ASAP", *_STATS_JOOLD_TAIL)
    else:
        joold = (*_STATS_JOOLD_HEAD, *_STATS_JOOLD_TAIL)
    return (*_STATS_COMMON, *joold, "JSTAT_UNKNOWN")

# Jool's count of its BIB entries, every protocol together (a gauge among
# the event counters; observe/kernel_stats.py reads it for the metrics).
JSTAT_BIB_ENTRIES = "JSTAT_BIB_ENTRIES"
