"""Verified claims: a read-only mapping, scopes normalised from every provider's claim shape,
and ``require`` raising ``insufficient_scope`` with what was required."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

from gatekeeper import AuthError, Claims, Issuer, Verifier
from gatekeeper.claims import DEFAULT_SCOPE_CLAIMS, normalise_scopes
from gatekeeper.responses import get_profile

if TYPE_CHECKING:
    from conftest import Clock

    from gatekeeper.issuer import DevIssuer


def make_claims(scopes: set[str], **data: Any) -> Claims:
    return Claims({"sub": "c", "exp": 1, **data}, frozenset(scopes), issuer="https://i.example", kid="k")


# -- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"scope": "read write"}, {"read", "write"}),
        ({"scope": "  read   write  "}, {"read", "write"}),
        ({"scope": "read read"}, {"read"}),
        ({"scope": ""}, set()),
        ({"scp": "User.Read Mail.Send"}, {"User.Read", "Mail.Send"}),
        ({"scp": ["orders:read", "orders:write"]}, {"orders:read", "orders:write"}),
        ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
        ({"scope": ["a", "b"]}, {"a", "b"}),
        ({}, set()),
        # Anything that is not a string or a list of strings is ignored, never trusted.
        ({"scope": 1}, set()),
        ({"scope": True}, set()),
        ({"scope": {"admin": True}}, set()),
        ({"scp": ["a", 1, None, ["admin"], {"b": 1}, ""]}, {"a"}),
        ({"scope": None, "scp": None}, set()),
        # Not read by default: permissions and roles need Issuer(scope_claims=...).
        ({"permissions": ["admin"], "roles": ["Admin"]}, set()),
    ],
)
def test_default_scope_claims(payload: dict[str, Any], expected: set[str]) -> None:
    assert DEFAULT_SCOPE_CLAIMS == ("scope", "scp")
    assert normalise_scopes(payload) == frozenset(expected)


def test_configured_scope_claims() -> None:
    payload = {"scope": "a", "scp": ["b"], "permissions": ["read:orders"], "roles": ["Admin"]}
    assert normalise_scopes(payload, ("scope", "permissions")) == {"a", "read:orders"}
    assert normalise_scopes(payload, ("scope", "scp", "permissions", "roles")) == {
        "a",
        "b",
        "read:orders",
        "Admin",
    }
    assert normalise_scopes(payload, ("roles",)) == {"Admin"}
    assert normalise_scopes(payload, ()) == frozenset()


def test_scopes_end_to_end(make_issuer: Any, clock: Clock) -> None:
    dev: DevIssuer = make_issuer()
    default = Verifier(issuer=dev.issuer, jwks=dev.jwks(), audience="api", clock=clock)
    auth0 = Verifier(
        issuers=[
            Issuer(
                dev.issuer,
                audience="api",
                jwks=dev.jwks(),
                scope_claims=("scope", "scp", "permissions", "roles"),
            )
        ],
        clock=clock,
    )
    okta = dev.mint({"scp": ["orders:read", "orders:write"]})
    entra = dev.mint({"scp": "User.Read", "roles": ["Task.Admin"]})
    with_permissions = dev.mint({"permissions": ["read:orders"]}, scope="openid")
    assert default.verify(okta).scopes == {"orders:read", "orders:write"}
    assert default.verify(entra).scopes == {"User.Read"}
    assert default.verify(with_permissions).scopes == {"openid"}
    assert auth0.verify(entra).scopes == {"User.Read", "Task.Admin"}
    assert auth0.verify(with_permissions).scopes == {"openid", "read:orders"}
    assert isinstance(default.verify(okta).scopes, frozenset)


# -- the mapping --------------------------------------------------------------------------------


def test_claims_are_a_read_only_mapping() -> None:
    claims = make_claims({"read"}, aud="api")
    assert isinstance(claims, Mapping)
    assert dict(claims) == {"sub": "c", "exp": 1, "aud": "api"}
    assert len(claims) == 3
    assert claims["aud"] == "api"
    assert claims.get("missing") is None
    assert "sub" in claims
    with pytest.raises(TypeError):
        claims["aud"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        del claims["aud"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        claims.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(claims, "update")
    assert not hasattr(claims, "__setitem__")
    assert isinstance(claims.scopes, frozenset)
    assert claims.subject == "c"
    assert claims.expires_at == 1.0
    assert (claims.issuer, claims.kid) == ("https://i.example", "k")
    assert repr(claims) == "Claims(sub='c', iss='https://i.example', scopes=['read'])"


def test_subject_is_none_when_not_a_string() -> None:
    assert make_claims(set(), sub=None).subject is None


def test_verified_claims_carry_issuer_and_kid(dev_issuer: DevIssuer, clock: Clock) -> None:
    verifier = Verifier(issuer=dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)
    claims = verifier.verify(dev_issuer.mint(scope="a b"))
    assert claims.issuer == dev_issuer.issuer
    assert claims.kid == dev_issuer.jwks()["keys"][0]["kid"]
    assert claims.scopes == {"a", "b"}
    assert claims.expires_at == clock() + 300


# -- require ------------------------------------------------------------------------------------


def test_require_all() -> None:
    claims = make_claims({"read", "write"})
    assert claims.require("read") is claims
    assert claims.require("read", "write") is claims
    assert claims.require() is claims
    with pytest.raises(AuthError) as info:
        claims.require("read", "admin")
    error = info.value
    assert error.kind == "insufficient_scope"
    assert error.required_scopes == ("read", "admin")
    assert error.scope_mode == "all"
    assert (error.issuer, error.kid) == ("https://i.example", "k")


def test_require_any() -> None:
    claims = make_claims({"read"})
    assert claims.require("admin", "read", mode="any") is claims
    with pytest.raises(AuthError) as info:
        claims.require("admin", "write", mode="any")
    assert info.value.kind == "insufficient_scope"
    assert info.value.required_scopes == ("admin", "write")
    assert info.value.scope_mode == "any"


def test_require_accepts_space_separated_scopes() -> None:
    claims = make_claims({"read", "write"})
    assert claims.require("read write") is claims
    with pytest.raises(AuthError) as info:
        claims.require("read admin", "write")
    assert info.value.required_scopes == ("read", "admin", "write")


def test_require_is_exact_and_case_sensitive() -> None:
    claims = make_claims({"orders:read"})
    for scope in ("orders", "ORDERS:READ", "orders:read:all", "read"):
        with pytest.raises(AuthError) as info:
            claims.require(scope)
        assert info.value.kind == "insufficient_scope"


def test_require_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        make_claims({"a"}).require("a", mode="most")  # type: ignore[arg-type]


def test_has_scopes() -> None:
    claims = make_claims({"a", "b"})
    assert claims.has_scopes(["a", "b"])
    assert claims.has_scopes(frozenset({"a"}))
    assert claims.has_scopes([])
    assert claims.has_scopes("a b")  # a string is a scope list, not a list of letters
    assert not claims.has_scopes("ab")
    assert not claims.has_scopes(["a", "c"])
    assert claims.has_scopes(["c", "b"], mode="any")
    assert not claims.has_scopes(["c"], mode="any")


def test_insufficient_scope_renders_what_was_required() -> None:
    with pytest.raises(AuthError) as info:
        make_claims({"read"}).require("orders:write", "orders:read")
    response = get_profile("rfc6750").render(info.value)
    assert response.status == 403
    assert response.header("www-authenticate") == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The access token lacks the required scope", scope="orders:write orders:read"'
    )
