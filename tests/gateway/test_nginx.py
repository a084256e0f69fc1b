"""Forward-auth through a real nginx (Debian's) started from the shipped
examples/gateway/nginx.conf: client -> nginx -> (auth_request) gatekeeper -> the echo upstream.

Mostly against ``gatekeeper serve --config examples/gateway/nginx-forward-auth.toml`` (a real
process, pointed at a real JWKS server): valid tokens reach the upstream with identity headers,
each error kind reaches the client in the profile's exact shape (through the 401/403 +
``/auth/render`` protocol), identity headers are gatekeeper's alone, the query token never
reaches the upstream, every path-confusion shape is refused or lands on its rule. The kinds a
config file cannot produce (an unknown principal, a revoked token) are checked with the
ForwardAuth app in process behind the same nginx. The scenarios Caddy must pass as well are in
realproxies.py; the nginx-only checks are added here.
"""

from __future__ import annotations

import pytest
from conftest import Clock
from realproxies import (
    LANDS_ON_ADMIN,
    REFUSED,
    MakeStack,
    Nginx,
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
    require,
    seen_headers,
)

from gatekeeper.issuer import DevIssuer

#: ``stacks(profile, **config values)``: gatekeeper serve with nginx-forward-auth.toml behind Nginx;
#: ``make_stack(profile)``: ForwardAuth in process (principal hook, revocable verifier) behind it.
stacks, make_stack = proxy_fixtures("nginx", Nginx, "nginx-forward-auth.toml")


# -- allow -------------------------------------------------------------------------------------


def test_valid_token_reaches_the_upstream_with_identity_headers(stacks: ServeStacks) -> None:
    headers = check_a_valid_token_reaches_the_upstream(stacks())
    assert "x-gatekeeper-uri" not in headers  # gatekeeper's answer to nginx, not for the upstream


def test_a_query_token_never_reaches_the_upstream(stacks: ServeStacks) -> None:
    stack = stacks()
    token = stack.issuer.mint(subject="alice")
    response = stack.get(f"/items?x=1&bearer_token={token}&y=2")
    assert response.status == 200, response
    echo = response.json()
    assert echo["query"] == "x=1&y=2"
    assert token not in response.body.decode()
    only = stack.get(f"/items?bearer_token={token}").json()
    assert (only["path"], only["query"]) == ("/items", "")
    # gatekeeper's access log has the decision, with the token only as a fingerprint
    log = stack.gatekeeper.access_log.read_text()
    assert token not in log
    assert "bearer_token=[redacted]" in log


def test_client_identity_headers_never_reach_the_upstream(stacks: ServeStacks) -> None:
    stack = stacks()
    forged = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-subject", "admin2"),
        ("X_Auth_Subject", "admin3"),
        ("X-AUTH-SCOPES", "admin"),
        ("X-Gatekeeper-Uri", "/admin"),
    ]
    token = stack.issuer.mint(subject="alice", claims={"client_id": None})
    protected = stack.get("/items", token, headers=forged).json()
    headers = seen_headers(protected)
    assert headers["x-auth-subject"] == ["alice"]
    assert "x-auth-client-id" not in headers  # the token has none; nginx sends no empty header
    assert "x_auth_subject" not in headers
    assert "x-gatekeeper-uri" not in headers
    assert protected["path"] == "/items"
    # exempt and optional routes forward no client-chosen identity either
    for target in ("/health", "/public/x"):
        response = stack.get(target, headers=forged)
        assert response.status == 200, response
        headers = seen_headers(response.json())
        assert not [name for name in headers if name.replace("_", "-").startswith("x-auth-")], headers


def test_the_upstreams_own_401_passes_untouched(stacks: ServeStacks) -> None:
    response = check_the_upstreams_own_401_passes(stacks("placewise"))
    assert response.header("www-authenticate") == 'Bearer realm="upstream"'


# -- every error kind, in the profile's exact shape -------------------------------------------


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_every_error_kind_reaches_the_client_in_the_profiles_shape(stacks: ServeStacks, profile: str) -> None:
    check_every_serve_kind_in_the_profiles_shape(stacks(profile), profile)


def test_named_provider_shapes(stacks: ServeStacks) -> None:
    af_stack = stacks("addressfinder")
    af = af_stack.get("/items", af_stack.issuer.mint(expires_in=-3600))
    assert (af.status, af.json()["error_code"]) == (400, "1024")
    pw_stack = stacks("placewise")
    pw = pw_stack.get("/items", pw_stack.issuer.mint(expires_in=-3600))
    assert (pw.status, pw.json()) == (460, {"error": "Member not authorized"})
    rfc_stack = stacks("rfc6750")
    rfc = rfc_stack.get("/items", rfc_stack.issuer.mint(expires_in=-3600))
    assert rfc.status == 401
    assert str(rfc.header("www-authenticate")).startswith('Bearer realm="api", error="invalid_token"')


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_principal_and_revocation_kinds_in_process(
    make_stack: MakeStack, dev_issuer: DevIssuer, clock: Clock, profile: str
) -> None:
    check_principal_and_revocation_kinds(make_stack(profile), dev_issuer, clock)


# -- path confusion ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_paths_are_refused(stacks: ServeStacks, target: str) -> None:
    # nginx refuses some itself (400); the rest gatekeeper refuses, in the profile's shape
    check_an_ambiguous_path_is_refused(stacks(), target)


@pytest.mark.parametrize(("target", "normal"), LANDS_ON_ADMIN)
def test_normalisable_shapes_land_on_the_rule_that_protects_them(
    stacks: ServeStacks, target: str, normal: str
) -> None:
    # the upstream sees the path the rule saw
    assert check_a_normalisable_path_lands_on_its_rule(stacks(), target) == normal


def test_a_client_cannot_choose_the_original_uri(stacks: ServeStacks) -> None:
    forged = [
        ("X-Original-URI", "/public/x"),
        ("X-Original-Method", "OPTIONS"),
        ("X_Original_URI", "/health"),
    ]
    # nginx.conf's own values replace the client's
    check_the_client_cannot_choose_the_original_uri(stacks(), forged)


def test_requests_with_a_body_are_decided_and_forwarded(stacks: ServeStacks) -> None:
    # the render call keeps the method and drops the body
    check_a_body_is_forwarded_and_a_denial_rendered(stacks("placewise"))


def test_a_missing_proxy_skips_with_how_to_install_it() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install no-such-proxy"):
        require("no-such-proxy")
