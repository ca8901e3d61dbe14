"""The VM runner as CI uses it: output redirected to a log file that
earlier stages have already written to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_guests_output_is_appended_to_a_log_file_and_its_status_kept(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    log.write_text("host stage: 5 passed\n")
    guest = "echo guest stage: 1 passed; echo on stderr >&2; exit 3"
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "testbed.vm", "sh", "-c", guest], cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False)
    text = log.read_text(errors="replace")
    assert done.returncode == 3, text
    assert text.startswith("host stage: 5 passed\n"), text[:500]
    assert "guest stage: 1 passed" in text and "on stderr" in text, text[-500:]
