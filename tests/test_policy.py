"""Issuer policy: several trusted issuers, each with its key source, audiences, algorithm
allow-list, leeway, required claims, ``typ`` and size limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gatekeeper import DEFAULT_ALGORITHMS, AuthError, Issuer, Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Clock, Forge

    Rejected = Callable[..., AuthError]
    MakeIssuer = Callable[..., DevIssuer]

A = "https://a.example"
B = "https://b.example/tenant/"


def test_default_algorithms_are_asymmetric_only() -> None:
    assert set(DEFAULT_ALGORITHMS) == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    }  # fmt: skip
    issuer = Issuer(A, audience="api", jwks={"keys": []})
    assert issuer.allowed_algorithms == frozenset(DEFAULT_ALGORITHMS)
    assert issuer.leeway == 30.0  # explicit and small
    assert issuer.max_token_bytes == 8192


# -- several issuers ----------------------------------------------------------------------------


@pytest.fixture
def two(make_issuer: MakeIssuer, clock: Clock) -> tuple[DevIssuer, DevIssuer, Verifier]:
    a = make_issuer(A, algorithms=("ES256",))
    b = make_issuer(B, algorithms=("EdDSA",), audience="orders")
    verifier = Verifier(
        issuers=[
            Issuer(A, audience="api", jwks=a.jwks()),
            Issuer(B, audience=["orders", "billing"], jwks=b.jwks()),
        ],
        clock=clock,
    )
    return a, b, verifier


def test_each_trusted_issuer_verifies_its_own_tokens(two: tuple[DevIssuer, DevIssuer, Verifier]) -> None:
    a, b, verifier = two
    from_a = verifier.verify(a.mint(scope="read"))
    assert (from_a.issuer, from_a["iss"], from_a.scopes) == (A, A, frozenset({"read"}))
    from_b = verifier.verify(b.mint())
    assert (from_b.issuer, from_b["aud"]) == (B, "orders")
    assert set(verifier.issuers) == {A, B}


@pytest.mark.parametrize(
    "iss", ["https://c.example", A + "/", B.rstrip("/"), A.upper(), " " + A, "", None, 7, [A], {"iss": A}]
)
def test_unknown_issuer_is_refused(
    two: tuple[DevIssuer, DevIssuer, Verifier], rejected: Rejected, iss: Any
) -> None:
    a, _, verifier = two
    rejected(verifier, a.mint({"iss": iss} if iss is not None else {"iss": None}), "invalid_token", "issuer")


def test_iss_only_selects_the_configuration_never_the_key(
    two: tuple[DevIssuer, DevIssuer, Verifier], rejected: Rejected
) -> None:
    # A's token relabelled with B's iss (and B's audience) is checked against B's keys: refused,
    # whether its kid names A's key, B's key, or nothing.
    a, b, verifier = two
    for kid in (a.jwks()["keys"][0]["kid"], b.jwks()["keys"][0]["kid"], None):
        rejected(verifier, a.mint({"iss": B}, audience="orders", headers={"kid": kid}), "invalid_token")
    # The same token for A's own audience verifies (the control).
    assert verifier.verify(a.mint()).issuer == A


def test_the_audience_is_per_issuer(two: tuple[DevIssuer, DevIssuer, Verifier], rejected: Rejected) -> None:
    a, b, verifier = two
    rejected(verifier, a.mint(audience="orders"), "invalid_token", "audience")
    rejected(verifier, b.mint(audience="api"), "invalid_token", "audience")
    assert verifier.verify(b.mint(audience="billing"))["aud"] == "billing"


def test_an_issuer_configured_twice_is_an_error(dev_issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="twice"):
        Verifier(
            issuers=[
                Issuer(A, audience="api", jwks=dev_issuer.jwks()),
                Issuer(A, audience="other", jwks=dev_issuer.jwks()),
            ]
        )


def test_the_size_limit_is_per_issuer(make_issuer: MakeIssuer, clock: Clock, rejected: Rejected) -> None:
    a, b = make_issuer(A), make_issuer(B)
    verifier = Verifier(
        issuers=[
            Issuer(A, audience="api", jwks=a.jwks(), max_token_bytes=1024),
            Issuer(B, audience="api", jwks=b.jwks(), max_token_bytes=16384),
        ],
        clock=clock,
    )
    padding = {"pad": "x" * 2000}
    assert verifier.verify(b.mint(padding))["pad"] == padding["pad"]
    assert verifier.verify(a.mint())["iss"] == A
    rejected(verifier, a.mint(padding), "invalid_token", "too large")
    rejected(verifier, b.mint({"pad": "x" * 20000}), "invalid_token", "too large")


# -- key sources --------------------------------------------------------------------------------


def test_jwks_url(issuer_server: IssuerServer, clock: Clock) -> None:
    dev = issuer_server.issuer
    verifier = Verifier(issuer=dev.issuer, jwks_url=issuer_server.jwks_url, audience="api", clock=clock)
    assert verifier.verify(dev.mint())["iss"] == issuer_server.url
    assert issuer_server.requests() == 1


@pytest.mark.anyio
async def test_jwks_url_async(issuer_server: IssuerServer, clock: Clock) -> None:
    dev = issuer_server.issuer
    verifier = Verifier(issuer=dev.issuer, jwks_url=issuer_server.jwks_url, audience="api", clock=clock)
    try:
        assert (await verifier.verify_async(dev.mint()))["iss"] == issuer_server.url
    finally:
        await verifier.aclose()
    assert issuer_server.requests() == 1


def test_discovery(issuer_server: IssuerServer, clock: Clock) -> None:
    dev = issuer_server.issuer
    verifier = Verifier(issuer=dev.issuer, discovery=True, audience="api", clock=clock)
    assert verifier.verify(dev.mint())["iss"] == issuer_server.url
    assert issuer_server.requests("/.well-known/openid-configuration") == 1
    assert issuer_server.requests() == 1


def test_discovery_naming_another_issuer_gives_no_keys(
    issuer_server: IssuerServer, clock: Clock, rejected: Rejected
) -> None:
    # The server's discovery document says iss = its URL; configure the same URL with a path,
    # so the metadata names another issuer (RFC 8414 3.3) and its jwks_uri is not used.
    dev = issuer_server.issuer
    configured = issuer_server.url + "/"
    verifier = Verifier(issuer=configured, discovery=True, audience="api", clock=clock)
    rejected(verifier, dev.mint({"iss": configured}), "keys_unavailable")
    assert issuer_server.requests() == 0


def test_static_jwks_dict_and_file(dev_issuer: DevIssuer, clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(dev_issuer.jwks()), encoding="utf-8")
    token = dev_issuer.mint()
    for jwks in (dev_issuer.jwks(), path, str(path)):
        verifier = Verifier(issuer=dev_issuer.issuer, jwks=jwks, audience="api", clock=clock)
        assert verifier.verify(token)["iss"] == dev_issuer.issuer


def test_static_jwks_without_a_usable_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no usable key"):
        Verifier(
            issuer=A, jwks={"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}, audience="x"
        )
    with pytest.raises(ValueError, match="JWK Set"):
        Verifier(issuer=A, jwks={"keys": "nope"}, audience="x")


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: RSAKey.generate_key(2048),
        lambda: ECKey.generate_key("P-384"),
        lambda: OKPKey.generate_key("Ed25519"),
    ],
    ids=["rsa", "ec", "ed25519"],
)
def test_pem_public_key(
    make_key: Callable[[], Any], forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    key = make_key()
    alg = {"RSA": "RS256", "EC": "ES384", "OKP": "EdDSA"}[key.key_type]
    pem = key.as_pem(private=False)
    payload = {"iss": A, "aud": "api", "exp": clock() + 60}
    for public_key in (pem, pem.decode()):
        verifier = Verifier(issuer=A, public_key=public_key, audience="api", clock=clock)
        # With or without a kid: the one configured key answers whatever kid the issuer sends.
        assert verifier.verify(forge.sign({"alg": alg}, payload, key))["iss"] == A
        assert verifier.verify(forge.sign({"alg": alg, "kid": "rotating-1"}, payload, key))["iss"] == A
        other = make_key()
        rejected(verifier, forge.sign({"alg": alg, "kid": "rotating-1"}, payload, other), "invalid_token")


def test_pem_private_key_is_refused() -> None:
    pem = ECKey.generate_key("P-256").as_pem(private=True)
    with pytest.raises(ValueError, match="private"):
        Verifier(issuer=A, public_key=pem, audience="api")


def test_hmac_secret(forge: type[Forge], clock: Clock, rejected: Rejected) -> None:
    secret = b"0123456789abcdef0123456789abcdef"  # 32 bytes: HS256 only
    payload = {"iss": A, "aud": "api", "exp": clock() + 60}
    verifier = Verifier(issuer=A, hmac_secret=secret, audience="api", clock=clock)
    assert verifier.issuers[A].allowed_algorithms == {"HS256"}
    assert verifier.verify(forge.sign({"alg": "HS256", "kid": "k1"}, payload, secret))["iss"] == A
    # HS384 with a secret shorter than its hash is refused before any MAC is computed.
    rejected(verifier, forge.sign({"alg": "HS384"}, payload, secret), "invalid_token", "algorithm")
    rejected(verifier, forge.sign({"alg": "HS256"}, payload, b"x" * 32), "invalid_token", "signature")
    # A str secret is its UTF-8 bytes.
    str_verifier = Verifier(issuer=A, hmac_secret=secret.decode(), audience="api", clock=clock)
    assert str_verifier.verify(forge.sign({"alg": "HS256"}, payload, secret))["iss"] == A
    long = Verifier(issuer=A, hmac_secret=b"s" * 64, audience="api", clock=clock)
    assert long.issuers[A].allowed_algorithms == {"HS256", "HS384", "HS512"}
    for alg in ("HS256", "HS384", "HS512"):
        assert long.verify(forge.sign({"alg": alg}, payload, b"s" * 64))["iss"] == A
    rejected(long, forge.compact({"alg": "RS256"}, payload, b"s" * 256), "invalid_token", "algorithm")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hmac_secret": b"short"}, "shorter"),
        ({"hmac_secret": ""}, "shorter"),
        ({"hmac_secret": b"x" * 32, "algorithms": ["HS512"]}, "shorter"),
        ({"hmac_secret": b"x" * 48, "algorithms": ["HS256", "HS512"]}, "shorter"),
        ({"hmac_secret": b"x" * 64, "algorithms": ["HS256", "RS256"]}, "only HS"),
        ({"jwks": {"keys": []}, "algorithms": ["HS256"]}, "hmac_secret"),
        ({"jwks": {"keys": []}, "algorithms": ["none"]}, "not allowed"),
        ({"jwks": {"keys": []}, "algorithms": ["RS1"]}, "not allowed"),
        ({"jwks": {"keys": []}, "algorithms": []}, "empty"),
        ({"jwks": {"keys": []}, "leeway": -1}, "leeway"),
        ({"jwks": {"keys": []}, "leeway": 3600}, "leeway"),
        ({"jwks": {"keys": []}, "leeway": float("nan")}, "leeway"),
        ({"jwks": {"keys": []}, "typ": "JWT"}, "typ"),
        ({"jwks": {"keys": []}, "max_token_bytes": 10}, "too small"),
        ({}, "exactly one key source"),
        ({"jwks": {"keys": []}, "jwks_url": "https://a.example/jwks"}, "exactly one key source"),
        ({"jwks_url": "https://a.example/jwks", "discovery": True}, "exactly one key source"),
        ({"jwks": {"keys": []}, "audience": None}, "audience"),
        ({"jwks": {"keys": []}, "audience": ""}, "audience"),
        ({"jwks": {"keys": []}, "audience": ["api", ""]}, "audience"),
    ],
)
def test_configuration_errors(options: dict[str, Any], message: str) -> None:
    options = {"audience": "api", **options}
    with pytest.raises(ValueError, match=message):
        Issuer(A, **options)


def test_without_audience_check_only_when_asked(dev_issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), verify_audience=False, clock=clock)
    assert "aud" not in verifier.verify(dev_issuer.mint(audience=None))


# -- algorithms ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_alg() -> DevIssuer:
    # One issuer with a key for each default algorithm (RSA keys are slow: made once).
    return DevIssuer(A, algorithms=DEFAULT_ALGORITHMS)


@pytest.mark.parametrize("alg", DEFAULT_ALGORITHMS)
def test_every_default_algorithm_verifies(every_alg: DevIssuer, clock: Clock, alg: str) -> None:
    every_alg.clock = clock
    verifier = Verifier(issuer=A, jwks=every_alg.jwks(), audience="api", clock=clock)
    claims = verifier.verify(every_alg.mint(alg=alg))
    assert claims.kid in {k["kid"] for k in every_alg.jwks()["keys"] if k["alg"] == alg}


def test_the_allow_list_restricts(every_alg: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    every_alg.clock = clock
    verifier = Verifier(issuer=A, jwks=every_alg.jwks(), audience="api", algorithms=["ES256"], clock=clock)
    assert verifier.verify(every_alg.mint(alg="ES256"))["iss"] == A
    for alg in ("RS256", "PS256", "ES384", "EdDSA"):
        rejected(verifier, every_alg.mint(alg=alg), "invalid_token", "algorithm")
    single = Verifier(issuer=A, jwks=every_alg.jwks(), audience="api", algorithms="PS384", clock=clock)
    assert single.issuers[A].allowed_algorithms == {"PS384"}


# -- time ---------------------------------------------------------------------------------------


def test_leeway_applies_to_exp(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, cache_size=0
    )
    token = dev_issuer.mint(expires_in=60)
    clock.advance(60 + 29)
    assert verifier.verify(token)["sub"] == "client-123"  # within the 30 s default leeway
    clock.advance(1)
    rejected(verifier, token, "expired_token")


def test_zero_leeway(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, leeway=0, cache_size=0
    )
    token = dev_issuer.mint(expires_in=60)
    clock.advance(59.999)
    assert verifier.verify(token)["sub"] == "client-123"
    clock.advance(0.001)
    rejected(verifier, token, "expired_token")
    rejected(verifier, dev_issuer.mint(not_before=1), "invalid_token", "not valid yet")
    rejected(verifier, dev_issuer.mint({"iat": int(clock()) + 1}), "invalid_token", "future")


def test_cached_verification_ends_at_exp(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, leeway=0
    )
    token = dev_issuer.mint(expires_in=10)
    assert verifier.verify(token)["sub"] == "client-123"
    clock.advance(10)
    rejected(verifier, token, "expired_token")


def test_nbf_and_iat_with_leeway(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, leeway=10
    )
    assert verifier.verify(dev_issuer.mint(not_before=10))["nbf"] == int(clock()) + 10
    rejected(verifier, dev_issuer.mint(not_before=11), "invalid_token", "not valid yet")
    assert verifier.verify(dev_issuer.mint({"iat": int(clock()) + 10}))["sub"] == "client-123"
    rejected(verifier, dev_issuer.mint({"iat": int(clock()) + 11}), "invalid_token", "future")


# -- claims and headers -------------------------------------------------------------------------


def test_exp_is_always_required(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    for required in ((), ("sub",)):
        verifier = Verifier(
            issuer=dev_issuer.issuer,
            jwks=dev_issuer.jwks(),
            audience="api",
            clock=clock,
            required_claims=required,
        )
        rejected(verifier, dev_issuer.mint({"exp": None}), "invalid_token", "expiry")


def test_required_claims(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer,
        jwks=dev_issuer.jwks(),
        audience="api",
        clock=clock,
        required_claims=("sub", "jti", "client_id"),
    )
    assert verifier.verify(dev_issuer.mint())["jti"]
    for name in ("sub", "jti", "client_id"):
        rejected(verifier, dev_issuer.mint({name: None}), "invalid_token", name)


@pytest.mark.parametrize("sub", [1, ["a"], {"id": 1}, True])
def test_sub_must_be_a_string(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected, sub: Any) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    rejected(verifier, dev_issuer.mint({"sub": sub}), "invalid_token", "sub")


@pytest.mark.parametrize("required", ["at+jwt", "AT+JWT", "application/at+jwt"])
@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt", "Application/AT+JWT"])
def test_typ_accepted(dev_issuer: DevIssuer, clock: Clock, required: str, typ: str) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, typ=required
    )
    assert verifier.verify(dev_issuer.mint(typ=typ))["iss"] == dev_issuer.issuer


@pytest.mark.parametrize("typ", ["JWT", "at+jwt ", "application/jwt", "", None])
def test_typ_refused_only_when_required(
    dev_issuer: DevIssuer, clock: Clock, rejected: Rejected, typ: str | None
) -> None:
    strict = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, typ="at+jwt"
    )
    rejected(strict, dev_issuer.mint(typ=typ), "invalid_token", "typ")
    lax = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    assert lax.verify(dev_issuer.mint(typ=typ))["iss"] == dev_issuer.issuer


@pytest.mark.parametrize("aud", [["api"], ["other", "api"], "api"], ids=["list", "two", "str"])
def test_audience_forms_accepted(dev_issuer: DevIssuer, clock: Clock, aud: Any) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience=["api", "x"], clock=clock)
    assert verifier.verify(dev_issuer.mint({"aud": aud}))["aud"] == aud


@pytest.mark.parametrize(
    "aud",
    [["api", 1], ["api", None], ["api", {"x": 1}], ["api", ["api"]], [None], ["api", True], 1, {"api": 1}],
)
@pytest.mark.parametrize("verify_audience", [True, False])
def test_an_audience_with_a_non_string_member_is_malformed_even_when_one_matches(
    dev_issuer: DevIssuer, clock: Clock, rejected: Rejected, aud: Any, verify_audience: bool
) -> None:
    # RFC 7519 4.1.3: a string or an array of strings, whether or not the audience is checked.
    options: dict[str, Any] = {"audience": "api"} if verify_audience else {"verify_audience": False}
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), clock=clock, **options)
    rejected(verifier, dev_issuer.mint({"aud": aud}), "invalid_token", "audience claim is malformed")
    assert verifier.verify(dev_issuer.mint({"aud": ["api", "other"]}))["sub"] == "client-123"


# -- dates that cannot be real, and max_lifetime ------------------------------------------------

YEAR_9999_END = 253_402_300_799  # 9999-12-31T23:59:59Z


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [YEAR_9999_END + 1, 1e300, 1.7e308, 10**30, -62_135_596_801, -1e300],
    ids=["year 10000", "1e300", "near float max", "huge int", "before year 1", "-1e300"],
)
def test_a_date_beyond_year_9999_is_malformed(
    dev_issuer: DevIssuer, clock: Clock, rejected: Rejected, name: str, value: float
) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    token = dev_issuer.mint({name: value})
    rejected(verifier, token, "invalid_token", f"The {name} claim is not a real date")


def test_the_last_second_of_year_9999_is_still_a_date(dev_issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    assert verifier.verify(dev_issuer.mint({"exp": YEAR_9999_END}))["exp"] == YEAR_9999_END
    assert verifier.verify(dev_issuer.mint({"exp": float(YEAR_9999_END)}))["sub"] == "client-123"


def test_an_absurd_date_rejection_is_remembered(
    dev_issuer: DevIssuer, clock: Clock, rejected: Rejected, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An iat far ahead is not "not valid yet" (which may hold later): it is final.
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    token = dev_issuer.mint({"iat": 1e300})
    rejected(verifier, token, "invalid_token", "not a real date")
    import gatekeeper.verifier as module

    monkeypatch.setattr(module, "parse_compact", None)  # a second look would crash
    rejected(verifier, token, "invalid_token", "not a real date")


def test_max_lifetime_is_exp_minus_iat(dev_issuer: DevIssuer, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, max_lifetime=3600
    )
    assert verifier.verify(dev_issuer.mint(expires_in=3600))["sub"] == "client-123"
    rejected(verifier, dev_issuer.mint(expires_in=3601), "invalid_token", "max_lifetime")
    # Issued long ago and expiring soon: it is the lifetime that counts, not what is left of it.
    old = int(clock()) - 7200
    rejected(verifier, dev_issuer.mint({"iat": old, "exp": old + 7260}), "invalid_token", "max_lifetime")
    assert verifier.verify(dev_issuer.mint({"iat": old + 3660, "exp": old + 7260}))["sub"] == "client-123"


def test_max_lifetime_without_iat_is_exp_minus_now(
    dev_issuer: DevIssuer, clock: Clock, rejected: Rejected
) -> None:
    verifier = Verifier(
        issuer=dev_issuer.issuer,
        jwks=dev_issuer.jwks(),
        audience="api",
        clock=clock,
        max_lifetime=3600,
        leeway=10,
        cache_size=0,
    )
    now = int(clock())
    assert verifier.verify(dev_issuer.mint({"iat": None, "exp": now + 3610}))["sub"] == "client-123"
    token = dev_issuer.mint({"iat": None, "exp": now + 3611})
    rejected(verifier, token, "invalid_token", "max_lifetime")
    clock.advance(11)
    assert verifier.verify(token)["sub"] == "client-123"  # what is left of it now fits


def test_no_max_lifetime_by_default(dev_issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    assert verifier.issuers[dev_issuer.issuer].max_lifetime is None
    assert verifier.verify(dev_issuer.mint(expires_in=365 * 86400))["sub"] == "client-123"


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_max_lifetime_must_be_positive(dev_issuer: DevIssuer, value: float) -> None:
    with pytest.raises(ValueError, match="max_lifetime"):
        Issuer(A, audience="api", jwks=dev_issuer.jwks(), max_lifetime=value)


# -- kid-less tokens ------------------------------------------------------------------------------


def test_a_kidless_token_is_refused_when_several_keys_fit_its_alg(
    make_issuer: MakeIssuer, clock: Clock, rejected: Rejected
) -> None:
    dev = make_issuer(A, algorithms=("ES256",))
    dev.add_key("ES256", kid="second")
    verifier = Verifier(issuer=A, jwks=dev.jwks(), audience="api", clock=clock)
    error = rejected(verifier, dev.mint(kid=None), "invalid_token", "ambiguous")
    assert error.issuer == A
    # Whichever key signed it: the answer must not depend on key order.
    rejected(verifier, dev.mint(kid=None, headers={"kid": None}), "invalid_token", "ambiguous")
    assert verifier.verify(dev.mint(kid="second")).kid == "second"  # a kid settles it


def test_a_kid_naming_nothing_is_ambiguous_among_several_kidless_keys(
    forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    one, two = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    jwks = {"keys": [one.as_dict(private=False), two.as_dict(private=False)]}
    verifier = Verifier(issuer=A, jwks=jwks, audience="api", clock=clock)
    payload = {"iss": A, "aud": "api", "exp": clock() + 60}
    for header in ({"alg": "ES256"}, {"alg": "ES256", "kid": "anything"}):
        rejected(verifier, forge.sign(header, payload, two), "invalid_token", "ambiguous")


def test_a_kidless_token_verifies_when_exactly_one_key_fits_its_alg(
    forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    ec, ed, rsa = ECKey.generate_key("P-256"), OKPKey.generate_key("Ed25519"), RSAKey.generate_key(2048)
    jwks = {
        "keys": [
            ec.as_dict(private=False, kid="ec"),
            ed.as_dict(private=False, kid="ed"),
            rsa.as_dict(private=False, kid="rsa-ps", alg="PS256"),
            RSAKey.generate_key(2048).as_dict(private=False, kid="rsa-rs", alg="RS256"),
        ]
    }
    verifier = Verifier(issuer=A, jwks=jwks, audience="api", clock=clock)
    payload = {"iss": A, "aud": "api", "exp": clock() + 60}
    assert verifier.verify(forge.sign({"alg": "ES256"}, payload, ec)).kid == "ec"
    assert verifier.verify(forge.sign({"alg": "EdDSA"}, payload, ed)).kid == "ed"
    # Two RSA keys, but each declares its one alg: only one fits PS256.
    assert verifier.verify(forge.sign({"alg": "PS256"}, payload, rsa)).kid == "rsa-ps"
    stranger = ECKey.generate_key("P-256")
    rejected(verifier, forge.sign({"alg": "ES256"}, payload, stranger), "invalid_token", "signature")


def test_provider_tokens_with_extra_header_parameters_verify(
    every_alg: DevIssuer, clock: Clock, rejected: Rejected
) -> None:
    # Entra ID access tokens carry x5t, nonce and friends; Okta/Auth0 add their own. None of
    # them may make an honest token fail (and none of them may be followed: see test_attacks).
    every_alg.clock = clock
    verifier = Verifier(issuer=A, jwks=every_alg.jwks(), audience="api", clock=clock)
    extras = {
        "typ": "JWT",
        "x5t": "nOo3ZDrODXEK1jKWhXslHR_KXEg",
        "nonce": "AQABAAAAAAD--DLA3VO7QrddgJg7WevrVt",
        "client_id": "00000003-0000-0000-c000-000000000000",
        "cty": "JWT",
        "x-custom": {"nested": [1, 2]},
    }
    token = every_alg.mint(alg="RS256", headers=extras)
    assert verifier.verify(token)["iss"] == A
    entra = every_alg.mint(
        {"scp": "User.Read Mail.Send", "roles": ["Admin"], "ver": "2.0", "tid": "t", "azp": "x"},
        alg="RS256",
        headers=extras,
    )
    assert verifier.verify(entra).scopes == {"User.Read", "Mail.Send"}
