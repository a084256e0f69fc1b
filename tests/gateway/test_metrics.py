"""GatewayMetrics: what a record counts, bounded labels, and the key stores' counters mirrored."""

from __future__ import annotations

from typing import Any

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
