"""Receive offloads of a link, read and turned off through the ethtool ioctl.

Three ioctls read a link's features (their names, then their state) and one
turns those wanted off; pyroute2's Ethtool reads much more than that on
every call, which under emulation cost about 40 ms per link. The structures
and command numbers are the kernel's uapi (include/uapi/linux/ethtool.h of
Linux 6.1, as Debian's linux-libc-dev 6.1.192 ships it as linux/ethtool.h:
`ethtool_gstrings` line 794, `ethtool_sset_info`
819, `ethtool_gfeatures` 1361, `ethtool_sfeatures` 1383, ETH_SS_FEATURES
692, the commands 1570-1604). The ioctl acts in the network namespace of
the socket, so call this from a thread inside the link's namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from collections.abc import Iterable

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16


def _ioctl(sock: socket.socket, ifname: str, data: ctypes.Array[ctypes.c_char]) -> None:
    # struct ifreq: the name, then (in its union) the pointer to the command's buffer.
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(data))
    ifreq += b"\0" * (40 - len(ifreq))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def _names(sock: socket.socket, ifname: str) -> list[str]:
    info = ctypes.create_string_buffer(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
    _ioctl(sock, ifname, info)
    (count,) = struct.unpack_from("I", info, 16)
    strings = ctypes.create_string_buffer(struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                                          + b"\0" * (count * ETH_GSTRING_LEN))
    _ioctl(sock, ifname, strings)
    raw = strings.raw[12:12 + count * ETH_GSTRING_LEN]
    return [raw[i:i + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
            for i in range(0, len(raw), ETH_GSTRING_LEN)]


def features(ifname: str) -> dict[str, tuple[bool, bool]]:
    """Every feature of the link: (active, changeable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return _features(sock, ifname)[0]


def _features(sock: socket.socket, ifname: str) -> tuple[dict[str, tuple[bool, bool]], list[str]]:
    names = _names(sock, ifname)
    blocks = (len(names) + 31) // 32
    # ethtool_get_features_block: available, requested, active, never_changed.
    buf = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GFEATURES, blocks) + b"\0" * (16 * blocks))
    _ioctl(sock, ifname, buf)
    out = {}
    for i, name in enumerate(names):
        available, _requested, active, _never = struct.unpack_from("IIII", buf, 8 + 16 * (i // 32))
        bit = 1 << (i % 32)
        out[name] = (bool(active & bit), bool(available & bit))
    return out, names


def turn_off(ifname: str, wanted_off: Iterable[str]) -> bool:
    """Turns off those of `wanted_off` that are on and changeable; True if any was."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        state, names = _features(sock, ifname)
        off = [n for n in wanted_off if state.get(n, (False, False)) == (True, True)]
        if not off:
            return False
        blocks = (len(names) + 31) // 32
        # ethtool_set_features_block: valid (the bits to change), requested (their new value).
        valid = [0] * blocks
        for name in off:
            i = names.index(name)
            valid[i // 32] |= 1 << (i % 32)
        body = b"".join(struct.pack("II", v, 0) for v in valid)
        _ioctl(sock, ifname, ctypes.create_string_buffer(struct.pack("II", ETHTOOL_SFEATURES, blocks) + body))
    return True
