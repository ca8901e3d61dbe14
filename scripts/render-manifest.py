#!/usr/bin/env python3
"""Renders a plain Kubernetes manifest from the Helm chart.

The chart in charts/felix-nat64 is the only source: deploy/felix-nat64.yaml is
this script's output for the chart's default values (an operator-managed
Calico), and tests/chart/test_chart.py fails when the two differ. The templates
are rendered by Helm's own engine, called through helm-python-sdk (in the
`dev` extra), so no helm binary is needed and the output is what `helm
template` would give.

    scripts/render-manifest.py                  # rewrite deploy/felix-nat64.yaml
    scripts/render-manifest.py --check          # exit 1 when it is stale
    scripts/render-manifest.py --set datastore=typha -o -
    scripts/render-manifest.py -f my-values.yaml -o my-felix-nat64.yaml
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "felix-nat64"
MANIFEST = REPO / "deploy" / "felix-nat64.yaml"
RELEASE = "felix-nat64"

# Helm's install order for the kinds this chart makes (others go last).
KIND_ORDER = (
    "Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
    "Role", "RoleBinding", "Service", "DaemonSet", "ServiceMonitor",
)


class RenderError(Exception):
    """The chart could not be rendered with the given values."""


def _helm() -> Any:
    try:
        import helm_python  # noqa: PLC0415 - optional: only rendering needs it
    except ImportError:
        raise RenderError("helm-python-sdk is not installed: pip install -e '.[dev]'") from None
    return helm_python


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's precedence for -f files and --set: maps merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_values(current, value)
        else:
            merged[key] = value
    return merged


def render_documents(values: Mapping[str, Any] | None = None, *, chart: Path = CHART,
                     release: str = RELEASE) -> list[tuple[str, str]]:
    """The chart's objects as (template path, YAML text), in Helm's install order.

    Raises RenderError when the values fail the schema or a template fails.
    """
    helm = _helm()
    given = dict(values or {})
    try:
        with helm.Chart.load(str(chart)) as loaded:
            effective = loaded.merge_values(given)
            namespace = effective.get("namespace") or (
                "calico-system" if effective.get("datastore") == "operator" else "kube-system")
            rendered = loaded.render(given, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise RenderError(str(exc).strip()) from None
    documents: list[tuple[int, str, int, str]] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for index, part in enumerate(_split_documents(text)):
            obj = yaml.safe_load(part)
            if not obj:
                continue
            kind = str(obj.get("kind", ""))
            rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
            documents.append((rank, path, index, part))
    documents.sort(key=lambda item: (item[0], item[1], item[2]))
    return [(path, part) for _, path, _, part in documents]


def _split_documents(text: str) -> list[str]:
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.rstrip() == "---":
            parts.append([])
        else:
            parts[-1].append(line)
    return ["\n".join(lines).strip("\n") + "\n" for lines in parts if any(s.strip() for s in lines)]


def render_manifest(values: Mapping[str, Any] | None = None, *, description: str = "the chart's defaults",
                    chart: Path = CHART, release: str = RELEASE) -> str:
    """One multi-document YAML file with a header that says how it was made."""
    out = [
        "# felix-nat64 static manifest, rendered from charts/felix-nat64 by",
        "# scripts/render-manifest.py with " + description + ". Do not edit:",
        "# change the chart and render again (docs/install.md).",
    ]
    for path, text in render_documents(values, chart=chart, release=release):
        out.append("---")
        out.append(f"# Source: {path}")
        out.append(text.rstrip("\n"))
    return "\n".join(out) + "\n"


def values_from_args(files: Sequence[str], sets: Sequence[str], set_strings: Sequence[str]) -> dict[str, Any]:
    """Values from -f files, then --set, then --set-string, later ones winning (as in helm)."""
    helm = _helm()
    values: dict[str, Any] = {}
    try:
        for name in files:
            values = merge_values(values, helm.values_from_yaml(Path(name).read_text()))
        for item in sets:
            values = merge_values(values, helm.parse_set_string(item))
        for item in set_strings:
            values = merge_values(values, helm.parse_set_string_values(item))
    except helm.HelmError as exc:
        raise RenderError(str(exc).strip()) from None
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render deploy/felix-nat64.yaml from the Helm chart.")
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="a values file, as for helm (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a value, as for helm --set (repeatable)")
    parser.add_argument("--set-string", action="append", default=[], metavar="KEY=VALUE",
                        help="a string value, as for helm --set-string (repeatable)")
    parser.add_argument("-o", "--output", default=str(MANIFEST),
                        help="where to write; - for standard output (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the output file differs from a fresh render")
    args = parser.parse_args(argv)

    custom = args.values or args.set or args.set_string
    description = "custom values" if custom else "the chart's defaults"
    try:
        values = values_from_args(args.values, args.set, args.set_string)
        text = render_manifest(values, description=description)
    except (RenderError, OSError) as exc:
        print(f"render-manifest: {exc}", file=sys.stderr)
        return 1

    if args.check:
        path = Path(args.output)
        current = path.read_text() if path.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(keepends=True), text.splitlines(keepends=True),
                                    str(path), "fresh render")
        sys.stderr.writelines(diff)
        print(f"render-manifest: {path} is stale; run scripts/render-manifest.py", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
