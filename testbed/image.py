"""Builds felix-nat64's container image with no registry and no daemon (make image).

Production builds take `debian:bookworm-slim` and the real `calico/node` from
a registry (docs/install.md). Here neither is reachable, so:

- base: a Debian 12 root filesystem made by mmdebstrap from the Debian
  mirror, slimmed like Debian's -slim images; its tarball is cached under
  out/image/ by a key of its inputs and imported into buildah's storage;
- stand-in: a TEST STAND-IN calico/node image whose `calico-node` is the
  Felix simulator (testbed/calico_node_standin.py), never Calico;
- image: the repository's Dockerfile, built by buildah with chroot isolation
  on those two, with this machine's pip settings passed as build secrets
  (mounted for the pip step only, never stored in a layer);
- rootfs: the built image's filesystem as an ext4 file, for the test VM.

    python -m testbed.image build       # prints the image name; writes out/image/build.json
    python -m testbed.image rootfs      # the ext4 file of the last build
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipapp
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "out" / "image"
BUILD_RECORD = OUT / "build.json"

SUITE = "bookworm"
MIRROR = os.environ.get("FELIX_NAT64_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("FELIX_NAT64_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
# What Debian's -slim images leave out: documentation, manuals, translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/groff/*", "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
)
# No translations, and no package caches: mmdebstrap's own apt runs would
# otherwise leave two 37 MB caches in the base layer.
APT_OPTIONS = ('Acquire::Languages "none"', 'Dir::Cache::pkgcache ""', 'Dir::Cache::srcpkgcache ""')
# Merged /usr by symlinks, not by the usrmerge package (which pulls in perl);
# dpkg without fsync (eatmydata) while the tarball is made.
HOOK_DIRS = ("/usr/share/mmdebstrap/hooks/merged-usr", "/usr/share/mmdebstrap/hooks/eatmydata")
# Like the -slim images, apt keeps no packages or caches after it runs: the
# Dockerfile's apt-get steps rely on that for small layers.
APT_CLEAN_NAME = "90felix-nat64-clean"
_APT_RM = ("rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb "
           "/var/cache/apt/*.bin || true")
APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_APT_RM}"; }};
APT::Update::Post-Invoke {{ "{_APT_RM}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
BASE_REPOSITORY = "localhost/felix-nat64-base/debian"
STANDIN_REPOSITORY = "localhost/felix-nat64-test-standin/calico-node"
IMAGE_REPOSITORY = "localhost/felix-nat64"
STANDIN_CONTAINERFILE = REPO / "testbed" / "calico-node-standin.Containerfile"
ROOTFS_LABEL = "fn64image"

# pip's own files, in the order pip reads them (later ones win): global, user,
# the interpreter's site file; PIP_CONFIG_FILE and PIP_* variables win over all.
GLOBAL_PIP_FILES = ("/etc/xdg/pip/pip.conf", "/etc/pip.conf")
USER_PIP_FILES = (".pip/pip.conf", ".config/pip/pip.conf")
SITE_PIP_FILE = "/usr/pip.conf"
# Settings naming a local file: the file goes in as a secret of its own and the
# setting is rewritten to where the Dockerfile mounts it.
FILE_SETTINGS = {"cert": "pip-cert", "client-cert": "pip-client-cert", "constraint": "pip-constraint"}
SECRET_DIR = "/run/secrets"  # noqa: S105 - where BuildKit and buildah mount secrets, not a secret
# Settings that can name local paths, which a build cannot reach.
LOCATION_SETTINGS = ("index-url", "extra-index-url", "find-links")


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why and what to do."""


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} ... failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done  # type: ignore[no-any-return]


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: run scripts/install-system-deps.sh (make deps)")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True,
                          check=False).returncode == 0


def image_id(name: str) -> str:
    return run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name]).stdout.strip()


def image_inspect(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(["buildah", "inspect", "--type", "image", name]).stdout)
    return data


def image_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = image_inspect(name)["OCIv1"]["config"]
    return config


# -- the Debian base ---------------------------------------------------------------------------------


def base_sources() -> list[str]:
    return [f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY_MIRROR} {SUITE}-security main"]


def base_key() -> str:
    """Changes whenever something that shapes the base tarball changes."""
    mmdebstrap = run(["dpkg-query", "-W", "-f=${Version}", "mmdebstrap"]).stdout
    return _digest(SUITE, "minbase", base_sources(), DPKG_OPTIONS, APT_OPTIONS, HOOK_DIRS, APT_CLEAN,
                   mmdebstrap)


def base_image(log: Log) -> str:
    """The base image's name, made (tarball) and imported (buildah) only when missing."""
    key = base_key()
    name = f"{BASE_REPOSITORY}:{SUITE}-{key}"
    tarball = OUT / "base" / f"debian-{SUITE}-{key}.tar"
    if image_exists(name):
        log.step("base", 0.0, cached=True, name=name)
        return name
    if not tarball.exists():
        start = time.monotonic()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        for old in tarball.parent.glob("debian-*.tar"):
            old.unlink()
        tmp = tarball.with_suffix(".tmp.tar")
        with tempfile.TemporaryDirectory(dir=_out()) as conf_dir:
            clean = Path(conf_dir, APT_CLEAN_NAME)
            clean.write_text(APT_CLEAN)
            run(["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", "--format=tar",
                 *(f"--hook-dir={d}" for d in HOOK_DIRS),
                 *(f"--dpkgopt={o}" for o in DPKG_OPTIONS), *(f"--aptopt={o}" for o in APT_OPTIONS),
                 f"--customize-hook=copy-in {clean} /etc/apt/apt.conf.d",
                 SUITE, str(tmp), *base_sources()])
        tmp.rename(tarball)
        log.step("base-tarball", time.monotonic() - start, cached=False, path=str(tarball))
    else:
        log.step("base-tarball", 0.0, cached=True, path=str(tarball))
    start = time.monotonic()
    container = run(["buildah", "from", "scratch"]).stdout.strip()
    try:
        run(["buildah", "add", "--quiet", container, str(tarball), "/"])
        run(["buildah", "config", "--cmd", "/bin/bash", container])
        run(["buildah", "commit", "--quiet", container, name])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    log.step("base-import", time.monotonic() - start, cached=False, name=name)
    return name


# -- the stand-in calico/node ------------------------------------------------------------------------


def standin_image(log: Log) -> tuple[str, str]:
    """(repository, tag) of the TEST STAND-IN calico/node image, built when missing."""
    sources = [REPO / "testbed" / "__init__.py", REPO / "testbed" / "felix.py",
               REPO / "testbed" / "calico_node_standin.py", STANDIN_CONTAINERFILE]
    tag = "standin-" + _digest(*(p.read_text() for p in sources))
    name = f"{STANDIN_REPOSITORY}:{tag}"
    if image_exists(name):
        log.step("standin", 0.0, cached=True, name=name)
        return STANDIN_REPOSITORY, tag
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="standin-", dir=_out()) as tmp:
        tree = Path(tmp, "app")
        (tree / "testbed").mkdir(parents=True)
        for src in sources[:3]:
            shutil.copy(src, tree / "testbed" / src.name)
        context = Path(tmp, "context")
        context.mkdir()
        zipapp.create_archive(tree, context / "calico-node", interpreter="/usr/bin/python3",
                              main="testbed.calico_node_standin:run")
        shutil.copy(STANDIN_CONTAINERFILE, context / "Containerfile")
        run(["buildah", "build", "--isolation", "chroot", "--quiet", "-t", name, str(context)])
    log.step("standin", time.monotonic() - start, cached=False, name=name)
    return STANDIN_REPOSITORY, tag


# -- this machine's pip settings, as build secrets ---------------------------------------------------


@dataclass
class PipSettings:
    """A self-contained pip configuration and the files it names, as buildah/BuildKit secrets."""

    secrets: dict[str, str] = field(default_factory=dict)  # secret id -> file on this machine
    notes: list[str] = field(default_factory=list)


def _normal(key: str) -> str:
    return key.strip().lower().replace("_", "-").lstrip("-")


def _is_local(value: str) -> bool:
    return value.startswith(("/", "file:", "./", "~"))


def resolve_pip_settings(env: Mapping[str, str], home: str, workdir: Path,
                         global_files: Sequence[str] = GLOBAL_PIP_FILES,
                         site_file: str = SITE_PIP_FILE) -> PipSettings:
    """This machine's pip configuration, merged the way pip merges it, made self-contained.

    Writes the merged configuration (and the concatenated constraint files)
    into `workdir`; files it names (CA bundle, client certificate) are passed
    as they are. Local paths other than those cannot be reached by the build
    and are left out, each with a note.
    """
    result = PipSettings()
    merged = configparser.RawConfigParser()
    env_file = env.get("PIP_CONFIG_FILE")
    files: list[str] = []
    if env_file != os.devnull:
        files += list(global_files)
        if not (env_file and os.path.exists(env_file)):  # pip skips user files then
            files += [os.path.join(home, f) for f in USER_PIP_FILES]
        files.append(site_file)
        if env_file:
            files.append(env_file)
    for path in files:
        if not os.path.isfile(path):
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ImageError(f"pip configuration {path} cannot be parsed: {exc}") from None
        for section in parser.sections():
            if not merged.has_section(section):
                merged.add_section(section)
            for key, value in parser.items(section):
                merged.set(section, _normal(key), value)
    # PIP_<NAME> variables apply to every command and win over every file.
    for name, value in sorted(env.items()):
        if not name.startswith("PIP_") or name == "PIP_CONFIG_FILE":
            continue
        key = _normal(name[4:])
        for section in merged.sections():
            merged.remove_option(section, key)
        if not merged.has_section("global"):
            merged.add_section("global")
        merged.set("global", key, value)
    # requests, and so pip, trusts REQUESTS_CA_BUNDLE when no cert is configured.
    has_cert = any(merged.has_option(s, "cert") for s in merged.sections())
    bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
    if not has_cert and bundle and os.path.isfile(bundle):
        if not merged.has_section("global"):
            merged.add_section("global")
        merged.set("global", "cert", bundle)

    for section in merged.sections():
        for key, value in list(merged.items(section)):
            if key in FILE_SETTINGS:
                paths = value.split()
                missing = [p for p in paths if not os.path.isfile(p)]
                if missing:
                    result.notes.append(f"pip setting {section}.{key} names missing files {missing}: "
                                        "left out")
                    merged.remove_option(section, key)
                    continue
                secret = FILE_SETTINGS[key]
                if len(paths) == 1:
                    result.secrets[secret] = paths[0]
                else:  # constraint files concatenate into one
                    joined = workdir / secret
                    joined.write_text("".join(Path(p).read_text() + "\n" for p in paths))
                    result.secrets[secret] = str(joined)
                merged.set(section, key, f"{SECRET_DIR}/{secret}")
            elif key in LOCATION_SETTINGS:
                kept = [v for v in value.split() if not _is_local(v)]
                dropped = [v for v in value.split() if _is_local(v)]
                if dropped:
                    result.notes.append(f"pip setting {section}.{key}: local locations {dropped} are not "
                                        "reachable inside the build: left out")
                if kept:
                    merged.set(section, key, " ".join(kept))
                else:
                    merged.remove_option(section, key)
    if any(merged.items(s) for s in merged.sections()):
        conf = workdir / "pip.conf"
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            merged.write(handle)
        result.secrets["pip.conf"] = str(conf)
    return result


# -- the image ---------------------------------------------------------------------------------------


@dataclass
class Log:
    """What each step took: the build record, and the lines make prints."""

    steps: list[dict[str, object]] = field(default_factory=list)
    quiet: bool = False

    def step(self, step: str, seconds: float, cached: bool, **info: object) -> None:
        self.steps.append({"step": step, "seconds": round(seconds, 1), "cached": cached, **info})
        if not self.quiet:
            how = "cached" if cached else f"{seconds:.1f}s"
            print(f"image: {step}: {how}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Build:
    name: str
    image_id: str
    base: str
    calico_node: str
    rootfs_bytes: int
    config: dict[str, Any]  # the OCI image config: Env, Entrypoint, Cmd, Labels
    seconds: float
    steps: list[dict[str, object]]
    pip_notes: list[str]


def _out() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


def version() -> str:
    import felix_nat64  # noqa: PLC0415

    return felix_nat64.__version__


@contextlib.contextmanager
def mounted(name: str) -> Iterator[Path]:
    """The image's root filesystem, mounted read-write on a throwaway container."""
    container = run(["buildah", "from", "--pull=never", name]).stdout.strip()
    try:
        yield Path(run(["buildah", "mount", container]).stdout.strip())
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def tree_bytes(root: Path) -> int:
    return int(run(["du", "-sb", "--one-file-system", str(root)]).stdout.split()[0])


def build(context: Path = REPO, tag: str | None = None, cache: bool = True, quiet: bool = False,
          record: bool = True) -> Build:
    """Builds the image from `context` (the repository) on the local base and stand-in."""
    _require("buildah", "mmdebstrap", "eatmydata", "mke2fs")
    log = Log(quiet=quiet)
    started = time.monotonic()
    base = base_image(log)
    standin_repo, standin_tag = standin_image(log)
    name = tag or f"{IMAGE_REPOSITORY}:{version()}-calico-{standin_tag}"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pip-secrets-", dir=_out()) as tmp:
        os.chmod(tmp, 0o700)
        pip = resolve_pip_settings(os.environ, os.path.expanduser("~"), Path(tmp))
        for note in pip.notes:
            if not quiet:
                print(f"image: {note}", file=sys.stderr)
        # The build and final stages install their Debian packages at once (--jobs).
        jobs = min(os.cpu_count() or 1, 3)
        argv = ["buildah", "build", "--isolation", "chroot", "--layers", f"--jobs={jobs}", "--pull=never",
                *([] if cache else ["--no-cache"]), "-f", str(context / "Dockerfile"), "-t", name,
                "--build-arg", f"DEBIAN_IMAGE={base}",
                "--build-arg", f"CALICO_NODE_IMAGE={standin_repo}",
                "--build-arg", f"CALICO_VERSION={standin_tag}",
                *(a for sid, src in sorted(pip.secrets.items()) for a in ("--secret", f"id={sid},src={src}")),
                str(context)]
        done = subprocess.run(argv, capture_output=quiet, text=True, check=False)
        if done.returncode != 0:
            raise ImageError(f"buildah build failed ({done.returncode})"
                             + (f":\n{done.stdout}{done.stderr}" if quiet else ": see its output above"))
    log.step("build", time.monotonic() - start, cached=False, name=name)
    with mounted(name) as root:
        size = tree_bytes(root)
    result = Build(name, image_id(name), base, f"{standin_repo}:{standin_tag}", size, image_config(name),
                   round(time.monotonic() - started, 1), log.steps, pip.notes)
    if record:
        _out()
        BUILD_RECORD.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def last_build() -> Build:
    try:
        data = json.loads(BUILD_RECORD.read_text())
    except (OSError, ValueError):
        raise ImageError(f"no image build recorded in {BUILD_RECORD}: run make image") from None
    return Build(**data)


def rootfs(name: str, image: str) -> Path:
    """An ext4 file holding the image's root filesystem (labelled fn64image), made once per image id."""
    path = _out() / f"rootfs-{image[:16]}.ext4"
    if path.exists():
        return path
    for old in OUT.glob("rootfs-*.ext4"):
        old.unlink()
    with mounted(name) as root:
        size_mb = tree_bytes(root) * 13 // 10 // (1 << 20) + 64
        tmp = path.with_suffix(".tmp")
        run(["mke2fs", "-q", "-t", "ext4", "-L", ROOTFS_LABEL, "-d", str(root), str(tmp), f"{size_mb}M"])
    tmp.rename(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the image on the local base and the test stand-in")
    b.add_argument("--no-cache", action="store_true", help="rebuild every layer (the base stays cached)")
    sub.add_parser("rootfs", help="write the last build's root filesystem as an ext4 file; print its path")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            built = build(cache=not args.no_cache)
            print(f"image: {built.name} ({built.rootfs_bytes / 1e6:.0f} MB unpacked) in {built.seconds:.0f}s")
            return 0
        built = last_build()
        print(rootfs(built.name, built.image_id))
        return 0
    except ImageError as exc:
        print(f"testbed.image: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
