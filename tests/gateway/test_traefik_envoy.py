"""Traefik's ForwardAuth and Envoy's ext_authz (HTTP service) conventions, against
``gatekeeper serve`` (a real process with the shipped nginx example config switched to each
proxy) through real HTTP requests carrying exactly the headers each proxy sends. Neither proxy
is packaged in Debian, so the test plays the proxy.

Traefik (https://doc.traefik.io/traefik/middlewares/http/forwardauth/): the auth request is a
GET to the configured ``address`` (``http://gatekeeper:9000/auth``) carrying the client's
headers plus ``X-Forwarded-Method``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
``X-Forwarded-Uri`` (path and query) and ``X-Forwarded-For``, which Traefik sets itself
(``trustForwardHeader: false``, the default, discards a client's copies). A 2xx answer lets the
request through with the ``authResponseHeaders`` copied onto it (replacing client copies); any
other answer is returned to the client as it is: status, headers and body.

Envoy (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_authz/v3/ext_authz.proto,
``HttpService``): the check request keeps the original method and headers (``Host``,
``Method``, ``Path``, ``Content-Length`` and ``Authorization`` always, others per
``allowed_headers``), with ``path_prefix`` put before the original path (query included) and no
body (``Content-Length: 0``). A 200 lets the request through with ``allowed_upstream_headers``
copied (overriding client copies); any other status goes back to the client with its body and
headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from realproxies import ServeStack

Stacks = Callable[[str], ServeStack]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    made: dict[str, ServeStack] = {}

    def get(proxy: str) -> ServeStack:
        if proxy not in made:
            made[proxy] = ServeStack(
                "nginx-forward-auth.toml", None, tmp_path_factory.mktemp(proxy), proxy=f'"{proxy}"'
            )
        return made[proxy]

    yield get
    for stack in made.values():
        stack.close()


def traefik(uri: str, method: str = "GET", token: str | None = None) -> list[tuple[str, str]]:
    headers = [
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", "203.0.113.7"),
        ("User-Agent", "curl/8.0"),
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers


# -- Traefik -------------------------------------------------------------------------------------


def test_traefik_allow_carries_the_identity_headers(stacks: Stacks) -> None:
    stack = stacks("traefik")
    token = stack.issuer.mint(subject="alice", scope="read")
    response = stack.get("/auth", headers=traefik("/items/1?x=1", "POST", token))
    assert response.status == 200, response
    assert response.body == b""
    assert response.header("x-auth-subject") == "alice"
    assert response.header("x-auth-scopes") == "read"
    assert response.header("cache-control") == "no-store"


def test_traefik_rules_use_the_forwarded_method_and_uri(stacks: Stacks) -> None:
    stack = stacks("traefik")
    token = stack.issuer.mint(scope="read")
    # the auth request itself is always a GET; the rule for DELETE /items/{id} applies
    refused = stack.get("/auth", headers=traefik("/items/1", "DELETE", token))
    assert refused.status == 403, refused
    assert refused.json()["scope"] == "items:delete"
    assert stack.get("/auth", headers=traefik("/items/1", "GET", token)).status == 200
    admin = stack.get("/auth", headers=traefik("//admin/./x", "GET", token))
    assert admin.status == 403
    assert admin.json()["scope"] == "admin"


def test_traefik_denials_are_the_profiles_response(stacks: Stacks) -> None:
    stack = stacks("traefik")
    missing = stack.get("/auth", headers=traefik("/items"))
    assert missing.status == 401  # Traefik returns this to the client as it is
    assert missing.header("www-authenticate") == 'Bearer realm="api"'
    assert missing.json()["error_description"] == "A bearer token is required"
    bad_path = stack.get("/auth", headers=traefik("/public/..%2Fadmin", token=stack.issuer.mint()))
    assert bad_path.status == 400
    assert bad_path.json()["error"] == "invalid_request"


def test_traefik_mode_ignores_other_proxies_headers(stacks: Stacks) -> None:
    stack = stacks("traefik")
    response = stack.get("/auth", headers=[("X-Original-Method", "GET"), ("X-Original-URI", "/public/x")])
    assert response.status == 400
    assert response.json()["error"] == "missing_original_uri"


# -- Envoy ---------------------------------------------------------------------------------------


def envoy(token: str | None = None) -> list[tuple[str, str]]:
    headers = [("Content-Length", "0"), ("X-Forwarded-Proto", "https"), ("X-Request-Id", "r-1")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return headers


def test_envoy_rules_use_the_path_after_the_prefix_and_the_own_method(stacks: Stacks) -> None:
    stack = stacks("envoy")
    token = stack.issuer.mint(subject="alice", scope="read", claims={"client_id": None})
    allowed = stack.get("/auth/items/1", headers=envoy(token), method="POST")
    assert allowed.status == 200, allowed
    assert allowed.header("x-auth-subject") == "alice"
    # absent claims come as empty headers, so allowed_upstream_headers overrides client copies
    assert allowed.header("x-auth-client-id") == ""
    refused = stack.get("/auth/items/1", headers=envoy(token), method="DELETE")
    assert refused.status == 403
    assert refused.json()["scope"] == "items:delete"
    assert stack.get("/auth/admin/x", headers=envoy(token)).status == 403
    assert stack.get("/auth/health", headers=envoy()).status == 200


def test_envoy_query_token_and_bad_paths(stacks: Stacks) -> None:
    stack = stacks("envoy")
    token = stack.issuer.mint()
    allowed = stack.get(f"/auth/items?x=1&bearer_token={token}", headers=envoy())
    assert allowed.status == 200, allowed
    assert allowed.header("x-gatekeeper-uri") == "/items?x=1"
    for target in ("/auth/public/..%2Fadmin", "/auth/public/%2e%2e/admin", "/auth/admin;x"):
        response = stack.get(target, headers=envoy(token))
        assert response.status == 400, (target, response)
        assert response.json()["error"] == "invalid_request"
    missing = stack.get("/auth/items", headers=envoy())
    assert missing.status == 401
    assert missing.header("www-authenticate") == 'Bearer realm="api"'
