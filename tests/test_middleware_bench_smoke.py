"""Smoke tests for benchmarks/middleware.py: it runs end to end and prints its tables (no timings)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from benchrun import run_benchmark

TOKEN_PREFIX = "eyJ"  # base64url of '{"': how every JWT (header) starts
TINY_IN_PROCESS = ["--in-process-rounds", "2", "--in-process-requests", "50"]
FAST_STACK = "uvloop+httptools"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run_benchmark("middleware.py", *args, env=env, timeout=timeout, check=False)


def assert_in_process_table(stdout: str) -> None:
    lines = stdout.splitlines()
    assert any(line.startswith("| in process, per request ") for line in lines), stdout
    [cached] = [line for line in lines if line.startswith("| gatekeeper, cached token ")]
    assert "<= 1.00 us" in cached
    assert "PASS" in cached or "MISS" in cached
    assert any(line.startswith("| gatekeeper, no cache ") for line in lines)
    assert any(line.startswith("| Gate.probe alone, from a Python function ") for line in lines)
    assert any(line.startswith("| in front of the Starlette app, cached token ") for line in lines)


def test_quick_run_prints_the_tables_for_both_stacks() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install -e '.[bench]')")
    done = run("--quick", "--rounds", "1", *TINY_IN_PROCESS)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert_in_process_table(done.stdout)
    stacks = ["asyncio+h11"]
    if importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools"):
        stacks.append(FAST_STACK)
    else:
        assert f"uvicorn stack {FAST_STACK} is not installed" in done.stdout
    for stack in stacks:
        assert f"| variant ({stack}) " in done.stdout, output
        for variant in ("bare", "gatekeeper", "pyjwt"):
            assert f"round 1/1 {stack:<17} {variant:<10} " in done.stdout
        assert f"| req/s ratio ({stack}) " in done.stdout
    assert done.stdout.count("| gatekeeper / bare ") == len(stacks)
    assert done.stdout.count("| gatekeeper / pyjwt ") == len(stacks)
    assert TOKEN_PREFIX not in output  # the token is never printed


def test_in_process_only_needs_no_wrk(tmp_path: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install -e '.[bench]')")
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no wrk on PATH
    done = run("--in-process-only", *TINY_IN_PROCESS, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_in_process_table(done.stdout)
    assert "req/s" not in done.stdout  # no servers were loaded
    assert TOKEN_PREFIX not in done.stdout + done.stderr


def test_missing_wrk_says_how_to_install_it(tmp_path: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install -e '.[bench]')")
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no wrk on PATH
    done = run("--quick", env=env, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "apt-get install wrk" in done.stderr
    assert "--in-process-only" in done.stderr
