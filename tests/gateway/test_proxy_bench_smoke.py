"""Smoke test for ``benchmarks/gateway.py --proxy-only``: leg 3 alone (the reverse proxy vs the
upstream directly on three server stacks, nginx as the ceiling when installed) runs with tiny
sizes and prints its table and verdict. No timing is asserted: the machine is shared and noisy."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchrun import run_benchmark

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)


def test_proxy_only_runs_leg_three_alone() -> None:
    out = run_benchmark("gateway.py", "--quick", "--proxy-only", timeout=300).stdout
    assert "## Reverse proxy vs the upstream directly" in out
    for stack in ("asyncio + h11", "uvloop + httptools", "asyncio + httptools"):
        assert f"| upstream directly ({stack}) " in out
        assert f"| gatekeeper proxy -> upstream ({stack}) " in out
    # The target is judged on the default stack as installed with the [server] extra (asyncio +
    # httptools: the extra has no uvloop) and only there; the other stacks are reported.
    assert "default stack as installed with the [server] extra: asyncio + httptools" in out
    judged = (
        r"^\| gatekeeper proxy / upstream \(asyncio \+ httptools: the default stack\) .*\| (?:PASS|MISS) +\|$"
    )
    assert len(re.findall(judged, out, re.MULTILINE)) == 1
    assert len(re.findall(r"^\| gatekeeper proxy / upstream .*\| (?:PASS|MISS) +\|$", out, re.MULTILINE)) == 1
    # The floor: a minimal ASGI proxy on the default stack, reported, not judged.
    assert "| minimal ASGI proxy -> upstream (asyncio + httptools): the ASGI floor " in out
    assert re.search(
        r"^\| minimal ASGI proxy / upstream \(asyncio \+ httptools\): .*\| - +\|$", out, re.MULTILINE
    )
    assert "## Decision endpoint" not in out
    assert "auth_request" not in out
    assert "## Memory" not in out
