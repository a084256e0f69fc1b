"""Run a script of benchmarks/ the way its smoke test does: a subprocess of this interpreter, from
the repository root, with its output captured; a non-zero exit fails the test with both streams.

Smoke tests import it (``from benchrun import run_benchmark``); no timing is ever asserted on
what it returns (the machine is shared and noisy), only that the script runs and prints its tables.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def run_benchmark(
    script: str,
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script> <args>`` (with ``env`` as its whole environment, when given);
    with ``check``, assert it exited 0. Return the finished process."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )
    if check:
        assert result.returncode == 0, (
            f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result
