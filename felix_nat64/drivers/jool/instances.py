"""Converges the Jool instance in each translator namespace.

pool6 cannot change on a live NAT64 instance, so a different parent means a
new instance; pool4 (port by port, see pool4diff) and globals are diffed
against what Jool reports and only the differences are sent, so a
restarted driver leaves a correct instance (and its sessions) alone.
"""

from __future__ import annotations

from collections.abc import Callable

from felix_nat64.drivers.api import DataplaneError
from felix_nat64.drivers.jool.client import JoolClient
from felix_nat64.drivers.jool.errors import JoolError, JoolNamespaceError, JoolNotFound
from felix_nat64.drivers.jool.pool4diff import pool4_changes
from felix_nat64.drivers.plan import JoolConfig
from felix_nat64.logs import EventLogger
from felix_nat64.model.ownership import JOOL_INSTANCE


class JoolInstances:
    """The JoolDriver of the kernel dataplane. `open_client` gives a client
    acting in a namespace (tests hand in an in-memory Jool)."""

    def __init__(self, open_client: Callable[[str], JoolClient] = JoolClient.open) -> None:
        self._open = open_client
        self._log = EventLogger("jool")

    def ensure(self, namespace: str, config: JoolConfig) -> int:
        try:
            with self._open(namespace) as jool:
                return self._ensure(jool, config)
        except JoolError as exc:
            raise DataplaneError(f"Jool in {namespace}: {exc}") from exc

    def _ensure(self, jool: JoolClient, config: JoolConfig) -> int:
        name = config.instance
        changes = 0
        # Globals as Jool has them, read once: pool4 changes leave them alone.
        current = jool.global_list(name) if jool.instance_exists(name) else None
        if current is not None and current.get("pool6") != config.pool6:
            # pool6 is fixed for a NAT64 instance's life: replace it.
            self._log.warning("jool instance has another pool6, recreating", instance=name,
                              found=str(current.get("pool6")), wanted=str(config.pool6))
            jool.instance_remove(name)
            current = None
        new = current is None
        if new:
            jool.instance_add(name, config.pool6)
            changes += 1
        # A new instance's pool4 is empty (Jool 4.1.9 src/mod/common/xlator.c:320 gives
        # it the empty trees of src/mod/common/db/pool4/db.c:263-276): nothing to read back.
        pool4 = pool4_changes(config.pool4, () if new else jool.pool4_list(name))
        for entry in pool4.removals:
            jool.pool4_remove(name, entry)
            changes += 1
        for entry in pool4.additions:
            # FORCE: the namespace runs no sockets, so overlapping its
            # ephemeral port range is harmless.
            jool.pool4_add(name, entry, force=True)
            changes += 1
        if current is None:
            current = jool.global_list(name)
        diff = {k: v for k, v in config.globals.items() if current.get(k) != v}
        if diff:
            jool.global_update(name, diff)
            changes += 1
        return changes

    def remove(self, namespace: str) -> int:
        """Removes the instance from a namespace being swept. A namespace that
        cannot be entered (gone, or only the file of an interrupted creation)
        holds no instance: Jool instances go with their namespace."""
        try:
            with self._open(namespace) as jool:
                if not jool.instance_exists(JOOL_INSTANCE):
                    return 0
                jool.instance_remove(JOOL_INSTANCE)
                return 1
        except (JoolNotFound, JoolNamespaceError):
            return 0
        except JoolError as exc:
            raise DataplaneError(f"Jool in {namespace}: {exc}") from exc
