"""Helpers shared by the benchmark scripts: realistic tokens, batch timing, medians and tables.

Not a benchmark itself. The scripts import it as a sibling module (``python benchmarks/x.py``
puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from gatekeeper.issuer import DevIssuer

ISSUER = "https://issuer.example"
AUDIENCE = "api"
SCOPE = "orders:read orders:write customers:read"
# Claims a real access token carries besides the registered ones (RFC 9068 style). With these an
# RS256 token is ~825 characters, the size of a typical IdP access token.
EXTRA_CLAIMS: dict[str, Any] = {
    "tenant_id": "7f3c2a9e-5b1d-4e8a-9c6f-2d4b8e1a7c35",
    "azp": "billing-service",
}


class ManualClock:
    """A clock the benchmark moves by hand (``clock.now = ...``): token lifetimes and key
    freshness run out without waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def realistic_token(issuer: DevIssuer, alg: str, *, expires_in: float = 3600) -> str:
    """A signed access token of realistic size and claims."""
    return issuer.mint(EXTRA_CLAIMS, alg=alg, scope=SCOPE, expires_in=expires_in)


def fresh_copy(text: str) -> str:
    """An equal string that is a new object, so its hash is not cached yet (like a parsed header)."""
    return text[:-1] + text[-1]


def time_batch(fn: Callable[[Any], object], inputs: Sequence[Any]) -> float:
    """Nanoseconds per call of ``fn(x)`` over ``inputs``, with the cyclic GC off (as timeit does).

    The Python loop and call overhead (tens of ns) is included; every contender pays it alike.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for item in inputs:
            fn(item)
        elapsed = time.perf_counter_ns() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / len(inputs)


def calibrate(fn: Callable[[Any], object], arg: Any, target_s: float, *, cap: int = 1_000_000) -> int:
    """How many calls of ``fn(arg)`` take about ``target_s`` seconds (at least 5)."""
    n = 1
    while True:
        per_op = time_batch(fn, [arg] * n) / 1e9
        if per_op * n >= target_s / 10 or n >= cap:
            return max(5, min(cap, int(target_s / per_op)))
        n *= 4


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fmt_ns(ns: float) -> str:
    """A duration given in ns, in the unit that keeps it short: ``42.0 ns``, ``6.85 µs``, ``98.4 ms``."""
    if ns >= 1e6:
        return f"{ns / 1e6:,.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:.1f} ns" if ns < 100 else f"{ns:.0f} ns"


def fmt_us(ns: float) -> str:
    us = ns / 1000
    return f"{us:,.1f}" if us >= 10 else f"{us:.2f}"


def fmt_bytes(n: float) -> str:
    if abs(n) >= 1024 * 1024:
        return f"{n / (1024 * 1024):,.1f} MiB"
    if abs(n) >= 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,.0f} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with columns padded to line up in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


class BenchError(Exception):
    """The benchmark cannot produce meaningful numbers (exit status 1)."""


# -- wrk's output (``wrk --latency``) ----------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_latency_ms(output: str, percentile: str) -> float:
    """A latency percentile ("50", "99") from wrk's latency distribution, in ms."""
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {percentile}% latency in wrk's output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def wrk_counts(output: str) -> tuple[int, float, int]:
    """Requests completed, requests per second and non-2xx/3xx responses."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rate is None:
        raise BenchError(f"no Requests/sec in wrk's output:\n{output}")
    count = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return (
        int(count.group(1)) if count else 0,
        float(rate.group(1)),
        int(non_2xx.group(1)) if non_2xx else 0,
    )


def under_callgrind() -> bool:
    """Whether this process runs under valgrind (its preload library is mapped)."""
    return any("vgpreload" in line for line in Path("/proc/self/maps").read_text().splitlines())


def callgrind_count(out: str, dump: int, work: Callable[[], object]) -> int:
    """Instructions callgrind counts while ``work()`` runs: the counters are zeroed, ``work``
    runs, the counters are dumped (``callgrind_control``) to ``OUT.<dump>``, the dump's total
    is read back. Dumps are numbered from 1 in the order they are made."""
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
    work()
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    lines = Path(f"{out}.{dump}").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(("summary:", "totals:"))).split()[1])
