"""Shared set-up for the reliability suite: fuzzing profiles and the tally of inputs tried.

Profiles (choose with FELIX_NAT64_FUZZ_PROFILE):

- ``ci`` (default): a fixed number of examples per property and a fixed seed, so
  every run tries the same inputs and the figures in docs/reliability.md are
  reproducible.
- ``soak``: ten times more examples (FELIX_NAT64_FUZZ_EXAMPLES to change) with a
  fresh random seed per run. Hypothesis keeps per-test bookkeeping for every
  example while a test runs (about 0.25 MB per stream example), so long soaks
  are many runs in a loop rather than one huge run.
- ``dev``: a few random examples, for a quick check while editing.

Every test counts what it tried in ``TALLY``; the totals are printed at the end
of the run and, when FELIX_NAT64_FUZZ_REPORT names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

PROFILE_ENV = "FELIX_NAT64_FUZZ_PROFILE"
REPORT_ENV = "FELIX_NAT64_FUZZ_REPORT"

_COMMON = {
    "deadline": None,  # wall-clock limits make CI flaky; the suite's own time budget is the limit
    "database": None,  # never write example databases into the checkout
    "print_blob": True,  # a failure prints the exact blob that reproduces it
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=200, derandomize=True, **_COMMON)
settings.register_profile("soak", max_examples=int(os.environ.get("FELIX_NAT64_FUZZ_EXAMPLES", "2000")),
                          derandomize=False, **_COMMON)
settings.register_profile("dev", max_examples=30, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))

# Counts keyed "<property>.<figure>", e.g. "stream.inputs", "stream.crashes",
# "stream.wrong_changes" (an apply the model did not call for, or a missing one).
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="session")
def tally() -> Counter[str]:
    """The session-wide counters of inputs tried, crashes and wrong changes."""
    return TALLY


FIGURES = ("inputs", "crashes", "wrong_changes", "applies_checked")


def figures() -> dict[str, dict[str, int]]:
    """The tally by property: inputs, crashes and wrong changes always present (0 when none)."""
    by_property: dict[str, dict[str, int]] = {}
    for key, count in TALLY.items():
        prop, _, figure = key.partition(".")
        by_property.setdefault(prop, {})[figure] = count
    for counts in by_property.values():
        for figure in ("inputs", "crashes", "wrong_changes"):
            counts.setdefault(figure, 0)
    return dict(sorted(by_property.items()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    profile = os.environ.get(PROFILE_ENV, "ci")
    table = figures()
    terminalreporter.section(f"reliability figures (profile {profile})")
    header = f"{'property':<18} {'inputs':>8} {'crashes':>8} {'wrong':>6} {'applies':>8}  other"
    terminalreporter.write_line(header)
    for prop, counts in table.items():
        other = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in FIGURES)
        terminalreporter.write_line(
            f"{prop:<18} {counts['inputs']:>8} {counts['crashes']:>8} {counts['wrong_changes']:>6} "
            f"{counts.get('applies_checked', 0):>8}  {other}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"profile": profile, "figures": table}, handle, indent=2)
            handle.write("\n")
