"""What the Helm chart grants, rendered by Helm's own engine.

Every capability any rendered container adds, in every datastore mode, in
cleanup mode and in the static manifest, is explained in docs/install.md;
containers that are not privileged drop everything else and cannot
escalate; the only privileged container is the driver's, which the
documentation says and explains; every host path is documented.

Run: ``.venv/bin/pytest -q tests/chart/test_chart_security.py``
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
INSTALL_DOC = REPO / "docs" / "install.md"
MANIFEST = REPO / "deploy" / "felix-nat64.yaml"
CHART_MODES = ("operator", "typha", "kubernetes")


# ---------------------------------------------------------------------------
# What the Helm chart grants
# ---------------------------------------------------------------------------


def _render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_manifest_for_security",
                                                  REPO / "scripts" / "render-manifest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RENDER = _render_script()


def _variants() -> dict[str, list[dict[str, Any]]]:
    """Every rendered variant that changes which containers exist or what they get."""
    out: dict[str, list[dict[str, Any]]] = {}
    for mode in CHART_MODES:
        out[mode] = [yaml.safe_load(t) for _, t in RENDER.render_documents({"datastore": mode})]
    out["cleanupOnly"] = [yaml.safe_load(t) for _, t in RENDER.render_documents({"cleanupOnly": True})]
    out["no module loader"] = [yaml.safe_load(t) for _, t in
                               RENDER.render_documents({"jool": {"loadModule": False}})]
    out["static manifest"] = [o for o in yaml.safe_load_all(MANIFEST.read_text()) if o]
    return out


VARIANTS = _variants()


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


def _containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = _pod_spec(objects)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _privileges_section() -> str:
    text = INSTALL_DOC.read_text(encoding="utf-8")
    match = re.search(r"^## Privileges, and why each is needed\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "docs/install.md has no 'Privileges, and why each is needed' section"
    return match.group(1)


def _documented_capabilities() -> dict[str, str]:
    """CAP_X -> the sentence or table row of the privileges section that explains it."""
    found: dict[str, str] = {}
    for line in _privileges_section().splitlines():
        for cap in re.findall(r"CAP_[A-Z_]+", line):
            found.setdefault(cap, line.strip())
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_capability_the_chart_adds_is_explained(variant: str) -> None:
    documented = _documented_capabilities()
    for container in _containers(VARIANTS[variant]):
        added = (container.get("securityContext") or {}).get("capabilities", {}).get("add", [])
        for cap in added:
            name = cap if cap.startswith("CAP_") else f"CAP_{cap}"
            assert name in documented, f"{variant}: {container['name']} adds {cap}, not in docs/install.md"
            # The explanation says what it is for, not just the name.
            assert len(documented[name].replace(name, "").strip(" |`-")) > 20, documented[name]
            assert cap != "ALL"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unprivileged_containers_keep_only_what_they_add(variant: str) -> None:
    for container in _containers(VARIANTS[variant]):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            continue
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert sc.get("allowPrivilegeEscalation") is False, container["name"]
        assert sc.get("readOnlyRootFilesystem") is True, container["name"]
        assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, container["name"]
        assert len(sc["capabilities"].get("add", [])) <= 1, container["name"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_only_the_driver_container_is_privileged_and_the_docs_say_why(variant: str) -> None:
    objects = VARIANTS[variant]
    privileged = [c["name"] for c in _containers(objects)
                  if (c.get("securityContext") or {}).get("privileged")]
    assert privileged == ["felix-nat64"], privileged
    section = _privileges_section()
    assert "The driver container is **privileged**" in section
    assert "Bidirectional" in section  # the reason privileged cannot be avoided
    # What privileged mode gives the driver is spelled out capability by capability.
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= _documented_capabilities().keys()
    spec = _pod_spec(objects)
    assert not spec.get("hostPID") and not spec.get("hostIPC") and not spec.get("shareProcessNamespace")
    for container in _containers(objects):
        sc = container.get("securityContext") or {}
        assert sc.get("runAsUser") == 0 and sc.get("readOnlyRootFilesystem") is True, container["name"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_host_path_is_documented(variant: str) -> None:
    section = _privileges_section()
    volumes = _pod_spec(VARIANTS[variant]).get("volumes", [])
    paths = {v["hostPath"]["path"] for v in volumes if "hostPath" in v}
    assert paths, variant
    for path in paths:
        assert f"`{path}`" in section, f"{variant}: host path {path} is not explained in docs/install.md"
