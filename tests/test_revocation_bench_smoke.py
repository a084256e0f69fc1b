"""Smoke tests for the revocation benchmarks: each runs with tiny sizes and prints its tables.

No timing is asserted (the machine is shared and noisy): these catch a script that no longer
runs against the current code, or that stopped printing what it is for.
"""

from __future__ import annotations

import shutil

import pytest
from benchrun import run_benchmark
from redis_server import REDIS_BINARY, SKIP_REASON


def run(script: str, *args: str) -> str:
    return run_benchmark(script, *args, timeout=300).stdout


def test_hot_path_prints_the_revocation_table() -> None:
    out = run("hot_path.py", "--quick")
    assert "## Revocation on the hot path: cached verify, empty list vs 3,000 entries" in out
    for row in ("| cached verify, empty list ", "| added by the list ", "| re-check after a change "):
        assert row in out
    assert "target <= 200 ns: PASS" in out or "target <= 200 ns: MISS" in out
    # The cache's own tables are still there.
    assert "## Verified-token cache: time per operation" in out


@pytest.mark.skipif(REDIS_BINARY is None, reason=SKIP_REASON)
def test_revocation_benchmark_prints_propagation_and_throughput() -> None:
    out = run("revocation.py", "--quick", "--revocations", "5", "--duration", "1")
    assert "## Revocation propagation across replicas" in out
    assert "| POST /revocations -> refused by another replica " in out
    assert "p99 < 100 ms: " in out
    assert "## Replica throughput while revocations stream in" in out
    if shutil.which("wrk"):
        assert "| 100 revocations/s streaming in " in out
        assert "throughput >= 0.95x: " in out
    else:
        assert "wrk is not installed" in out
