"""Forward-auth through a real nginx (Debian's) started from the shipped
examples/gateway/nginx.conf: client -> nginx -> (auth_request) gatekeeper -> the echo upstream.

Mostly against ``gatekeeper serve --config examples/gateway/nginx-forward-auth.toml`` (a real
process, pointed at a real JWKS server): valid tokens reach the upstream with identity headers,
each error kind reaches the client in the profile's exact shape (through the 401/403 +
``/auth/render`` protocol), identity headers are gatekeeper's alone, the query token never
reaches the upstream, every path-confusion shape is refused or lands on its rule. The kinds a
config file cannot produce (an unknown principal, a revoked token) are checked with the
ForwardAuth app in process behind the same nginx.
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
    MakeStack,
    Nginx,
    ServeStack,
    Stack,
    expected,
    request_for,
    require,
    seen_headers,
    serve_request_for,
    verifier_for,
)

from gatekeeper.issuer import DevIssuer
from gatekeeper.responses import get_profile

Stacks = Callable[..., ServeStack]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    """One serve stack per error profile, shared by the module's tests."""
    require("nginx")
    made: dict[str, ServeStack] = {}

    def get(profile: str = "rfc6750") -> ServeStack:
        if profile not in made:
            made[profile] = ServeStack(
                "nginx-forward-auth.toml",
                Nginx,
                tmp_path_factory.mktemp(profile),
                error_profile=f'"{profile}"',
            )
        return made[profile]

    yield get
    for stack in made.values():
        stack.close()


@pytest.fixture
def make_stack(dev_issuer: DevIssuer, clock: Clock) -> Iterator[MakeStack]:
    """ForwardAuth in process (with a principal hook and a revocable verifier) behind nginx."""
    require("nginx")
    made: list[Stack] = []

    def make(profile: str = "rfc6750") -> Stack:
        stack = Stack(verifier_for(dev_issuer, clock), profile, "nginx", Nginx)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


# -- allow -------------------------------------------------------------------------------------


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
    assert "authorization" not in headers  # the token goes no further
    assert "x-gatekeeper-uri" not in headers
    assert "x-gatekeeper-path" not in headers


def test_a_query_token_never_reaches_the_upstream(stacks: Stacks) -> None:
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


def test_client_identity_headers_never_reach_the_upstream(stacks: Stacks) -> None:
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


def test_the_upstreams_own_401_passes_untouched(stacks: Stacks) -> None:
    stack = stacks("placewise")
    response = stack.get("/items/status?code=401", stack.issuer.mint())
    assert response.status == 401
    assert response.json() == {"upstream": 401}
    assert response.header("www-authenticate") == 'Bearer realm="upstream"'


# -- every error kind, in the profile's exact shape -------------------------------------------


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
        if kind == "keys_unavailable":
            assert response.header("retry-after") is not None
        assert response.header("cache-control") == "no-store"
        assert "x-gatekeeper-status" not in dict(response.headers)
    assert len(stack.upstream.seen) == seen_before  # no refusal reached the upstream


def test_named_provider_shapes(stacks: Stacks) -> None:
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
    stack = make_stack(profile)
    stack.gatekeeper.app.gate.verifier.revoke(sub="revoked-user", before=clock.now + 1)
    for kind in KINDS:
        target, token = request_for(kind, dev_issuer, clock)
        response = stack.get(target, token)
        want = expected(stack.profile, kind, response)  # type: ignore[arg-type]
        assert response.status == want.status, (kind, response)
        assert response.json() == json.loads(want.body), kind
        assert response.header("www-authenticate") == want.header("www-authenticate"), kind
    assert stack.upstream.seen == []
    assert [r.error_kind for r in stack.records] == KINDS


# -- path confusion ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_paths_are_refused(stacks: Stacks, target: str) -> None:
    stack = stacks()
    seen_before = len(stack.upstream.seen)
    response = stack.get(target, stack.issuer.mint(scope="read admin"))
    # nginx refuses some itself (400); the rest gatekeeper refuses, in the profile's shape
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
    assert allowed.json()["path"] == normal  # the upstream sees the path the rule saw


def test_a_client_cannot_choose_the_original_uri(stacks: Stacks) -> None:
    stack = stacks()
    forged = [
        ("X-Original-URI", "/public/x"),
        ("X-Original-Method", "OPTIONS"),
        ("X_Original_URI", "/health"),
    ]
    response = stack.get("/admin/x", stack.issuer.mint(scope="read"), headers=forged)
    assert response.status == 403, response  # nginx.conf's own values replaced the client's
    assert response.json()["scope"] == "admin"


def test_requests_with_a_body_are_decided_and_forwarded(stacks: Stacks) -> None:
    stack = stacks("placewise")
    body = b"x" * 100_000
    allowed = stack.get("/items", stack.issuer.mint(), method="POST", body=body)
    assert allowed.status == 200, allowed
    assert allowed.json()["body_bytes"] == len(body)  # the auth call did not eat the body
    denied = stack.get("/items", stack.issuer.mint(expires_in=-3600), method="POST", body=body)
    assert denied.status == 460  # the render call keeps the method, drops the body
    assert denied.json() == {"error": "Member not authorized"}


def test_a_missing_proxy_skips_with_how_to_install_it() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install no-such-proxy"):
        require("no-such-proxy")
