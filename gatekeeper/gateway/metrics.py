"""The gateway's Prometheus metrics, single- or multi-process (``--workers``).

Labels take bounded values only: a door, an outcome, an error kind, a rule's configured pattern,
a configured issuer, a status class. Never a token, a ``sub`` or a raw path.

Under ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; each worker's values then live in files there, and ``/metrics`` (answered by whichever
worker the connection reaches) adds them up with prometheus-client's ``MultiProcessCollector``.
The key store's plain counters (``fetch_counts``, ``stale_served``) are mirrored by
:meth:`GatewayMetrics.mirror`, called periodically, so the core needs no prometheus.

Counting is batched. prometheus-client takes a lock for every ``inc``/``observe`` (and, under
``--workers``, writes an mmap file), which was four locks and ~7 us per request on the decision
endpoint. :meth:`GatewayMetrics.observe` only adds to plain per-process ints (one dict entry per
label combination and latency bucket); :meth:`GatewayMetrics.flush` hands what
accumulated to prometheus-client in one ``inc(n)`` per label combination and bucket. It runs
before every render (so a single process's ``/metrics`` is exact at scrape time) and, under
``--workers``, every :data:`FLUSH_INTERVAL` seconds and at shutdown (the scrape is answered by
one worker, which reads the others' files: they lag by at most that interval). ``observe`` and
``flush`` run on the event loop's thread, never concurrently.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .record import RequestRecord

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Decision latency: the cached path takes microseconds, a key fetch up to the fetch timeout.
DECISION_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
)
UPSTREAM_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Under ``--workers``, how often (seconds) each worker hands its counts to the shared files;
#: a scrape sees another worker's requests at most this late.
FLUSH_INTERVAL: Final = 1.0


def multiprocess_mode() -> bool:
    """Whether metrics are kept in files shared by several worker processes."""
    return bool(os.environ.get(MULTIPROC_ENV))


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` (anything else: ``other``)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class PendingHistogram:
    """Observations not yet handed to prometheus-client: a count per bucket (not cumulative,
    the last one for ``+Inf``) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def add(self, value: float) -> None:
        """One observation (in the first bucket whose bound is >= ``value``, as Prometheus's
        ``le`` says)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def hand_to(self, child: Any) -> None:
        """Add these observations to a prometheus-client histogram (child) with the same bounds.
        prometheus-client has no public call for "n observations in bucket i", so this adds to
        its per-bucket values (non-cumulative, as its ``observe`` keeps them) and its sum."""
        for value, n in zip(child._buckets, self.counts, strict=True):
            if n:
                value.inc(n)
        child._sum.inc(self.total)


class GatewayMetrics:
    """The gateway's metrics in their own registry (several apps can live in one process, as in
    tests); :meth:`observe` is the reporter's half that counts."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode values go to files whatever the registry; registering nowhere
        # keeps a second GatewayMetrics in the same process from clashing.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        registry = self.registry
        self.decisions = Counter(
            "gatekeeper_decisions",
            "Requests decided, by front door, outcome (allow/deny/error), error kind and rule pattern.",
            ["door", "outcome", "kind", "rule"],
            registry=registry,
        )
        self.token_cache = Counter(
            "gatekeeper_token_cache",
            "Verified-token cache lookups for requests that carried a token, by result (hit/miss).",
            ["result"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "gatekeeper_decision_seconds",
            "Time to decide a request (extraction, cache or verification, scopes).",
            ["door"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "gatekeeper_upstream_seconds",
            "Time until the upstream's response headers.",
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_responses = Counter(
            "gatekeeper_upstream_responses",
            "Upstream responses by status class.",
            ["status_class"],
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "gatekeeper_jwks_fetches",
            "JWKS fetches by issuer and result (ok, not_modified, error).",
            ["issuer", "result"],
            registry=registry,
        )
        self.stale_served = Counter(
            "gatekeeper_stale_keys_served",
            "Verifications that used keys past their freshness (the JWKS endpoint was failing).",
            ["issuer"],
            registry=registry,
        )
        self.keys = Gauge(
            "gatekeeper_keys",
            "Usable verification keys per issuer.",
            ["issuer"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._mirrored: dict[tuple[str, str], int] = {}
        # Counts since the last flush, by label values (bounded, see the module doc). A label
        # combination gets its prometheus child at its first flush, like labels() would on
        # first use: an unused child would be exported as 0.
        # One dict operation per request: (door, outcome, kind, rule, cached, latency bucket)
        # -> count; flush() splits it into the decision, cache and latency metrics.
        self._counts: dict[tuple[str, str, str, str, bool | None, int], int] = {}
        self._latency_sums: dict[str, float] = {}  # by door
        self._upstream: dict[int, int] = {}  # by status; the label is its class
        self._upstream_seconds = PendingHistogram(UPSTREAM_BUCKETS)

    def observe(self, record: RequestRecord) -> None:
        """Count one request (in plain ints: :meth:`flush` hands them to prometheus-client)."""
        door = record.door
        latency = record.decision_latency
        key = (
            door,
            record.decision,
            record.error_kind or "",
            record.rule or "",
            record.cached,
            bisect_left(DECISION_BUCKETS, latency),  # Prometheus's "le": the first bound >= it
        )
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        sums = self._latency_sums
        sums[door] = sums.get(door, 0.0) + latency
        if record.upstream_status is not None:
            upstream = self._upstream
            upstream[record.upstream_status] = upstream.get(record.upstream_status, 0) + 1
        if record.upstream_latency is not None:
            self._upstream_seconds.add(record.upstream_latency)

    def flush(self) -> None:
        """Hand the counts observed since the last flush to prometheus-client (one ``inc(n)``
        per label combination and bucket). Runs before every render; under ``--workers`` also
        every :data:`FLUSH_INTERVAL` seconds."""
        # Swapped out first: what is observed meanwhile waits for the next flush.
        counts, self._counts = self._counts, {}
        sums, self._latency_sums = self._latency_sums, {}
        upstream, self._upstream = self._upstream, {}
        upstream_seconds = self._upstream_seconds
        if any(upstream_seconds.counts):
            self._upstream_seconds = PendingHistogram(UPSTREAM_BUCKETS)
            upstream_seconds.hand_to(self.upstream_seconds)
        decisions: dict[tuple[str, str, str, str], int] = {}
        cache: dict[bool, int] = {}
        seconds: dict[str, PendingHistogram] = {}
        for (door, outcome, kind, rule, cached, bucket), n in counts.items():
            labels = (door, outcome, kind, rule)
            decisions[labels] = decisions.get(labels, 0) + n
            if cached is not None:
                hit = bool(cached)
                cache[hit] = cache.get(hit, 0) + n
            pending = seconds.get(door)
            if pending is None:
                pending = seconds[door] = PendingHistogram(DECISION_BUCKETS)
            pending.counts[bucket] += n
        for labels, n in decisions.items():
            self.decisions.labels(*labels).inc(n)
        for door, pending in seconds.items():
            pending.total = sums.get(door, 0.0)
            pending.hand_to(self.decision_seconds.labels(door))
        for found, n in cache.items():
            self.token_cache.labels("hit" if found else "miss").inc(n)
        by_class: dict[str, int] = {}
        for status, n in upstream.items():
            label = status_class(status)
            by_class[label] = by_class.get(label, 0) + n
        for label, n in by_class.items():
            self.upstream_responses.labels(label).inc(n)

    def mirror(self, stores: Mapping[str, Any], now: float) -> None:
        """Copy the key stores' counters (``fetch_counts``, ``stale_served``) and key counts.
        Counters only go up: each call adds what grew since the last one."""
        for issuer, store in stores.items():
            counts: Mapping[str, int] = dict(getattr(store, "fetch_counts", {}))
            counts = {**counts, "\0stale": int(getattr(store, "stale_served", 0))}
            for result, total in counts.items():
                grown = total - self._mirrored.get((issuer, result), 0)
                if grown > 0:
                    if result == "\0stale":
                        self.stale_served.labels(issuer).inc(grown)
                    else:
                        self.jwks_fetches.labels(issuer, result).inc(grown)
                    self._mirrored[(issuer, result)] = total
            keys = store.usable(now)
            self.keys.labels(issuer).set(len(keys.keys) if keys is not None else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (this process's counts flushed first)."""
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        assert self.registry is not None
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Tell the multiprocess files that worker ``pid`` is gone (its live gauges drop out)."""
    if multiprocess_mode():
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
