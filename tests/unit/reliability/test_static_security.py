"""Security properties that need no VM: what runs commands and what the
driver's socket lets in (what the Helm chart grants is checked in
tests/chart/test_chart_security.py).

- No shell and no command line built from text anywhere in felix_nat64/
  (felix_nat64/testing aside, which is test tooling): no ``shell=True``, no
  ``os.system``/``os.popen``/``subprocess.getoutput``, no
  ``asyncio.create_subprocess_shell``, and every subprocess call gets an
  argument list, never a string. The scanner is checked against code that
  does each of these, so an empty result means something.
- ``felix-nat64 driver --socket`` creates its socket 0600 in a 0700
  directory whatever the caller's umask, and never replaces a file or a
  symlink that sits at the path.

Run: ``.venv/bin/pytest -q tests/unit/reliability/test_static_security.py``
"""

from __future__ import annotations

import ast
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from felix_nat64.model.settings import Settings

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "felix_nat64"
EXCLUDED = (PACKAGE / "testing", PACKAGE / "wire" / "felixbackend_pb2.py")


# ---------------------------------------------------------------------------
# No shell, no command strings
# ---------------------------------------------------------------------------

# Calls that always go through /bin/sh.
SHELL_CALLS = {
    ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"), ("pty", "spawn"),
}
# Calls whose first argument is the command: it must be a list or tuple.
EXEC_CALLS = {
    ("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"), ("subprocess", "check_call"),
    ("subprocess", "check_output"), ("asyncio", "create_subprocess_exec"), ("os", "posix_spawn"),
    ("os", "posix_spawnp"), ("os", "execv"), ("os", "execve"), ("os", "execvp"), ("os", "execvpe"),
}
# Builtins that turn text into code.
CODE_FROM_TEXT = {"eval", "exec", "compile", "__import__"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


@dataclass(frozen=True)
class ScanResult:
    findings: tuple[Finding, ...]
    exec_calls: int  # subprocess/exec calls seen (all with argument lists when findings is empty)


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.modules: dict[str, str] = {}  # local name -> module ("sp" -> "subprocess")
        self.functions: dict[str, tuple[str, str]] = {}  # local name -> (module, function)
        self.findings: list[Finding] = []
        self.exec_calls = 0
        self._strings: list[set[str]] = [set()]  # names bound to text, per scope

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.modules[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if node.module:
                self.functions[alias.asname or alias.name] = (node.module, alias.name)

    def _scoped(self, node: ast.AST) -> None:
        self._strings.append(set())
        self.generic_visit(node)
        self._strings.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Assign(self, node: ast.Assign) -> None:
        if _is_text(node.value, self._strings[-1]):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self._strings[-1].add(target.id)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None and _is_text(node.value, self._strings[-1]) \
                and isinstance(node.target, ast.Name):
            self._strings[-1].add(node.target.id)
        self.generic_visit(node)

    def _target(self, func: ast.expr) -> tuple[str, str] | None:
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = self.modules.get(func.value.id)
            if module is not None:
                return module, func.attr
        if isinstance(func, ast.Name):
            return self.functions.get(func.id)
        return None

    def visit_Call(self, node: ast.Call) -> None:
        target = self._target(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in CODE_FROM_TEXT:
            self._find(node, f"{node.func.id}() turns text into code")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                               and keyword.value.value is False):
                self._find(node, "shell= is not literally False")
        if target in SHELL_CALLS:
            self._find(node, f"{'.'.join(target)}() runs a shell")
        if target is not None and target in EXEC_CALLS:
            self.exec_calls += 1
            # os.posix_spawn(path, argv, ...) and os.exec*(path, argv, ...) take the
            # argument vector second; the others take the command first.
            position = 1 if target[0] == "os" else 0
            keywords = ("argv", "args") if position else ("args", "program")
            command = node.args[position] if len(node.args) > position else next(
                (k.value for k in node.keywords if k.arg in keywords), None)
            if command is not None and _is_text(command, set().union(*self._strings)):
                self._find(node, f"{'.'.join(target)}() gets its command as a string")
        self.generic_visit(node)

    def _find(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), what))


def _is_text(node: ast.expr, names: set[str]) -> bool:
    """True for expressions that make a str: literals, f-strings, concatenation and
    %-formatting of text, str methods such as .format/.join, and names bound to text."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _is_text(node.left, names) or _is_text(node.right, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = node.func.value
        if node.func.attr in ("format", "join", "strip", "replace") and not isinstance(owner, ast.Name):
            return _is_text(owner, names)
        if isinstance(owner, ast.Name) and owner.id == "shlex" and node.func.attr == "join":
            return True
    if isinstance(node, ast.Name):
        return node.id in names
    return False


def scan_source(source: str, path: str = "<source>") -> ScanResult:
    """The shell and command-string findings in one Python source."""
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return ScanResult(tuple(scanner.findings), scanner.exec_calls)


def product_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not any(p == e or p.is_relative_to(e) for e in EXCLUDED))


def scan_product() -> ScanResult:
    findings: list[Finding] = []
    calls = 0
    for path in product_files():
        result = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
        findings += result.findings
        calls += result.exec_calls
    return ScanResult(tuple(findings), calls)


BAD_SOURCES = {
    "shell=True": "import subprocess\nsubprocess.run(['ls'], shell=True)\n",
    "shell=variable": "import subprocess\nflag = True\nsubprocess.run(['ls'], shell=flag)\n",
    "os.system": "import os\nos.system('ls')\n",
    "os.popen": "import os as o\no.popen('ls')\n",
    "getoutput": "from subprocess import getoutput\ngetoutput('ls')\n",
    "string command": "import subprocess\nsubprocess.check_output('ls -l')\n",
    "f-string command": "import subprocess\ndef f(x):\n    subprocess.Popen(f'ip link del {x}')\n",
    "formatted command": "import subprocess as sp\nsp.call('ip link del %s' % 'x')\n",
    "concatenated command": "from subprocess import run\ndef f(x):\n    run('nft ' + x)\n",
    "command in a variable": "import subprocess\ndef f(x):\n    cmd = f'jool {x}'\n    subprocess.run(cmd)\n",
    "joined command": "import shlex, subprocess\nsubprocess.run(shlex.join(['a', 'b']))\n",
    "args= keyword": "import subprocess\nsubprocess.run(args='ls')\n",
    "create_subprocess_shell": "import asyncio\nasyncio.create_subprocess_shell('ls')\n",
    "eval": "eval('1 + 1')\n",
    "exec": "exec('x = 1')\n",
}


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
def test_the_scanner_finds_each_way_of_running_a_shell(name: str) -> None:
    assert scan_source(BAD_SOURCES[name]).findings, name


def test_the_scanner_accepts_argument_lists() -> None:
    good = ("import subprocess, sys\n"
            "def f(x):\n"
            "    argv = ['ip', 'link', 'del', x]\n"
            "    subprocess.run(argv, check=False)\n"
            "    subprocess.run(['modprobe', 'jool'], capture_output=True, shell=False)\n"
            "    subprocess.Popen([sys.executable, '-m', 'x', f'--name={x}'])\n")
    result = scan_source(good)
    assert result.findings == () and result.exec_calls == 3


def test_no_shell_and_no_command_strings_in_felix_nat64() -> None:
    result = scan_product()
    assert [str(f) for f in result.findings] == []
    # Not vacuous: the package does run commands (modprobe, the demo's VM), all by list.
    assert result.exec_calls >= 3
    assert len(product_files()) > 40


# ---------------------------------------------------------------------------
# The driver's unix socket
# ---------------------------------------------------------------------------


def _driver(path: Path, status: Path, umask: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "felix_nat64.cli.main", "driver", "--socket", str(path),
         "--status-file", str(status)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, umask=umask, cwd=REPO)


def _wait_for_socket(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> os.stat_result:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISSOCK(st.st_mode):
            return st
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    output = proc.communicate(timeout=10)[0] if proc.poll() is not None else "(still running)"
    raise AssertionError(f"no socket at {path}: {output}")


@pytest.fixture
def driver_socket(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    # A directory the driver must create, under a world-writable one, with umask 0:
    # whatever the caller's umask, the socket must come out private.
    base = tmp_path / "open"
    base.mkdir()
    base.chmod(0o777)
    path = base / "felix-nat64" / "driver.sock"
    proc = _driver(path, tmp_path / "status.json", umask=0)
    try:
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_driver_socket_is_created_0600_whatever_the_umask(
        driver_socket: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = driver_socket
    st = _wait_for_socket(path, proc)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    directory = os.lstat(path.parent)
    assert stat.S_IMODE(directory.st_mode) == 0o700, oct(directory.st_mode)
    # It is the driver's live socket: its owner can connect.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
    proc.terminate()
    assert proc.wait(20) == 0
    assert not path.exists()  # removed when the driver stops


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_driver_socket_never_replaces_something_else(tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    path = tmp_path / "driver.sock"
    if kind == "file":
        path.write_text("keep me\n")
    elif kind == "symlink":
        path.symlink_to(victim)
    else:
        path.mkdir()
    proc = _driver(path, tmp_path / "status.json")
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode != 0, output
    assert "not a socket" in output or "cannot serve" in output, output
    assert victim.read_text() == "keep me\n"
    if kind == "file":
        assert path.read_text() == "keep me\n"
    elif kind == "symlink":
        assert path.is_symlink() and os.readlink(path) == str(victim)
    else:
        assert path.is_dir()


def test_metrics_and_health_listen_on_loopback_by_default() -> None:
    assert Settings(prefixes=()).metrics_host == "127.0.0.1"
