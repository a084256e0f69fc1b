"""Smoke test for benchmarks/middleware.py: it runs end to end and prints its table (no timings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "middleware.py"
TOKEN_PREFIX = "eyJ"  # base64url of '{"': how every JWT (header) starts


def test_quick_run_prints_the_table() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install -e '.[bench]')")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert any(line.startswith("| variant ") and "req/s" in line for line in done.stdout.splitlines()), output
    for variant in ("bare", "gatekeeper", "pyjwt"):
        assert f"| {variant} " in done.stdout
    assert "gatekeeper / bare" in done.stdout
    assert "gatekeeper / pyjwt" in done.stdout
    assert TOKEN_PREFIX not in output  # the token is never printed


def test_missing_wrk_says_how_to_install_it(tmp_path: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install -e '.[bench]')")
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no wrk on PATH
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "apt-get install wrk" in done.stderr
