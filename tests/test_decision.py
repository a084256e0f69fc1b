"""The one decision (gatekeeper.decision.Gate) called with plain data: method, path, headers and
query string in, Allow or Deny out, for every access mode, scope mode, token source and bad input;
and its sync fast path, which answers only what the full decision would allow. Every test runs
twice: with the fast path's C part (gatekeeper._speedups, where built) and with its Python twin."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import Clock

from gatekeeper.bearer import BearerSource
from gatekeeper.cache import CLAIMS, KEY, UNTIL
from gatekeeper.claims import Claims
from gatekeeper.decision import Allow, Deny, Gate
from gatekeeper.errors import AuthError
from gatekeeper.issuer import DevIssuer
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

Headers = list[tuple[bytes, bytes]]

RULES = RuleSet.build(
    [
        Rule("/public/**", access="optional"),
        Rule("/orders/**", scopes=["orders:read", "orders:write"]),
        Rule("/reports/**", scopes="reports:read admin", mode="any"),
        Rule("/items/{id}", methods=["DELETE"], scopes="items:delete"),
    ],
    exempt=["/health"],
)


pytestmark = pytest.mark.usefixtures("fast_path_implementation")


@pytest.fixture
def verifier(dev_issuer: DevIssuer, clock: Clock) -> Verifier:
    return Verifier(dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)


def gate(verifier: Verifier, *, query: str | None = None, principal: Any = None) -> Gate:
    return Gate(verifier, rules=RULES, source=BearerSource.of(query), principal=principal)


def bearer(token: str) -> Headers:
    return [(b"host", b"api.example"), (b"authorization", f"Bearer {token}".encode())]


def decide(
    g: Gate, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], query: bytes = b""
) -> Allow | Deny:
    return asyncio.run(g.decide(method, path, headers, query))


def allowed(result: Allow | Deny) -> Allow:
    assert isinstance(result, Allow), result
    return result


def denied(result: Allow | Deny, kind: str) -> Deny:
    assert isinstance(result, Deny), result
    assert result.error.kind == kind, result.error
    return result


# -- access modes --------------------------------------------------------------------------------


def test_required_route_allows_a_valid_token(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    token = dev_issuer.mint(subject="alice")
    result = allowed(decide(gate(verifier), "GET", "/anything", bearer(token)))
    assert result.claims is not None
    assert result.claims.subject == "alice"
    assert result.token == token
    assert result.rule is RULES.default
    assert result.cached is False
    assert result.principal is None
    again = allowed(decide(gate(verifier), "GET", "/anything", bearer(token)))
    assert again.cached is True  # the verified-token cache answered the second time


def test_required_route_denies_no_token_and_bad_tokens(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    missing = denied(decide(g, "GET", "/anything", [(b"host", b"x")]), "missing_token")
    assert missing.token is None
    assert missing.rule is RULES.default
    expired = dev_issuer.mint(expires_in=-60)
    assert denied(decide(g, "GET", "/x", bearer(expired)), "expired_token").token == expired
    head, _, sig = dev_issuer.mint().rpartition(".")
    forged = f"{head}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    denied(decide(g, "GET", "/x", bearer(forged)), "invalid_token")
    # Another scheme is no token at all.
    denied(decide(g, "GET", "/x", [(b"authorization", b"Basic dXNlcjpwYXNz")]), "missing_token")


def test_exempt_route_is_not_looked_at(verifier: Verifier) -> None:
    result = allowed(decide(gate(verifier), "GET", "/health", [(b"authorization", b"Bearer !!bad!!")]))
    assert result.claims is None
    assert result.token is None
    assert result.rule.access == "exempt"


def test_optional_route(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    anonymous = allowed(decide(g, "GET", "/public/page", []))
    assert anonymous.claims is None
    assert anonymous.rule.access == "optional"
    token = dev_issuer.mint(subject="bob")
    signed_in = allowed(decide(g, "GET", "/public/page", bearer(token)))
    assert signed_in.claims is not None
    assert signed_in.claims.subject == "bob"
    # A bad token on an optional route is refused, not ignored.
    denied(decide(g, "GET", "/public/page", bearer(dev_issuer.mint(expires_in=-60))), "expired_token")


# -- scopes --------------------------------------------------------------------------------------


def test_scopes_all(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    allowed(decide(g, "GET", "/orders/1", bearer(dev_issuer.mint(scope="orders:read orders:write"))))
    deny = denied(
        decide(g, "GET", "/orders/1", bearer(dev_issuer.mint(scope="orders:read"))), "insufficient_scope"
    )
    assert deny.error.required_scopes == ("orders:read", "orders:write")
    assert deny.error.scope_mode == "all"
    assert deny.error.issuer == dev_issuer.issuer  # for the log


def test_scopes_any(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    allowed(decide(g, "GET", "/reports/q1", bearer(dev_issuer.mint(scope="admin"))))
    allowed(decide(g, "GET", "/reports/q1", bearer(dev_issuer.mint(scope="reports:read other"))))
    deny = denied(
        decide(g, "GET", "/reports/q1", bearer(dev_issuer.mint(scope="other"))), "insufficient_scope"
    )
    assert deny.error.scope_mode == "any"
    assert set(deny.error.required_scopes) == {"reports:read", "admin"}


def test_rules_by_method(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(scope="items:read")
    allowed(decide(g, "GET", "/items/7", bearer(token)))  # the DELETE rule does not apply
    denied(decide(g, "DELETE", "/items/7", bearer(token)), "insufficient_scope")


def test_rule_scopes_listed_with_spaces_are_split() -> None:
    rule = Rule("/x", scopes=["a b", "c"])
    assert rule.scopes == ("a", "b", "c")
    assert not rule.satisfied_by(frozenset({"a b", "c"}))
    assert rule.satisfied_by(frozenset({"a", "b", "c"}))


# -- where the token comes from ------------------------------------------------------------------


def test_header_and_query_tokens(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier, query="bearer_token")
    token = dev_issuer.mint(subject="carol")
    by_header = allowed(decide(g, "GET", "/x", bearer(token)))
    by_query = allowed(decide(g, "GET", "/x", [], f"a=1&bearer_token={token}".encode()))
    assert by_header.claims is not None
    assert by_query.claims is not None
    assert by_query.claims.subject == "carol"
    assert by_query.token == token
    # Without a configured parameter the query is not a token source.
    denied(decide(gate(verifier), "GET", "/x", [], f"bearer_token={token}".encode()), "missing_token")


def test_header_and_query_together_is_invalid_request(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier, query="bearer_token")
    token = dev_issuer.mint()
    allowed(decide(g, "GET", "/x", bearer(token)))  # now cached
    denied(decide(g, "GET", "/x", bearer(token), f"bearer_token={token}".encode()), "invalid_request")
    assert g.cached(RULES.default, bearer(token), f"bearer_token={token}".encode()) is None
    # A percent-encoded parameter name is a token parameter too.
    denied(decide(g, "GET", "/x", bearer(token), f"bearer%5Ftoken={token}".encode()), "invalid_request")
    assert g.cached(RULES.default, bearer(token), f"bearer%5Ftoken={token}".encode()) is None


@pytest.mark.parametrize("second_name", [b"authorization", b"Authorization", b"AUTHORIZATION"])
def test_two_authorization_headers_are_invalid_request(
    verifier: Verifier, dev_issuer: DevIssuer, second_name: bytes
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint()
    allowed(decide(g, "GET", "/x", bearer(token)))  # cached: the fast path must not skip the check
    headers = [*bearer(token), (second_name, f"Bearer {token}".encode())]
    denied(decide(g, "GET", "/x", headers), "invalid_request")
    assert g.cached(RULES.default, headers) is None


@pytest.mark.parametrize(
    "value",
    [b"Bearer", b"Bearer ", b"Bearer a b", b"Bearer \xff\xfe", b"Bearer\ttoken", b"Bearer= x", b"Bearer !"],
)
def test_malformed_header_is_invalid_request(verifier: Verifier, value: bytes) -> None:
    g = gate(verifier)
    headers = [(b"authorization", value)]
    deny = denied(decide(g, "GET", "/x", headers), "invalid_request")
    assert deny.token is None
    assert g.cached(RULES.default, headers) is None


def test_malformed_variant_of_a_cached_token_is_still_refused(
    verifier: Verifier, dev_issuer: DevIssuer
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint()
    allowed(decide(g, "GET", "/x", bearer(token)))
    for value in (f"Bearer {token} ", f"Bearer {token}\x00", f"Bearer  {token}!"):
        headers = [(b"authorization", value.encode())]
        assert g.cached(RULES.default, headers) is None
        denied(decide(g, "GET", "/x", headers), "invalid_request")


# -- the fast path ------------------------------------------------------------------------------


def test_fast_path_answers_only_cached_tokens_with_the_scopes(
    verifier: Verifier, dev_issuer: DevIssuer
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(scope="orders:read")
    orders = RULES.match("GET", "/orders/1")
    assert g.cached(RULES.default, bearer(token)) is None  # not verified yet
    allowed(decide(g, "GET", "/x", bearer(token)))
    claims = g.cached(RULES.default, bearer(token))
    assert isinstance(claims, Claims)
    assert claims.scopes == {"orders:read"}
    assert g.cached(orders, bearer(token)) is None  # lacks orders:write: the slow path refuses
    assert g.cached(RULES.default, []) is None
    # A header value is answered only once the full parser has read it: another spelling of
    # the scheme goes the slow way first (where the verifier's cache answers), then fast.
    upper = [(b"authorization", f"BEARER {token}".encode())]
    assert g.cached(RULES.default, upper) is None
    assert allowed(decide(g, "GET", "/x", upper)).cached is True
    assert g.cached(RULES.default, upper) is claims
    # Another Gate on the same verifier has not read these headers yet.
    assert gate(verifier).cached(RULES.default, bearer(token)) is None


def test_allow_cached_is_decide_rule_on_a_hit_and_none_otherwise(
    verifier: Verifier, dev_issuer: DevIssuer
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(subject="alice", scope="orders:read orders:write")
    orders = RULES.match("GET", "/orders/1")
    assert g.allow_cached(orders, bearer(token)) is None  # not verified yet
    slow = allowed(decide(g, "GET", "/orders/1", bearer(token)))
    fast = g.allow_cached(orders, bearer(token))
    assert fast is not None
    assert (fast.rule, fast.claims, fast.token, fast.cached) == (orders, slow.claims, token, True)
    assert fast.principal is None
    # An exempt route allows without claims: decide_rule answers it, not the cache.
    assert g.allow_cached(RULES.match("GET", "/health"), bearer(token)) is None
    assert allowed(decide(g, "GET", "/health", bearer(token))).claims is None
    # A principal hook runs on every request: no shortcut past it.
    hooked = gate(verifier, principal=lambda claims: claims["sub"])
    allowed(decide(hooked, "GET", "/orders/1", bearer(token)))
    assert hooked.allow_cached(orders, bearer(token)) is None
    # Missing scopes: the slow path refuses.
    narrow = dev_issuer.mint(subject="bob", scope="orders:read")
    allowed(decide(g, "GET", "/x", bearer(narrow)))
    assert g.allow_cached(orders, bearer(narrow)) is None


def test_memo_is_bounded(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = Gate(verifier, rules=RULES, source=BearerSource.of(), memo_size=2)
    tokens = [dev_issuer.mint() for _ in range(3)]
    for token in tokens:
        allowed(decide(g, "GET", "/x", bearer(token)))
    # The third value cleared the memo: the first two go the slow way again, and still pass.
    assert [g.cached(RULES.default, bearer(t)) is not None for t in tokens] == [False, False, True]
    assert allowed(decide(g, "GET", "/x", bearer(tokens[0]))).cached is True
    off = Gate(verifier, rules=RULES, source=BearerSource.of(), memo_size=0)
    assert allowed(decide(off, "GET", "/x", bearer(tokens[0]))).cached is True
    assert off.cached(RULES.default, bearer(tokens[0])) is None
    with pytest.raises(ValueError, match="memo_size"):
        Gate(verifier, rules=RULES, source=BearerSource.of(), memo_size=-1)


def test_header_source_off_means_no_fast_path(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token", header=False))
    token = dev_issuer.mint()
    denied(decide(g, "GET", "/x", bearer(token)), "missing_token")
    assert g.cached(RULES.default, bearer(token)) is None
    allowed(decide(g, "GET", "/x", [], f"bearer_token={token}".encode()))
    assert g.cached(RULES.default, bearer(token)) is None


def test_fast_path_stops_at_expiry(verifier: Verifier, dev_issuer: DevIssuer, clock: Clock) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(expires_in=60)
    allowed(decide(g, "GET", "/x", bearer(token)))
    assert g.cached(RULES.default, bearer(token)) is not None
    clock.advance(100)  # past exp and the leeway
    assert g.cached(RULES.default, bearer(token)) is None
    denied(decide(g, "GET", "/x", bearer(token)), "expired_token")


# -- the principal hook -------------------------------------------------------------------------


def test_principal_hook_sync_and_async(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    members = {"alice": "member-1"}

    def lookup(claims: Claims) -> str | None:
        return members.get(claims.subject or "")

    async def lookup_async(claims: Claims) -> str | None:
        return lookup(claims)

    for hook in (lookup, lookup_async):
        g = gate(verifier, principal=hook)
        result = allowed(decide(g, "GET", "/x", bearer(dev_issuer.mint(subject="alice"))))
        assert result.principal == "member-1"
        deny = denied(decide(g, "GET", "/x", bearer(dev_issuer.mint(subject="mallory"))), "unknown_principal")
        assert deny.error.issuer == dev_issuer.issuer


def test_principal_hook_errors_become_denials(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    def hook(claims: Claims) -> str:
        raise AuthError("insufficient_scope", "Not in this project")

    deny = denied(
        decide(gate(verifier, principal=hook), "GET", "/x", bearer(dev_issuer.mint())), "insufficient_scope"
    )
    assert deny.error.description == "Not in this project"
    assert deny.error.issuer == dev_issuer.issuer
    assert deny.error.kid is not None


def test_principal_hook_is_not_run_for_exempt_or_anonymous_requests(verifier: Verifier) -> None:
    calls: list[Claims] = []
    g = gate(verifier, principal=calls.append)
    allowed(decide(g, "GET", "/health", []))
    allowed(decide(g, "GET", "/public/x", []))
    assert calls == []


def test_decisions_never_show_the_token(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    token = dev_issuer.mint()
    allow = decide(gate(verifier), "GET", "/x", bearer(token))
    deny = decide(gate(verifier), "GET", "/orders/1", bearer(token))
    for result in (allow, deny):
        assert result.token == token
        assert token not in repr(result)
        assert token.split(".")[2] not in str(result)


def test_values_sharing_a_tail_never_share_an_answer(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    # The memo is keyed by a value's last bytes; the whole value must match.
    g = gate(verifier)
    token = dev_issuer.mint(subject="alice", scope="orders:read orders:write")
    allowed(decide(g, "GET", "/x", bearer(token)))
    head, _, signature = token.partition(".")
    forged_head = head[:-2] + ("AA" if head[-2:] != "AA" else "BB")
    forged = f"{forged_head}.{signature}"  # same tail, different token
    assert forged[-16:] == token[-16:]
    assert g.cached(RULES.default, bearer(forged)) is None
    denied(decide(g, "GET", "/x", bearer(forged)), "invalid_token")
    assert g.cached(RULES.default, bearer(token)) is not None  # the refusal did not evict it
    # Two spellings of one token: same tail, both answered correctly, whichever is remembered.
    lower = [(b"authorization", f"bearer {token}".encode())]
    allowed(decide(g, "GET", "/x", lower))
    assert g.cached(RULES.default, lower) is not None
    assert g.cached(RULES.default, bearer(token)) is None  # displaced: the slow path again
    assert allowed(decide(g, "GET", "/x", bearer(token))).claims == g.cached(RULES.default, bearer(token))


def test_a_refused_value_is_forgotten(verifier: Verifier, dev_issuer: DevIssuer, clock: Clock) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(expires_in=60)
    allowed(decide(g, "GET", "/x", bearer(token)))
    assert len(g.memo) == 1
    clock.advance(100)
    denied(decide(g, "GET", "/x", bearer(token)), "expired_token")
    assert len(g.memo) == 0


def test_a_scope_refusal_keeps_the_fast_path_for_other_routes(
    verifier: Verifier, dev_issuer: DevIssuer
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(scope="orders:read")
    allowed(decide(g, "GET", "/x", bearer(token)))
    denied(decide(g, "GET", "/orders/1", bearer(token)), "insufficient_scope")
    # The token is still good: only the route's scopes were missing.
    assert g.cached(RULES.default, bearer(token)) is not None
    assert len(g.memo) == 1


# -- the fast path holds the verifier's cache entry ----------------------------------------------


def test_decide_answers_a_remembered_value_on_the_fast_path(
    verifier: Verifier, dev_issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = dev_issuer.mint(subject="alice", scope="orders:read orders:write")
    members = {"alice": "member-1"}
    g = gate(verifier, principal=lambda claims: members.get(claims.subject or ""))
    first = allowed(decide(g, "GET", "/orders/1", bearer(token)))
    assert first.cached is False

    def slow_path(*args: Any) -> Any:
        raise AssertionError("the fast path should have answered")

    # Neither the token parser nor the verifier is asked again.
    monkeypatch.setattr(g, "source", SimpleNamespace(find=slow_path, header=True, query_params=()))
    monkeypatch.setattr(verifier, "cached", slow_path)
    monkeypatch.setattr(verifier, "verify_async", slow_path)
    again = allowed(decide(g, "GET", "/orders/1", bearer(token)))
    assert (again.cached, again.token, again.principal) == (True, token, "member-1")
    assert again.claims is first.claims
    del members["alice"]  # the principal hook still runs on the fast path
    deny = denied(decide(g, "GET", "/orders/1", bearer(token)), "unknown_principal")
    assert deny.token == token


def test_a_cleared_or_replaced_cache_entry_sends_the_fast_path_back_to_the_verifier(
    verifier: Verifier, dev_issuer: DevIssuer
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint()
    allowed(decide(g, "GET", "/x", bearer(token)))
    assert g.cached(RULES.default, bearer(token)) is not None
    verifier.clear_cache()
    assert g.cached(RULES.default, bearer(token)) is None  # the memo's entry was killed
    assert allowed(decide(g, "GET", "/x", bearer(token))).cached is False  # verified again
    assert g.cached(RULES.default, bearer(token)) is not None  # and the new entry remembered


def test_the_fast_path_stops_when_the_signing_key_leaves(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    token = dev_issuer.mint()
    allowed(decide(g, "GET", "/x", bearer(token)))
    entry = verifier.cache_entry(token)
    assert entry is not None
    entry[KEY].alive = False  # what the key store does when the key leaves the JWKS
    assert g.cached(RULES.default, bearer(token)) is None
    # The slow path asks the verifier, whose cache drops the entry (tests/test_jwks_http.py
    # has the whole story with a key leaving a served JWKS).
    allowed(decide(g, "GET", "/x", bearer(token)))
    assert verifier.cache_entry(token) is not entry


def test_an_entry_due_for_revalidation_goes_to_the_slow_path_once(
    verifier: Verifier, dev_issuer: DevIssuer, clock: Clock
) -> None:
    g = gate(verifier)
    token = dev_issuer.mint(expires_in=3600)
    allowed(decide(g, "GET", "/x", bearer(token)))
    entry = verifier.cache_entry(token)
    assert entry is not None
    entry[UNTIL] = clock()  # due now, as when the key set's freshness runs out
    assert g.cached(RULES.default, bearer(token)) is None
    assert allowed(decide(g, "GET", "/x", bearer(token))).claims is entry[CLAIMS]  # revalidated
    assert verifier.cache_entry(token) is entry  # in place, no new verification
    assert entry[UNTIL] > clock()
    assert g.cached(RULES.default, bearer(token)) is entry[CLAIMS]


def test_a_revocation_stops_the_fast_path_at_once(verifier: Verifier, dev_issuer: DevIssuer) -> None:
    g = gate(verifier)
    token, other = dev_issuer.mint(subject="mallory"), dev_issuer.mint(subject="alice")
    allowed(decide(g, "GET", "/x", bearer(token)))
    allowed(decide(g, "GET", "/x", bearer(other)))
    verifier.revoke(sub="mallory", issuer=dev_issuer.issuer)
    assert g.cached(RULES.default, bearer(token)) is None
    assert g.cached(RULES.default, bearer(other)) is None  # the list changed: checked again
    denied(decide(g, "GET", "/x", bearer(token)), "revoked_token")
    assert allowed(decide(g, "GET", "/x", bearer(other))).cached is True
    assert g.cached(RULES.default, bearer(other)) is not None  # checked at this generation
    assert g.cached(RULES.default, bearer(token)) is None
