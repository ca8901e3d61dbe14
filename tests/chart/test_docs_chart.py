"""What the chart's NOTES and the quick start tell operators to type matches
what the chart renders (Helm's engine, so in the chart tier)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import CHART, only, render, render_script

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"


# -- the chart's NOTES ---------------------------------------------------------------------------


def notes(values: dict[str, Any]) -> str:
    helm = render_script._helm()
    with helm.Chart.load(str(CHART)) as loaded:
        rendered = loaded.render(values, name="nat64", namespace="calico-system", is_install=True)
    (text,) = [t for p, t in rendered.items() if p.endswith("NOTES.txt")]
    return str(text)


@pytest.mark.parametrize("release_values", [{}, {"nat64": {"prefixes": ["64:ff9b::/96"]}}])
def test_notes_check_the_node_asked_for(release_values: dict[str, Any]) -> None:
    text = notes(release_values)
    assert "exec ds/" not in text
    selector = re.search(r"-l (\S+)", text)
    assert selector is not None and "--field-selector spec.nodeName=$NODE" in text
    wanted = dict(pair.split("=") for pair in selector.group(1).split(","))
    objects = render_script.render_documents(release_values, release="nat64")
    daemonset = only([yaml.safe_load(t) for _, t in objects], "DaemonSet")
    assert wanted.items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    assert "felix-nat64 status" in text


def test_quickstart_pod_selector_matches_the_default_release() -> None:
    text = QUICKSTART.read_text()
    selector = re.search(r"-l (\S+) \\", text)
    assert selector is not None
    labels = only(render(), "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert dict(pair.split("=") for pair in selector.group(1).split(",")).items() <= labels.items()
