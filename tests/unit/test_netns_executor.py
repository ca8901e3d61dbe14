"""NamespaceExecutor's contract, on a thread that stays in the caller's
namespace (entering other namespaces needs root: tests/host/test_netns_executor.py)."""

from __future__ import annotations

import threading

import pytest

from felix_nat64.drivers.netns.executor import (
    ExecutorClosed,
    NamespaceExecutor,
    NamespaceUnavailable,
    netns_path,
)


def test_calls_run_in_order_on_one_thread_of_their_own() -> None:
    seen: list[tuple[int, int]] = []
    with NamespaceExecutor(None) as executor:
        for i in range(5):
            executor.call(lambda i=i: seen.append((i, threading.get_ident())))
        assert [i for i, _ in seen] == list(range(5))
        assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()
        assert executor.call(pow, 2, 10) == 1024


def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    with NamespaceExecutor(None) as executor:
        with pytest.raises(KeyError, match="nope"):
            executor.call(lambda: {}["nope"])
        assert executor.call(lambda: "still here") == "still here"


def test_a_call_that_does_not_finish_times_out_and_close_does_not_wait_for_it() -> None:
    release = threading.Event()
    executor = NamespaceExecutor(None, timeout=0.05)
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05s"):
        executor.call(release.wait)
    executor.close()  # returns at once: the thread is still inside release.wait()
    assert executor.running
    release.set()


def test_close_runs_the_last_call_on_the_thread_and_refuses_more_work() -> None:
    closed_on: list[int] = []
    executor = NamespaceExecutor(None)
    worker = executor.call(threading.get_ident)
    executor.close(last=lambda: closed_on.append(threading.get_ident()))
    executor.close()  # idempotent
    assert closed_on == [worker] and not executor.running
    with pytest.raises(ExecutorClosed):
        executor.call(lambda: None)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc"])
def test_names_that_are_not_one_path_component_are_refused(name: str) -> None:
    with pytest.raises(NamespaceUnavailable, match="not a namespace name"):
        netns_path(name)
    with pytest.raises(NamespaceUnavailable):
        NamespaceExecutor(name)
