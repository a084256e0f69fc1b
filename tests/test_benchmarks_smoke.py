"""Smoke tests for the benchmark scripts: each runs with ``--quick`` and prints its tables.

No timing is asserted (the machine is shared and noisy); these only catch a script that no longer
runs against the current code, or that stopped printing what it is for.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from benchrun import run_benchmark


def run_quick(script: str) -> subprocess.CompletedProcess[str]:
    return run_benchmark(script, "--quick")


@pytest.fixture(scope="module")
def hot_path_output() -> str:
    return run_quick("hot_path.py").stdout


@pytest.fixture(scope="module")
def verify_run() -> subprocess.CompletedProcess[str]:
    return run_quick("verify.py")


@pytest.fixture(scope="module")
def verify_output(verify_run: subprocess.CompletedProcess[str]) -> str:
    return verify_run.stdout


@pytest.mark.parametrize(
    "expected",
    [
        "## Verified-token cache: time per operation",
        "| operation ",
        "| hit, fresh equal str ",
        "| miss + insert, full ",
        "## Verified-token cache: memory per entry",
        "| total per entry ",
        "## Verified-token cache: flood of distinct tokens",
        "| final cache length       | 10,000 ",
        "| hot-set lookups ",
    ],
)
def test_hot_path_prints_its_tables(hot_path_output: str, expected: str) -> None:
    assert expected in hot_path_output


@pytest.mark.parametrize(
    "expected",
    [
        "## Token verification: median µs per call",
        "| alg   | token chars | gk cached | gk cached, fresh str | gk uncached | bare joserfc | PyJWT |",
        "## Ratios and targets",
        "| RS256 | cached speed-up vs PyJWT, fresh str ",
        "| EdDSA | gk uncached / bare joserfc ",
    ],
)
def test_verify_prints_its_tables(verify_output: str, expected: str) -> None:
    assert expected in verify_output


def test_verify_judges_every_target(verify_output: str) -> None:
    # One verdict for the RS256 speed-up and one overhead verdict per algorithm, PASS or MISS:
    # the outcome depends on the machine, the presence of the verdict does not.
    verdicts = re.findall(r"\| (?:PASS|MISS) +\|$", verify_output, flags=re.MULTILINE)
    assert len(verdicts) == 4


def test_verify_silences_the_eddsa_security_warning(verify_run: subprocess.CompletedProcess[str]) -> None:
    # joserfc warns on every EdDSA verification; the script silences it itself, so a run (with
    # the default warning filters) leaves stderr free of it.
    assert "SecurityWarning" not in verify_run.stderr
