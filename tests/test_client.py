"""gatekeeper.client against real loopback servers: a development issuer (counting its token
requests) and a small API that records the Authorization header of every request it receives."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Clock

from gatekeeper.client import (
    ClientCredentialsAuth,
    Credentials,
    InvalidRefreshToken,
    NoCredentials,
    RetryPolicy,
    TokenEndpointError,
    TokenEndpointUnavailable,
    TokenResponseError,
)
from gatekeeper.devserver import TOKEN_PATH, IssuerServer, TokenFault
from gatekeeper.issuer import DevIssuer
from gatekeeper.redact import fingerprint

pytestmark = pytest.mark.anyio

SECRET = "s3cret-value-never-shown"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a hundred clients connect at once


class Api:
    """A loopback API recording (method, path, bearer token, body) and answering ``answer(token)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, bytes]] = []
        self.answer: Callable[[str | None], int] = lambda token: 200
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                token = auth[7:] if auth and auth.startswith("Bearer ") else None
                with api._lock:
                    api.seen.append((self.command, self.path, token, body))
                status = api.answer(token)
                payload = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def tokens(self) -> list[str | None]:
        with self._lock:
            return [token for _, _, token, _ in self.seen]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    yield server
    server.close()


@pytest.fixture
def idp(clock: Clock) -> Iterator[IssuerServer]:
    server = fast_server(clock)
    server.add_client("worker", SECRET, scopes=["plots:read", "plots:write"])
    with server:
        yield server


def fast_server(clock: Clock, **options: Any) -> IssuerServer:
    """An IssuerServer with an ES256 issuer on the test clock (no RSA key generated)."""
    server = IssuerServer(DevIssuer(algorithms=("ES256",), clock=clock), **options)
    server.issuer.issuer = server.url
    return server


class Sleeps:
    """Injected sleep: records each wait and moves the clock instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.calls = clock, list[float]()

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self(seconds)


def make_auth(idp: IssuerServer, clock: Clock, **options: Any) -> ClientCredentialsAuth:
    cred_options = {k: options.pop(k) for k in list(options) if k in Credentials.__dataclass_fields__}
    creds = Credentials(
        idp.token_url, cred_options.pop("client_id", "worker"), **{"client_secret": SECRET, **cred_options}
    )
    sleeps = options.pop("sleeps", Sleeps(clock))
    return ClientCredentialsAuth(creds, clock=clock, sleep=sleeps, async_sleep=sleeps.async_sleep, **options)


def token_requests(idp: IssuerServer) -> int:
    return idp.requests(TOKEN_PATH)


# -- obtaining and caching ----------------------------------------------------------------------


def test_token_obtained_once_and_sent_as_bearer(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock, scope="plots:read")
    with httpx.Client(auth=auth) as client:
        for _ in range(5):
            assert client.get(api.url + "/plots").status_code == 200
    tokens = api.tokens()
    assert len(set(tokens)) == 1
    assert tokens[0] is not None
    got = claims(tokens[0])
    assert got["sub"] == "worker"
    assert got["scope"] == "plots:read"
    assert got["iss"] == idp.url
    assert token_requests(idp) == 1
    assert idp.tokens.grants == {"client_credentials": 1}


def test_http_basic_client_authentication(idp: IssuerServer, api: Api, clock: Clock) -> None:
    # A server that only accepts Basic would refuse form credentials: make the client prove it
    # used Basic by registering a secret that needs form-urlencoding inside Basic (RFC 6749 2.3.1).
    idp.add_client("basic client", "p@ss:word+/", scopes=["plots:read"])
    creds = Credentials(
        idp.token_url, "basic client", client_secret="p@ss:word+/", auth_method="client_secret_basic"
    )
    with httpx.Client(auth=ClientCredentialsAuth(creds, clock=clock)) as client:
        assert client.get(api.url).status_code == 200
    assert claims(api.tokens()[0] or "")["sub"] == "basic client"


def test_basic_credentials_are_sent_in_the_header(api: Api, clock: Clock) -> None:
    # The token endpoint is the recording API here, so the request itself can be inspected.
    api.answer = lambda token: 500
    creds = Credentials(api.url + "/token", "id", client_secret="pw", auth_method="client_secret_basic")
    auth = ClientCredentialsAuth(creds, clock=clock, retry=RetryPolicy(attempts=1))
    with httpx.Client(auth=auth) as client, pytest.raises(TokenEndpointUnavailable):
        client.get(api.url + "/x")
    method, path, _, body = api.seen[0]
    assert (method, path) == ("POST", "/token")
    assert b"client_secret" not in body
    assert b"grant_type=client_credentials" in body


def test_secret_from_environment_and_file(
    idp: IssuerServer, api: Api, clock: Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORKER_SECRET", SECRET)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    for source in ({"client_secret_env": "WORKER_SECRET"}, {"client_secret_file": secret_file}):
        creds = Credentials(idp.token_url, "worker", **source)
        assert SECRET not in repr(creds)
        with httpx.Client(auth=ClientCredentialsAuth(creds, clock=clock)) as client:
            assert client.get(api.url).status_code == 200
    assert token_requests(idp) == 2

    monkeypatch.delenv("WORKER_SECRET")
    creds = Credentials(idp.token_url, "worker", client_secret_env="WORKER_SECRET")
    with (
        httpx.Client(auth=ClientCredentialsAuth(creds, clock=clock)) as client,
        pytest.raises(ValueError, match="WORKER_SECRET is not set"),
    ):
        client.get(api.url)


def test_credentials_validation() -> None:
    with pytest.raises(ValueError, match="at most one"):
        Credentials("https://idp.example/token", "id", client_secret="a", client_secret_env="B")
    with pytest.raises(ValueError, match="absolute"):
        Credentials("/token", "id", client_secret="a")
    with pytest.raises(ValueError, match="must not carry credentials"):
        Credentials("https://u:p@idp.example/token", "id", client_secret="a")
    with pytest.raises(ValueError, match="password grant"):
        Credentials("https://idp.example/token", "id", client_secret="a", grant="password")


async def test_async_client_uses_the_same_flow(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)
    async with httpx.AsyncClient(auth=auth) as client:
        for _ in range(3):
            assert (await client.get(api.url + "/plots")).status_code == 200
    assert len(set(api.tokens())) == 1
    assert token_requests(idp) == 1


# -- per-API tokens -------------------------------------------------------------------------------


def test_per_api_tokens_never_cross(clock: Clock) -> None:
    customer_idp = fast_server(clock, token_path="/auth")
    matching_idp = fast_server(clock, token_path="/auth")
    apis = [Api(), Api()]
    try:
        for server, aud in ((customer_idp, "customer-api"), (matching_idp, "matching-api")):
            server.issuer.audience = aud
            server.add_client("worker", SECRET)
            server.start()
        customer, matching = apis
        auth = ClientCredentialsAuth(
            {
                customer.url + "/v1": Credentials(customer_idp.token_url, "worker", client_secret=SECRET),
                matching.url: Credentials(matching_idp.token_url, "worker", client_secret=SECRET),
            },
            clock=clock,
        )
        with httpx.Client(auth=auth) as client:
            for _ in range(2):
                assert client.post(
                    customer.url + "/v1/plots", json={"cadastreNumbers": ["0301-1/2"]}
                ).is_success
                assert client.get(matching.url + "/match").is_success
            # Not under /v1: no base URL covers it, so nothing is sent at all.
            with pytest.raises(NoCredentials, match="no API base URL"):
                client.get(customer.url + "/v10/other")
            with pytest.raises(NoCredentials):
                client.get("http://127.0.0.1:1/elsewhere")
        assert {claims(t or "")["aud"] for t in customer.tokens()} == {"customer-api"}
        assert {claims(t or "")["aud"] for t in matching.tokens()} == {"matching-api"}
        assert len(customer.seen) == 2
        assert len(matching.seen) == 2
        assert customer_idp.requests("/auth") == matching_idp.requests("/auth") == 1
    finally:
        for api_server in apis:
            api_server.close()
        customer_idp.stop()
        matching_idp.stop()


def test_one_token_per_scope_and_audience(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = ClientCredentialsAuth(
        {
            api.url + "/read": Credentials(idp.token_url, "worker", scope="plots:read", client_secret=SECRET),
            api.url + "/write": Credentials(
                idp.token_url, "worker", scope="plots:write", client_secret=SECRET
            ),
            api.url + "/other": Credentials(
                idp.token_url, "worker", audience="other-api", client_secret=SECRET
            ),
        },
        clock=clock,
    )
    with httpx.Client(auth=auth) as client:
        for path in ("/read", "/write", "/other", "/read/x", "/write/y", "/other/z"):
            assert client.get(api.url + path).is_success
    by_path = {path: claims(token or "") for _, path, token, _ in api.seen}
    assert by_path["/read"]["scope"] == by_path["/read/x"]["scope"] == "plots:read"
    assert by_path["/write"]["scope"] == "plots:write"
    assert by_path["/other"]["aud"] == "other-api"
    assert by_path["/read"]["aud"] == "api"
    assert token_requests(idp) == 3


# -- renewal and single flight ------------------------------------------------------------------


def test_renews_ahead_of_expiry(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)  # tokens live 300 s; renewed 60 s early
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        clock.advance(239.9)
        client.get(api.url)
        assert token_requests(idp) == 1
        clock.advance(0.1)
        client.get(api.url)
        assert token_requests(idp) == 2
    first, second, third = api.tokens()
    assert first == second != third


def test_renew_before_is_configurable_and_short_tokens_renew_at_half_life(
    idp: IssuerServer, api: Api, clock: Clock
) -> None:
    idp.add_client("short", SECRET, expires_in=40)
    auth = make_auth(idp, clock, client_id="short", renew_before=60)
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        clock.advance(19)
        client.get(api.url)
        assert token_requests(idp) == 1  # not renewed on every request although 40 < 60
        clock.advance(1)
        client.get(api.url)
        assert token_requests(idp) == 2


def test_hundred_threads_at_renewal_time_make_one_token_request(
    idp: IssuerServer, api: Api, clock: Clock
) -> None:
    auth = make_auth(idp, clock)
    with httpx.Client(auth=auth, limits=httpx.Limits(max_connections=200)) as client:
        client.get(api.url)
        old = api.tokens()[0]
        clock.advance(301)  # the cached token has expired
        idp.token_delay = 0.2  # the fetch takes long enough for everyone to pile up behind it
        barrier = threading.Barrier(100)
        statuses: list[int] = []

        def call() -> None:
            barrier.wait()
            statuses.append(client.get(api.url).status_code)

        threads = [threading.Thread(target=call) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 100
    assert token_requests(idp) == 2
    later = api.tokens()[1:]
    assert len(later) == 100
    assert old not in later
    assert len(set(later)) == 1


async def test_hundred_tasks_at_renewal_time_make_one_token_request(
    idp: IssuerServer, api: Api, clock: Clock
) -> None:
    auth = make_auth(idp, clock)
    async with httpx.AsyncClient(auth=auth, limits=httpx.Limits(max_connections=200)) as client:
        await client.get(api.url)
        old = api.tokens()[0]
        clock.advance(301)
        idp.token_delay = 0.2
        responses = await asyncio.gather(*(client.get(api.url) for _ in range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert token_requests(idp) == 2
    later = api.tokens()[1:]
    assert old not in later
    assert len(set(later)) == 1


async def test_threads_and_tasks_share_one_flight(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)
    idp.token_delay = 0.3
    sync_client = httpx.Client(auth=auth)
    try:
        async with httpx.AsyncClient(auth=auth) as async_client:
            threads = [threading.Thread(target=sync_client.get, args=(api.url,)) for _ in range(20)]
            for thread in threads:
                thread.start()
            responses = await asyncio.gather(*(async_client.get(api.url) for _ in range(20)))
            for thread in threads:
                await asyncio.to_thread(thread.join)
    finally:
        sync_client.close()  # noqa: ASYNC212 (nothing in flight any more)
    assert all(r.status_code == 200 for r in responses)
    assert token_requests(idp) == 1
    assert len(api.seen) == 40
    assert len(set(api.tokens())) == 1


async def test_a_cancelled_leader_hands_the_flight_over(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)
    idp.token_delay = 0.3
    async with httpx.AsyncClient(auth=auth) as client:
        leader = asyncio.create_task(client.get(api.url))
        for _ in range(500):  # until the leader's token request has reached the issuer
            if token_requests(idp) == 1:
                break
            await asyncio.sleep(0.01)
        followers = [asyncio.create_task(client.get(api.url)) for _ in range(5)]
        await asyncio.sleep(0.05)
        leader.cancel()
        responses = await asyncio.gather(*followers)
    assert [r.status_code for r in responses] == [200] * 5
    assert token_requests(idp) == 2  # the abandoned fetch, then one follower's


# -- 401: renew once and replay once --------------------------------------------------------------


def test_401_renews_and_replays_once(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        refused = api.tokens()[0]
        api.answer = lambda token: 401 if token == refused else 200  # the API's keys rotated
        response = client.post(api.url + "/orders", json={"n": 1})
    assert response.status_code == 200
    assert len(response.history) == 1
    assert response.history[0].status_code == 401
    (_, _, t1, b1), (_, _, t2, b2) = api.seen[1:]
    assert t1 == refused != t2
    assert b1 == b2 == b'{"n":1}'
    assert token_requests(idp) == 2


async def test_second_401_goes_back_to_the_caller(idp: IssuerServer, api: Api, clock: Clock) -> None:
    api.answer = lambda token: 401
    async with httpx.AsyncClient(auth=make_auth(idp, clock)) as client:
        response = await client.get(api.url)
    assert response.status_code == 401
    assert len(api.seen) == 2
    assert token_requests(idp) == 2


def test_streamed_body_is_not_replayed(idp: IssuerServer, api: Api, clock: Clock) -> None:
    api.answer = lambda token: 401
    with httpx.Client(auth=make_auth(idp, clock)) as client:
        response = client.post(api.url, content=iter([b"chunk"]))
    assert response.status_code == 401
    assert len(api.seen) == 1
    assert token_requests(idp) == 1


def test_concurrent_401s_renew_once(idp: IssuerServer, api: Api, clock: Clock) -> None:
    auth = make_auth(idp, clock)
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        refused = api.tokens()[0]
        api.answer = lambda token: 401 if token == refused else 200
        idp.token_delay = 0.1
        barrier = threading.Barrier(20)
        statuses: list[int] = []

        def call() -> None:
            barrier.wait()
            statuses.append(client.get(api.url).status_code)

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 20
    assert token_requests(idp) == 2


def test_other_statuses_can_trigger_the_retry(idp: IssuerServer, api: Api, clock: Clock) -> None:
    # Placewise answers 460 "Member not authorized" for an expired access token.
    calls = iter([460, 200])
    api.answer = lambda token: next(calls)
    with httpx.Client(auth=make_auth(idp, clock, retry_statuses=(401, 460))) as client:
        assert client.get(api.url).status_code == 200
    assert token_requests(idp) == 2


# -- refresh tokens -------------------------------------------------------------------------------


def test_refresh_grant_with_rotation(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.add_client("refreshing", SECRET, refresh_tokens=True)
    auth = make_auth(idp, clock, client_id="refreshing")
    slot = next(iter(auth.manager))
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        first_refresh = slot.refresh_token
        clock.advance(241)
        client.get(api.url)
        second_refresh = slot.refresh_token
        clock.advance(241)
        client.get(api.url)
    assert first_refresh
    assert second_refresh
    assert first_refresh != second_refresh != slot.refresh_token
    assert idp.tokens.grants == {"client_credentials": 1, "refresh_token": 2}
    assert len(set(api.tokens())) == 3
    assert idp.tokens.refresh_tokens() == 1  # each rotation spent the previous one


@pytest.mark.parametrize("shape", ["rfc6749", "placewise"])
def test_refused_refresh_token_falls_back_to_client_credentials(api: Api, clock: Clock, shape: str) -> None:
    with fast_server(clock, error_shape=shape) as idp:
        idp.add_client("worker", SECRET, refresh_tokens=True)
        auth = make_auth(idp, clock)
        slot = next(iter(auth.manager))
        with httpx.Client(auth=auth) as client:
            client.get(api.url)
            revoked = slot.refresh_token
            assert revoked is not None
            idp.revoke(revoked)
            clock.advance(241)
            assert client.get(api.url).status_code == 200
        assert idp.tokens.grants == {"client_credentials": 2}
        assert slot.refresh_token not in (None, revoked)
        assert token_requests(idp) == 3


def test_refresh_only_session_fails_clearly_when_revoked(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.add_user("member", "pin-1234", scopes=["offers:read"])
    form = {"grant_type": "password", "username": "member", "password": "pin-1234"}
    issued = httpx.post(idp.token_url, data=form, auth=("worker", SECRET)).json()
    refresh = issued["refresh_token"]
    idp.revoke(refresh)
    creds = Credentials(
        idp.token_url, "worker", client_secret=SECRET, grant="refresh_token", refresh_token=refresh
    )
    with httpx.Client(auth=ClientCredentialsAuth(creds, clock=clock)) as client:
        with pytest.raises(InvalidRefreshToken) as info:
            client.get(api.url)
        with pytest.raises(InvalidRefreshToken):
            client.get(api.url)  # no second request: nothing can renew a dead session
    assert "invalid_grant" in str(info.value)
    assert idp.token_url in str(info.value)
    assert refresh not in str(info.value)
    assert SECRET not in str(info.value)
    assert token_requests(idp) == 2
    assert api.seen == []


def test_password_grant(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.add_user("integration", "pw-42", scopes=["systems:read"])
    auth = make_auth(idp, clock, grant="password", username="integration", password="pw-42")
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        clock.advance(241)
        client.get(api.url)
    assert claims(api.tokens()[0] or "")["sub"] == "integration"
    assert idp.tokens.grants == {"password": 1, "refresh_token": 1}


# -- token endpoint failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "error", "description"),
    [
        ("rfc6749", "invalid_client", "client authentication failed"),
        ("placepoint", "401", "client authentication failed"),
        ("placewise", "client authentication failed", ""),
    ],
)
def test_refused_credentials_raise_a_clear_error(
    api: Api, clock: Clock, shape: str, error: str, description: str
) -> None:
    with fast_server(clock, error_shape=shape) as idp:
        idp.add_client("worker", "the-real-secret")
        auth = make_auth(idp, clock)  # sends SECRET, which is wrong
        with httpx.Client(auth=auth) as client, pytest.raises(TokenEndpointError) as info:
            client.get(api.url)
    exc = info.value
    assert (exc.status, exc.error, exc.description) == (401, error, description)
    assert idp.token_url in str(exc)
    assert "HTTP 401" in str(exc)
    assert SECRET not in f"{exc} {exc!r}"
    assert api.seen == []


def test_echoed_secret_is_scrubbed_from_errors(api: Api, clock: Clock) -> None:
    api.answer = lambda token: 400
    creds = Credentials(api.url + "/token", "id", client_secret=SECRET)
    with (
        httpx.Client(auth=ClientCredentialsAuth(creds, clock=clock)) as client,
        pytest.raises(TokenEndpointError) as info,
    ):
        client.get(api.url)
    assert info.value.status == 400
    assert SECRET not in str(info.value)


def test_5xx_retried_with_backoff_and_jitter(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.fail_token_requests(TokenFault(500), TokenFault(503), TokenFault(429))
    sleeps = Sleeps(clock)
    auth = make_auth(idp, clock, sleeps=sleeps, jitter=lambda: 0.0, retry=RetryPolicy(base=0.5))
    with httpx.Client(auth=auth) as client:
        assert client.get(api.url).status_code == 200
    assert sleeps.calls == [0.25, 0.5, 1.0]  # 0.5 * 2**n, halved by the lowest jitter
    assert token_requests(idp) == 4


def test_jitter_spreads_the_waits(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.fail_token_requests(TokenFault(502))
    sleeps = Sleeps(clock)
    auth = make_auth(idp, clock, sleeps=sleeps, jitter=lambda: 0.999, retry=RetryPolicy(base=2.0))
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
    assert 1.99 < sleeps.calls[0] < 2.0


def test_retries_are_bounded_in_count(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.fail_token_requests(*[TokenFault(500)] * 10)
    sleeps = Sleeps(clock)
    auth = make_auth(idp, clock, sleeps=sleeps, retry=RetryPolicy(attempts=3))
    with httpx.Client(auth=auth) as client, pytest.raises(TokenEndpointUnavailable) as info:
        client.get(api.url)
    assert info.value.attempts == 3
    assert "HTTP 500" in str(info.value)
    assert token_requests(idp) == 3
    assert len(sleeps.calls) == 2
    assert api.seen == []


async def test_retries_are_bounded_in_total_time(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.fail_token_requests(*[TokenFault(503)] * 10)
    sleeps = Sleeps(clock)
    auth = make_auth(
        idp, clock, sleeps=sleeps, jitter=lambda: 0.0, retry=RetryPolicy(attempts=10, base=1, total=4)
    )
    async with httpx.AsyncClient(auth=auth) as client:
        with pytest.raises(TokenEndpointUnavailable) as info:
            await client.get(api.url)
    assert sleeps.calls == [0.5, 1.0, 2.0]  # the next (4.0) would end past 4 s
    assert info.value.attempts == 4


def test_timeouts_and_dropped_connections_are_retried(idp: IssuerServer, api: Api, clock: Clock) -> None:
    idp.fail_token_requests(TokenFault(200, delay=2.0), TokenFault(drop=True))
    sleeps = Sleeps(clock)
    auth = make_auth(idp, clock, sleeps=sleeps, retry=RetryPolicy(timeout=0.2))
    with httpx.Client(auth=auth) as client:
        assert client.get(api.url).status_code == 200
    assert len(sleeps.calls) == 2
    assert token_requests(idp) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"token_type": "Bearer", "expires_in": 60}', "no access_token"),
        (
            b'{"access_token": "abc", "token_type": "Bearer", "expires_in": "soon"}',
            "expires_in is not a number",
        ),
        (
            b'{"access_token": "abc", "token_type": "Bearer", "expires_in": true}',
            "expires_in is not a number",
        ),
        (b'{"access_token": "abc", "token_type": "Bearer", "expires_in": -5}', "not positive"),
        (b'{"access_token": "abc", "token_type": "mac", "expires_in": 60}', "token_type is mac"),
        (b'{"access_token": "abc", "expires_in": 60}', "token_type is missing"),
        (b'{"access_token": "a\\nb", "token_type": "Bearer"}', "cannot be sent"),
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_malformed_token_responses(
    idp: IssuerServer, api: Api, clock: Clock, body: bytes, message: str
) -> None:
    idp.fail_token_requests(TokenFault(200, body=body))
    with (
        httpx.Client(auth=make_auth(idp, clock)) as client,
        pytest.raises(TokenResponseError, match=message) as info,
    ):
        client.get(api.url)
    assert idp.token_url in str(info.value)
    assert api.seen == []


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
def test_token_type_in_any_case_and_numeric_string_lifetime(
    idp: IssuerServer, api: Api, clock: Clock, token_type: str
) -> None:
    body = {"access_token": "opaque-token", "token_type": token_type, "expires_in": "86399", "scope": ""}
    idp.fail_token_requests(TokenFault(200, body=json.dumps(body).encode()))
    auth = make_auth(idp, clock)
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        clock.advance(86399 - 61)
        client.get(api.url)
    assert api.tokens() == ["opaque-token", "opaque-token"]
    assert token_requests(idp) == 1


# -- nothing secret leaks ---------------------------------------------------------------------------


def test_no_token_or_secret_in_logs_or_reprs(
    idp: IssuerServer, api: Api, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    idp.add_client("refreshing", SECRET, refresh_tokens=True)
    auth = make_auth(idp, clock, client_id="refreshing")
    slot = next(iter(auth.manager))
    idp.fail_token_requests(TokenFault(500))
    with httpx.Client(auth=auth) as client:
        client.get(api.url)
        refused = api.tokens()[0]
        api.answer = lambda token: 401 if token == refused else 200
        client.get(api.url)
        assert slot.refresh_token is not None
        idp.revoke(slot.refresh_token)
        clock.advance(241)
        client.get(api.url)
    secrets = {SECRET, *(t for t in api.tokens() if t)}
    text = (
        caplog.text + repr(auth) + repr(auth.manager) + repr(slot) + repr(slot.token) + repr(slot.credentials)
    )
    assert caplog.records, "the flow logs what it does"
    for secret in secrets:
        assert secret not in text
    assert fingerprint(refused or "") in caplog.text
    assert f"fp:{fingerprint(SECRET)}" in repr(slot.credentials)


def test_token_request_form_and_reprs_hide_secrets() -> None:
    creds = Credentials(
        "https://idp.example/token?tenant=1",
        "id",
        client_secret="client-pw",
        grant="password",
        username="ops",
        password="user-pw",
        scope=["a", "b"],
        resource="https://api.example/",
        refresh_token="refresh-value",
        extra={"tenant": "t1"},
    )
    assert creds.grant_form(None) == {
        "grant_type": "password",
        "username": "ops",
        "password": "user-pw",
        "scope": "a b",
        "resource": "https://api.example/",
        "tenant": "t1",
    }
    form = creds.grant_form("refresh-value")
    assert form["grant_type"] == "refresh_token"
    assert "password" not in form
    headers: dict[str, str] = {}
    assert creds.authenticate(form, headers) == {"client-pw", "user-pw", "refresh-value"}
    assert form["client_secret"] == "client-pw"
    assert headers == {}
    shown = repr(creds)
    for secret in ("client-pw", "user-pw", "refresh-value"):
        assert secret not in shown
    assert creds.endpoint == "https://idp.example/token"
