"""Forward-auth through a real Caddy (Debian's 2.6) started from the shipped
examples/gateway/Caddyfile: client -> Caddy -> (forward_auth) gatekeeper -> the echo upstream.

Against ``gatekeeper serve --config examples/gateway/caddy-forward-auth.toml`` (a real process,
pointed at a real JWKS server). Caddy copies a refusal to the client as it is, so every error
kind arrives in the profile's exact shape with no extra machinery; identity headers are
gatekeeper's alone; the upstream gets the path the rules saw; every path-confusion shape is
refused or lands on its rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from conftest import Clock
from realproxies import (
    KINDS,
    LANDS_ON_ADMIN,
    REFUSED,
    SERVE_KINDS,
    Caddy,
    MakeStack,
    ServeStack,
    Stack,
    expected,
    request_for,
    require,
    seen_headers,
    serve_request_for,
    verifier_for,
)

from gatekeeper.gateway.paths import normalise_path
from gatekeeper.issuer import DevIssuer
from gatekeeper.responses import get_profile

Stacks = Callable[..., ServeStack]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    """One serve stack per error profile (and token source), shared by the module's tests."""
    require("caddy")
    made: dict[tuple[str, str], ServeStack] = {}

    def get(profile: str = "rfc6750", query_params: str = "[]") -> ServeStack:
        key = (profile, query_params)
        if key not in made:
            made[key] = ServeStack(
                "caddy-forward-auth.toml",
                Caddy,
                tmp_path_factory.mktemp(profile),
                error_profile=f'"{profile}"',
                query_params=query_params,
            )
        return made[key]

    yield get
    for stack in made.values():
        stack.close()


@pytest.fixture
def make_stack(dev_issuer: DevIssuer, clock: Clock) -> Iterator[MakeStack]:
    """ForwardAuth in process (with a principal hook and a revocable verifier) behind Caddy."""
    require("caddy")
    made: list[Stack] = []

    def make(profile: str = "rfc6750") -> Stack:
        stack = Stack(verifier_for(dev_issuer, clock), profile, "caddy", Caddy, "bearer_token", clock)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


def test_valid_token_reaches_the_upstream_with_identity_headers(stacks: Stacks) -> None:
    stack = stacks()
    token = stack.issuer.mint(subject="alice", scope="read admin", claims={"client_id": "app-1"})
    response = stack.get("/admin//items/./1?a=1&b=%20x", token)
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/admin/items/1"  # the path the rules saw
    assert echo["query"] == "a=1&b=%20x"
    headers = seen_headers(echo)
    assert headers["x-auth-subject"] == ["alice"]
    assert headers["x-auth-client-id"] == ["app-1"]
    assert headers["x-auth-scopes"] == ["admin read"]
    assert headers["x-auth-issuer"] == [stack.issuer.issuer]
    assert "authorization" not in headers
    assert "x-gatekeeper-path" not in headers


def test_a_query_token_is_not_a_credential_through_caddy(stacks: Stacks) -> None:
    stack = stacks()
    seen_before = len(stack.upstream.seen)
    response = stack.get(f"/items?bearer_token={stack.issuer.mint()}")
    assert response.status == 401  # not accepted, so never forwarded as one
    assert len(stack.upstream.seen) == seen_before


def test_caddy_26_would_forward_an_accepted_query_token(stacks: Stacks) -> None:
    # Why caddy-forward-auth.toml accepts header tokens only: Caddy 2.6 keeps the query as it is.
    stack = stacks(query_params='["bearer_token"]')
    token = stack.issuer.mint()
    response = stack.get(f"/items?bearer_token={token}")
    assert response.status == 200
    assert token in response.json()["query"]


def test_client_identity_headers_never_reach_the_upstream(stacks: Stacks) -> None:
    stack = stacks()
    forged = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-subject", "admin2"),
        ("X_Auth_Subject", "admin3"),
        ("x_auth_client_id", "evil"),
        ("X-AUTH-SCOPES", "admin"),
        ("X-Auth-Role", "superuser"),
        ("X-Gatekeeper-Path", "/admin"),
    ]
    token = stack.issuer.mint(subject="alice", claims={"client_id": None})
    protected = stack.get("/items", token, headers=forged)
    assert protected.status == 200, protected
    headers = seen_headers(protected.json())
    assert headers["x-auth-subject"] == ["alice"]
    # the token has no client_id: the header arrives empty, never with the client's value
    assert headers["x-auth-client-id"] == [""]
    assert protected.json()["path"] == "/items"
    for target in ("/health", "/public/x"):
        response = stack.get(target, headers=forged)
        assert response.status == 200, response
        headers = seen_headers(response.json())
        forged_seen = [
            (name, value)
            for name, values in headers.items()
            for value in values
            if name.replace("_", "-").startswith(("x-auth-", "x-gatekeeper-"))
        ]
        assert all(value == "" for _, value in forged_seen), forged_seen


def test_the_upstreams_own_401_passes_untouched(stacks: Stacks) -> None:
    stack = stacks("placewise")
    response = stack.get("/items/status?code=401", stack.issuer.mint())
    assert response.status == 401
    assert response.json() == {"upstream": 401}


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_every_error_kind_reaches_the_client_in_the_profiles_shape(stacks: Stacks, profile: str) -> None:
    stack = stacks(profile)
    seen_before = len(stack.upstream.seen)
    for kind in SERVE_KINDS:
        target, token = serve_request_for(kind, stack)
        response = stack.get(target, token)
        want = expected(get_profile(profile), kind, response)  # type: ignore[arg-type]
        assert response.status == want.status, (kind, response)
        assert response.json() == json.loads(want.body), kind
        for name in ("www-authenticate", "content-type"):
            assert response.header(name) == want.header(name), (kind, name, response)
        assert response.header("cache-control") == "no-store"
    assert len(stack.upstream.seen) == seen_before


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_principal_and_revocation_kinds_in_process(
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
    assert stack.upstream.seen == []
    assert [r.error_kind for r in stack.records] == KINDS


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_paths_are_refused(stacks: Stacks, target: str) -> None:
    stack = stacks()
    seen_before = len(stack.upstream.seen)
    response = stack.get(target, stack.issuer.mint(scope="read admin"))
    assert response.status == 400, response
    assert len(stack.upstream.seen) == seen_before


@pytest.mark.parametrize(("target", "normal"), LANDS_ON_ADMIN)
def test_normalisable_shapes_land_on_the_rule_that_protects_them(
    stacks: Stacks, target: str, normal: str
) -> None:
    stack = stacks()
    refused = stack.get(target, stack.issuer.mint(scope="read"))
    assert refused.status == 403, refused
    assert refused.json()["scope"] == "admin"
    allowed = stack.get(target, stack.issuer.mint(scope="admin"))
    assert allowed.status == 200, allowed
    # Go keeps the client's spelling when it encodes the rewritten path (/%61dmin for /admin):
    # the same path under the one normalisation, which is what the upstream decodes.
    assert normalise_path(allowed.json()["path"]) == normal


def test_a_client_cannot_choose_the_original_uri(stacks: Stacks) -> None:
    stack = stacks()
    forged = [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "OPTIONS")]
    response = stack.get("/admin/x", stack.issuer.mint(scope="read"), headers=forged)
    assert response.status == 403, response  # Caddy's forward_auth sets its own values
    assert response.json()["scope"] == "admin"


def test_requests_with_a_body_are_decided_and_forwarded(stacks: Stacks) -> None:
    stack = stacks("placewise")
    body = b"x" * 100_000
    allowed = stack.get("/items", stack.issuer.mint(), method="POST", body=body)
    assert allowed.status == 200, allowed
    assert allowed.json()["body_bytes"] == len(body)
    # A keep-alive client, as browsers are: Caddy refuses without reading the body, and Go drains
    # an unread body only on a connection it keeps; on a "Connection: close" one it closes with
    # the body unread, and the TCP reset that causes can overtake the response (seen from 10 kB).
    denied = stack.get(
        "/items", stack.issuer.mint(expires_in=-3600), method="POST", body=body, keep_alive=True
    )
    assert denied.status == 460
    assert denied.json() == {"error": "Member not authorized"}
