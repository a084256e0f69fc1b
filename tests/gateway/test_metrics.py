"""GatewayMetrics: what a record counts, bounded labels, and the key stores' counters mirrored."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_process import metric_samples

from gatekeeper.gateway.metrics import GatewayMetrics, status_class
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.keys import KeySet
from gatekeeper.keystore import KeyStore


def _text(metrics: GatewayMetrics) -> str:
    body, _ = metrics.render()
    return body.decode()


def test_a_record_counts_decision_cache_latency_and_upstream() -> None:
    metrics = GatewayMetrics()
    metrics.observe(
        RequestRecord(
            "proxy", "GET", "/api/x?token=[redacted]", 200, "allow", 0.01, 0.0002,
            rule="/api/**", issuer="https://i", subject="alice", token="abc123", cached=True,
            upstream_status=204, upstream_latency=0.005,
        )
    )  # fmt: skip
    metrics.observe(
        RequestRecord(
            "forward_auth", "GET", "/x", 401, "deny", 0.001, 0.0005, rule="/**", error_kind="expired_token"
        )
    )
    text = _text(metrics)
    decisions = metric_samples(text, "gatekeeper_decisions_total")
    assert decisions[(("door", "proxy"), ("kind", ""), ("outcome", "allow"), ("rule", "/api/**"))] == 1
    assert (
        decisions[(("door", "forward_auth"), ("kind", "expired_token"), ("outcome", "deny"), ("rule", "/**"))]
        == 1
    )
    assert metric_samples(text, "gatekeeper_token_cache_total") == {(("result", "hit"),): 1}
    assert metric_samples(text, "gatekeeper_upstream_responses_total") == {(("status_class", "2xx"),): 1}
    assert metric_samples(text, "gatekeeper_upstream_seconds_count") == {(): 1}
    assert metric_samples(text, "gatekeeper_decision_seconds_count")[(("door", "forward_auth"),)] == 1
    for unbounded in ("alice", "abc123", "/api/x", "https://i"):
        assert unbounded not in text


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 304, 404, 503, 42)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    ]


def _store(issuer: str, keys: Any) -> KeyStore:
    return KeyStore(issuer, static=KeySet(keys))


def test_mirror_adds_only_what_grew(dev_issuer: Any) -> None:
    metrics = GatewayMetrics()
    from gatekeeper.keys import parse_jwks

    store = _store("https://i.example", parse_jwks(dev_issuer.jwks()).keys)
    store.fetch_counts.update(ok=2, error=1)
    store.stale_served = 3
    metrics.mirror({"https://i.example": store}, now=0.0)
    metrics.mirror({"https://i.example": store}, now=0.0)  # nothing new: nothing added
    store.fetch_counts["ok"] += 1
    metrics.mirror({"https://i.example": store}, now=0.0)
    text = _text(metrics)
    fetches = metric_samples(text, "gatekeeper_jwks_fetches_total")
    assert fetches[(("issuer", "https://i.example"), ("result", "ok"))] == 3
    assert fetches[(("issuer", "https://i.example"), ("result", "error"))] == 1
    assert metric_samples(text, "gatekeeper_stale_keys_served_total") == {
        (("issuer", "https://i.example"),): 3
    }
    assert metric_samples(text, "gatekeeper_keys") == {(("issuer", "https://i.example"),): 1}


def test_two_instances_in_one_process_do_not_clash() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe(RequestRecord("proxy", "GET", "/", 200, "allow", 0.0, 0.0, rule="/**"))
    assert "gatekeeper_decisions_total{" in _text(first)
    assert "gatekeeper_decisions_total{" not in _text(second)


def test_repeated_and_distinct_labels_count_separately() -> None:
    # the labelled children are kept per label values: each combination still counts for itself
    metrics = GatewayMetrics()
    for rule, cached, upstream in (("/a/**", True, 200), ("/a/**", True, 200), ("/b/**", False, 503)):
        metrics.observe(
            RequestRecord(
                "proxy",
                "GET",
                "/",
                200,
                "allow",
                0.01,
                0.001,
                rule=rule,
                cached=cached,
                upstream_status=upstream,
            )
        )
    text = _text(metrics)
    decisions = metric_samples(text, "gatekeeper_decisions_total")
    assert decisions[(("door", "proxy"), ("kind", ""), ("outcome", "allow"), ("rule", "/a/**"))] == 2
    assert decisions[(("door", "proxy"), ("kind", ""), ("outcome", "allow"), ("rule", "/b/**"))] == 1
    assert metric_samples(text, "gatekeeper_token_cache_total") == {
        (("result", "hit"),): 2,
        (("result", "miss"),): 1,
    }
    assert metric_samples(text, "gatekeeper_upstream_responses_total") == {
        (("status_class", "2xx"),): 2,
        (("status_class", "5xx"),): 1,
    }
    assert metric_samples(text, "gatekeeper_decision_seconds_count") == {(("door", "proxy"),): 3}


def _reference_histogram(values: list[float], buckets: tuple[float, ...]) -> dict[str, float]:
    """prometheus-client's own Histogram.observe, one call per value: what batching must equal."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    reference = Histogram("ref_seconds", "reference", buckets=buckets, registry=registry)
    for value in values:
        reference.observe(value)
    text = generate_latest(registry).decode()
    return {dict(labels)["le"]: value for labels, value in metric_samples(text, "ref_seconds_bucket").items()}


def test_counts_and_buckets_right_after_n_requests() -> None:
    # Counting is batched in plain ints; the scrape must still see every request, and each
    # latency in the bucket prometheus-client's own observe would put it in (bounds included:
    # a value equal to a bound belongs to that bound's "le" bucket).
    from gatekeeper.gateway.metrics import DECISION_BUCKETS, UPSTREAM_BUCKETS

    metrics = GatewayMetrics()
    latencies = [*DECISION_BUCKETS, *(b * 1.5 for b in DECISION_BUCKETS), 0.0, 7.0, 0.00003] * 7
    upstream = [*UPSTREAM_BUCKETS, *(b / 3 for b in UPSTREAM_BUCKETS), 60.0] * 3
    for i, latency in enumerate(latencies):
        metrics.observe(
            RequestRecord(
                "forward_auth", "GET", "/", 200, "allow", latency, latency,
                rule="/a/**" if i % 3 else "/b/**", cached=i % 4 != 0,
            )
        )  # fmt: skip
    for i, latency in enumerate(upstream):
        metrics.observe(
            RequestRecord(
                "proxy", "GET", "/", 200, "allow", latency, 0.0001,
                rule="/a/**", cached=True, upstream_status=(200, 404, 502)[i % 3], upstream_latency=latency,
            )
        )  # fmt: skip
    text = _text(metrics)
    n, m = len(latencies), len(upstream)
    decisions = metric_samples(text, "gatekeeper_decisions_total")
    assert decisions[
        (("door", "forward_auth"), ("kind", ""), ("outcome", "allow"), ("rule", "/a/**"))
    ] == sum(1 for i in range(n) if i % 3)
    assert decisions[
        (("door", "forward_auth"), ("kind", ""), ("outcome", "allow"), ("rule", "/b/**"))
    ] == sum(1 for i in range(n) if i % 3 == 0)
    assert decisions[(("door", "proxy"), ("kind", ""), ("outcome", "allow"), ("rule", "/a/**"))] == m
    assert metric_samples(text, "gatekeeper_token_cache_total") == {
        (("result", "hit"),): sum(1 for i in range(n) if i % 4 != 0) + m,
        (("result", "miss"),): sum(1 for i in range(n) if i % 4 == 0),
    }
    assert metric_samples(text, "gatekeeper_upstream_responses_total") == {
        (("status_class", "2xx"),): m // 3,
        (("status_class", "4xx"),): m // 3,
        (("status_class", "5xx"),): m // 3,
    }
    buckets = metric_samples(text, "gatekeeper_decision_seconds_bucket")
    forward = {
        dict(labels)["le"]: v for labels, v in buckets.items() if dict(labels)["door"] == "forward_auth"
    }
    assert forward == _reference_histogram(latencies, DECISION_BUCKETS)
    assert metric_samples(text, "gatekeeper_decision_seconds_sum")[(("door", "forward_auth"),)] == (
        pytest.approx(sum(latencies))
    )
    up = {
        dict(labels)["le"]: v
        for labels, v in metric_samples(text, "gatekeeper_upstream_seconds_bucket").items()
    }
    assert up == _reference_histogram(upstream, UPSTREAM_BUCKETS)
    assert metric_samples(text, "gatekeeper_upstream_seconds_sum")[()] == pytest.approx(sum(upstream))


def test_each_scrape_adds_only_what_was_counted_since_the_last() -> None:
    # A flush hands its counts over once: scraping again (with or without new requests) must
    # neither lose nor repeat them.
    metrics = GatewayMetrics()
    allow = RequestRecord("forward_auth", "GET", "/", 200, "allow", 0.001, 0.0002, rule="/**", cached=True)
    totals = []
    for batch in (5, 0, 3, 0):
        for _ in range(batch):
            metrics.observe(allow)
        text = _text(metrics)
        totals.append(
            (
                metric_samples(text, "gatekeeper_decisions_total")[
                    (("door", "forward_auth"), ("kind", ""), ("outcome", "allow"), ("rule", "/**"))
                ],
                metric_samples(text, "gatekeeper_token_cache_total")[(("result", "hit"),)],
                metric_samples(text, "gatekeeper_decision_seconds_count")[(("door", "forward_auth"),)],
            )
        )
    assert totals == [(5, 5, 5), (5, 5, 5), (8, 8, 8), (8, 8, 8)]


def test_observe_does_not_touch_prometheus_until_flushed() -> None:
    # The hot path's whole point: requests are counted in plain ints, handed over in batches.
    metrics = GatewayMetrics()
    assert metrics.registry is not None
    for _ in range(3):
        metrics.observe(RequestRecord("proxy", "GET", "/", 200, "allow", 0.0, 0.0, rule="/**", cached=False))
    assert (
        metrics.registry.get_sample_value(
            "gatekeeper_decisions_total", {"door": "proxy", "outcome": "allow", "kind": "", "rule": "/**"}
        )
        is None
    )
    metrics.flush()
    assert (
        metrics.registry.get_sample_value(
            "gatekeeper_decisions_total", {"door": "proxy", "outcome": "allow", "kind": "", "rule": "/**"}
        )
        == 3
    )
    assert metrics.registry.get_sample_value("gatekeeper_token_cache_total", {"result": "miss"}) == 3
