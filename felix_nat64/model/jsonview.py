"""JSON views of model objects, for render, status and logs."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

_ADDRESS_TYPES = (
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
    ipaddress.IPv4Interface, ipaddress.IPv6Interface,
)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, mappings and addresses as plain JSON types."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, _ADDRESS_TYPES):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for name in _derived_properties(type(obj)):
            out[name] = to_jsonable(getattr(obj, name))
        return out
    if isinstance(obj, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [to_jsonable(x) for x in obj]
        return sorted(items, key=str) if isinstance(obj, (set, frozenset)) else items
    return str(obj)


def _derived_properties(cls: type) -> list[str]:
    # Properties declared on model classes are part of their public view
    # (e.g. a translator's namespace name), so they appear in JSON too.
    return [name for name, attr in vars(cls).items()
            if isinstance(attr, property) and not name.startswith("_") and name != "blocks"]
