"""Benchmark revocation across replicas: ``gatekeeper serve`` processes sharing one redis-server.

What it measures, on 127.0.0.1 (a redis-server and ``--replicas`` gateway processes, each
``[revocation] store = "redis"``, requests through the forward-auth endpoint):

- propagation: ``--revocations`` times, a token already cached by every other replica is revoked
  with ``POST /revocations`` on the first replica, and the others are polled with it until each
  refuses it; the time from sending the POST to each refusal seen, p50 / p99 / max (target: p99
  under 100 ms), and the POST's own round trip;
- throughput: wrk loads one replica with a cached token for ``--duration`` seconds, in
  ``--rounds`` rounds alternating between no revocations and ``--rate`` revocations per second
  streaming in (written to Redis by this driver, as another replica would: the loaded replica
  follows the stream and re-checks its cached token after each change), requests/s medians and
  their ratio (target: within 5%), and the replica's CPU time per request (from /proc: steadier
  than requests/s when other processes share the machine).

Run it from the repository root (needs redis-server; wrk for the throughput part)::

    python benchmarks/revocation.py            # 1,000 revocations, 3 replicas, 3 x 2 wrk runs of 5 s
    python benchmarks/revocation.py --quick    # a smoke run of a few seconds

The machine may be shared and noisy: the replicas, wrk, Redis and this driver compete for its
CPUs, so compare the rows of one run, not absolute values across runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import table

ROOT = Path(__file__).resolve().parent.parent
# The test suite's helpers start redis-server and the gatekeeper serve replicas on free loopback ports.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gateway")]

from redis_server import REDIS_BINARY, RedisServer  # noqa: E402
from replicas import Replicas, wait_ready  # noqa: E402

from gatekeeper.issuer import DevIssuer  # noqa: E402
from gatekeeper.revocation import Revocation, Revocations, StoreUnavailable  # noqa: E402
from gatekeeper.revocation_redis import RedisRevocationStore, RedisSettings  # noqa: E402

ISS = "https://issuer.example"
PROPAGATION_HEADER = "## Revocation propagation across replicas"
THROUGHPUT_HEADER = "## Replica throughput while revocations stream in"
TARGET_P99_MS = 100.0
TARGET_RATIO = 0.95


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def start_replicas(directory: Path, redis_url: str, issuer: DevIssuer, count: int) -> Replicas:
    """``count`` replicas (tests/gateway/replicas.py), each ready (Redis reached) on return."""
    cluster = Replicas(directory, issuer, redis_url, prefix="bench", level="warning")
    try:
        for _ in range(count):
            cluster.start()
        for replica in cluster.replicas:
            wait_ready(replica)
    except BaseException:
        cluster.close()
        raise
    return cluster


def run_propagation(cluster: Replicas, issuer: DevIssuer, count: int) -> str:
    writer, *others = cluster.replicas
    clients = [httpx.Client(base_url=replica.url, timeout=10) for replica in others]
    admin = httpx.Client(base_url=writer.ops_url, timeout=10)
    seen: list[float] = []
    posts: list[float] = []
    polls = 0
    try:
        for _ in range(count):
            token = issuer.mint(subject="bench")
            headers = {"authorization": f"Bearer {token}"}
            for client in clients:  # cached in every other replica first
                if client.get("/auth/x", headers=headers).status_code != 200:
                    raise RuntimeError("a fresh token was refused")
            started = time.perf_counter()
            response = admin.post("/revocations", json={"jti": jti_of(token), "iss": ISS})
            posts.append(time.perf_counter() - started)
            if response.status_code != 201:
                raise RuntimeError(f"revocation failed: {response.status_code} {response.text}")
            waiting = set(range(len(clients)))
            while waiting:
                for index in sorted(waiting):
                    polls += 1
                    if clients[index].get("/auth/x", headers=headers).status_code == 401:
                        seen.append(time.perf_counter() - started)
                        waiting.discard(index)
                if time.perf_counter() - started > 10:
                    raise RuntimeError("a revocation did not reach every replica within 10 s")
    finally:
        for client in (*clients, admin):
            client.close()
    p99 = percentile(seen, 0.99)
    verdict = "PASS" if p99 * 1000 < TARGET_P99_MS else "MISS"
    rows = [
        [
            "POST /revocations -> refused by another replica",
            fmt_ms(percentile(seen, 0.5)),
            fmt_ms(p99),
            fmt_ms(max(seen)),
            f"p99 < {TARGET_P99_MS:.0f} ms: {verdict}",
        ],
        [
            "POST /revocations round trip (Redis write)",
            fmt_ms(percentile(posts, 0.5)),
            fmt_ms(percentile(posts, 0.99)),
            fmt_ms(max(posts)),
            "",
        ],
    ]
    return "\n".join(
        [
            PROPAGATION_HEADER,
            f"({count:,} revocations on replica 1 of {len(cluster.replicas)}, each polled on the other "
            f"{len(others)} until refused: {len(seen):,} observations, {polls:,} polls; loopback)",
            "",
            table(["measure", "p50", "p99", "max", "target"], rows),
        ]
    )


class Streamer:
    """Writes ``rate`` revocations per second (of throwaway jtis) to the shared store, as another
    replica or ``gatekeeper revoke`` would: straight to Redis, so the replica under load only
    follows the stream, and no other gateway process competes with it for the CPU."""

    def __init__(self, redis_url: str, rate: float) -> None:
        settings = RedisSettings(url=redis_url, prefix="bench")
        self.store = RedisRevocationStore(Revocations(max_entries=10**7), settings)
        self.rate = rate
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Streamer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                entry = Revocation("jti", f"stream-{time.time_ns()}", ISS, time.time() + 60)
                try:
                    self.store.publish(entry)
                    self.sent += 1
                except StoreUnavailable:
                    self.failed += 1
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            self.store.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, token: str, duration: float, connections: int, pid: int) -> tuple[float, float]:
    """requests/s, and the replica's CPU microseconds per request, over one wrk run."""
    cpu_before = cpu_seconds(pid)
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    cpu = cpu_seconds(pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    if "Non-2xx" in done.stdout:
        raise RuntimeError(f"wrk saw refusals: {done.stdout}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    if rate is None or count is None:
        raise RuntimeError(f"no Requests/sec in wrk's output: {done.stdout}")
    return float(rate.group(1)), cpu * 1e6 / max(1, int(count.group(1)))


def run_throughput(
    cluster: Replicas,
    issuer: DevIssuer,
    redis_url: str,
    rounds: int,
    duration: float,
    rate: float,
    connections: int,
) -> str:
    if shutil.which("wrk") is None:
        return f"{THROUGHPUT_HEADER}\n(skipped: wrk is not installed; apt-get install wrk)"
    target = cluster.replicas[-1]
    token = issuer.mint(subject="bench-load", expires_in=3600)
    url = f"{target.url}/auth/x"
    if httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=5).status_code != 200:
        raise RuntimeError("the load token was refused")
    quiet: list[tuple[float, float]] = []
    streaming: list[tuple[float, float]] = []
    pid = target.process.pid
    idle = cluster.replicas[0].process.pid  # neither loaded nor written to: it only follows
    idle_quiet = idle_streaming = 0.0
    streamed = failed = 0
    for _ in range(rounds):
        before = cpu_seconds(idle)
        quiet.append(wrk(url, token, duration, connections, pid))
        idle_quiet += cpu_seconds(idle) - before
        before = cpu_seconds(idle)
        with Streamer(redis_url, rate) as streamer:
            streaming.append(wrk(url, token, duration, connections, pid))
        idle_streaming += cpu_seconds(idle) - before
        streamed += streamer.sent
        failed += streamer.failed
    base = statistics.median(rps for rps, _ in quiet)
    loaded = statistics.median(rps for rps, _ in streaming)
    base_cpu = statistics.median(cpu for _, cpu in quiet)
    loaded_cpu = statistics.median(cpu for _, cpu in streaming)
    ratio = loaded / base
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    achieved = streamed / (rounds * duration)
    follow_us = (idle_streaming - idle_quiet) * 1e6 / max(1, streamed)
    rows = [
        [
            "no revocations",
            f"{base:,.0f}",
            ", ".join(f"{v:,.0f}" for v, _ in quiet),
            "1.00x",
            f"{base_cpu:.0f} µs",
            "1.00x",
            "",
        ],
        [
            f"{rate:g} revocations/s streaming in",
            f"{loaded:,.0f}",
            ", ".join(f"{v:,.0f}" for v, _ in streaming),
            f"{ratio:.2f}x",
            f"{loaded_cpu:.0f} µs",
            f"{loaded_cpu / base_cpu:.2f}x",
            f"throughput >= {TARGET_RATIO:.2f}x: {verdict}",
        ],
    ]
    return "\n".join(
        [
            THROUGHPUT_HEADER,
            f"(wrk -t1 -c{connections}, {duration:g} s per run, {rounds} rounds alternating; one cached "
            f"token on replica {len(cluster.replicas)}; revocations written to Redis: {streamed:,} sent, "
            f"{achieved:.0f}/s achieved, {failed} failed; an idle replica spent {follow_us:.0f} µs of CPU "
            "per revocation following the stream)",
            "",
            table(
                [
                    "case",
                    "requests/s (median)",
                    "runs",
                    "ratio",
                    "replica CPU per request",
                    "ratio",
                    "target",
                ],
                rows,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--replicas", type=int, help="gateway processes (default 3, quick 2)")
    parser.add_argument("--revocations", type=int, help="propagation samples (default 1,000, quick 20)")
    parser.add_argument("--rounds", type=int, help="wrk rounds per case (default 3, quick 1)")
    parser.add_argument("--duration", type=int, help="whole seconds per wrk run (default 5, quick 1)")
    parser.add_argument("--rate", type=float, default=100.0, help="revocations per second streamed (100)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    args = parser.parse_args(argv)
    if REDIS_BINARY is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    replicas = args.replicas or (2 if args.quick else 3)
    count = args.revocations or (20 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    duration = float(args.duration or (1 if args.quick else 5))
    started = time.perf_counter()
    issuer = DevIssuer(ISS, audience="api", algorithms=("ES256",))
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as tmp, RedisServer() as redis:
        print(
            f"Python {sys.version.split()[0]}, {replicas} replicas, one redis-server, loopback\n", flush=True
        )
        cluster = start_replicas(Path(tmp), redis.url, issuer, replicas)
        try:
            print(run_propagation(cluster, issuer, count), end="\n\n", flush=True)
            print(
                run_throughput(cluster, issuer, redis.url, rounds, duration, args.rate, args.connections),
                end="\n\n",
                flush=True,
            )
        finally:
            cluster.close()
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
