"""Smoke test for benchmarks/hanging_issuer.py: it runs with ``--quick`` and prints its tables.

No timing is asserted (the machine is shared and noisy): this catches a script that no longer runs
against the current code or stopped printing what it is for.
"""

from __future__ import annotations

from benchrun import run_benchmark


def test_hanging_issuer_benchmark_runs_and_prints_its_tables() -> None:
    result = run_benchmark("hanging_issuer.py", "--quick", "--requests", "30")
    out = result.stdout
    assert "## Verification latency with the JWKS endpoint healthy vs hanging (30 requests per run)" in out
    for mode in ("healthy", "hanging"):
        for call in ("sync ", "async"):
            for token in ("uncached", "cached  "):
                assert f"| {mode}  | {call} | {token} |" in out, (mode, call, token)
    assert "## Slowest verification, hanging vs healthy" in out
    assert "| call  | slowest healthy | slowest hanging | hanging/healthy |" in out
    # Each hanging run really had a refresh held by the endpoint (else it measured nothing).
    for line in out.splitlines():
        if line.startswith(("| sync ", "| async")) and "target" not in line:
            assert line.split("|")[6].strip() == "1", line
    assert result.stderr == ""
