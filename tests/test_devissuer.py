"""Tests for the development issuer (gatekeeper.issuer) and its HTTP server (gatekeeper.devserver)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import Key, KeySet, OctKey, import_key
from polling import eventually

from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def public_key(issuer: DevIssuer, alg: str) -> Key:
    """The (only) published key of ``issuer`` for ``alg``, imported on its own."""
    [jwk] = [k for k in issuer.jwks()["keys"] if k["alg"] == alg]
    return import_key(jwk)


def verify(token: str, issuer: DevIssuer, alg: str) -> jwt.Token:
    return jwt.decode(token, KeySet.import_key_set(issuer.jwks()), algorithms=[alg])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def issuer() -> DevIssuer:
    # Key generation (RSA especially) is slow, so one multi-algorithm issuer serves the whole module.
    return DevIssuer(algorithms=ASYMMETRIC)


# -- DevIssuer --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # joserfc flags EdDSA on decode
@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_minted_token_verifies_with_plain_joserfc(issuer: DevIssuer, alg: str) -> None:
    token = issuer.mint(alg=alg, scope=["read", "write"])
    decoded = verify(token, issuer, alg)
    assert decoded.header["alg"] == alg
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.header["kid"] in {k["kid"] for k in issuer.jwks()["keys"] if k["alg"] == alg}
    claims = decoded.claims
    assert claims["iss"] == "https://issuer.example"
    assert claims["aud"] == "api"
    assert claims["sub"] == claims["client_id"] == "client-123"
    assert claims["scope"] == "read write"
    assert claims["exp"] - claims["iat"] == 300
    assert "nbf" not in claims


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_signature_is_bound_to_the_key(issuer: DevIssuer, alg: str) -> None:
    token = issuer.mint(alg=alg)
    header, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with pytest.raises(BadSignatureError):
        verify(f"{header}.{payload}.{flipped}", issuer, alg)
    # Same claims and header, signed by another issuer's key of the same type: must not verify.
    foreign = DevIssuer(algorithms=[alg]).mint(alg=alg, kid=None)
    with pytest.raises(BadSignatureError):
        jwt.decode(foreign, public_key(issuer, alg), algorithms=[alg])


def test_jwks_never_contains_private_or_symmetric_material(issuer: DevIssuer) -> None:
    hmac_kid = issuer.add_key("HS256")
    try:
        keys = issuer.jwks()["keys"]
        assert len(keys) == len(ASYMMETRIC)
        for jwk in keys:
            assert not PRIVATE_MEMBERS & jwk.keys(), jwk
            assert jwk["use"] == "sig"
            assert jwk["kty"] in {"RSA", "EC", "OKP"}
            assert jwk["kid"]
        assert hmac_kid not in {k["kid"] for k in keys}
        assert "HS256" not in json.dumps(issuer.jwks())
    finally:
        issuer.remove_key(hmac_kid)


@pytest.mark.parametrize(("alg", "size"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_keys_are_explicit_and_verify_with_secret(alg: str, size: int) -> None:
    with pytest.raises(ValueError, match="add_key"):
        DevIssuer(algorithms=[alg])
    issuer = DevIssuer(algorithms=["ES256"])
    kid = issuer.add_key(alg)
    secret = issuer.secret(kid)
    assert len(secret) == size
    token = issuer.mint(alg=alg)
    assert segment(token, 0)["kid"] == kid
    assert jwt.decode(token, OctKey.import_key(secret), algorithms=[alg]).claims["sub"] == "client-123"
    with pytest.raises(ValueError, match="not a symmetric"):
        issuer.secret(issuer.jwks()["keys"][0]["kid"])


def test_kid_defaults_to_thumbprint_and_can_be_chosen(issuer: DevIssuer) -> None:
    jwks = KeySet.import_key_set(issuer.jwks())  # type: ignore[arg-type]
    for key in jwks.keys:
        assert key.kid == key.thumbprint()
    local = DevIssuer(algorithms=["ES256"])
    assert local.add_key("ES256", kid="mine") == "mine"
    assert segment(local.mint(kid="mine"), 0)["kid"] == "mine"
    with pytest.raises(ValueError, match="duplicate"):
        local.add_key("ES256", kid="mine")
    with pytest.raises(ValueError, match="unsupported"):
        local.add_key("RS1")


def test_kid_none_omits_the_header_but_still_signs(issuer: DevIssuer) -> None:
    token = issuer.mint(alg="ES256", kid=None)
    assert "kid" not in segment(token, 0)
    assert jwt.decode(token, public_key(issuer, "ES256"), ["ES256"]).claims["sub"] == "client-123"


def test_claims_override_and_none_deletes() -> None:
    now = 1_700_000_000.0
    issuer = DevIssuer("https://idp.test", audience=["a", "b"], algorithms=["ES256"], clock=lambda: now)
    claims = segment(issuer.mint({"exp": None, "sub": "alice", "extra": [1, 2]}, not_before=-5), 1)
    assert "exp" not in claims
    assert claims["sub"] == "alice"
    assert claims["extra"] == [1, 2]
    assert claims["aud"] == ["a", "b"]
    assert claims["iss"] == "https://idp.test"
    assert claims["iat"] == int(now)
    assert claims["nbf"] == int(now) - 5
    assert "scope" not in claims
    assert claims["jti"] != segment(issuer.mint(), 1)["jti"]

    assert "aud" not in segment(issuer.mint(audience=None), 1)
    assert segment(issuer.mint(audience="other", expires_in=-10), 1)["exp"] == int(now) - 10
    assert segment(issuer.mint(scope="x y"), 1)["scope"] == "x y"


def test_headers_are_merged_unvalidated_and_typ_is_optional() -> None:
    issuer = DevIssuer(algorithms=["ES256"])
    hostile = {"jku": "https://evil.example/jwks", "jwk": {"kty": "EC"}, "crit": ["exp-ext"], "nonce": "n"}
    header = segment(issuer.mint(headers=hostile, typ=None), 0)
    assert header.items() >= hostile.items()
    assert "typ" not in header
    relabelled = segment(issuer.mint(headers={"alg": "HS256", "typ": "JWT"}), 0)
    assert relabelled["alg"] == "HS256"
    assert relabelled["typ"] == "JWT"
    assert "alg" not in segment(issuer.mint(headers={"alg": None}), 0)


def test_unsigned_token() -> None:
    token = DevIssuer(algorithms=["ES256"]).mint(alg="none")
    assert token.endswith(".")
    assert segment(token, 0) == {"alg": "none", "typ": "at+jwt"}


def test_rotation_uses_newest_key_and_removed_keys_can_still_sign() -> None:
    issuer = DevIssuer(algorithms=["ES256"])
    old = segment(issuer.mint(), 0)["kid"]
    new = issuer.add_key("ES256")
    assert segment(issuer.mint(), 0)["kid"] == new
    assert {k["kid"] for k in issuer.jwks()["keys"]} == {old, new}
    issuer.remove_key(old)
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [new]
    stale = issuer.mint(kid=old)  # a token signed by a key the JWKS no longer publishes
    assert segment(stale, 0)["kid"] == old
    issuer.remove_key(new)
    with pytest.raises(ValueError, match="no published ES256 key"):
        issuer.mint()
    with pytest.raises(ValueError, match="not ES384"):
        issuer.mint(kid=old, alg="ES384")


def test_discovery_document() -> None:
    doc = DevIssuer("https://idp.test").discovery("https://idp.test/keys")
    assert doc["issuer"] == "https://idp.test"
    assert doc["jwks_uri"] == "https://idp.test/keys"
    assert doc["token_endpoint"] == "https://idp.test/oauth/token"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


# -- IssuerServer -----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[IssuerServer]:
    with IssuerServer(DevIssuer(algorithms=["ES256"])) as srv:
        srv.issuer.issuer = srv.url
        yield srv


def test_server_url_known_before_start_and_default_issuer_matches() -> None:
    srv = IssuerServer()
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        assert int(srv.url.rsplit(":", 1)[1]) > 0
        assert srv.jwks_url == srv.url + "/.well-known/jwks.json"
        assert srv.issuer.issuer == srv.url
    finally:
        srv.stop()  # never started: must not hang
    with pytest.raises(RuntimeError):
        srv.start()


def test_jwks_over_http_and_request_counting(server: IssuerServer) -> None:
    with httpx.Client() as client:
        for _ in range(3):
            response = client.get(server.jwks_url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == server.issuer.jwks()
        assert client.get(server.url + "/nope").status_code == 404
        assert client.get(server.jwks_url + "?x=1").status_code == 200
    assert server.requests() == 4
    assert server.requests("/nope") == 1
    assert server.requests("/.well-known/openid-configuration") == 0
    server.reset_counts()
    assert server.requests() == 0


def test_minted_token_verifies_against_served_jwks(server: IssuerServer) -> None:
    token = server.issuer.mint()
    jwks = httpx.get(server.jwks_url).json()
    claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"]).claims
    assert claims["iss"] == server.url


def test_status_body_and_headers_knobs(server: IssuerServer) -> None:
    server.status = 503
    assert httpx.get(server.jwks_url).status_code == 503
    server.status = 200
    server.body = b"\x00not json"
    server.headers = {"Cache-Control": "max-age=60", "content-type": "text/plain"}
    response = httpx.get(server.jwks_url)
    assert response.content == b"\x00not json"
    assert response.headers["cache-control"] == "max-age=60"
    assert response.headers.get_list("content-type") == ["text/plain"]
    server.body = b"x" * 3_000_000
    assert len(httpx.get(server.jwks_url).content) == 3_000_000


def test_delay_knob_and_stop_is_not_held_up() -> None:
    srv = IssuerServer().start()
    srv.delay = 0.3
    started = time.monotonic()
    assert httpx.get(srv.jwks_url).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(srv.jwks_url, timeout=0.1)

    srv.delay = 30
    caught: list[BaseException] = []

    def slow_request() -> None:
        try:
            httpx.get(srv.jwks_url, timeout=10)
        except httpx.HTTPError as e:
            caught.append(e)

    worker = threading.Thread(target=slow_request)
    worker.start()
    while srv.requests() < 3:
        time.sleep(0.01)
    started = time.monotonic()
    srv.stop()
    worker.join(5)
    assert time.monotonic() - started < 2
    assert not worker.is_alive()
    assert caught  # the delayed request was abandoned, not answered


def _get_in_thread(url: str, into: list[httpx.Response | httpx.HTTPError]) -> threading.Thread:
    def get() -> None:
        try:
            into.append(httpx.get(url, timeout=10))
        except httpx.HTTPError as e:
            into.append(e)

    worker = threading.Thread(target=get, daemon=True)
    worker.start()
    return worker


def test_hang_holds_jwks_requests_until_it_is_cleared(server: IssuerServer) -> None:
    assert server.hang is False
    server.hang = True
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(server.jwks_url, timeout=0.2)
    assert server.held() == 1
    # Only the JWKS endpoint hangs.
    assert httpx.get(server.url + "/.well-known/openid-configuration", timeout=2).status_code == 200
    answers: list[httpx.Response | httpx.HTTPError] = []
    worker = _get_in_thread(server.jwks_url, answers)
    assert eventually(lambda: server.held() == 2, timeout=5)
    # Cleared and set again at once: the request held before is released all the same...
    server.hang = False
    server.hang = True
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 200
    assert answers[0].json() == server.issuer.jwks()
    # ...and a new one is held again.
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(server.jwks_url, timeout=0.2)
    assert server.held() == 3
    server.hang = False
    assert httpx.get(server.jwks_url, timeout=2).json() == server.issuer.jwks()
    assert server.held() == 3  # a request after clearing is not held
    assert server.requests() == 4
    server.reset_counts()
    assert server.held() == 0


def test_stop_is_not_held_up_by_a_hanging_request() -> None:
    srv = IssuerServer().start()
    srv.hang = True
    answers: list[httpx.Response | httpx.HTTPError] = []
    worker = _get_in_thread(srv.jwks_url, answers)
    assert eventually(lambda: srv.held() == 1, timeout=5)
    started = time.monotonic()
    srv.stop()
    worker.join(5)
    assert time.monotonic() - started < 2
    assert not worker.is_alive()
    # The held request was abandoned (its connection closed), not answered.
    assert len(answers) == 1
    assert isinstance(answers[0], httpx.RemoteProtocolError), answers


def test_drop_is_one_shot(server: IssuerServer) -> None:
    server.drop = True
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(server.jwks_url)
    assert server.drop is False
    assert httpx.get(server.jwks_url).status_code == 200
    assert server.requests() == 2


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
def test_discovery_over_http(server: IssuerServer, path: str) -> None:
    doc = httpx.get(server.url + path).json()
    assert doc["issuer"] == server.issuer.issuer == server.url
    assert doc["jwks_uri"] == server.jwks_url
    assert doc["token_endpoint"] == server.url + "/oauth/token"
    assert server.requests(path) == 1


def test_token_endpoint_client_credentials(server: IssuerServer) -> None:
    server.add_client("svc", "s3cret:+/", scopes=["read", "write"])
    token_url = server.url + "/oauth/token"
    form = {"grant_type": "client_credentials", "client_id": "svc", "client_secret": "s3cret:+/"}

    response = httpx.post(token_url, data={**form, "scope": "read"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"
    assert body["expires_in"] == 300
    claims = jwt.decode(body["access_token"], KeySet.import_key_set(server.issuer.jwks()), ["ES256"]).claims  # type: ignore[arg-type]
    assert claims["sub"] == claims["client_id"] == "svc"
    assert claims["scope"] == "read"
    assert claims["iss"] == server.url

    # HTTP Basic: both halves form-urlencoded first (RFC 6749 section 2.3.1), no scope = all allowed.
    basic = httpx.post(token_url, data={"grant_type": "client_credentials"}, auth=("svc", "s3cret%3A%2B%2F"))
    assert basic.status_code == 200
    assert basic.json()["scope"] == "read write"
    assert server.requests("/oauth/token") == 2


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "svc", "client_secret": "wrong"},
            None,
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "pw"},
            None,
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, ("svc", "wrong"), 401, "invalid_client"),
        (
            {"grant_type": "password", "client_id": "svc", "client_secret": "pw"},
            None,
            400,
            "unsupported_grant_type",
        ),
        ({"client_id": "svc", "client_secret": "pw"}, None, 400, "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "read admin"}, ("svc", "pw"), 400, "invalid_scope"),
    ],
)
def test_token_endpoint_errors(
    server: IssuerServer, data: dict[str, str], auth: tuple[str, str] | None, status: int, error: str
) -> None:
    server.add_client("svc", "pw", scopes=["read"])
    response = httpx.post(server.url + "/oauth/token", data=data, auth=auth)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "access_token" not in response.json()
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


def test_token_endpoint_rejects_non_form_bodies_and_wrong_methods(server: IssuerServer) -> None:
    server.add_client("svc", "pw")
    response = httpx.post(server.url + "/oauth/token", json={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert httpx.get(server.url + "/oauth/token").status_code == 405
    assert httpx.post(server.jwks_url).status_code == 405
    assert httpx.post(server.url + "/elsewhere").status_code == 404


# -- the token endpoint's grants, revocation and error shapes ------------------------------------


def token(server: IssuerServer, auth: tuple[str, str] = ("svc", "pw"), **form: str) -> httpx.Response:
    return httpx.post(server.token_url, data=form, auth=auth)


def test_refresh_rotation_and_reuse_revokes_the_family(server: IssuerServer) -> None:
    server.add_client("svc", "pw", refresh_tokens=True)
    first = token(server, grant_type="client_credentials").json()
    second = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    third = token(server, grant_type="refresh_token", refresh_token=second["refresh_token"]).json()
    assert server.tokens.refresh_tokens() == 1

    # The spent first refresh token comes back (stolen copy, or a buggy client): reuse.
    reused = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert "reused" in reused.json()["error_description"]
    # ... which revoked the whole family, including the newest refresh token and the access tokens.
    latest = token(server, grant_type="refresh_token", refresh_token=third["refresh_token"])
    assert latest.json()["error"] == "invalid_grant"
    assert server.tokens.refresh_tokens() == 0
    assert all(server.tokens.is_revoked(t["access_token"]) for t in (first, second, third))


def test_refresh_tokens_belong_to_their_client(server: IssuerServer) -> None:
    server.add_client("svc", "pw", refresh_tokens=True)
    server.add_client("other", "pw2")
    issued = token(server, grant_type="client_credentials").json()
    stolen = token(
        server, ("other", "pw2"), grant_type="refresh_token", refresh_token=issued["refresh_token"]
    )
    assert stolen.json()["error"] == "invalid_grant"
    assert (
        token(server, grant_type="refresh_token", refresh_token="nonsense").json()["error"] == "invalid_grant"
    )
    assert token(server, grant_type="refresh_token").json()["error"] == "invalid_request"


def test_client_credentials_issue_no_refresh_token_by_default(server: IssuerServer) -> None:
    server.add_client("svc", "pw")
    assert "refresh_token" not in token(server, grant_type="client_credentials").json()


def test_password_grant_for_registered_users(server: IssuerServer) -> None:
    server.add_client("svc", "pw")
    server.add_user("ops", "hunter2", scopes=["systems:read", "systems:write"])
    body = token(
        server, grant_type="password", username="ops", password="hunter2", scope="systems:read"
    ).json()
    claims = segment(body["access_token"], 1)
    assert claims["sub"] == "ops"
    assert claims["client_id"] == "svc"
    assert claims["scope"] == "systems:read"
    assert body["refresh_token"]
    wrong = token(server, grant_type="password", username="ops", password="nope")
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    missing = token(server, grant_type="password", username="ops")
    assert missing.json()["error"] == "invalid_request"


def test_grants_can_be_restricted_per_client(server: IssuerServer) -> None:
    server.add_client("svc", "pw", grants=["client_credentials"])
    server.add_user("ops", "hunter2")
    refused = token(server, grant_type="password", username="ops", password="hunter2")
    assert refused.json()["error"] == "unauthorized_client"


def test_per_audience_tokens_and_per_client_lifetime(server: IssuerServer) -> None:
    server.add_client("svc", "pw", audiences=["customer-api", "matching-api"], expires_in=60)
    server.add_client("open", "pw")
    customer = token(server, grant_type="client_credentials", audience="customer-api").json()
    matching = token(server, grant_type="client_credentials", resource="matching-api").json()
    assert segment(customer["access_token"], 1)["aud"] == "customer-api"
    assert segment(matching["access_token"], 1)["aud"] == "matching-api"
    assert customer["expires_in"] == 60
    claims = segment(customer["access_token"], 1)
    assert claims["exp"] - claims["iat"] == 60
    other = token(server, grant_type="client_credentials", audience="billing-api")
    assert (other.status_code, other.json()["error"]) == (400, "invalid_target")
    default = token(server, ("open", "pw"), grant_type="client_credentials").json()
    assert segment(default["access_token"], 1)["aud"] == "api"
    assert default["expires_in"] == server.token_lifetime


def test_revocation_endpoint(server: IssuerServer) -> None:
    server.add_client("svc", "pw", refresh_tokens=True)
    server.add_client("other", "pw2")
    issued = token(server, grant_type="client_credentials").json()
    # Another client cannot revoke it: still 200 (RFC 7009 section 2.2 leaks nothing), no effect.
    assert (
        httpx.post(
            server.revocation_url, data={"token": issued["refresh_token"]}, auth=("other", "pw2")
        ).status_code
        == 200
    )
    assert token(server, grant_type="refresh_token", refresh_token=issued["refresh_token"]).status_code == 200
    fresh = token(server, grant_type="client_credentials").json()
    response = httpx.post(
        server.revocation_url,
        data={"token": fresh["refresh_token"], "token_type_hint": "refresh_token"},
        auth=("svc", "pw"),
    )
    assert response.status_code == 200
    assert (
        token(server, grant_type="refresh_token", refresh_token=fresh["refresh_token"]).json()["error"]
        == "invalid_grant"
    )
    assert server.tokens.is_revoked(fresh["access_token"])
    # Access tokens by jti; unknown tokens are fine; client authentication is required.
    assert (
        httpx.post(
            server.revocation_url, data={"token": issued["access_token"]}, auth=("svc", "pw")
        ).status_code
        == 200
    )
    assert server.tokens.is_revoked(issued["access_token"])
    assert httpx.post(server.revocation_url, data={"token": "junk"}, auth=("svc", "pw")).status_code == 200
    assert httpx.post(server.revocation_url, data={"token": "junk"}).status_code == 401
    assert httpx.post(server.revocation_url, data={}, auth=("svc", "pw")).json()["error"] == "invalid_request"
    assert server.requests("/oauth/revoke") == 6


@pytest.mark.parametrize(
    ("shape", "bad_client", "bad_refresh"),
    [
        (
            "rfc6749",
            (401, {"error": "invalid_client", "error_description": "client authentication failed"}),
            (400, {"error": "invalid_grant", "error_description": "unknown refresh token"}),
        ),
        (
            "placepoint",
            (401, {"error": {"code": 401, "message": "client authentication failed"}}),
            (400, {"error": {"code": 400, "message": "unknown refresh token"}}),
        ),
        (
            "placewise",
            (401, {"error": "client authentication failed"}),
            (462, {"error": "Invalid refresh token"}),
        ),
    ],
)
def test_error_shapes(shape: str, bad_client: tuple[int, Any], bad_refresh: tuple[int, Any]) -> None:
    with IssuerServer(DevIssuer(algorithms=["ES256"]), error_shape=shape) as srv:  # type: ignore[arg-type]
        srv.add_client("svc", "pw")
        response = token(srv, ("svc", "wrong"), grant_type="client_credentials")
        assert (response.status_code, response.json()) == bad_client
        response = token(srv, grant_type="refresh_token", refresh_token="nope")
        assert (response.status_code, response.json()) == bad_refresh
    with pytest.raises(ValueError, match="unknown error shape"):
        IssuerServer(error_shape="nonsense")  # type: ignore[arg-type]


def test_token_faults_are_one_shot_and_in_order(server: IssuerServer) -> None:
    from gatekeeper.devserver import TokenFault

    server.add_client("svc", "pw")
    server.fail_token_requests(TokenFault(503), TokenFault(200, body=b"not json"))
    assert token(server, grant_type="client_credentials").status_code == 503
    assert token(server, grant_type="client_credentials").content == b"not json"
    assert token(server, grant_type="client_credentials").json()["token_type"] == "Bearer"
    server.fail_token_requests(TokenFault(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        token(server, grant_type="client_credentials")
    assert server.tokens.grants == {"client_credentials": 1}


def test_custom_token_path_and_discovery(server: IssuerServer) -> None:
    doc = httpx.get(server.url + "/.well-known/openid-configuration").json()
    assert doc["revocation_endpoint"] == server.revocation_url
    assert "refresh_token" in doc["grant_types_supported"]
    with IssuerServer(DevIssuer(algorithms=["ES256"]), token_path="/auth") as srv:
        srv.add_client("svc", "pw")
        assert srv.token_url == srv.url + "/auth"
        assert token(srv, grant_type="client_credentials").status_code == 200
        assert httpx.post(srv.url + "/oauth/token").status_code == 404
