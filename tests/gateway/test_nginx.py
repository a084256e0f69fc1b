"""Forward-auth through a real nginx (Debian's) started from the shipped
examples/gateway/nginx.conf: client -> nginx -> (auth_request) gatekeeper -> the echo upstream.

Every error kind reaches the client in the profile's exact shape (through the 401/403 +
``/auth/render`` protocol), identity headers are gatekeeper's alone, the query token never
reaches the upstream, and every path-confusion shape is refused or lands on its rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import Clock
from realproxies import (
    KINDS,
    LANDS_ON_ADMIN,
    REFUSED,
    MakeStack,
    Nginx,
    Stack,
    expected,
    request_for,
    require,
    seen_headers,
    verifier_for,
)

from gatekeeper.issuer import DevIssuer


@pytest.fixture
def make_stack(dev_issuer: DevIssuer, clock: Clock) -> Iterator[MakeStack]:
    require("nginx")
    stacks: list[Stack] = []

    def make(profile: str = "rfc6750") -> Stack:
        stack = Stack(verifier_for(dev_issuer, clock), profile, "nginx", Nginx)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


# -- allow -------------------------------------------------------------------------------------


def test_valid_token_reaches_the_upstream_with_identity_headers(
    make_stack: MakeStack, dev_issuer: DevIssuer
) -> None:
    stack = make_stack()
    token = dev_issuer.mint(subject="alice", scope="read admin", claims={"client_id": "app-1"})
    response = stack.get("/admin//items/./1?a=1&b=%20x", token)
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/admin/items/1"  # the path the rules saw
    assert echo["query"] == "a=1&b=%20x"
    headers = seen_headers(echo)
    assert headers["x-auth-subject"] == ["alice"]
    assert headers["x-auth-client-id"] == ["app-1"]
    assert headers["x-auth-scopes"] == ["admin read"]
    assert headers["x-auth-issuer"] == [dev_issuer.issuer]
    assert "authorization" not in headers  # the token goes no further
    assert "x-gatekeeper-uri" not in headers


def test_a_query_token_never_reaches_the_upstream(make_stack: MakeStack, dev_issuer: DevIssuer) -> None:
    stack = make_stack()
    token = dev_issuer.mint(subject="alice")
    response = stack.get(f"/items?x=1&bearer_token={token}&y=2")
    assert response.status == 200, response
    echo = response.json()
    assert echo["query"] == "x=1&y=2"
    assert token not in response.body.decode()
    only = stack.get(f"/items?bearer_token={token}").json()
    assert (only["path"], only["query"]) == ("/items", "")


def test_client_identity_headers_never_reach_the_upstream(
    make_stack: MakeStack, dev_issuer: DevIssuer
) -> None:
    stack = make_stack()
    forged = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-subject", "admin2"),
        ("X_Auth_Subject", "admin3"),
        ("X-AUTH-SCOPES", "admin"),
        ("X-Gatekeeper-Uri", "/admin"),
    ]
    protected = stack.get("/items", dev_issuer.mint(subject="alice"), headers=forged).json()
    headers = seen_headers(protected)
    assert headers["x-auth-subject"] == ["alice"]
    assert "x_auth_subject" not in headers
    assert "x-gatekeeper-uri" not in headers
    assert protected["path"] == "/items"
    # exempt and optional routes forward no client-chosen identity either
    for target in ("/public/x", "/open/x"):
        response = stack.get(target, headers=forged)
        assert response.status == 200, response
        headers = seen_headers(response.json())
        assert not [name for name in headers if name.replace("_", "-").startswith("x-auth-")], headers


def test_the_upstreams_own_401_passes_untouched(make_stack: MakeStack, dev_issuer: DevIssuer) -> None:
    stack = make_stack("placewise")
    response = stack.get("/items/status?code=401", dev_issuer.mint())
    assert response.status == 401
    assert response.json() == {"upstream": 401}
    assert response.header("www-authenticate") == 'Bearer realm="upstream"'


# -- every error kind, in the profile's exact shape -------------------------------------------


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_every_error_kind_reaches_the_client_in_the_profiles_shape(
    make_stack: MakeStack, dev_issuer: DevIssuer, clock: Clock, profile: str
) -> None:
    stack = make_stack(profile)
    stack.gatekeeper.app.gate.verifier.revoke(sub="revoked-user", before=clock.now + 1)
    for kind in KINDS:
        target, token = request_for(kind, dev_issuer, clock)
        response = stack.get(target, token)
        want = expected(stack.profile, kind, response)  # type: ignore[arg-type]
        assert response.status == want.status, (kind, response)
        assert response.json() == json.loads(want.body), kind
        for name in ("www-authenticate", "content-type"):
            assert response.header(name) == want.header(name), (kind, name, response)
        if kind == "keys_unavailable":
            assert response.header("retry-after") is not None
        assert response.header("cache-control") == "no-store"
        assert "x-gatekeeper-status" not in dict(response.headers)
    assert stack.upstream.seen == []  # no refusal reached the upstream
    assert [r.error_kind for r in stack.records] == KINDS


def test_named_provider_shapes(make_stack: MakeStack, dev_issuer: DevIssuer) -> None:
    expired = dev_issuer.mint(expires_in=-3600)
    af = make_stack("addressfinder").get("/items", expired)
    assert (af.status, af.json()["error_code"]) == (400, "1024")
    pw = make_stack("placewise").get("/items", expired)
    assert (pw.status, pw.json()) == (460, {"error": "Member not authorized"})
    rfc = make_stack("rfc6750").get("/items", expired)
    assert rfc.status == 401
    assert str(rfc.header("www-authenticate")).startswith('Bearer realm="api", error="invalid_token"')


# -- path confusion ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_paths_are_refused(make_stack: MakeStack, dev_issuer: DevIssuer, target: str) -> None:
    stack = make_stack()
    response = stack.get(target, dev_issuer.mint(scope="read"))
    # nginx refuses some itself (400); the rest gatekeeper refuses, in the profile's shape
    assert response.status == 400, response
    assert stack.upstream.seen == []


@pytest.mark.parametrize(("target", "normal"), LANDS_ON_ADMIN)
def test_normalisable_shapes_land_on_the_rule_that_protects_them(
    make_stack: MakeStack, dev_issuer: DevIssuer, target: str, normal: str
) -> None:
    stack = make_stack()
    refused = stack.get(target, dev_issuer.mint(scope="read"))
    assert refused.status == 403, refused
    assert refused.json()["scope"] == "admin"
    allowed = stack.get(target, dev_issuer.mint(scope="admin"))
    assert allowed.status == 200, allowed
    assert allowed.json()["path"] == normal  # the upstream sees the path the rule saw
