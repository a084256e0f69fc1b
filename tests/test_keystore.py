"""The sans-I/O key store: its decisions and what it makes of each response, driven by hand.

No HTTP here: each test plays the driver, answering the store's FetchRequests with FetchResponses.
The same behaviours over a real HTTP server are in test_jwks_http.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from gatekeeper.issuer import DevIssuer
from gatekeeper.keystore import FetchPolicy, FetchRequest, FetchResponse, KeyStore, ttl_from_headers

ISSUER = "https://issuer.example"
JWKS_URL = "https://issuer.example/jwks"
T0 = 1_700_000_000.0
POLICY = FetchPolicy(
    default_ttl=300, min_ttl=30, max_ttl=3600, unknown_kid_cooldown=10, retry_interval=20, stale_grace=600
)


@pytest.fixture(scope="module")
def dev() -> DevIssuer:
    issuer = DevIssuer(ISSUER, algorithms=("ES256",))
    issuer.add_key("ES256", kid="second")
    return issuer


def ok(document: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> FetchResponse:
    return FetchResponse(200, dict(headers or {}), json.dumps(document).encode())


def drive(
    store: KeyStore, now: float, *responses: FetchResponse, kid: str | None = None
) -> list[FetchRequest]:
    """Run one refresh (for an unknown ``kid``, if given), answering its requests in order;
    return the requests it made."""
    flow = store.refresh(now, kid)
    requests = [next(flow)]
    for response in responses:
        try:
            requests.append(flow.send(response))
        except StopIteration:
            return requests
    raise AssertionError(f"the flow wanted more than {len(responses)} responses: {requests}")


def remote(policy: FetchPolicy = POLICY, **kwargs: Any) -> KeyStore:
    if "discovery_urls" not in kwargs:
        kwargs["jwks_url"] = JWKS_URL
    return KeyStore(ISSUER, policy=policy, **kwargs)


def kids(store: KeyStore) -> set[str | None]:
    assert store.keys is not None
    return {k.kid for k in store.keys.keys}


# -- freshness from Cache-Control -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        (None, 300),  # absent: the default
        ("max-age=120", 120),
        ("public, max-age=600", 600),
        ("MAX-AGE = 90", 90),
        ('max-age="75"', 75),
        ("s-maxage=45", 45),
        ("max-age=5", 30),  # floor
        ("max-age=0", 30),
        ("max-age=999999999", 3600),  # ceiling
        ("no-store", 30),
        ("no-cache, max-age=600", 30),
        ("private", 300),
    ],
)
def test_ttl_from_cache_control(cache_control: str | None, ttl: float) -> None:
    headers = {} if cache_control is None else {"cache-control": cache_control}
    assert ttl_from_headers(headers, POLICY) == ttl


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_ttl": 0},
        {"min_ttl": 400},  # above the default
        {"default_ttl": 5000, "max_ttl": 4000},
        {"timeout": 0},
        {"max_bytes": 0},
    ],
)
def test_fetch_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        FetchPolicy(**kwargs)


# -- the refresh flow -----------------------------------------------------------------------------


def test_first_fetch_then_fresh_for_the_ttl(dev: DevIssuer) -> None:
    store = remote()
    assert store.usable(T0) is None
    assert store.needs_refresh(T0)
    [request] = drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    assert request.url == JWKS_URL
    assert request.headers == {"accept": "application/json"}
    assert len(kids(store)) == 2
    assert store.status(T0)["fresh_for"] == 100
    assert not store.needs_refresh(T0 + 99.9)
    assert not store.wants_refresh_ahead(T0 + 99.9)
    # Expired but within the grace: refreshed in the background, never waited for.
    assert not store.needs_refresh(T0 + 100)
    assert store.wants_refresh_ahead(T0 + 100)
    assert store.usable(T0 + 100) is not None
    # Past the grace (600): nothing usable, the caller waits.
    assert store.usable(T0 + 700) is None
    assert store.needs_refresh(T0 + 700)
    assert not store.wants_refresh_ahead(T0 + 700)


def test_etag_is_sent_back_and_304_extends_freshness_keeping_the_key_objects(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"etag": '"v1"', "cache-control": "max-age=100"}))
    assert store.keys is not None
    before = store.keys.keys
    [request] = drive(store, T0 + 100, FetchResponse(304, {"cache-control": "max-age=200"}))
    assert request.headers["if-none-match"] == '"v1"'
    assert store.keys.keys == before
    assert all(a is b for a, b in zip(store.keys.keys, before, strict=True))
    assert all(k.alive for k in before)
    assert store.last_error is None
    assert store.status(T0 + 100)["fresh_for"] == 200
    # A new ETag on the 304 replaces the old one.
    drive(store, T0 + 300, FetchResponse(304, {"etag": '"v2"'}))
    [request] = drive(store, T0 + 600, FetchResponse(304))
    assert request.headers["if-none-match"] == '"v2"'


def test_no_etag_no_if_none_match_and_304_without_keys_is_a_failure(dev: DevIssuer) -> None:
    store = remote()
    [request] = drive(store, T0, FetchResponse(304, {"etag": '"v1"'}))
    assert "if-none-match" not in request.headers
    assert store.keys is None
    assert store.last_error == "HTTP 304"
    drive(store, T0 + 30, ok(dev.jwks()))  # a 200 without an ETag
    [request] = drive(store, T0 + 400, ok(dev.jwks()))
    assert "if-none-match" not in request.headers


BAD_RESPONSES = {
    "5xx": (FetchResponse(503, {}, b"down"), "HTTP 503"),
    "transport": (FetchResponse(error="transport error: ConnectError"), "ConnectError"),
    "not json": (FetchResponse(200, {}, b"<html>sign in</html>"), "not a JWK Set"),
    "not utf-8": (FetchResponse(200, {}, b'{"keys": ["\xff"]}'), "not a JWK Set"),
    "json array": (FetchResponse(200, {}, b"[]"), "not a JWK Set"),
    "keys not a list": (FetchResponse(200, {}, b'{"keys": {}}'), "not a JWK Set"),
    "duplicate member": (FetchResponse(200, {}, b'{"keys": [], "keys": []}'), "not a JWK Set"),
    "empty set": (FetchResponse(200, {}, b'{"keys": []}'), "no usable key"),
    "only bad keys": (
        FetchResponse(200, {}, b'{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB"}]}'),
        "no usable key (x: ",
    ),
}


@pytest.mark.parametrize("case", BAD_RESPONSES)
def test_a_bad_response_keeps_the_last_good_keys_within_the_grace(dev: DevIssuer, case: str) -> None:
    response, error = BAD_RESPONSES[case]
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    good = store.keys
    assert good is not None
    drive(store, T0 + 100, response)
    assert store.keys is good
    assert all(k.alive for k in good.keys)
    assert store.last_error is not None
    assert error in store.last_error
    assert store.usable(T0 + 100 + 599) is good  # stale_grace is 600 past expiry
    assert store.usable(T0 + 100 + 600) is None
    status = store.status(T0 + 150)
    assert status["usable"]
    assert status["last_error"] == store.last_error
    assert len(status["kids"]) == 2


@pytest.mark.parametrize("case", BAD_RESPONSES)
def test_a_bad_first_response_leaves_no_keys(case: str) -> None:
    response, error = BAD_RESPONSES[case]
    store = remote()
    drive(store, T0, response)
    assert store.keys is None
    assert store.usable(T0) is None
    assert store.last_error is not None
    assert error in store.last_error


def test_retry_interval_after_a_failure_and_retry_after(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, FetchResponse(500))
    err = store.unavailable(T0)
    assert (err.kind, err.retry_after, err.issuer) == ("keys_unavailable", 20, ISSUER)
    assert store.unavailable(T0 + 12.5).retry_after == 8
    assert store.unavailable(T0 + 19.9).retry_after == 1
    assert store.unavailable(T0 + 50).retry_after == 1  # never 0 or negative
    for now in (T0, T0 + 10, T0 + 19.9):
        assert not store.needs_refresh(now)
        assert not store.refresh_due(now)
        assert not store.may_refetch_for_kid("some-kid", now)
    assert store.needs_refresh(T0 + 20)
    drive(store, T0 + 20, ok(dev.jwks()))
    assert store.usable(T0 + 20) is not None
    assert store.last_error is None


def test_unavailable_without_a_recorded_failure_does_not_crash() -> None:
    # e.g. keys past their grace and no failure yet: math.ceil(-inf) used to raise OverflowError.
    err = remote().unavailable(T0)
    assert err.kind == "keys_unavailable"
    assert err.retry_after == 1


def test_stale_keys_are_refreshed_in_the_background_after_a_failure(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    expiry = T0 + 100
    # Expired, never failed: stale-while-revalidate, the refresh runs in the background.
    assert not store.needs_refresh(expiry)
    assert store.wants_refresh_ahead(expiry)
    drive(store, expiry, FetchResponse(502))
    # Stale keys in use: retries go to the background, once per retry_interval.
    assert not store.needs_refresh(expiry + 19)
    assert not store.wants_refresh_ahead(expiry + 19)
    assert not store.needs_refresh(expiry + 20)
    assert store.wants_refresh_ahead(expiry + 20)
    drive(store, expiry + 20, FetchResponse(502))
    assert not store.wants_refresh_ahead(expiry + 39)
    assert store.wants_refresh_ahead(expiry + 40)
    # Past the grace there are no usable keys: the caller waits again.
    assert store.usable(expiry + 600) is None
    assert store.needs_refresh(expiry + 600)
    assert not store.wants_refresh_ahead(expiry + 600)


def test_a_background_retry_already_started_is_not_started_again(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    drive(store, T0 + 100, FetchResponse(502))
    flow = store.refresh(T0 + 120)  # started, no answer yet
    next(flow)
    assert not store.wants_refresh_ahead(T0 + 121)
    assert not store.refresh_due(T0 + 121)
    flow.close()


def test_refresh_ahead_window(dev: DevIssuer) -> None:
    store = remote(FetchPolicy(refresh_ahead=20, retry_interval=5))
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    assert not store.wants_refresh_ahead(T0 + 79.9)
    assert store.wants_refresh_ahead(T0 + 80)
    assert not store.needs_refresh(T0 + 80)  # nobody waits for it
    drive(store, T0 + 80, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    assert store.status(T0 + 80)["fresh_for"] == 100
    assert not store.wants_refresh_ahead(T0 + 90)
    # A failed refresh-ahead is retried after retry_interval, keys stay fresh meanwhile.
    drive(store, T0 + 160, FetchResponse(500))
    assert store.usable(T0 + 160) is not None
    assert not store.wants_refresh_ahead(T0 + 164)
    assert store.wants_refresh_ahead(T0 + 165)
    # Off by default.
    plain = remote()
    drive(plain, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    assert not any(plain.wants_refresh_ahead(T0 + t) for t in (50, 80, 99))


def test_unknown_kid_refetch_is_immediate_then_rate_limited(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks()))
    assert not store.may_refetch_for_kid("second", T0 + 100)  # known
    assert not store.may_refetch_for_kid(None, T0 + 100)  # no kid: nothing to look for
    # A routine fetch a moment ago does not hold up the first unknown kid (a rotation).
    assert store.may_refetch_for_kid("new", T0)
    assert store.may_refetch_for_kid("new", T0 + 0.1)
    drive(store, T0 + 0.1, ok(dev.jwks()), kid="new")
    # The cooldown counts from that unknown-kid refetch, not from routine fetches.
    assert not store.may_refetch_for_kid("other", T0 + 10.09)
    assert store.may_refetch_for_kid("other", T0 + 10.1)
    drive(store, T0 + 50, ok(dev.jwks()))  # a routine refresh does not start the cooldown
    assert store.may_refetch_for_kid("other", T0 + 50)
    drive(store, T0 + 50, ok(dev.jwks()), kid="other")
    assert not store.may_refetch_for_kid("other", T0 + 59.9)
    assert store.last_kid_fetch == T0 + 50


def test_unknown_kid_refetch_waits_for_the_retry_interval_after_a_failure(dev: DevIssuer) -> None:
    store = remote()  # cooldown 10 < retry_interval 20
    drive(store, T0, ok(dev.jwks()))
    drive(store, T0 + 10, FetchResponse(500), kid="new")
    assert not store.may_refetch_for_kid("new", T0 + 25)  # cooldown over, outage retry not
    assert not store.refresh_due(T0 + 25, "new")
    assert store.may_refetch_for_kid("new", T0 + 30)
    assert store.refresh_due(T0 + 30, "new")


def test_refresh_due_is_false_right_after_a_refresh(dev: DevIssuer) -> None:
    store = remote()
    assert store.refresh_due(T0)
    drive(store, T0, ok(dev.jwks()))
    assert not store.refresh_due(T0)
    assert store.refresh_due(T0, "new")  # an unknown kid is looked for at once
    assert not store.refresh_due(T0, "second")  # a known one is not
    drive(store, T0, ok(dev.jwks()), kid="new")
    assert not store.refresh_due(T0 + 9, "new")  # a waiting caller does not repeat it
    assert store.refresh_due(T0 + 10, "new")
    static = KeyStore(ISSUER, static=store.keys)
    assert not static.refresh_due(T0)
    assert not static.needs_refresh(T0)
    assert not static.may_refetch_for_kid("new", T0 + 1e9)
    assert static.usable(T0 + 1e12) is store.keys


def test_removed_and_rekeyed_keys_die_and_kept_keys_stay_the_same_objects() -> None:
    dev = DevIssuer(ISSUER, algorithms=("ES256",))
    first = dev.add_key("ES256", kid="first")
    dev.add_key("ES256", kid="kept")
    store = remote()
    drive(store, T0, ok(dev.jwks()))
    assert store.keys is not None
    old = {k.kid: k for k in store.keys.keys}
    dev.remove_key(first)
    jwks = dev.jwks()
    # Same kid, new material: the old key must die too.
    [default] = [k for k in jwks["keys"] if k["kid"] not in ("first", "kept")]
    rekeyed = DevIssuer(ISSUER, algorithms=("ES256",)).jwks()["keys"][0] | {"kid": default["kid"]}
    jwks["keys"] = [k for k in jwks["keys"] if k["kid"] == "kept"] + [rekeyed]
    drive(store, T0 + 300, ok(jwks))
    new = {k.kid: k for k in store.keys.keys}
    assert set(new) == {"kept", default["kid"]}
    assert new["kept"] is old["kept"]
    assert old["kept"].alive
    assert not old["first"].alive
    assert not old[default["kid"]].alive
    assert new[default["kid"]] is not old[default["kid"]]
    assert new[default["kid"]].alive


def test_skipped_keys_are_reported_next_to_the_good_ones(dev: DevIssuer) -> None:
    document = dev.jwks()
    document["keys"] += [{"kty": "XYZ", "kid": "odd"}, {"kty": "EC", "kid": "partial", "crv": "P-256"}]
    store = remote()
    drive(store, T0, ok(document))
    status = store.status(T0)
    assert len(status["kids"]) == 2
    assert [s["kid"] for s in status["skipped"]] == ["odd", "partial"]
    assert all(s["reason"] for s in status["skipped"])


# -- discovery ------------------------------------------------------------------------------------

OIDC = "https://issuer.example/.well-known/openid-configuration"
OAUTH = "https://issuer.example/.well-known/oauth-authorization-server"


def discovery_doc(**overrides: Any) -> FetchResponse:
    return ok({"issuer": ISSUER, "jwks_uri": JWKS_URL} | overrides)


def test_discovery_resolves_the_jwks_uri_once(dev: DevIssuer) -> None:
    store = remote(discovery_urls=(OIDC, OAUTH))
    first, second = drive(store, T0, discovery_doc(), ok(dev.jwks()))
    assert (first.url, second.url) == (OIDC, JWKS_URL)
    assert store.jwks_url == JWKS_URL
    assert len(kids(store)) == 2
    [again] = drive(store, T0 + 300, ok(dev.jwks()))
    assert again.url == JWKS_URL


def test_discovery_falls_back_to_the_next_metadata_url(dev: DevIssuer) -> None:
    store = remote(discovery_urls=(OIDC, OAUTH))
    requests = drive(store, T0, FetchResponse(404), discovery_doc(), ok(dev.jwks()))
    assert [r.url for r in requests] == [OIDC, OAUTH, JWKS_URL]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (discovery_doc(issuer="https://evil.example"), "another issuer"),
        (discovery_doc(issuer=ISSUER + "/"), "another issuer"),  # exact match only
        (ok({"jwks_uri": JWKS_URL}), "another issuer"),
        (discovery_doc(jwks_uri=None), "jwks_uri"),
        (discovery_doc(jwks_uri=42), "jwks_uri"),
        (discovery_doc(jwks_uri="file:///etc/passwd"), "jwks_uri"),
        (discovery_doc(jwks_uri="http://[::1/jwks"), "jwks_uri"),  # httpx raises InvalidURL
        (discovery_doc(jwks_uri="http:///jwks"), "jwks_uri"),
        (discovery_doc(jwks_uri="https://a.example:99999/jwks"), "jwks_uri"),
        (FetchResponse(200, {}, b"not json"), "not a JSON object"),
        (FetchResponse(error="transport error: ConnectError"), "discovery failed"),
    ],
)
def test_a_bad_discovery_document_fetches_nothing_from_it(response: FetchResponse, error: str) -> None:
    store = remote(discovery_urls=(OIDC,))
    requests = drive(store, T0, response)
    assert [r.url for r in requests] == [OIDC]
    assert store.jwks_url is None
    assert store.keys is None
    assert store.last_error is not None
    assert error in store.last_error
    assert store.unavailable(T0).retry_after == 20


def test_an_unknown_kid_waits_for_a_refresh_under_way_even_within_the_cooldown(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks()))
    drive(store, T0 + 5, ok(dev.jwks()), kid="gone")
    assert not store.may_refetch_for_kid("new", T0 + 10)  # within the cooldown
    flow = store.refresh(T0 + 10)  # e.g. a background refresh
    next(flow)
    assert store.refreshing == 1
    # Within the cooldown of that attempt, yet it may bring the key: join it, do not reject.
    assert store.may_refetch_for_kid("new", T0 + 10)
    assert not store.refresh_due(T0 + 10, "new")  # but a driver that waited for it does not fetch again
    with pytest.raises(StopIteration):
        flow.send(ok(dev.jwks()))
    assert store.refreshing == 0
    assert not store.may_refetch_for_kid("new", T0 + 10)
    # A driver that gives up on a flow (cancelled) closes it; the store is not left "refreshing".
    flow = store.refresh(T0 + 20)
    next(flow)
    flow.close()
    assert store.refreshing == 0


def test_a_background_refresh_is_not_started_while_one_is_under_way(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    flow = store.refresh(T0 + 100, "new")  # an unknown-kid refetch, still running at expiry
    next(flow)
    assert not store.wants_refresh_ahead(T0 + 200)  # past retry_interval, but one is running
    flow.close()
    assert store.wants_refresh_ahead(T0 + 200)


def test_revalidate_at_is_freshness_then_one_retry_interval_within_the_grace(dev: DevIssuer) -> None:
    store = remote()
    drive(store, T0, ok(dev.jwks(), {"cache-control": "max-age=100"}))
    assert store.revalidate_at(T0 + 50) == T0 + 100
    assert store.revalidate_at(T0 + 100) == T0 + 120  # retry_interval 20
    assert store.revalidate_at(T0 + 690) == T0 + 700  # never past the grace (600)
    static = KeyStore(ISSUER, static=store.keys)
    assert static.revalidate_at(T0) == float("inf")


def test_fetch_counts_by_result(dev: DevIssuer) -> None:
    store = remote()
    assert store.fetch_counts == {"ok": 0, "not_modified": 0, "error": 0}
    drive(store, T0, ok(dev.jwks(), {"etag": '"v1"'}))
    drive(store, T0 + 300, FetchResponse(304))
    drive(store, T0 + 600, FetchResponse(304))
    drive(store, T0 + 900, FetchResponse(500))
    drive(store, T0 + 920, FetchResponse(error="transport error: ReadTimeout"))
    drive(store, T0 + 940, ok({"keys": []}))  # an empty set is a failure too
    assert store.fetch_counts == {"ok": 1, "not_modified": 2, "error": 3}
    assert store.status(T0 + 940)["fetches"] == store.fetch_counts
    discovering = remote(discovery_urls=(OIDC,))
    drive(discovering, T0, FetchResponse(404))
    assert discovering.fetch_counts == {"ok": 0, "not_modified": 0, "error": 1}
