"""Smoke test for benchmarks/gateway.py: ``--quick`` runs every leg with tiny sizes and prints its
tables. No timing is asserted (the machine is shared and noisy); this only catches a script that
no longer runs against the current gateway, or stopped printing what it is for."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from benchrun import run_benchmark

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)


@pytest.fixture(scope="module")
def output() -> str:
    return run_benchmark("gateway.py", "--quick", timeout=600).stdout


@pytest.mark.parametrize(
    "expected",
    [
        "## Decision endpoint vs a bare Starlette endpoint",
        "| gatekeeper /auth, cached token (asyncio + h11) ",
        "| gatekeeper /auth, cached token (uvloop + httptools) ",
        "## Reverse proxy vs the upstream directly",
        "| gatekeeper proxy -> upstream (asyncio + h11) ",
        "| gatekeeper proxy -> upstream (uvloop + httptools) ",
        "## Ratios and targets",
        "## Memory: 3,000 decisions requested over 2,000 distinct tokens",
        "## Memory: 16 MiB streamed through the reverse proxy",
        "| upload ",
        "| download ",
    ],
)
def test_prints_its_tables(output: str, expected: str) -> None:
    assert expected in output


def test_judges_each_target(output: str) -> None:
    # decision/bare on two stacks and proxy/upstream on asyncio + h11: PASS or MISS each (the
    # outcome depends on the machine, the verdict's presence does not).
    verdicts = re.findall(r"\| (?:PASS|MISS) +\|$", output, flags=re.MULTILINE)
    assert len(verdicts) == 3


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed"
)
def test_nginx_rows_when_nginx_is_installed(output: str) -> None:
    assert "| nginx + auth_request -> gatekeeper -> upstream " in output
    assert "| nginx proxy_pass / upstream (uvloop + httptools): the ceiling " in output


def test_decision_only_runs_leg_one_alone() -> None:
    out = run_benchmark("gateway.py", "--quick", "--decision-only", timeout=300).stdout
    assert "| gatekeeper /auth, cached token (uvloop + httptools) " in out
    assert len(re.findall(r"^\| decision / bare \(.*\| (?:PASS|MISS) +\|$", out, flags=re.MULTILINE)) == 2
    assert "## Reverse proxy" not in out
    assert "## Memory" not in out
    assert "nginx" not in out.split("## Decision endpoint")[1]
