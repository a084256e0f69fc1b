"""Smoke test for benchmarks/client.py: it runs with ``--quick`` and prints its three tables.

No timing is asserted (the machine is shared and noisy). The token-request counts are not timings:
gatekeeper's single flight must show exactly one token request for 100 concurrent requests.
"""

from __future__ import annotations

import re

from benchrun import run_benchmark


def test_client_benchmark_runs_and_prints_its_tables() -> None:
    out = run_benchmark("client.py", "--quick", timeout=240).stdout
    assert "1. auth flow alone" in out
    assert re.search(r"^\| sync\s+\| [\d.,]+\s+\| [\d.,]+\s+\| [+-][\d.]+", out, re.M)
    assert "2. end to end through httpx.MockTransport" in out
    assert re.search(r"^\| async\s+\|.*\| [\d.]+x\s+\| [\d.]+x\s+\| [\d.]+x\s+\|$", out, re.M)
    assert "3. 100 concurrent requests" in out
    assert re.search(r"^\| gatekeeper\s+\| 100 threads \| 1\s+\| 0\s+\|", out, re.M), out
    assert re.search(r"^\| gatekeeper\s+\| 100 tasks\s+\| 1\s+\| 0\s+\|", out, re.M), out
    assert re.search(r"^\| Authlib OAuth2Client\s+\| 100 threads \| \d+", out, re.M)
