"""The gateway's Prometheus metrics, single- or multi-process (``--workers``).

Labels take bounded values only: a door, an outcome, an error kind, a rule's configured pattern,
a configured issuer, a status class. Never a token, a ``sub`` or a raw path.

Under ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; each worker's values then live in files there, and ``/metrics`` (answered by whichever
worker the connection reaches) adds them up with prometheus-client's ``MultiProcessCollector``.
The key store's plain counters (``fetch_counts``, ``stale_served``) are mirrored by
:meth:`GatewayMetrics.mirror`, called periodically, so the core needs no prometheus.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def multiprocess_mode() -> bool:
    """Whether metrics are kept in files shared by several worker processes."""
    return bool(os.environ.get(MULTIPROC_ENV))


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` (anything else: ``other``)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


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
        # Labelled children by label values: ``labels()`` validates and locks on every call;
        # the values are bounded (see the module doc), so these dicts are too.
        self._decision_children: dict[tuple[str, str, str, str], Any] = {}
        self._seconds_children: dict[str, Any] = {}
        # Created on first use, like labels() would: an unused child would be exported as 0.
        self._cache_children: dict[bool, Any] = {}
        self._upstream_children: dict[int, Any] = {}

    def observe(self, record: RequestRecord) -> None:
        """Count one request."""
        key = (record.door, record.decision, record.error_kind or "", record.rule or "")
        decisions = self._decision_children.get(key)
        if decisions is None:
            decisions = self._decision_children[key] = self.decisions.labels(*key)
        decisions.inc()
        seconds = self._seconds_children.get(record.door)
        if seconds is None:
            seconds = self._seconds_children[record.door] = self.decision_seconds.labels(record.door)
        seconds.observe(record.decision_latency)
        if record.cached is not None:
            hit = bool(record.cached)
            cache = self._cache_children.get(hit)
            if cache is None:
                cache = self._cache_children[hit] = self.token_cache.labels("hit" if hit else "miss")
            cache.inc()
        if record.upstream_status is not None:
            upstream = self._upstream_children.get(record.upstream_status)
            if upstream is None:
                upstream = self.upstream_responses.labels(status_class(record.upstream_status))
                self._upstream_children[record.upstream_status] = upstream
            upstream.inc()
        if record.upstream_latency is not None:
            self.upstream_seconds.observe(record.upstream_latency)

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
        """The exposition text and its content type."""
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
