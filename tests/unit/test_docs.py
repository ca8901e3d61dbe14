from pathlib import Path

from felix_nat64.model.settings import SPECS
from felix_nat64.model.settings_doc import render_into

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_reference_is_current() -> None:
    text = (DOCS / "configuration.md").read_text()
    assert render_into(text) == text, "run: python -m felix_nat64.model.settings_doc docs/configuration.md"
    for spec in SPECS:
        assert f"`{spec.key}`" in text
