"""Smoke test for benchmarks/gateway_inprocess.py: ``--quick`` runs every variant with tiny sizes
and prints its table. No timing is asserted (the machine is shared and noisy); this only catches a
script that no longer runs against the assembled gateway, or stopped printing what it is for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from benchrun import run_benchmark

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_quick_run_prints_the_table_and_the_ratios() -> None:
    out = run_benchmark("gateway_inprocess.py", "--quick").stdout
    assert "In-process cached-token GET /auth" in out
    for variant in ("bare", "decision (metrics off)", "decision (metrics on)"):
        assert re.search(rf"^\| {re.escape(variant)} +\| \d+\.\d +\|", out, re.MULTILINE), variant
    assert re.search(r"decision / bare \(metrics on\): \d+\.\d\dx; \(metrics off\): \d+\.\d\dx", out)
    # the second table: both apps behind uvicorn's protocol classes, fed in memory; the header
    # counts are read from the bytes each protocol wrote (bare: date, server, content-length;
    # the allow: date, 4 identity headers, X-Gatekeeper-Uri, no-store, content-length)
    assert "through uvicorn's protocol classes, in memory" in out
    for stack in ("h11", "httptools"):
        assert re.search(rf"^\| bare \({stack}\) +\| 3 +\| \d+ +\| \d+\.\d +\|", out, re.MULTILINE), stack
        decision = rf"^\| decision, metrics on \({stack}\) +\| 8 +\| \d+ +\| \d+\.\d +\|"
        assert re.search(decision, out, re.MULTILINE), stack
        assert re.search(rf"^decision / bare through {stack}: \d+\.\d\dx$", out, re.MULTILINE), stack


def test_the_wrk_benchmarks_nice_option_reaches_its_processes() -> None:
    # benchmarks/gateway.py --nice (its decision leg is measured next to this script's numbers):
    # the niceness is applied before any server or wrk starts, and the header says which.
    import shutil

    import pytest

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    result = run_benchmark("gateway.py", "--quick", "--decision-only", "--nice", "3", timeout=300)
    assert "servers and wrk at nice 3;" in result.stdout
    assert "| gatekeeper /auth, cached token (asyncio + h11) " in result.stdout


def test_callgrind_mode_refuses_to_run_outside_valgrind() -> None:
    result = run_benchmark("gateway_inprocess.py", "--callgrind", "cg.out", "--requests", "3", check=False)
    assert result.returncode == 1
    assert "run this under valgrind --tool=callgrind" in result.stderr


def test_callgrind_mode_counts_instructions_per_request(tmp_path: Path) -> None:
    import shutil

    import pytest

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    out = tmp_path / "cg.out"
    result = subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
            str(BENCHMARKS / "gateway_inprocess.py"), "--callgrind", str(out), "--requests", "3",
            "--stacks", "httptools",
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=BENCHMARKS.parent,
    )  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr[-2000:]}"
    assert "Instructions per request through uvicorn's protocol classes" in result.stdout
    for variant in ("bare (httptools)", "decision, metrics on (httptools)"):
        row = rf"^\| {re.escape(variant)} +\| [\d,]+ +\| \d\.\d{{3}}x +\|"
        assert re.search(row, result.stdout, re.MULTILINE), variant
