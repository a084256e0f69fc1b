"""Error profiles: every built-in profile x every error kind, exactly (status, headers, body);
the user's own profiles as data or a callable; RFC 6750's header character set."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import ERROR_KINDS, AuthError, Verifier
from gatekeeper.responses import (
    BUILTIN_PROFILES,
    CallableProfile,
    ErrorResponse,
    TableProfile,
    bearer_challenge,
    get_profile,
)

if TYPE_CHECKING:
    from conftest import Clock

    from gatekeeper.errors import ErrorKind
    from gatekeeper.issuer import DevIssuer

DESCRIPTIONS = {
    "missing_token": "A bearer token is required",
    "invalid_request": "The request is malformed",
    "invalid_token": "The access token is invalid",
    "expired_token": "The access token has expired",
    "insufficient_scope": "The access token lacks the required scope",
    "revoked_token": "The access token has been revoked",
    "unknown_principal": "The access token does not belong to a known principal",
    "keys_unavailable": "The token signing keys are temporarily unavailable",
}


def error_for(kind: ErrorKind) -> AuthError:
    """The error each kind is rendered from: scopes for insufficient_scope, a Retry-After hint
    for keys_unavailable."""
    if kind == "insufficient_scope":
        return AuthError(kind, required_scopes=("orders:read", "orders:write"))
    if kind == "keys_unavailable":
        return AuthError(kind, retry_after=7)
    return AuthError(kind)


def challenge(kind: str, code: str | None, realm: str = "api") -> str:
    if code is None:
        return f'Bearer realm="{realm}"'
    value = f'Bearer realm="{realm}", error="{code}", error_description="{DESCRIPTIONS[kind]}"'
    if kind == "insufficient_scope":
        value += ', scope="orders:read orders:write"'
    return value


JSON_ = ("content-type", "application/json")
NO_STORE = ("cache-control", "no-store")
RETRY = ("retry-after", "7")


def www(kind: str, code: str | None) -> tuple[str, str]:
    return ("www-authenticate", challenge(kind, code))


def body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


Row = tuple[int, tuple[tuple[str, str], ...], bytes]


def _rfc6750(kind: str, code: str | None, status: int) -> Row:
    content: dict[str, Any] = {"error": code} if code else {}
    content["error_description"] = DESCRIPTIONS[kind]
    return status, (JSON_, www(kind, code), NO_STORE), body(content)


EXPECTED: dict[str, dict[str, Row]] = {
    "rfc6750": {
        "missing_token": _rfc6750("missing_token", None, 401),
        "invalid_request": _rfc6750("invalid_request", "invalid_request", 400),
        "invalid_token": _rfc6750("invalid_token", "invalid_token", 401),
        "expired_token": _rfc6750("expired_token", "invalid_token", 401),
        "insufficient_scope": (
            403,
            (JSON_, www("insufficient_scope", "insufficient_scope"), NO_STORE),
            body(
                {
                    "error": "insufficient_scope",
                    "error_description": DESCRIPTIONS["insufficient_scope"],
                    "scope": "orders:read orders:write",
                }
            ),
        ),
        "revoked_token": _rfc6750("revoked_token", "invalid_token", 401),
        "unknown_principal": _rfc6750("unknown_principal", "invalid_token", 401),
        "keys_unavailable": (
            503,
            (JSON_, RETRY, NO_STORE),
            body({"error": "temporarily_unavailable", "error_description": DESCRIPTIONS["keys_unavailable"]}),
        ),
    },
    "placepoint": {
        kind: (
            status,
            (
                JSON_,
                *((www(kind, code),) if status == 401 else ()),
                *((RETRY,) if status == 500 else ()),
                NO_STORE,
            ),
            body({"error": {"code": status, "message": DESCRIPTIONS[kind]}}),
        )
        for kind, status, code in [
            ("missing_token", 401, None),
            ("invalid_request", 400, None),
            ("invalid_token", 401, "invalid_token"),
            ("expired_token", 401, "invalid_token"),
            ("insufficient_scope", 401, "insufficient_scope"),
            ("revoked_token", 401, "invalid_token"),
            ("unknown_principal", 401, "invalid_token"),
            ("keys_unavailable", 500, None),
        ]
    },
    "addressfinder": {
        **{
            kind: (
                400,
                (JSON_, NO_STORE),
                body(
                    {
                        "completions": [],
                        "message": "Invalid or expired bearer token",
                        "error_code": "1024",
                        "success": False,
                    }
                ),
            )
            for kind in (
                "missing_token",
                "invalid_request",
                "invalid_token",
                "expired_token",
                "revoked_token",
            )
        },
        "insufficient_scope": (
            400,
            (JSON_, NO_STORE),
            body(
                {
                    "completions": [],
                    "message": "Bearer token lacks the required scope: orders:read orders:write",
                    "error_code": "1024",
                    "success": False,
                }
            ),
        ),
        "unknown_principal": (
            400,
            (JSON_, NO_STORE),
            body(
                {
                    "completions": [],
                    "message": "Project not found for bearer token",
                    "error_code": "1025",
                    "success": False,
                }
            ),
        ),
        "keys_unavailable": (
            503,
            (JSON_, RETRY, NO_STORE),
            body(
                {
                    "completions": [],
                    "message": "Token verification is temporarily unavailable",
                    "success": False,
                }
            ),
        ),
    },
    "placewise": {
        **{
            kind: (460, (JSON_, NO_STORE), body({"error": "Member not authorized"}))
            for kind in (
                "missing_token",
                "invalid_token",
                "expired_token",
                "insufficient_scope",
                "revoked_token",
                "unknown_principal",
            )
        },
        "invalid_request": (400, (JSON_, NO_STORE), body({"error": "Invalid request"})),
        "keys_unavailable": (503, (JSON_, RETRY, NO_STORE), body({"error": "Service unavailable"})),
    },
}


def test_the_table_covers_every_profile_and_kind() -> None:
    assert set(EXPECTED) == set(BUILTIN_PROFILES)
    for rows in EXPECTED.values():
        assert set(rows) == set(ERROR_KINDS)


@pytest.mark.parametrize("kind", ERROR_KINDS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_renders_kind_exactly(name: str, kind: ErrorKind) -> None:
    response = get_profile(name).render(error_for(kind))
    status, headers, content = EXPECTED[name][kind]
    assert response.status == status
    assert response.headers == headers
    assert response.body == content


def test_the_issue_s_literal_shapes() -> None:
    # The shapes as the providers document them, spelled out once more by hand.
    assert get_profile("addressfinder").render(AuthError("invalid_token")).body == (
        b'{"completions":[],"message":"Invalid or expired bearer token","error_code":"1024","success":false}'
    )
    assert get_profile("addressfinder").render(AuthError("unknown_principal")).body == (
        b'{"completions":[],"message":"Project not found for bearer token",'
        b'"error_code":"1025","success":false}'
    )
    placewise = get_profile("placewise").render(AuthError("expired_token"))
    assert (placewise.status, placewise.body) == (460, b'{"error":"Member not authorized"}')
    placepoint = get_profile("placepoint").render(AuthError("invalid_token"))
    assert (placepoint.status, json.loads(placepoint.body)) == (
        401,
        {"error": {"code": 401, "message": "The access token is invalid"}},
    )
    missing = get_profile("rfc6750").render(AuthError("missing_token"))
    assert (missing.status, missing.header("www-authenticate")) == (401, 'Bearer realm="api"')
    assert "error=" not in (missing.header("www-authenticate") or "")


def test_retry_after_defaults_to_one_second() -> None:
    for name in BUILTIN_PROFILES:
        assert get_profile(name).render(AuthError("keys_unavailable")).header("retry-after") == "1"


def test_realm() -> None:
    response = get_profile("rfc6750", realm="orders").render(AuthError("missing_token"))
    assert response.header("www-authenticate") == 'Bearer realm="orders"'
    hostile = get_profile("rfc6750", realm='a"b\\c\r\nX-Injected: 1').render(AuthError("missing_token"))
    assert hostile.header("www-authenticate") == 'Bearer realm="a?b?c??X-Injected: 1"'


def test_description_is_carried_but_made_header_safe() -> None:
    error = AuthError("invalid_token", 'Bad "token"\\ with\r\nnewline and é')
    response = get_profile("rfc6750").render(error)
    assert response.header("www-authenticate") == (
        'Bearer realm="api", error="invalid_token", error_description="Bad ?token?? with??newline and ?"'
    )
    # The JSON body keeps the text as it was.
    assert json.loads(response.body)["error_description"] == 'Bad "token"\\ with\r\nnewline and é'


def test_a_lone_surrogate_does_not_break_rendering() -> None:
    response = get_profile("placepoint").render(AuthError("invalid_token", "bad \ud800 text"))
    assert response.status == 401
    assert json.loads(response.body)["error"]["message"] == "bad ? text"


# RFC 6750 3: auth-param values are quoted strings of %x20-21 / %x23-5B / %x5D-7E; scope tokens
# additionally exclude the space (which separates them).
_VALUE = r"[\x20\x21\x23-\x5b\x5d-\x7e]*"
_CHALLENGE = re.compile(
    rf'Bearer realm="{_VALUE}"'
    rf'(, error="[a-z_]+", error_description="{_VALUE}"'
    r'(, scope="[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")?)?'
)


@given(
    kind=st.sampled_from(ERROR_KINDS),
    description=st.text(max_size=60),
    realm=st.text(max_size=20),
    scopes=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4),
)
def test_challenge_always_fits_rfc6750_charset(
    kind: ErrorKind, description: str, realm: str, scopes: list[str]
) -> None:
    error = AuthError(kind, description or None, required_scopes=scopes)
    value = bearer_challenge(error, realm)
    assert _CHALLENGE.fullmatch(value), value
    for name in BUILTIN_PROFILES:
        response = get_profile(name, realm=realm).render(error)
        for _, header_value in response.headers:
            assert all(0x20 <= ord(c) <= 0x7E for c in header_value), header_value
        json.loads(response.body)


def test_every_challenge_in_the_table_fits_the_grammar() -> None:
    for rows in EXPECTED.values():
        for _, headers, _ in rows.values():
            for name, value in headers:
                if name == "www-authenticate":
                    assert _CHALLENGE.fullmatch(value), value


# -- the user's own -----------------------------------------------------------------------------


def test_profile_as_data() -> None:
    profile = get_profile(
        {
            "name": "mine",
            "status": 401,
            "statuses": {"insufficient_scope": 403, "invalid_request": 422, "keys_unavailable": 503},
            "body": {"code": "{kind}", "detail": "{description}", "http": "{status}", "need": ["{scope}"]},
            "headers": {"X-Auth": "denied"},
        },
        realm="shop",
    )
    assert isinstance(profile, TableProfile)
    expired = profile.render(AuthError("expired_token"))
    assert expired.status == 401
    assert expired.headers == (
        JSON_,
        (
            "www-authenticate",
            'Bearer realm="shop", error="invalid_token", error_description="The access token has expired"',
        ),
        ("x-auth", "denied"),
        NO_STORE,
    )
    assert json.loads(expired.body) == {
        "code": "expired_token",
        "detail": "The access token has expired",
        "http": 401,
        "need": [""],
    }
    scope = profile.render(AuthError("insufficient_scope", required_scopes=["a", "b"]))
    assert scope.status == 403
    assert json.loads(scope.body)["need"] == ["a b"]
    assert profile.render(AuthError("invalid_request")).status == 422
    unavailable = profile.render(AuthError("keys_unavailable", retry_after=3))
    assert (unavailable.status, unavailable.header("retry-after")) == (503, "3")


def test_profile_as_data_defaults() -> None:
    profile = get_profile({})
    response = profile.render(AuthError("revoked_token"))
    assert response.status == 401
    assert json.loads(response.body) == {
        "error": "revoked_token",
        "error_description": DESCRIPTIONS["revoked_token"],
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"stauts": 401}, "unknown profile keys"),
        ({"statuses": {"nope": 401}}, "unknown error kinds"),
    ],
)
def test_profile_as_data_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_profile(spec)


def test_profile_as_callable_returning_a_tuple() -> None:
    def render(error: AuthError) -> tuple[int, dict[str, str], Any]:
        return (418 if error.kind == "expired_token" else 401), {"X-Kind": error.kind}, {"k": error.kind}

    profile = get_profile(render)
    assert isinstance(profile, CallableProfile)
    response = profile.render(AuthError("expired_token"))
    assert response == ErrorResponse(418, (JSON_, ("x-kind", "expired_token")), b'{"k":"expired_token"}')
    text = get_profile(lambda e: (401, {"Content-Type": "text/plain"}, "no")).render(
        AuthError("invalid_token")
    )
    assert text == ErrorResponse(401, (("content-type", "text/plain"),), b"no")


def test_profile_as_callable_returning_a_response() -> None:
    canned = ErrorResponse(401, (("x", "y"),), b"nope")
    assert get_profile(lambda e: canned).render(AuthError("missing_token")) is canned


def test_profile_as_object() -> None:
    class Mine:
        def render(self, error: AuthError) -> ErrorResponse:
            return ErrorResponse(400, (), error.kind.encode())

    mine = Mine()
    assert get_profile(mine) is mine


def test_unknown_profiles() -> None:
    with pytest.raises(ValueError, match="unknown error profile"):
        get_profile("RFC6750")
    with pytest.raises(TypeError):
        get_profile(42)  # type: ignore[arg-type]


def test_a_table_profile_must_cover_every_kind() -> None:
    with pytest.raises(ValueError, match="no status"):
        TableProfile("partial", {"invalid_token": 401}, lambda e, s: {})


def test_error_kinds_are_closed() -> None:
    with pytest.raises(ValueError, match="unknown error kind"):
        AuthError("teapot")  # type: ignore[arg-type]
    assert str(AuthError("expired_token")) == "expired_token: The access token has expired"
    assert repr(AuthError("invalid_token", "x")) == "AuthError('invalid_token', 'x')"


# -- from the verifier to the wire --------------------------------------------------------------


def test_verifier_errors_render(dev_issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    token = dev_issuer.mint(expires_in=10)
    clock.advance(100)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    response = get_profile("rfc6750").render(info.value)
    assert response.status == 401
    assert response.header("www-authenticate") == (
        'Bearer realm="api", error="invalid_token", error_description="The access token has expired"'
    )
    assert token not in response.body.decode()
    af = get_profile("addressfinder").render(info.value)
    assert (af.status, json.loads(af.body)["error_code"]) == (400, "1024")
