"""The image recipe: the Dockerfile, the scripts it installs (image/), the Felix stand-in and the
build's pip settings, each run here directly (scripts against fake binaries where the real ones
need a node). The image itself is built and run by tests/image (make image-check).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipapp
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.image import FILE_SETTINGS, SECRET_DIR, resolve_pip_settings
from tests.chart.test_chart import default_values, main_container, pod_spec, render

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
IMAGE_SCRIPTS = REPO / "image"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined, numbered by stage."""
    lines = text.splitlines()
    out: list[Instruction] = []
    stage = -1
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


def installed_scripts() -> dict[str, Path]:
    """Name in /usr/local/bin -> the repository file, for every script the final stage copies."""
    found = {}
    for ins in final_stage():
        words = ins.args.split()
        if ins.keyword == "COPY" and not any(w.startswith("--from=") for w in words):
            assert words[-1] == "/usr/local/bin/", ins.args
            for source in (w for w in words[:-1] if not w.startswith("--")):
                found[Path(source).name] = REPO / source
    return found


def test_dockerfile_stages_and_arguments() -> None:
    instructions = dockerfile()
    global_args = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage == -1:
            name, _, value = ins.args.partition("=")
            global_args[name] = value
    assert global_args["CALICO_VERSION"] == default_values()["calico"]["version"]
    assert global_args["CALICO_NODE_IMAGE"] == "docker.io/calico/node"
    assert global_args["DEBIAN_IMAGE"].startswith("debian:bookworm")

    stages: list[str] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            stages.append(words[2] if len(words) == 3 and words[1].upper() == "AS" else "")
        if ins.keyword == "COPY":
            words = ins.args.split()
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            if source_stage is not None:
                assert source_stage in stages[:-1], ins.args
            else:
                for source in (w for w in words[:-1] if not w.startswith("--")):
                    assert (REPO / source).exists(), source
    assert stages[0] == "calico-node" and stages[-1] == ""
    final = final_stage()
    apt = " ".join(ins.args for ins in final if ins.keyword == "RUN" and "apt-get install" in ins.args)
    for package in ("python3", "python3-nftables", "nftables", "iproute2", "kmod", "jool-tools", "tini",
                    "netbase"):
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", apt), package
    entrypoint = next(ins for ins in final if ins.keyword == "ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["/usr/bin/tini", "--"]


def test_dockerfile_builds_with_debians_buildah() -> None:
    # buildah 1.28 (Debian 12) reads no heredocs: every script is a file of its own.
    assert "<<" not in DOCKERFILE.read_text()


def test_the_build_fails_when_the_driver_cannot_start() -> None:
    final = final_stage()
    last_copy = max(i for i, ins in enumerate(final) if ins.keyword == "COPY")
    runs = [i for i, ins in enumerate(final) if ins.keyword == "RUN"]
    assert final[runs[-1]].args == "felix-nat64-selfcheck" and runs[-1] > last_copy


def test_pip_settings_come_in_as_secrets_only() -> None:
    (pip,) = [ins for ins in dockerfile() if ins.keyword == "RUN" and "pip install" in ins.args]
    mounts = dict(re.findall(r"--mount=type=secret,id=([\w.-]+),target=(\S+)", pip.args))
    assert mounts == {"pip.conf": f"{SECRET_DIR}/pip.conf",
                      **{sid: f"{SECRET_DIR}/{sid}" for sid in FILE_SETTINGS.values()}}
    assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in pip.args
    assert not any(ins.keyword in ("ARG", "ENV") and "PIP" in ins.args for ins in dockerfile())


def test_build_context_keeps_what_pip_and_the_image_need() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("setup.cfg", "pyproject.toml", "README.md", "felix_nat64", "image"):
        assert (REPO / needed).exists()
        assert needed not in ignored
    assert {".git", ".venv", "tests", "testbed", "charts", "out"} <= ignored


def test_chart_commands_exist_in_the_image() -> None:
    scripts = installed_scripts()
    assert set(scripts) == {"felix-nat64-felix", "felix-nat64-modprobe", "felix-nat64-run-once",
                            "felix-nat64-selfcheck"}
    assert set(scripts) == {p.name for p in IMAGE_SCRIPTS.iterdir()}
    normal, cleanup = render(), render({"cleanupOnly": True})
    assert main_container(normal)["args"][0] in scripts
    assert pod_spec(normal)["initContainers"][0]["args"][0] in scripts
    assert main_container(cleanup)["args"][0] in scripts


@pytest.mark.parametrize("name", sorted(p.name for p in IMAGE_SCRIPTS.iterdir()))
def test_scripts_are_executable_bash(name: str) -> None:
    path = IMAGE_SCRIPTS / name
    assert path.read_text().startswith("#!/bin/bash\n")
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=10)


def script(name: str) -> str:
    return str(IMAGE_SCRIPTS / name)


def fake(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


# -- felix-nat64-felix -------------------------------------------------------------------------


@pytest.fixture
def felix_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    bin_dir = tmp_path / "calico-bin"
    bin_dir.mkdir()
    yield {"PATH": os.environ["PATH"], "CALICO_BIN_DIR": str(bin_dir), "STATE": str(tmp_path)}


def test_felix_runs_again_after_a_configuration_restart(felix_env: dict[str, str]) -> None:
    # Exits 129 (Felix's "restart for new config") once, then fails with 3.
    fake(Path(felix_env["CALICO_BIN_DIR"]) / "calico-node",
         'echo "$@" >>"$STATE/runs"\n'
         '[ "$(wc -l <"$STATE/runs")" -eq 1 ] && exit 129\n'
         "exit 3\n")
    result = subprocess.run([script("felix-nat64-felix")], env=felix_env, capture_output=True,
                            text=True, check=False, timeout=20)
    assert result.returncode == 3
    assert (Path(felix_env["STATE"]) / "runs").read_text() == "-felix\n-felix\n"
    assert "restarts to apply a configuration change" in result.stderr


def test_felix_command_line_follows_the_calico_release(felix_env: dict[str, str]) -> None:
    bin_dir = Path(felix_env["CALICO_BIN_DIR"])
    fake(bin_dir / "calico", 'echo "$@" >"$STATE/args"\n')
    fake(bin_dir / "calico-node", "exit 99\n")
    combined = subprocess.run([script("felix-nat64-felix")], env=felix_env, check=False, timeout=20)
    assert combined.returncode == 0
    assert (Path(felix_env["STATE"]) / "args").read_text() == "component felix\n"
    (bin_dir / "calico").unlink()
    (bin_dir / "calico-node").unlink()
    missing = subprocess.run([script("felix-nat64-felix")], env=felix_env, capture_output=True,
                             text=True, check=False, timeout=20)
    assert missing.returncode == 1 and "no Felix" in missing.stderr


def wait_for(path: Path, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_reaches_felix(felix_env: dict[str, str], spawn: Spawn) -> None:
    state = Path(felix_env["STATE"])
    fake(Path(felix_env["CALICO_BIN_DIR"]) / "calico-node",
         'trap \'echo stopped >"$STATE/term"; exit 0\' TERM\n'
         'echo up >"$STATE/up"\n'
         "while :; do sleep 0.05; done\n")
    proc = spawn([script("felix-nat64-felix")], felix_env)
    wait_for(state / "up", "fake Felix never started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert (state / "term").read_text() == "stopped\n"


# -- felix-nat64-modprobe ----------------------------------------------------------------------


@pytest.fixture
def module_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kernel = os.uname().release
    (tmp_path / "modules" / kernel).mkdir(parents=True)
    (tmp_path / "sys" / "module").mkdir(parents=True)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "FELIX_NAT64_SYSFS": str(tmp_path / "sys"),
            "FELIX_NAT64_MODULES": str(tmp_path / "modules"), "BIN": str(bin_dir), "ROOT": str(tmp_path)}


def run_modprobe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script("felix-nat64-modprobe")], env=env, capture_output=True, text=True,
                          check=False, timeout=20)


def test_modprobe_explains_a_missing_jool(module_env: dict[str, str]) -> None:
    fake(Path(module_env["BIN"]) / "modinfo", "exit 1\n")
    fake(Path(module_env["BIN"]) / "modprobe", 'echo "must not run" >&2; exit 1\n')
    result = run_modprobe(module_env)
    assert result.returncode == 1
    assert "no jool kernel module" in result.stderr and "jool-dkms" in result.stderr
    assert "must not run" not in result.stderr


def test_modprobe_loads_jool(module_env: dict[str, str]) -> None:
    fake(Path(module_env["BIN"]) / "modinfo", "exit 0\n")
    fake(Path(module_env["BIN"]) / "modprobe",
         '[ "$1" = jool ] || exit 1\n'
         'mkdir -p "$FELIX_NAT64_SYSFS/module/jool"\n'
         'echo 4.1.9.0 >"$FELIX_NAT64_SYSFS/module/jool/version"\n')
    result = run_modprobe(module_env)
    assert result.returncode == 0, result.stderr
    assert "loaded jool 4.1.9.0" in result.stdout
    # Already loaded: nothing to do, not even with modprobe gone.
    (Path(module_env["BIN"]) / "modprobe").unlink()
    result = run_modprobe(module_env)
    assert result.returncode == 0 and "already loaded" in result.stdout


def test_modprobe_reports_a_failed_load(module_env: dict[str, str]) -> None:
    fake(Path(module_env["BIN"]) / "modinfo", "exit 0\n")
    fake(Path(module_env["BIN"]) / "modprobe",
         'echo "modprobe: ERROR: Key was rejected by service" >&2\nexit 1\n')
    result = run_modprobe(module_env)
    assert result.returncode == 1
    assert "Key was rejected" in result.stderr and "Secure Boot" in result.stderr


def test_modprobe_needs_the_hosts_modules(module_env: dict[str, str]) -> None:
    module_env["FELIX_NAT64_MODULES"] = str(Path(module_env["ROOT"]) / "nowhere")
    result = run_modprobe(module_env)
    assert result.returncode == 1 and "not mounted" in result.stderr


# -- felix-nat64-run-once ----------------------------------------------------------------------


def test_run_once_marks_success_and_idles(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir / "sleep", 'echo "idle $*" >"$STATE/slept"\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(tmp_path),
           "FELIX_NAT64_DONE_FILE": str(tmp_path / "done")}
    ok = subprocess.run([script("felix-nat64-run-once"), "true"], env=env, check=False, timeout=10)
    assert ok.returncode == 0 and (tmp_path / "done").exists()
    assert (tmp_path / "slept").read_text() == "idle infinity\n"
    (tmp_path / "done").unlink()
    failed = subprocess.run([script("felix-nat64-run-once"), "sh", "-c", "exit 7"], env=env,
                            check=False, timeout=10)
    assert failed.returncode == 7 and not (tmp_path / "done").exists()
    usage = subprocess.run([script("felix-nat64-run-once")], env=env, capture_output=True, text=True,
                           check=False, timeout=10)
    assert usage.returncode == 2 and "usage" in usage.stderr


# -- felix-nat64-selfcheck ---------------------------------------------------------------------


@pytest.fixture
def selfcheck_env(tmp_path: Path) -> dict[str, str]:
    """The development install's felix-nat64 and driver, and a Felix binary that links."""
    calico = tmp_path / "calico-bin"
    calico.mkdir()
    (calico / "calico-node").symlink_to("/bin/true")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    return {"PATH": f"{fakes}:{VENV_BIN}:/usr/bin:/bin", "CALICO_BIN_DIR": str(calico), "FAKES": str(fakes)}


def run_selfcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script("felix-nat64-selfcheck")], env=env, capture_output=True, text=True,
                          check=False, timeout=60)


def test_selfcheck_passes_with_a_working_driver(selfcheck_env: dict[str, str]) -> None:
    result = run_selfcheck(selfcheck_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "felix-nat64-driver decodes a Felix stream" in result.stdout


def test_selfcheck_fails_when_the_driver_cannot_start(selfcheck_env: dict[str, str]) -> None:
    fake(Path(selfcheck_env["FAKES"]) / "felix-nat64-driver",
         "echo \"ModuleNotFoundError: No module named 'yaml'\" >&2\nexit 1\n")
    result = run_selfcheck(selfcheck_env)
    assert result.returncode == 1
    assert "felix-nat64-driver failed on a Felix stream (exit status 1)" in result.stderr
    assert "No module named 'yaml'" in result.stderr


def test_selfcheck_fails_when_the_driver_ignores_the_stream(selfcheck_env: dict[str, str]) -> None:
    fake(Path(selfcheck_env["FAKES"]) / "felix-nat64-driver", "exit 0\n")
    result = run_selfcheck(selfcheck_env)
    assert result.returncode == 1 and "felix-nat64-driver failed" in result.stderr


def test_selfcheck_fails_when_felix_misses_a_library(selfcheck_env: dict[str, str]) -> None:
    fake(Path(selfcheck_env["FAKES"]) / "ldd", 'echo "\tlibelf.so.1 => not found"\n')
    result = run_selfcheck(selfcheck_env)
    assert result.returncode == 1 and "misses the shared libraries" in result.stderr
    (Path(selfcheck_env["CALICO_BIN_DIR"]) / "calico-node").unlink()
    result = run_selfcheck(selfcheck_env)
    assert result.returncode == 1 and "no Felix" in result.stderr


# -- the calico-node stand-in ------------------------------------------------------------------

FAKE_DRIVER = """\
import os, signal, sys, time
state = os.environ["STATE"]
signal.signal(signal.SIGTERM, lambda *_: (open(f"{state}/term", "w").close(), sys.exit(0)))
os.fstat(4)
data = b""
while len(data) < int(os.environ["EXPECT"]):
    data += os.read(3, 65536)
# Written whole, then renamed: the test waits for the name to appear.
open(f"{state}/received.part", "wb").write(data)
os.rename(f"{state}/received.part", f"{state}/received")
print("fake driver has the stream", flush=True)
if os.environ.get("DRIVER_EXITS"):
    sys.exit(int(os.environ["DRIVER_EXITS"]))
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def standin(tmp_path: Path) -> dict[str, str]:
    """The stand-in as the image holds it (a zipapp), a fake driver and a recorded stream."""
    app = tmp_path / "app" / "testbed"
    app.mkdir(parents=True)
    for name in ("__init__.py", "felix.py", "calico_node_standin.py"):
        (app / name).write_text((REPO / "testbed" / name).read_text())
    calico = tmp_path / "calico-bin"
    calico.mkdir()
    zipapp.create_archive(app.parent, calico / "calico-node", interpreter="/usr/bin/python3",
                          main="testbed.calico_node_standin:run")
    driver = tmp_path / "drivers" / "fake-driver"
    driver.parent.mkdir()
    driver.write_text(f"#!{sys.executable}\n{FAKE_DRIVER}")
    driver.chmod(0o755)
    stream = (REPO / "examples" / "two-prefixes.stream").read_bytes()
    (tmp_path / "stream").write_bytes(stream)
    return {"PATH": f"{driver.parent}:/usr/bin:/bin", "STATE": str(tmp_path), "EXPECT": str(len(stream)),
            "CALICO_BIN_DIR": str(calico), "FELIX_USEINTERNALDATAPLANEDRIVER": "false",
            "FELIX_DATAPLANEDRIVER": "fake-driver", "FELIX_NAT64_STANDIN_STREAM": str(tmp_path / "stream")}


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts processes that each lead their own group, killed whole when the test ends.

    A failed assertion must not leave a Felix, a stand-in or a fake driver
    running behind a wrapper that was killed alone.
    """
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def start_standin(spawn: Spawn, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return spawn([f"{env['CALICO_BIN_DIR']}/calico-node", *(argv or ["-felix"])], env,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_standin_streams_and_stops_like_felix_on_sigterm(standin: dict[str, str], spawn: Spawn) -> None:
    state = Path(standin["STATE"])
    proc = start_standin(spawn, standin)
    wait_for(state / "received", "the stand-in never delivered the stream")
    assert (state / "received").read_bytes() == (state / "stream").read_bytes()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and (state / "term").exists(), out
    assert "fake driver has the stream" in out and "driver exited with status 0" in out


def test_standin_exits_129_on_sighup(standin: dict[str, str], spawn: Spawn) -> None:
    state = Path(standin["STATE"])
    proc = start_standin(spawn, standin)
    wait_for(state / "received", "the stand-in never delivered the stream")
    started = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 129 and (state / "term").exists(), out
    assert time.monotonic() - started >= 2.0  # Felix pauses before it exits
    assert "exiting with 129 for the config change" in out


def test_standin_exits_when_the_driver_does(standin: dict[str, str], spawn: Spawn) -> None:
    proc = start_standin(spawn, {**standin, "DRIVER_EXITS": "3"})
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "driver process stopped (status 3)" in out


@pytest.mark.parametrize(("change", "message"), [
    ({"FELIX_USEINTERNALDATAPLANEDRIVER": "true"}, "must be false"),
    ({"FELIX_DATAPLANEDRIVER": "no-such-driver"}, "'no-such-driver' not found"),
    ({"FELIX_NAT64_STANDIN_STREAM": "/nonexistent"}, "cannot read the recorded stream"),
])
def test_standin_refuses_what_felix_would_not_run(standin: dict[str, str], change: dict[str, str],
                                                  message: str, spawn: Spawn) -> None:
    proc = start_standin(spawn, {**standin, **change})
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and message in out
    proc = start_standin(spawn, standin, "-bird")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "only 'calico-node -felix'" in out


def test_the_wrapper_restarts_the_standin_after_129(standin: dict[str, str], spawn: Spawn) -> None:
    state = Path(standin["STATE"])
    proc = spawn([script("felix-nat64-felix")], standin, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    wait_for(state / "received", "the first Felix never delivered the stream")
    (state / "received").unlink()
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
    (standin_pid,) = [int(p) for p in children.split()]
    os.kill(standin_pid, signal.SIGHUP)
    wait_for(state / "received", "Felix did not start again after exiting with 129")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert "Felix restarts to apply a configuration change" in out
    assert out.count("fake driver has the stream") == 2
    assert proc.returncode == 1  # what Felix returns after SIGTERM


# -- this machine's pip settings, as build secrets ---------------------------------------------


def test_pip_settings_merge_like_pip_and_become_self_contained(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    constraints = [tmp_path / "c1.txt", tmp_path / "c2.txt"]
    constraints[0].write_text("torch<=2")
    constraints[1].write_text("numpy<3")
    glob_conf = tmp_path / "global.conf"
    glob_conf.write_text(f"[global]\nindex-url = https://mirror.example/simple\ncert = /nonexistent\n"
                         f"constraint = {constraints[0]} {constraints[1]}\n[install]\ntimeout = 5\n")
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nextra-index-url = https://extra.example/simple file:///opt/pypi/simple\n"
        "find-links = /opt/wheels\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PIP_CERT": str(ca), "PIP_TIMEOUT": "60", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    settings = resolve_pip_settings(env, str(home), work, global_files=(str(glob_conf),),
                                    site_file=str(tmp_path / "none"))
    assert settings.secrets == {"pip.conf": str(work / "pip.conf"), "pip-cert": str(ca),
                                "pip-constraint": str(work / "pip-constraint")}
    conf = (work / "pip.conf").read_text()
    assert oct(os.stat(work / "pip.conf").st_mode & 0o777) == "0o600"
    assert "index-url = https://mirror.example/simple" in conf
    assert "extra-index-url = https://extra.example/simple\n" in conf
    assert f"cert = {SECRET_DIR}/pip-cert" in conf and f"constraint = {SECRET_DIR}/pip-constraint" in conf
    assert "timeout = 60" in conf and "timeout = 5" not in conf  # the variable wins everywhere
    assert "find-links" not in conf and "/opt/" not in conf
    assert (work / "pip-constraint").read_text() == "torch<=2\nnumpy<3\n"
    assert len(settings.notes) == 2


def test_pip_settings_follow_pip_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\nindex-url = https://user.example\n")
    chosen = tmp_path / "chosen.conf"
    chosen.write_text("[global]\nretries = 9\n")
    work = tmp_path / "work"
    work.mkdir()
    none = (str(tmp_path / "none"),)
    # An existing PIP_CONFIG_FILE replaces the user's files, as in pip.
    resolve_pip_settings({"PIP_CONFIG_FILE": str(chosen)}, str(home), work, global_files=none)
    conf = (work / "pip.conf").read_text()
    assert "retries = 9" in conf and "user.example" not in conf
    quiet = resolve_pip_settings({"PIP_CONFIG_FILE": os.devnull}, str(home), work, global_files=none)
    assert quiet.secrets == {}
    # Nothing configured: no secrets at all, and the build uses pip's defaults.
    assert resolve_pip_settings({}, str(tmp_path / "nobody"), work, global_files=none,
                                site_file=none[0]).secrets == {}
