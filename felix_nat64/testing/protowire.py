"""A tiny protobuf encoder for messages we deliberately do not declare.

Used to build realistic Felix streams (policies, IP sets, endpoints) that
felix-nat64 must skip, without adding their types to our schema.
"""

from __future__ import annotations

from collections.abc import Iterable


def varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def uint(field: int, value: int) -> bytes:
    return key(field, 0) + varint(value) if value else b""


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def string(field: int, value: str) -> bytes:
    return length_delimited(field, value.encode()) if value else b""


def strings(field: int, values: Iterable[str]) -> bytes:
    return b"".join(length_delimited(field, v.encode()) for v in values)


def message(field: int, *parts: bytes) -> bytes:
    return length_delimited(field, b"".join(parts))
