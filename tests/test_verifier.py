"""Verifier-level behaviour: construction, sync/async parity, the rejection cache."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import Clock
from joserfc.jws import JWSRegistry

from gatekeeper import AuthError, Issuer, Verifier, load_issuers
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer


@pytest.fixture
def issuer(clock: Clock) -> DevIssuer:
    return DevIssuer("https://issuer.example", clock=clock, algorithms=("RS256", "ES256", "EdDSA"))


@pytest.fixture
def verifier(issuer: DevIssuer, clock: Clock) -> Verifier:
    return Verifier(issuer.issuer, jwks=issuer.jwks(), audience="api", clock=clock)


class CountingVerify:
    """Counts signature checks by wrapping joserfc's algorithm model for one algorithm."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, alg: str = "RS256") -> None:
        self.calls = 0
        model = JWSRegistry.algorithms[alg]
        original = model.verify

        def counting(*args: Any) -> bool:
            self.calls += 1
            return bool(original(*args))

        monkeypatch.setattr(model, "verify", counting)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_sync_and_async_agree(verifier: Verifier, issuer: DevIssuer, alg: str) -> None:
    token = issuer.mint(alg=alg, scope="read write")
    claims = verifier.verify(token)
    verifier.clear_cache()
    async_claims = asyncio.run(verifier.verify_async(token))
    assert dict(claims) == dict(async_claims)
    assert claims.scopes == async_claims.scopes == frozenset({"read", "write"})
    assert claims.issuer == "https://issuer.example"


def test_cache_hit_returns_same_claims_without_signature_check(
    verifier: Verifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingVerify(monkeypatch)
    token = issuer.mint()
    first = verifier.verify(token)
    second = verifier.verify(token)
    assert first is second
    assert counter.calls == 1


def test_cache_never_serves_expired_token(verifier: Verifier, issuer: DevIssuer, clock: Clock) -> None:
    token = issuer.mint(expires_in=60)
    verifier.verify(token)
    clock.now += 61 + 30  # past exp and the default leeway
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.kind == "expired_token"


def test_repeated_bad_token_costs_one_signature_check(
    verifier: Verifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingVerify(monkeypatch)
    token = issuer.mint()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(5):
        with pytest.raises(AuthError) as info:
            verifier.verify(forged)
        assert info.value.kind == "invalid_token"
        assert info.value.description == "The token signature is invalid"
    assert counter.calls == 1


def test_rejection_memory_expires(issuer: DevIssuer, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = Verifier(issuer.issuer, jwks=issuer.jwks(), audience="api", clock=clock, rejection_ttl=10)
    counter = CountingVerify(monkeypatch)
    forged = issuer.mint(expires_in=3600)[:-4] + "AAAA"
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(forged)
    clock.now += 11
    with pytest.raises(AuthError):
        verifier.verify(forged)
    assert counter.calls == 2


def test_not_yet_valid_token_is_not_remembered(issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer.issuer, jwks=issuer.jwks(), audience="api", clock=clock, rejection_ttl=3600)
    token = issuer.mint(not_before=120, expires_in=600)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.kind == "invalid_token"
    clock.now += 91  # nbf minus the 30 s leeway has passed; the rejection memory has not
    assert verifier.verify(token)["sub"] == "client-123"


def test_unknown_kid_is_not_remembered(issuer: DevIssuer, clock: Clock) -> None:
    with IssuerServer(issuer) as server:
        verifier = Verifier(
            issuer.issuer, jwks_url=server.jwks_url, audience="api", clock=clock, rejection_ttl=3600
        )
        verifier.prefetch_sync()
        published = json.dumps(issuer.jwks()).encode()
        new_kid = issuer.add_key("RS256")
        token = issuer.mint(kid=new_kid)
        server.body = published  # the issuer signs with a key its JWKS does not show yet
        with pytest.raises(AuthError) as info:
            verifier.verify(token)  # the refetch it triggers does not find the key
        assert info.value.description == "The token signing key is unknown"
        assert info.value.kid == new_kid
        assert server.requests() == 2
        server.body = None
        clock.now += 10  # past the unknown-kid cooldown: the same token triggers another refetch
        assert verifier.verify(token).kid == new_kid
        assert server.requests() == 3
        verifier.close()


def test_cache_size_zero_disables_both_caches(
    issuer: DevIssuer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = Verifier(issuer.issuer, jwks=issuer.jwks(), audience="api", clock=clock, cache_size=0)
    counter = CountingVerify(monkeypatch)
    token = issuer.mint()
    verifier.verify(token)
    verifier.verify(token)
    forged = token[:-4] + "AAAA"
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(forged)
    assert counter.calls == 4


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_missing_token(verifier: Verifier, token: str | None) -> None:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.kind == "missing_token"


def test_multi_issuer_selects_by_iss(clock: Clock) -> None:
    a = DevIssuer("https://a.example", clock=clock)
    b = DevIssuer("https://b.example", clock=clock, audience="other")
    verifier = Verifier(
        issuers=[
            Issuer("https://a.example", jwks=a.jwks(), audience="api"),
            Issuer("https://b.example", jwks=b.jwks(), audience="other"),
        ],
        clock=clock,
    )
    assert verifier.verify(a.mint()).issuer == "https://a.example"
    assert verifier.verify(b.mint()).issuer == "https://b.example"
    # b's token claiming to be from a: a's keys do not verify b's signature.
    spoofed = b.mint(claims={"iss": "https://a.example"}, audience="api")
    with pytest.raises(AuthError) as info:
        verifier.verify(spoofed)
    assert info.value.kind == "invalid_token"


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Verifier()
    with pytest.raises(TypeError):
        Verifier(jwks_url="https://x/jwks")
    with pytest.raises(ValueError, match="twice"):
        Verifier(issuers=[Issuer("https://a", jwks_url="https://a/j", audience="x")] * 2)
    with pytest.raises(ValueError, match="exactly one key source"):
        Verifier("https://a", audience="api")


def test_load_issuers_from_plain_dicts(tmp_path: Any, issuer: DevIssuer, clock: Clock) -> None:
    import json

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    configs = load_issuers(
        [
            {"issuer": issuer.issuer, "jwks": str(path), "audience": ["api", "other"], "leeway": 5},
            {"issuer": "https://remote.example", "jwks_url": "https://remote.example/jwks",
             "audience": "api", "fetch": {"default_ttl": 120}},
        ]
    )  # fmt: skip
    assert configs[1].fetch.default_ttl == 120
    verifier = Verifier(issuers=configs, clock=clock)
    assert verifier.verify(issuer.mint(audience="other"))["aud"] == "other"
    status = {s["issuer"]: s for s in verifier.status()}
    assert status[issuer.issuer]["usable"] is True
    assert status["https://remote.example"]["usable"] is False
