"""NamespaceExecutor entering real namespaces on this kernel (root)."""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from felix_nat64.drivers.netns.executor import NamespaceExecutor, NamespaceUnavailable, run_in_namespace
from felix_nat64.drivers.netns.namespaces import create_namespace, namespace_exists, remove_namespace

pytestmark = pytest.mark.host


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def two(root: None) -> Iterator[tuple[str, str]]:
    names = (f"fn64h-ex-{secrets.token_hex(3)}", f"fn64h-ex-{secrets.token_hex(3)}")
    for name in names:
        create_namespace(name)
    try:
        yield names
    finally:
        for name in names:
            remove_namespace(name)


def test_each_executor_works_inside_its_namespace_and_the_caller_never_moves(two: tuple[str, str]) -> None:
    here = thread_netns()
    first, second = two
    with NamespaceExecutor(first) as a, NamespaceExecutor(second) as b:
        assert a.call(thread_netns) == netns_inode(first)
        assert b.call(thread_netns) == netns_inode(second)
        # Sockets opened there are the namespace's: its only link is its loopback.
        assert [name for _, name in a.call(socket.if_nameindex)] == ["lo"]
    assert thread_netns() == here
    assert run_in_namespace(first, thread_netns) == netns_inode(first)


def test_a_missing_namespace_is_refused_before_any_work(root: None) -> None:
    name = f"fn64h-ex-{secrets.token_hex(3)}"
    with pytest.raises(NamespaceUnavailable) as caught:
        NamespaceExecutor(name)
    assert caught.value.errno == errno.ENOENT and name in str(caught.value)


def test_created_namespaces_are_real_and_removal_is_idempotent(root: None) -> None:
    name = f"fn64h-ex-{secrets.token_hex(3)}"
    create_namespace(name)
    try:
        assert namespace_exists(name)
        assert run_in_namespace(name, thread_netns) != thread_netns()
    finally:
        remove_namespace(name)
    assert not namespace_exists(name)
    remove_namespace(name)  # already gone: nothing to do
