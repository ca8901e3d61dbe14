"""The image as built by make image: what it holds, what it must not hold, and a build that must fail.

Runs on the host as root with buildah (scripts/install-system-deps.sh); the
build's layers are cached, so after make image the fixture takes seconds.
The image's userland is run against the real Jool module by tests/image/vm.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.image import (
    REPO,
    STANDIN_REPOSITORY,
    Build,
    ImageError,
    build,
    image_exists,
    image_inspect,
    mounted,
    resolve_pip_settings,
)

# Where pip looks for configuration inside the image (root's home, the venv's site file).
PIP_PATHS = ("etc/pip.conf", "etc/xdg/pip", "root/.config/pip", "root/.pip", "opt/felix-nat64/pip.conf",
             "run/secrets")


@pytest.fixture(scope="module")
def built() -> Build:
    if os.geteuid() != 0:
        pytest.fail("tests/image build images with buildah as root: sudo make image-check", pytrace=False)
    return build(quiet=True)


@pytest.fixture(scope="module")
def layers(built: Build, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every layer of the image as pushed (what a registry would store)."""
    out = tmp_path_factory.mktemp("oci")
    subprocess.run(["buildah", "push", "--quiet", built.name, f"oci:{out}"], check=True, capture_output=True)
    index = json.loads((out / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((out / "blobs" / "sha256" / digest).read_text())
    return [out / "blobs" / "sha256" / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]


@pytest.fixture(scope="module")
def rootfs(built: Build) -> Iterator[Path]:
    with mounted(built.name) as root:
        yield root


def test_the_image_runs_felix_nat64_felix_under_tini(built: Build) -> None:
    config = built.config
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"] and config["Cmd"] == ["felix-nat64-felix"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/felix-nat64/bin:")
    assert not [name for name in env if name.startswith("PIP_")]
    labels: dict[str, str] = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "felix-nat64"
    # Built on the TEST STAND-IN calico/node, and it says so.
    assert labels["felix-nat64.calico-version"] == built.calico_node.rsplit(":", 1)[1]
    assert built.calico_node.startswith(STANDIN_REPOSITORY + ":standin-")
    standin = image_inspect(built.calico_node)["OCIv1"]["config"]["Labels"]
    assert "TEST STAND-IN" in standin["org.opencontainers.image.title"]


def test_no_layer_carries_apt_caches_or_lists(layers: list[Path]) -> None:
    # Each would add tens of megabytes that a later layer can only hide.
    for layer in layers:
        with tarfile.open(layer) as tar:
            heavy = [m.name for m in tar if m.isfile() and m.size > 0 and re.match(
                r"^(\./)?var/(cache/apt/.*\.(bin|deb)|lib/apt/lists/.+)$", m.name)]
        assert heavy == [], (layer.name, heavy[:5])


def _host_pip_material(tmp: Path) -> tuple[list[bytes], list[str]]:
    """This machine's pip settings: the files a build receives, and URLs they name."""
    settings = resolve_pip_settings(os.environ, os.path.expanduser("~"), tmp)
    contents = [Path(src).read_bytes() for sid, src in settings.secrets.items() if sid != "pip-cert"]
    urls = [word for line in (tmp / "pip.conf").read_text().splitlines() if "index-url" in line
            for word in line.split("=", 1)[1].split()] if (tmp / "pip.conf").exists() else []
    return contents, urls


def test_no_pip_settings_or_build_secrets_reach_the_image(built: Build, rootfs: Path, layers: list[Path],
                                                         tmp_path: Path) -> None:
    contents, urls = _host_pip_material(tmp_path)
    present = [p for p in PIP_PATHS if (rootfs / p).exists()]
    assert present == [], present
    # No layer ever held a pip setting or a secret (a later layer could hide it from the rootfs).
    for layer in layers:
        with tarfile.open(layer) as tar:
            for member in tar:
                name = member.name.lstrip("./")
                assert not name.startswith(PIP_PATHS), (layer.name, name)
                if member.isfile() and any(member.size == len(c) for c in contents):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    assert handle.read() not in contents, (layer.name, name)
    history = json.dumps(image_inspect(built.name))
    for url in urls:
        assert url not in history
        found = subprocess.run(["grep", "-rlF", "--", url, str(rootfs)], capture_output=True, text=True,
                               check=False)
        assert found.stdout == "", found.stdout


def _certificates(text: str) -> set[str]:
    """The base64 bodies of the PEM certificates in `text`, whitespace removed."""
    return {"".join(block.split("-----")[0].split())
            for block in text.split("-----BEGIN CERTIFICATE-----")[1:]}


def test_the_image_trusts_only_debians_certificate_authorities(rootfs: Path) -> None:
    bundle = _certificates((rootfs / "etc/ssl/certs/ca-certificates.crt").read_text())
    debian: set[str] = set()
    for cert in (rootfs / "usr/share/ca-certificates").rglob("*.crt"):
        debian |= _certificates(cert.read_text())
    assert len(bundle) > 50 and bundle <= debian  # made in the image from Debian's package alone
    assert not list((rootfs / "usr/local/share/ca-certificates").iterdir())
    for cert in Path("/usr/local/share/ca-certificates").rglob("*.crt"):  # this machine's own CAs
        assert not _certificates(cert.read_text()) & bundle, cert


def test_the_build_fails_when_the_driver_cannot_start(built: Build, tmp_path: Path) -> None:
    context = tmp_path / "context"
    ignore = shutil.ignore_patterns(".git", ".venv", "out", "__pycache__", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", ".hypothesis", "*.egg-info", "tests", "benchmarks")
    shutil.copytree(REPO, context, ignore=ignore)
    # Whatever the driver's code looks like: its entry point, as setup.cfg names it, is replaced.
    config = configparser.ConfigParser()
    config.read(context / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = {name.strip(): target.strip() for name, target in (line.split("=", 1) for line in lines)}
    module, function = scripts["felix-nat64-driver"].split(":")
    entry = context.joinpath(*module.split(".")).with_suffix(".py")
    entry.write_text(entry.read_text() + f"\n\ndef {function}() -> None:\n"
                     "    raise SystemExit('the driver is broken on purpose by a test')\n")
    name = "localhost/felix-nat64:must-not-build"
    with pytest.raises(ImageError) as failed:
        build(context, tag=name, quiet=True, record=False)
    message = str(failed.value)
    assert "felix-nat64-selfcheck: felix-nat64-driver failed on a Felix stream (exit status 1)" in message
    assert "the driver is broken on purpose by a test" in message
    assert not image_exists(name)
