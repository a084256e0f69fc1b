"""Smoke test for benchmarks/proxy_inprocess.py: ``--quick`` runs both variants (the minimal ASGI
proxy and gatekeeper's, behind uvicorn's HttpToolsProtocol, over loopback to a canned upstream)
and prints its table. No timing is asserted (the machine is shared and noisy); the script itself
exits 1 when a variant does not relay the upstream's answer or gatekeeper's identity is missing."""

from __future__ import annotations

import re

from benchrun import run_benchmark


def test_quick_run_prints_both_variants_and_the_ratio() -> None:
    out = run_benchmark("proxy_inprocess.py", "--quick").stdout
    assert "In-process proxied GET /api/items/42 through HttpToolsProtocol" in out
    assert re.search(r"^\| floor +\| \d+\.\d +\| \d+\.\d +\| \+0\.0 +\|", out, re.MULTILINE)
    assert re.search(r"^\| gatekeeper +\| \d+\.\d +\| \d+\.\d +\| [+-]\d+\.\d +\|", out, re.MULTILINE)
    assert re.search(r"^floor / gatekeeper: \d\.\d\dx$", out, re.MULTILINE)


def test_callgrind_mode_refuses_to_run_outside_valgrind() -> None:
    result = run_benchmark("proxy_inprocess.py", "--callgrind", "cg.out", "--requests", "3", check=False)
    assert result.returncode == 1
    assert "run under valgrind --tool=callgrind" in result.stderr
