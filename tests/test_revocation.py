"""The in-process revocation list: by jti, subject and client; cache hits included; expiry on
the injected clock; the bound refused loudly; shared lists; every profile renders revoked_token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gatekeeper import AuthError, Issuer, Verifier
from gatekeeper.responses import BUILTIN_PROFILES
from gatekeeper.revocation import (
    FALLBACK_LIFETIME,
    Revocation,
    RevocationListFull,
    Revocations,
    longest_lifetime,
    revocation_request,
)

if TYPE_CHECKING:
    from conftest import Clock, MakeIssuer

    from gatekeeper.issuer import DevIssuer

ISS = "https://issuer.example"


@pytest.fixture
def issuer(make_issuer: MakeIssuer) -> DevIssuer:
    return make_issuer(ISS)


@pytest.fixture
def verifier(issuer: DevIssuer, clock: Clock) -> Verifier:
    return Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock)


def kind_of(verifier: Verifier, token: str) -> str | None:
    try:
        verifier.verify(token)
    except AuthError as error:
        return error.kind
    return None


async def async_kind_of(verifier: Verifier, token: str) -> str | None:
    try:
        await verifier.verify_async(token)
    except AuthError as error:
        return error.kind
    return None


def test_revoked_jti_is_refused_even_from_the_cache(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint()
    other = issuer.mint()
    claims = verifier.verify(token)
    assert verifier.cached(token) is claims  # cached before the revocation
    verifier.revoke(jti=claims["jti"], issuer=ISS, expires_at=claims["exp"])
    assert kind_of(verifier, token) == "revoked_token"
    assert verifier.cached(token) is None
    assert kind_of(verifier, other) is None  # another jti of the same subject still passes


@pytest.mark.anyio
async def test_async_path_refuses_revoked_token(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint()
    claims = await verifier.verify_async(token)
    await verifier.revoke_async(jti=claims["jti"], issuer=ISS)
    assert await async_kind_of(verifier, token) == "revoked_token"


def test_revoked_token_is_refused_on_first_verification(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint(claims={"jti": "known-in-advance"})
    verifier.revoke(jti="known-in-advance", issuer=ISS)
    assert kind_of(verifier, token) == "revoked_token"
    assert kind_of(verifier, token) == "revoked_token"  # and again, from the cache


def test_jti_is_revoked_with_its_issuer_only(make_issuer: MakeIssuer, clock: Clock) -> None:
    a, b = make_issuer("https://a.example"), make_issuer("https://b.example")
    verifier = Verifier(
        issuers=[
            Issuer("https://a.example", jwks=a.jwks(), audience="api"),
            Issuer("https://b.example", jwks=b.jwks(), audience="api"),
        ],
        clock=clock,
    )
    token_a = a.mint(claims={"jti": "same"})
    token_b = b.mint(claims={"jti": "same"})
    verifier.revoke(jti="same", issuer="https://a.example")
    assert kind_of(verifier, token_a) == "revoked_token"
    assert kind_of(verifier, token_b) is None


def test_subject_revocation_covers_tokens_issued_before(
    verifier: Verifier, issuer: DevIssuer, clock: Clock
) -> None:
    old = issuer.mint(subject="alice")
    verifier.verify(old)
    bob = issuer.mint(subject="bob")
    clock.advance(10)
    verifier.revoke(sub="alice")
    clock.advance(1)
    new = issuer.mint(subject="alice")  # issued after the revocation
    assert kind_of(verifier, old) == "revoked_token"
    assert kind_of(verifier, new) is None
    assert kind_of(verifier, bob) is None


def test_subject_revocation_with_explicit_before(verifier: Verifier, issuer: DevIssuer, clock: Clock) -> None:
    first = issuer.mint(subject="alice")
    clock.advance(100)
    second = issuer.mint(subject="alice")
    verifier.revoke(sub="alice", before=clock.now - 50)
    assert kind_of(verifier, first) == "revoked_token"
    assert kind_of(verifier, second) is None


def test_token_without_iat_is_revoked_by_subject(verifier: Verifier, issuer: DevIssuer, clock: Clock) -> None:
    verifier.revoke(sub="alice")
    clock.advance(60)
    no_iat = issuer.mint(subject="alice", claims={"iat": None})
    assert kind_of(verifier, no_iat) == "revoked_token"


def test_token_without_jti_is_revoked_by_client(verifier: Verifier, issuer: DevIssuer, clock: Clock) -> None:
    token = issuer.mint(subject="svc", claims={"jti": None, "client_id": "billing"})
    verifier.verify(token)
    verifier.revoke(client_id="billing")
    assert kind_of(verifier, token) == "revoked_token"
    clock.advance(1)
    assert kind_of(verifier, issuer.mint(claims={"jti": None, "client_id": "billing"})) is None


def test_subject_revocation_for_one_issuer_only(make_issuer: MakeIssuer, clock: Clock) -> None:
    a, b = make_issuer("https://a.example"), make_issuer("https://b.example")
    verifier = Verifier(
        issuers=[
            Issuer("https://a.example", jwks=a.jwks(), audience="api"),
            Issuer("https://b.example", jwks=b.jwks(), audience="api"),
        ],
        clock=clock,
    )
    token_a, token_b = a.mint(subject="alice"), b.mint(subject="alice")
    clock.advance(1)
    verifier.revoke(sub="alice", issuer="https://b.example")
    assert kind_of(verifier, token_a) is None
    assert kind_of(verifier, token_b) == "revoked_token"
    verifier.revoke(sub="alice")  # every issuer
    assert kind_of(verifier, token_a) == "revoked_token"


def test_unrevoke_lets_the_token_through_again(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint(subject="alice")
    claims = verifier.verify(token)
    verifier.revoke(jti=claims["jti"], issuer=ISS)
    assert kind_of(verifier, token) == "revoked_token"
    assert verifier.unrevoke(jti=claims["jti"], issuer=ISS) is True
    assert verifier.unrevoke(jti=claims["jti"], issuer=ISS) is False
    assert kind_of(verifier, token) is None  # the rejection was not remembered


def test_one_list_shared_by_two_verifiers(issuer: DevIssuer, clock: Clock) -> None:
    shared = Revocations(clock=clock)
    one = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=shared)
    two = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=shared)
    token = issuer.mint()
    claims = one.verify(token)
    two.verify(token)
    one.revoke(jti=claims["jti"], issuer=ISS)
    assert two.revocations is shared
    assert kind_of(two, token) == "revoked_token"


def test_jti_entry_expires_with_the_token(verifier: Verifier, issuer: DevIssuer, clock: Clock) -> None:
    token = issuer.mint(expires_in=300)
    claims = verifier.verify(token)
    verifier.revoke(jti=claims["jti"], issuer=ISS, expires_at=claims["exp"])
    revocations = verifier.revocations
    assert len(revocations) == 1
    clock.advance(299)
    assert revocations.purge() == 0
    clock.advance(2)
    assert revocations.purge() == 1
    assert len(revocations) == 0
    assert revocations.counts() == {"jti": 0, "sub": 0, "client_id": 0}


def test_subject_entry_lives_for_the_issuers_longest_lifetime(
    verifier: Verifier, clock: Clock, issuer: DevIssuer
) -> None:
    entry = verifier.revoke(sub="alice")
    config = verifier.issuers[ISS]
    assert entry.until == pytest.approx(clock.now + longest_lifetime(config))
    clock.advance(longest_lifetime(config) - 1)
    assert verifier.revocations.purge() == 0
    clock.advance(2)
    assert verifier.revocations.purge() == 1


def test_longest_lifetime_uses_max_lifetime_or_the_fallback(issuer: DevIssuer) -> None:
    config = Issuer(ISS, jwks=issuer.jwks(), audience="api", leeway=10)
    expected = float(getattr(config, "max_lifetime", None) or FALLBACK_LIFETIME) + 10
    assert longest_lifetime(config) == expected
    if hasattr(Issuer, "__dataclass_fields__") and "max_lifetime" in Issuer.__dataclass_fields__:
        limited = Issuer(ISS, jwks=issuer.jwks(), audience="api", leeway=0, max_lifetime=600)
        assert longest_lifetime(limited) == 600


def test_full_list_refuses_new_entries_loudly(clock: Clock) -> None:
    revocations = Revocations(max_entries=3, clock=clock)
    for i in range(3):
        revocations.add(Revocation("jti", f"j{i}", ISS, clock.now + 100 + i))
    with pytest.raises(RevocationListFull):
        revocations.add(Revocation("jti", "j3", ISS, clock.now + 1000))
    # Nothing still needed was forgotten to make room.
    assert {e.value for e in revocations.entries()} == {"j0", "j1", "j2"}
    # Replacing an existing entry is not a new one.
    assert revocations.add(Revocation("jti", "j0", ISS, clock.now + 500))
    # Once one expires, it is purged to make room.
    clock.advance(101)
    revocations.add(Revocation("jti", "j3", ISS, clock.now + 1000))
    assert {e.value for e in revocations.entries()} == {"j0", "j2", "j3"}


def test_full_list_surfaces_through_the_verifier(issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(
        ISS,
        jwks=issuer.jwks(),
        audience="api",
        clock=clock,
        revocations=Revocations(max_entries=1, clock=clock),
    )
    verifier.revoke(sub="a")
    with pytest.raises(RevocationListFull):
        verifier.revoke(sub="b")


def test_expired_entry_is_not_added(clock: Clock) -> None:
    revocations = Revocations(clock=clock)
    assert revocations.add(Revocation("jti", "old", ISS, clock.now - 1)) is False
    assert len(revocations) == 0
    assert not revocations.active


def test_cache_hit_rechecks_only_when_the_list_changed(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint(subject="alice")
    verifier.revoke(sub="someone-else")
    claims = verifier.verify(token)
    generation = verifier.revocations.generation
    assert claims.checked_at == generation
    verifier.verify(token)
    assert claims.checked_at == generation
    verifier.revoke(sub="alice")
    assert kind_of(verifier, token) == "revoked_token"
    assert claims.checked_at == generation  # never marked clean again


def test_blocked_list_answers_keys_unavailable(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint()
    verifier.verify(token)
    verifier.revocations.set_blocked(True)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.kind == "keys_unavailable"
    assert "revocation" in info.value.description
    verifier.revocations.set_blocked(False)
    assert kind_of(verifier, token) is None


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({}, "exactly one"),
        ({"jti": "x", "sub": "y"}, "exactly one"),
        ({"jti": "x"}, "issuer"),
        ({"jti": "x", "issuer": "https://unknown.example"}, "trusted"),
        ({"sub": ""}, "non-empty"),
        ({"sub": 5}, "non-empty"),
        ({"sub": "a", "before": float("nan")}, "finite"),
        ({"sub": "a", "before": "yesterday"}, "finite"),
        ({"jti": "x", "issuer": ISS, "before": 1.0}, "before applies"),
        ({"sub": "a", "expires_at": 1.0}, "expires_at applies"),
    ],
)
def test_malformed_requests_are_refused(
    verifier: Verifier, request_args: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        verifier.revoke(**request_args)


def test_entries_round_trip_as_plain_data(verifier: Verifier, clock: Clock) -> None:
    entry = revocation_request(verifier.issuers, clock.now, client_id="c", before=clock.now - 5)
    assert Revocation.from_dict(entry.to_dict()) == entry
    with pytest.raises(ValueError, match="issuer"):
        Revocation.from_dict({"kind": "jti", "value": "x", "until": 1.0})
    with pytest.raises(ValueError, match="unknown revocation kind"):
        Revocation.from_dict({"kind": "nope", "value": "x", "until": 1.0, "before": 0.0})
    with pytest.raises(ValueError, match="JSON object"):
        Revocation.from_dict(["not", "an", "object"])


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_every_builtin_profile_renders_revoked_token(
    profile: str, verifier: Verifier, issuer: DevIssuer
) -> None:
    token = issuer.mint()
    claims = verifier.verify(token)
    verifier.revoke(jti=claims["jti"], issuer=ISS)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    rendered = BUILTIN_PROFILES[profile]("api").render(info.value)
    expected = {"rfc6750": 401, "placepoint": 401, "addressfinder": 400, "placewise": 460}[profile]
    assert rendered.status == expected
    if profile == "rfc6750":
        assert 'error="invalid_token"' in (rendered.header("www-authenticate") or "")
        assert b"revoked" in rendered.body


def test_counts_follow_every_change(clock: Clock) -> None:
    revocations = Revocations(clock=clock)
    revocations.add(Revocation("jti", "a", ISS, clock.now + 10))
    revocations.add(Revocation("jti", "a", ISS, clock.now + 20))  # a replacement, not a new one
    revocations.add(Revocation("sub", "s", None, clock.now + 100, before=clock.now))
    revocations.add(Revocation("sub", "s", ISS, clock.now + 100, before=clock.now))
    revocations.add(Revocation("client_id", "c", None, clock.now + 100, before=clock.now))
    assert revocations.counts() == {"jti": 1, "sub": 2, "client_id": 1}
    revocations.remove("sub", "s", None)
    assert revocations.counts() == {"jti": 1, "sub": 1, "client_id": 1}
    clock.advance(50)  # the jti entry is no longer needed
    assert revocations.counts() == {"jti": 0, "sub": 1, "client_id": 1}
    revocations.replace_all(
        [Revocation("jti", "x", ISS, clock.now + 5), Revocation("jti", "y", ISS, clock.now + 5)]
    )
    assert revocations.counts() == {"jti": 2, "sub": 0, "client_id": 0}
    assert len(revocations) == 2


def test_cached_probe_looks_at_the_list_once_per_change(
    verifier: Verifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issuer.mint(subject="alice")
    verifier.revoke(sub="someone-else")
    verifier.verify(token)
    revocations = verifier.revocations
    looked: list[object] = []
    real = revocations.is_revoked

    def counting(claims: object) -> bool:
        looked.append(claims)
        return real(claims)  # type: ignore[arg-type]

    monkeypatch.setattr(revocations, "is_revoked", counting)
    assert verifier.cached(token) is not None
    assert verifier.cached(token) is not None
    assert looked == []  # unchanged list: no lookup at all
    verifier.revoke(sub="another")
    assert verifier.cached(token) is not None
    assert verifier.cached(token) is not None
    assert len(looked) == 1  # one lookup after the change, then the generation matches again
    verifier.revoke(sub="alice")
    assert verifier.cached(token) is None


def test_readme_revocation_example_runs_and_prints_its_comments() -> None:
    import contextlib
    import io
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[
        readme.index("<!-- section:revocation -->") : readme.index("<!-- /section:revocation -->")
    ]
    [block] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    promised = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+# (.*)", block)]
    assert out.getvalue().splitlines() == promised


@pytest.mark.anyio
async def test_middleware_refuses_a_cached_token_once_revoked(verifier: Verifier, issuer: DevIssuer) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gatekeeper import GatekeeperMiddleware

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = GatekeeperMiddleware(Starlette(routes=[Route("/", hello)]), verifier=verifier, prefetch_keys=False)
    token = issuer.mint(subject="alice")
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        assert (await client.get("/", headers=headers)).status_code == 200
        assert (await client.get("/", headers=headers)).status_code == 200  # from the cache
        await verifier.revoke_async(sub="alice")
        refused = await client.get("/", headers=headers)
    assert refused.status_code == 401
    assert (
        'error="invalid_token", error_description="The access token has been revoked"'
        in (refused.headers["www-authenticate"])
    )
