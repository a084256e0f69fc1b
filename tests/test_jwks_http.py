"""Fetching and caching an issuer's keys over real HTTP (a dev IssuerServer on 127.0.0.1).

Every test counts the requests the server received and moves an injected clock instead of
sleeping; the server's ``delay`` is only used to make fetches slow (timeouts, single-flight).
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from conftest import Clock
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, RSAKey

from gatekeeper import AuthError, FetchPolicy, Issuer, Verifier
from gatekeeper.devserver import JWKS_PATH, IssuerServer
from gatekeeper.fetch import AsyncFetcher
from gatekeeper.issuer import DevIssuer
from gatekeeper.keystore import KeyStore

OIDC_PATH = "/.well-known/openid-configuration"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def serve(clock: Clock, issuer: str | None = None) -> IssuerServer:
    # ES256 keys are quick to make (the server's default issuer would make an RSA key); the
    # issuer mints with the test's clock and, unless told otherwise, names the server's URL.
    server = IssuerServer(DevIssuer(algorithms=("ES256",), clock=clock))
    server.issuer.issuer = issuer or server.url
    return server.start()


@pytest.fixture
def server(clock: Clock) -> Iterator[IssuerServer]:
    srv = serve(clock)
    yield srv
    srv.stop()


@pytest.fixture
def other(clock: Clock) -> Iterator[IssuerServer]:
    srv = serve(clock)
    yield srv
    srv.stop()


POLICY = FetchPolicy(
    default_ttl=60,
    min_ttl=30,
    max_ttl=3600,
    unknown_kid_cooldown=10,
    retry_interval=30,
    stale_grace=300,
    timeout=2.0,  # patient: background fetches compete with the test for a busy machine
    max_bytes=8192,
)
#: For tests of the timeout itself: the server's delay is well above it.
SHORT = replace(POLICY, timeout=0.5)
#: For tests that make fetches slow on purpose: a timeout well above the server's delay.
PATIENT = replace(POLICY, timeout=5)


def make(server: IssuerServer, clock: Clock, policy: FetchPolicy = POLICY, **options: Any) -> Verifier:
    return Verifier(
        issuer=server.url, jwks_url=server.jwks_url, audience="api", clock=clock, fetch=policy, **options
    )


@pytest.fixture
def verifier(server: IssuerServer, clock: Clock) -> Iterator[Verifier]:
    v = make(server, clock)
    yield v
    v.close()


def status(v: Verifier, index: int = 0) -> dict[str, Any]:
    return v.status()[index]


def fails(kind: str, call: Callable[[], Any]) -> AuthError:
    with pytest.raises(AuthError) as info:
        call()
    assert info.value.kind == kind, info.value
    return info.value


async def fails_async(kind: str, call: Callable[[], Any]) -> AuthError:
    with pytest.raises(AuthError) as info:
        await call()
    assert info.value.kind == kind, info.value
    return info.value


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll for a background fetch to land (never used to wait for a clock-driven expiry)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


async def wait_for_async(condition: Callable[[], bool]) -> None:
    for _ in range(500):  # 5 s
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("condition not reached")


# -- caching and freshness ------------------------------------------------------------------------


def test_key_set_is_fetched_once_and_cached_for_max_age(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    server.headers = {"Cache-Control": "public, max-age=120"}
    for _ in range(20):  # distinct tokens: the token cache cannot help
        assert verifier.verify(server.issuer.mint())["iss"] == server.url
    assert server.requests() == 1
    clock.advance(119)
    verifier.verify(server.issuer.mint())
    assert server.requests() == 1
    clock.advance(1)
    verifier.verify(server.issuer.mint())  # stale: answered at once, refreshed in the background
    wait_for(lambda: server.requests() == 2 and status(verifier)["fresh_for"] == 120)


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [("max-age=200", 200), ("max-age=3", 30), ("max-age=86400", 3600), (None, 60), ("no-store", 30)],
)
def test_freshness_is_max_age_clamped_or_the_default(
    server: IssuerServer, verifier: Verifier, clock: Clock, cache_control: str | None, ttl: float
) -> None:
    if cache_control is not None:
        server.headers = {"Cache-Control": cache_control}
    verifier.verify(server.issuer.mint())
    assert status(verifier)["fresh_for"] == ttl
    clock.advance(ttl - 1)
    verifier.verify(server.issuer.mint())
    assert server.requests() == 1
    clock.advance(1)
    verifier.verify(server.issuer.mint())
    wait_for(lambda: server.requests() == 2 and status(verifier)["fresh_for"] == ttl)


@pytest.mark.anyio
async def test_refresh_ahead_runs_in_the_background(server: IssuerServer, clock: Clock) -> None:
    server.headers = {"Cache-Control": "max-age=100"}
    v = make(server, clock, FetchPolicy(refresh_ahead=20, retry_interval=5, timeout=5))
    try:
        await v.verify_async(server.issuer.mint())
        clock.advance(85)
        server.delay = 0.5
        # The answer does not wait for the fetch: the old keys are still fresh for 15 s.
        await v.verify_async(server.issuer.mint())
        assert status(v)["fresh_for"] == 15
        for _ in range(20):
            await v.verify_async(server.issuer.mint())
        await wait_for_async(lambda: status(v)["fresh_for"] == 100)
        assert server.requests() == 2
    finally:
        await v.aclose()


def test_refresh_ahead_in_a_background_thread_is_started_once(server: IssuerServer, clock: Clock) -> None:
    server.headers = {"Cache-Control": "max-age=100"}
    v = make(server, clock, FetchPolicy(refresh_ahead=20, retry_interval=5, timeout=5))
    try:
        v.verify(server.issuer.mint())
        clock.advance(85)
        server.delay = 0.5
        v.verify(server.issuer.mint())
        assert status(v)["fresh_for"] == 15
        for _ in range(20):
            v.verify(server.issuer.mint())
        wait_for(lambda: status(v)["fresh_for"] == 100)
        time.sleep(0.2)  # a duplicate fetch, queued behind the first, would have arrived by now
        assert server.requests() == 2
    finally:
        v.close()


def test_no_refresh_ahead_unless_asked(server: IssuerServer, verifier: Verifier, clock: Clock) -> None:
    verifier.verify(server.issuer.mint())
    clock.advance(59)
    verifier.verify(server.issuer.mint())
    time.sleep(0.05)
    assert server.requests() == 1


# -- unknown kid, rotation, removal -------------------------------------------------------------------


def test_new_key_verifies_after_one_refetch_and_unknown_kids_are_rate_limited(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    verifier.verify(server.issuer.mint())
    clock.advance(10)
    new = server.issuer.add_key("ES256")
    assert verifier.verify(server.issuer.mint()).kid == new  # the newest key signs
    assert server.requests() == 2
    # Made-up kids within the cooldown cost nothing.
    for i in range(50):
        fails("invalid_token", partial(verifier.verify, server.issuer.mint(headers={"kid": f"x{i}"})))
    assert server.requests() == 2
    clock.advance(10)
    for i in range(50):
        fails("invalid_token", partial(verifier.verify, server.issuer.mint(headers={"kid": f"y{i}"})))
    assert server.requests() == 3
    # A key added within the cooldown waits for it.
    newer = server.issuer.add_key("ES256")
    token = server.issuer.mint(kid=newer)
    fails("invalid_token", lambda: verifier.verify(token))
    clock.advance(10)
    assert verifier.verify(token).kid == newer
    assert server.requests() == 4


def test_rotation_keeps_the_cached_tokens_of_keys_that_stay(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    token = server.issuer.mint()
    claims = verifier.verify(token)
    assert verifier.verify(token) is claims  # served from the token cache
    clock.advance(10)
    new = server.issuer.add_key("ES256")
    assert verifier.verify(server.issuer.mint()).kid == new  # unknown kid: refetch
    assert server.requests() == 2
    assert verifier.verify(token) is claims  # its key stayed: still the cached entry


def test_a_key_that_leaves_the_set_stops_verifying_cached_tokens_at_once(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    leaving = server.issuer.add_key("ES256", kid="leaving")
    staying = server.issuer.add_key("ES256", kid="staying")
    doomed, kept = server.issuer.mint(kid=leaving), server.issuer.mint(kid=staying)
    claims_kept = verifier.verify(kept)
    verifier.verify(doomed)
    assert verifier.verify(doomed).kid == "leaving"  # cached
    server.issuer.remove_key(leaving)
    clock.advance(10)
    newcomer = server.issuer.add_key("ES256")
    verifier.verify(server.issuer.mint(kid=newcomer))  # an unknown kid: refetch
    assert server.requests() == 2
    assert status(verifier)["kids"].count("leaving") == 0
    fails("invalid_token", lambda: verifier.verify(doomed))
    assert verifier.verify(kept) is claims_kept


def test_a_removed_key_stops_verifying_cached_tokens_once_the_background_refresh_lands(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    leaving = server.issuer.add_key("ES256", kid="leaving")
    token = server.issuer.mint(kid=leaving, expires_in=3600)
    claims = verifier.verify(token)
    server.issuer.remove_key(leaving)
    clock.advance(60)  # the key set is now stale; nothing but this cached token comes in
    # Stale-while-revalidate: still the cached answer, at once, while the refresh runs.
    assert verifier.verify(token) is claims
    wait_for(lambda: "leaving" not in status(verifier)["kids"])
    assert server.requests() == 2
    with pytest.raises(AuthError):
        verifier.verify(token)


@pytest.mark.anyio
@pytest.mark.parametrize("start", ["cold", "unknown kid"])
async def test_200_concurrent_verify_async_share_one_fetch(
    server: IssuerServer, clock: Clock, start: str
) -> None:
    v = make(server, clock, PATIENT)
    try:
        if start == "unknown kid":
            await v.verify_async(server.issuer.mint())
            clock.advance(10)
            server.issuer.add_key("ES256")
        before = server.requests()
        tokens = [server.issuer.mint() for _ in range(200)]
        server.delay = 0.2
        results: list[Any] = [None] * 200

        async def one(i: int) -> None:
            results[i] = await v.verify_async(tokens[i])

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert all(r is not None and r["iss"] == server.url for r in results)
        assert server.requests() == before + 1
    finally:
        await v.aclose()


@pytest.mark.anyio
async def test_a_caller_arriving_during_an_unknown_kid_fetch_joins_it(
    server: IssuerServer, clock: Clock
) -> None:
    v = make(server, clock, PATIENT)
    try:
        await v.verify_async(server.issuer.mint())
        clock.advance(10)
        server.issuer.add_key("ES256")
        first, late = server.issuer.mint(), server.issuer.mint()
        server.delay = 0.3
        async with anyio.create_task_group() as tg:
            tg.start_soon(v.verify_async, first)
            await wait_for_async(lambda: server.requests() == 2)  # the fetch is under way
            # Within the cooldown of that fetch: it must wait for it, not answer "unknown key".
            assert (await v.verify_async(late))["iss"] == server.url
        assert server.requests() == 2
    finally:
        await v.aclose()


@pytest.mark.parametrize("start", ["cold", "unknown kid"])
def test_threads_share_one_fetch(server: IssuerServer, clock: Clock, start: str) -> None:
    verifier = make(server, clock, PATIENT)
    if start == "unknown kid":
        verifier.verify(server.issuer.mint())
        clock.advance(10)
        server.issuer.add_key("ES256")
    before = server.requests()
    tokens = [server.issuer.mint() for _ in range(32)]
    server.delay = 0.2
    barrier = threading.Barrier(32)
    results: list[Any] = [None] * 32

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = verifier.verify(tokens[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verifier.close()
    assert all(not isinstance(r, Exception) and r["iss"] == server.url for r in results), results
    assert server.requests() == before + 1


# -- stale-if-error ---------------------------------------------------------------------------------


def _big_jwks(server: IssuerServer) -> bytes:
    return json.dumps(server.issuer.jwks() | {"padding": "x" * 20_000}).encode()


def _gzip_bomb(server: IssuerServer) -> None:
    # Small on the wire (Content-Length passes), large once decoded: the byte count must catch it.
    server.body = gzip.compress(_big_jwks(server))
    server.headers = {"Content-Encoding": "gzip"}
    assert len(server.body) < POLICY.max_bytes


def knobs(**values: Any) -> Callable[[IssuerServer], None]:
    """Set the server's JWKS knobs (status, delay, body, headers, drop)."""

    def turn(server: IssuerServer) -> None:
        for name, value in values.items():
            setattr(server, name, value)

    return turn


def _oversize(server: IssuerServer) -> None:
    server.body = _big_jwks(server)


OUTAGES: dict[str, tuple[Callable[[IssuerServer], None], str]] = {
    "500": (knobs(status=500), "HTTP 500"),
    "503 with html": (knobs(status=503, body=b"<html>maintenance</html>"), "HTTP 503"),
    "timeout": (knobs(delay=3.0), "deadline exceeded|ReadTimeout"),
    "dropped connection": (knobs(drop=True), "RemoteProtocolError"),
    "garbage body": (knobs(body=b"\x00\x01garbage\xff"), "not a JWK Set"),
    "html login page": (
        knobs(body=b"<html>sign in</html>", headers={"Content-Type": "text/html"}),
        "not a JWK Set",
    ),
    "json but not a jwks": (knobs(body=b'{"keys": "all of them"}'), "not a JWK Set"),
    "empty key set": (knobs(body=b'{"keys": []}'), "no usable key"),
    "oversize body": (_oversize, "larger than 8192"),
    "oversize once decoded": (_gzip_bomb, "larger than 8192"),
}


def outage_policy(outage: str) -> FetchPolicy:
    # Only the timeout outage needs the short timeout; the others get a patient one, so that a
    # busy machine (the server runs in this process, its answer competes for the GIL with the
    # background fetch) cannot turn their error into a ReadTimeout.
    return SHORT if outage == "timeout" else PATIENT


@pytest.mark.anyio
@pytest.mark.parametrize("outage", OUTAGES)
async def test_stale_if_error_async(server: IssuerServer, clock: Clock, outage: str) -> None:
    breaks, error = OUTAGES[outage]
    v = make(server, clock, outage_policy(outage))
    try:
        await v.verify_async(server.issuer.mint())
        kids = status(v)["kids"]
        breaks(server)
        clock.advance(60)
        for _ in range(20):  # keeps verifying with the last good keys; one attempt per interval
            assert (await v.verify_async(server.issuer.mint()))["iss"] == server.url
        await wait_for_async(lambda: status(v)["last_error"] is not None)  # the background refresh
        st = status(v)
        assert st["usable"]
        assert st["kids"] == kids
        assert st["last_error"] is not None
        assert any(e in st["last_error"] for e in error.split("|")), st["last_error"]
        assert server.requests() == 2
    finally:
        await v.aclose()


@pytest.mark.parametrize("outage", OUTAGES)
def test_stale_if_error_sync(server: IssuerServer, clock: Clock, outage: str) -> None:
    breaks, error = OUTAGES[outage]
    verifier = make(server, clock, outage_policy(outage))
    try:
        verifier.verify(server.issuer.mint())
        breaks(server)
        clock.advance(60)
        for _ in range(20):
            assert verifier.verify(server.issuer.mint())["iss"] == server.url
        wait_for(lambda: status(verifier)["last_error"] is not None)  # the background refresh
        st = status(verifier)
        assert st["usable"]
        assert st["last_error"] is not None
        assert any(e in st["last_error"] for e in error.split("|")), st["last_error"]
        assert server.requests() == 2
    finally:
        verifier.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_refused_connection_serves_stale_keys_then_keys_unavailable(clock: Clock) -> None:
    server = serve(clock)
    v = make(server, clock)
    try:
        v.verify(server.issuer.mint())
        server.stop()
        clock.advance(60)
        assert v.verify(server.issuer.mint())["iss"] == server.url
        wait_for(lambda: status(v)["last_error"] is not None)
        assert "ConnectError" in status(v)["last_error"]
        clock.advance(300)  # past the grace
        err = fails("keys_unavailable", lambda: v.verify(server.issuer.mint()))
        assert err.retry_after == 30
    finally:
        v.close()
        server.stop()


def test_refused_connection_with_no_keys_is_keys_unavailable(clock: Clock) -> None:
    dev = DevIssuer("https://nowhere.example", algorithms=("ES256",), clock=clock)
    v = Verifier(
        issuer=dev.issuer,
        jwks_url=f"http://127.0.0.1:{free_port()}/jwks",
        audience="api",
        clock=clock,
        fetch=POLICY,
    )
    try:
        err = fails("keys_unavailable", lambda: v.verify(dev.mint()))
        assert err.retry_after == 30
        assert err.issuer == dev.issuer
        assert "ConnectError" in status(v)["last_error"]
    finally:
        v.close()


def test_an_outage_costs_one_request_per_retry_interval(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    verifier.verify(server.issuer.mint())
    server.status = 500
    clock.advance(60)
    for _ in range(50):
        verifier.verify(server.issuer.mint())
    wait_for(lambda: status(verifier)["last_error"] is not None)
    assert server.requests() == 2
    clock.advance(29)
    for _ in range(50):
        verifier.verify(server.issuer.mint())
    assert server.requests() == 2
    clock.advance(1)
    for _ in range(50):
        verifier.verify(server.issuer.mint())
    wait_for(lambda: server.requests() == 3)  # a background retry
    # Past the grace: no usable keys, keys_unavailable with a Retry-After, still rate-limited.
    clock.advance(300)
    err = fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint()))
    assert err.retry_after == 30
    assert server.requests() == 4
    clock.advance(10)
    for _ in range(50):
        err = fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint()))
    assert err.retry_after == 20
    assert server.requests() == 4
    assert not status(verifier)["usable"]
    # Recovery.
    server.status = 200
    clock.advance(20)
    verifier.verify(server.issuer.mint())
    assert server.requests() == 5
    assert status(verifier)["last_error"] is None
    assert status(verifier)["usable"]


def test_cold_start_outage_is_keys_unavailable_and_rate_limited(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    server.status = 502
    err = fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint()))
    assert err.retry_after == 30
    for _ in range(50):  # unknown kids too: the outage gate comes first
        fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint(headers={"kid": "k"})))
    clock.advance(15)
    for _ in range(50):
        fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint(headers={"kid": "k"})))
    assert server.requests() == 1
    server.status = 200
    clock.advance(15)
    verifier.verify(server.issuer.mint())
    assert server.requests() == 2


@pytest.mark.anyio
async def test_stale_keys_answer_without_waiting_for_a_slow_retry(server: IssuerServer, clock: Clock) -> None:
    v = make(server, clock, FetchPolicy(default_ttl=60, retry_interval=30, timeout=30))
    try:
        await v.verify_async(server.issuer.mint())
        server.status = 500
        clock.advance(60)
        await v.verify_async(server.issuer.mint())  # starts the failing refresh, quick
        await wait_for_async(lambda: status(v)["last_error"] == "HTTP 500")
        server.status, server.delay = 200, 10.0
        clock.advance(30)
        await v.verify_async(server.issuer.mint())
        # Answered by the stale keys while the retry (which will succeed, in 10 s) is under way:
        # had the call waited for it, the error would be gone.
        assert status(v)["last_error"] == "HTTP 500"
        await wait_for_async(lambda: server.requests() == 3)
    finally:
        await v.aclose()


def test_stale_keys_answer_without_waiting_for_a_slow_retry_sync(clock: Clock) -> None:
    server = serve(clock)
    v = make(server, clock, FetchPolicy(default_ttl=60, retry_interval=30, timeout=30))
    try:
        v.verify(server.issuer.mint())
        server.status = 500
        clock.advance(60)
        v.verify(server.issuer.mint())
        wait_for(lambda: status(v)["last_error"] == "HTTP 500")
        server.status, server.delay = 200, 10.0
        clock.advance(30)
        v.verify(server.issuer.mint())
        assert status(v)["last_error"] == "HTTP 500"  # the retry is still under way
        wait_for(lambda: server.requests() == 3)
    finally:
        server.stop()  # wakes the delayed request, so the background thread ends
        v.close()


# -- bounded fetch --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fetch_timeout_async(server: IssuerServer, clock: Clock) -> None:
    server.delay = 2.0  # the server would answer, but after the 0.5 s timeout
    v = make(server, clock, SHORT)
    try:
        err = await fails_async("keys_unavailable", lambda: v.verify_async(server.issuer.mint()))
        assert err.retry_after == 30
        assert "deadline exceeded" in status(v)["last_error"]
    finally:
        await v.aclose()


def test_fetch_timeout_sync(server: IssuerServer, clock: Clock) -> None:
    server.delay = 2.0
    verifier = make(server, clock, SHORT)
    try:
        fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint()))
        assert "Timeout" in status(verifier)["last_error"]
    finally:
        verifier.close()


@pytest.mark.anyio
@pytest.mark.parametrize("colour", ["sync", "async"])
async def test_building_the_http_client_is_not_part_of_the_fetch_timeout(
    server: IssuerServer, clock: Clock, monkeypatch: pytest.MonkeyPatch, colour: str
) -> None:
    # The first client loads the CA bundle (tens of ms, more on a busy machine): that must not
    # eat the fetch's budget, or the first fetch fails with no request sent.
    cls = httpx.Client if colour == "sync" else httpx.AsyncClient
    real = cls.__init__

    def slow(self: Any, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)
        real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", slow)
    v = make(server, clock, replace(POLICY, timeout=0.2))
    try:
        if colour == "sync":
            assert v.verify(server.issuer.mint())["iss"] == server.url
        else:
            assert (await v.verify_async(server.issuer.mint()))["iss"] == server.url
        assert server.requests() == 1
    finally:
        await v.aclose()


@pytest.mark.parametrize("compressed", [False, True])
def test_fetch_size_limit(server: IssuerServer, verifier: Verifier, compressed: bool) -> None:
    if compressed:
        _gzip_bomb(server)
    else:
        server.body = _big_jwks(server)
    fails("keys_unavailable", lambda: verifier.verify(server.issuer.mint()))
    assert status(verifier)["last_error"] == "response larger than 8192 bytes"


def test_an_unparseable_jwks_url_is_keys_unavailable_not_a_crash(clock: Clock) -> None:
    dev = DevIssuer("https://odd.example", algorithms=("ES256",), clock=clock)
    v = Verifier(issuer=dev.issuer, jwks_url="http://[::1/jwks", audience="api", clock=clock, fetch=POLICY)
    try:
        fails("keys_unavailable", lambda: v.verify(dev.mint()))
        assert "InvalidURL" in status(v)["last_error"]
    finally:
        v.close()


@pytest.mark.anyio
async def test_an_unparseable_jwks_url_is_keys_unavailable_not_a_crash_async(clock: Clock) -> None:
    dev = DevIssuer("https://odd.example", algorithms=("ES256",), clock=clock)
    v = Verifier(issuer=dev.issuer, jwks_url="http://[::1/jwks", audience="api", clock=clock, fetch=POLICY)
    try:
        await fails_async("keys_unavailable", lambda: v.verify_async(dev.mint()))
    finally:
        await v.aclose()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _off_curve() -> dict[str, Any]:
    jwk = ECKey.generate_key("P-256").as_dict(private=False, kid="off-curve")
    y = bytearray(base64.urlsafe_b64decode(str(jwk["y"]) + "=="))
    y[-1] ^= 1
    return jwk | {"y": _b64(bytes(y))}


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # joserfc on the 1024-bit key
def test_bad_keys_are_skipped_one_at_a_time_and_reported(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    bad = [
        {"kty": "XYZ", "kid": "unknown-kty", "x": "AQAB"},
        ECKey.generate_key("P-256").as_dict(private=True, kid="private"),
        RSAKey.import_key(weak.public_key()).as_dict(private=False, kid="weak-rsa"),
        _off_curve(),
        {"kty": "oct", "kid": "symmetric", "k": _b64(b"s" * 32)},
        "not even an object",
    ]
    good = server.issuer.jwks()["keys"]
    server.body = json.dumps({"keys": [bad[0], bad[1], *good, *bad[2:]]}).encode()
    token = server.issuer.mint()
    assert verifier.verify(token)["sub"] == "client-123"
    st = status(verifier)
    assert st["kids"] == [k["kid"] for k in good]
    skipped = {s["kid"]: s["reason"] for s in st["skipped"]}
    assert set(skipped) == {"unknown-kty", "private", "weak-rsa", "off-curve", "symmetric", None}
    assert "private" in skipped["private"]
    assert "2048" in skipped["weak-rsa"]
    assert all(reason for reason in skipped.values())
    assert st["last_error"] is None


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_resolves_the_jwks_uri(server: IssuerServer, clock: Clock) -> None:
    v = Verifier(issuer=server.url, discovery=True, audience="api", clock=clock, fetch=POLICY)
    try:
        v.verify(server.issuer.mint())
        assert (server.requests(OIDC_PATH), server.requests(JWKS_PATH)) == (1, 1)
        assert status(v)["jwks_url"] == server.jwks_url
        clock.advance(60)
        v.verify(server.issuer.mint())
        wait_for(lambda: server.requests(JWKS_PATH) == 2)
        assert server.requests(OIDC_PATH) == 1
    finally:
        v.close()


@pytest.mark.anyio
async def test_discovery_naming_another_issuer_is_refused(clock: Clock) -> None:
    server = serve(clock, issuer="https://elsewhere.example")  # its metadata names that issuer
    v = Verifier(issuer=server.url, discovery=True, audience="api", clock=clock, fetch=POLICY)
    try:
        token = server.issuer.mint(claims={"iss": server.url})
        err = await fails_async("keys_unavailable", lambda: v.verify_async(token))
        assert err.retry_after == 30
        assert server.requests(OIDC_PATH) == 1
        assert server.requests(JWKS_PATH) == 0  # nothing fetched from its jwks_uri
        assert "another issuer" in status(v)["last_error"]
        assert status(v)["jwks_url"] is None
    finally:
        await v.aclose()
        server.stop()


@pytest.mark.parametrize("jwks_uri", ["http://[::1/jwks", "file:///etc/passwd", 17])
def test_discovery_with_an_unusable_jwks_uri_is_keys_unavailable(
    server: IssuerServer, clock: Clock, monkeypatch: pytest.MonkeyPatch, jwks_uri: object
) -> None:
    real = server.issuer.discovery
    monkeypatch.setattr(
        server.issuer, "discovery", lambda *a, **k: real(*a, **k) | {"jwks_uri": jwks_uri}, raising=True
    )
    v = Verifier(issuer=server.url, discovery=True, audience="api", clock=clock, fetch=POLICY)
    try:
        fails("keys_unavailable", lambda: v.verify(server.issuer.mint()))
        assert "jwks_uri" in status(v)["last_error"]
        assert server.requests(JWKS_PATH) == 0
    finally:
        v.close()


# -- ETag / 304 -----------------------------------------------------------------------------------


def test_304_not_modified_extends_freshness(server: IssuerServer, clock: Clock) -> None:
    sent: list[httpx.Headers] = []
    client = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.headers)]})
    v = make(server, clock, http_client=client)
    try:
        server.headers = {"ETag": '"v1"', "Cache-Control": "max-age=60"}
        token = server.issuer.mint()
        claims = v.verify(token)
        assert "if-none-match" not in sent[0]
        server.status = 304
        clock.advance(60)
        v.verify(server.issuer.mint())
        wait_for(lambda: status(v)["fresh_for"] == 60)
        assert server.requests() == 2
        assert sent[1]["if-none-match"] == '"v1"'
        st = status(v)
        assert st["fresh_for"] == 60
        assert st["last_error"] is None
        assert v.verify(token)["jti"] == claims["jti"]
        clock.advance(59)
        v.verify(server.issuer.mint())
        assert server.requests() == 2
        clock.advance(1)
        v.verify(server.issuer.mint())
        wait_for(lambda: server.requests() == 3)
    finally:
        v.close()
        client.close()


# -- several issuers ------------------------------------------------------------------------------


def two_issuers(a: IssuerServer, b: IssuerServer, clock: Clock) -> Verifier:
    return Verifier(
        issuers=[Issuer(s.url, jwks_url=s.jwks_url, audience="api", fetch=POLICY) for s in (a, b)],
        clock=clock,
    )


def test_keys_of_one_issuer_never_verify_the_others_tokens(
    server: IssuerServer, other: IssuerServer, clock: Clock
) -> None:
    v = two_issuers(server, other, clock)
    try:
        assert v.verify(server.issuer.mint()).issuer == server.url
        assert v.verify(other.issuer.mint()).issuer == other.url
        # Signed by the other issuer's key, claiming to be from the first one.
        forged = other.issuer.mint(claims={"iss": server.url})
        fails("invalid_token", lambda: v.verify(forged))
        # Even under a kid the first issuer does have.
        [first_kid] = status(v, 0)["kids"]
        other.issuer.add_key("ES256", kid=first_kid)
        forged = other.issuer.mint(kid=first_kid, claims={"iss": server.url})
        clock.advance(10)
        fails("invalid_token", lambda: v.verify(forged))
        assert other.requests() == 1  # nothing about the first issuer's tokens asked the other
    finally:
        v.close()


@pytest.mark.anyio
async def test_each_issuers_fetch_state_is_independent(
    server: IssuerServer, other: IssuerServer, clock: Clock
) -> None:
    v = two_issuers(server, other, clock)
    try:
        await v.verify_async(server.issuer.mint())
        await v.verify_async(other.issuer.mint())
        server.status = 500
        clock.advance(60)
        await v.verify_async(server.issuer.mint())  # stale keys, failing endpoint
        await v.verify_async(other.issuer.mint())  # stale keys, working endpoint
        await wait_for_async(lambda: v.status()[0]["last_error"] is not None)
        await wait_for_async(lambda: v.status()[1]["fresh_for"] == 60)
        first, second = v.status()
        assert first["last_error"] == "HTTP 500"
        assert second["last_error"] is None
        assert second["fresh_for"] == 60
        assert first["fresh_for"] == 0
        # An unknown-kid refetch at one issuer does not use up the other's cooldown.
        clock.advance(10)
        server.status = 200
        server.issuer.add_key("ES256")
        other.issuer.add_key("ES256")
        await v.verify_async(other.issuer.mint())
        assert (server.requests(), other.requests()) == (2, 3)
        fails_kid = server.issuer.mint()
        err = await fails_async("invalid_token", lambda: v.verify_async(fails_kid))
        assert err.issuer == server.url  # its own outage retry interval still holds
        clock.advance(20)
        await v.verify_async(fails_kid)
        assert server.requests() == 3
    finally:
        await v.aclose()


# -- the event loop -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_verify_async_does_not_block_the_event_loop(server: IssuerServer, clock: Clock) -> None:
    server.delay = 0.5
    v = make(server, clock, FetchPolicy(timeout=5))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await v.verify_async(server.issuer.mint())
            tg.cancel_scope.cancel()
        assert server.requests() == 1
        assert ticks >= 10  # a blocking fetch would have stopped the ticker for 0.5 s
    finally:
        await v.aclose()


# -- metrics hooks --------------------------------------------------------------------------------


def test_key_stores_count_fetches_and_stale_verifications(
    server: IssuerServer, other: IssuerServer, clock: Clock
) -> None:
    v = two_issuers(server, other, clock)
    try:
        stores = v.key_stores()
        assert list(stores) == [server.url, other.url]
        store = stores[server.url]
        assert store is v.key_stores()[server.url]  # the live stores, not copies
        server.headers = {"ETag": '"v1"'}
        v.verify(server.issuer.mint())
        v.verify(server.issuer.mint())
        assert store.fetch_counts == {"ok": 1, "not_modified": 0, "error": 0}
        assert store.stale_served == 0  # fresh keys
        server.status = 304
        clock.advance(60)
        v.verify(server.issuer.mint())  # stale: served, and refreshed in the background
        assert store.stale_served == 1
        wait_for(lambda: store.fetch_counts["not_modified"] == 1)
        v.verify(server.issuer.mint())
        assert store.stale_served == 1  # fresh again
        server.status = 500
        clock.advance(60)
        token = server.issuer.mint()
        v.verify(token)
        wait_for(lambda: store.fetch_counts["error"] == 1)
        v.verify(server.issuer.mint())
        assert store.stale_served == 3
        v.verify(token)  # a cache hit is not counted
        assert store.stale_served == 3
        assert store.fetch_counts == {"ok": 1, "not_modified": 1, "error": 1}
        assert stores[other.url].fetch_counts == {"ok": 0, "not_modified": 0, "error": 0}
        assert v.status()[0]["fetches"] == store.fetch_counts
        assert v.status()[0]["stale_served"] == 3
    finally:
        v.close()


@pytest.mark.anyio
async def test_a_refresh_that_has_just_finished_is_not_joined(server: IssuerServer, clock: Clock) -> None:
    # A refresh's task is done a loop turn before it leaves the fetcher's table (a done
    # callback). A caller looking for a new kid in that turn must fetch anew, not "join" the
    # finished refresh, which was made before the kid existed (seen as a flaky
    # test_each_issuers_fetch_state_is_independent: 1 run in 5).
    store = KeyStore(server.url, jwks_url=server.jwks_url, policy=POLICY)
    fetcher = AsyncFetcher(clock)
    try:
        fetcher.refresh_in_background(store)
        (task,) = fetcher._inflight.values()
        # One loop turn at a time: the check must run in the turn the task ends in (an event
        # or a wait on the task would wake after its done callbacks, the race gone).
        while not task.done():
            await anyio.lowlevel.checkpoint()
        assert store.keys is not None
        assert fetcher._inflight.get(store) is task  # (the turn in which the race happens)
        new_kid = server.issuer.add_key("ES256")
        await fetcher.refresh(store, kid=new_kid)
        assert server.requests() == 2
        assert store.keys.has_kid(new_kid)
    finally:
        await fetcher.aclose()
