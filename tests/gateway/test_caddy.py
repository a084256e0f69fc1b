"""Forward-auth through a real Caddy (Debian's 2.6) started from the shipped
examples/gateway/Caddyfile: client -> Caddy -> (forward_auth) gatekeeper -> the echo upstream.

Against ``gatekeeper serve --config examples/gateway/caddy-forward-auth.toml`` (a real process,
pointed at a real JWKS server). Caddy copies a refusal to the client as it is, so every error
kind arrives in the profile's exact shape with no extra machinery; identity headers are
gatekeeper's alone; the upstream gets the path the rules saw; every path-confusion shape is
refused or lands on its rule. The scenarios nginx must pass as well are in realproxies.py; the
Caddy-only checks are added here.
"""

from __future__ import annotations

import pytest
from conftest import Clock
from realproxies import (
    LANDS_ON_ADMIN,
    REFUSED,
    Caddy,
    MakeStack,
    ServeStacks,
    check_a_body_is_forwarded_and_a_denial_rendered,
    check_a_normalisable_path_lands_on_its_rule,
    check_a_valid_token_reaches_the_upstream,
    check_an_ambiguous_path_is_refused,
    check_every_serve_kind_in_the_profiles_shape,
    check_principal_and_revocation_kinds,
    check_the_client_cannot_choose_the_original_uri,
    check_the_upstreams_own_401_passes,
    proxy_fixtures,
    seen_headers,
)

from gatekeeper.gateway.paths import normalise_path
from gatekeeper.issuer import DevIssuer

#: ``stacks(profile, **config values)``: gatekeeper serve with caddy-forward-auth.toml behind Caddy;
#: ``make_stack(profile)``: ForwardAuth in process (principal hook, revocable verifier) behind it.
stacks, make_stack = proxy_fixtures("caddy", Caddy, "caddy-forward-auth.toml")


def test_valid_token_reaches_the_upstream_with_identity_headers(stacks: ServeStacks) -> None:
    check_a_valid_token_reaches_the_upstream(stacks())


def test_a_query_token_is_not_a_credential_through_caddy(stacks: ServeStacks) -> None:
    stack = stacks()
    seen_before = len(stack.upstream.seen)
    response = stack.get(f"/items?bearer_token={stack.issuer.mint()}")
    assert response.status == 401  # not accepted, so never forwarded as one
    assert len(stack.upstream.seen) == seen_before


def test_caddy_26_would_forward_an_accepted_query_token(stacks: ServeStacks) -> None:
    # Why caddy-forward-auth.toml accepts header tokens only: Caddy 2.6 keeps the query as it is.
    stack = stacks(query_params='["bearer_token"]')  # the shipped config has []
    token = stack.issuer.mint()
    response = stack.get(f"/items?bearer_token={token}")
    assert response.status == 200
    assert token in response.json()["query"]


def test_client_identity_headers_never_reach_the_upstream(stacks: ServeStacks) -> None:
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


def test_the_upstreams_own_401_passes_untouched(stacks: ServeStacks) -> None:
    check_the_upstreams_own_401_passes(stacks("placewise"))


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_every_error_kind_reaches_the_client_in_the_profiles_shape(stacks: ServeStacks, profile: str) -> None:
    check_every_serve_kind_in_the_profiles_shape(stacks(profile), profile)


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_principal_and_revocation_kinds_in_process(
    make_stack: MakeStack, dev_issuer: DevIssuer, clock: Clock, profile: str
) -> None:
    check_principal_and_revocation_kinds(make_stack(profile), dev_issuer, clock)


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_paths_are_refused(stacks: ServeStacks, target: str) -> None:
    check_an_ambiguous_path_is_refused(stacks(), target)


@pytest.mark.parametrize(("target", "normal"), LANDS_ON_ADMIN)
def test_normalisable_shapes_land_on_the_rule_that_protects_them(
    stacks: ServeStacks, target: str, normal: str
) -> None:
    path = check_a_normalisable_path_lands_on_its_rule(stacks(), target)
    # Go keeps the client's spelling when it encodes the rewritten path (/%61dmin for /admin):
    # the same path under the one normalisation, which is what the upstream decodes.
    assert normalise_path(path) == normal


def test_a_client_cannot_choose_the_original_uri(stacks: ServeStacks) -> None:
    forged = [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "OPTIONS")]
    # Caddy's forward_auth sets its own values
    check_the_client_cannot_choose_the_original_uri(stacks(), forged)


def test_requests_with_a_body_are_decided_and_forwarded(stacks: ServeStacks) -> None:
    # The denial with a keep-alive client, as browsers are: Caddy refuses without reading the
    # body, and Go drains an unread body only on a connection it keeps; on a "Connection: close"
    # one it closes with the body unread, and the TCP reset that causes can overtake the response
    # (seen from 10 kB).
    check_a_body_is_forwarded_and_a_denial_rendered(stacks("placewise"), keep_alive=True)
