"""A hanging issuer never becomes API latency (stale-while-revalidate), over a real loopback server.

The JWKS endpoint here is a :class:`~gatekeeper.devserver.IssuerServer`: it answers with the key
set until its ``hang`` fault is set, then holds every request, never answering (a stuck identity
provider, or a firewall that swallows packets). After warm-up and once the keys' freshness runs out (moved
with the injected clock), valid tokens, cached or not, sync or async, verify against the last
good keys without waiting while one refresh hangs in the background. Only a call with no usable
key (a cold start, an unknown kid) waits, and at most the fetch timeout.

The bounds asserted below are behaviour, not speed: "did not wait for the network" (a call ends
far below the fetch timeout) versus "waited the timeout". The speed target itself (under 50 ms)
is measured by benchmarks/hanging_issuer.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from conftest import Clock
from polling import eventually

import gatekeeper.verifier as verifier_module
from gatekeeper import AuthError, FetchPolicy, Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

ISSUER = "https://hanging.example"
TIMEOUT = 5.0
POLICY = FetchPolicy(default_ttl=60, min_ttl=30, retry_interval=5, stale_grace=3600, timeout=TIMEOUT)
#: Far below the fetch timeout: a call that took this long waited for something.
NO_WAIT = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def dev(clock: Clock) -> DevIssuer:
    return DevIssuer(ISSUER, algorithms=("ES256",), clock=clock)


@pytest.fixture
def endpoint(dev: DevIssuer) -> Iterator[IssuerServer]:
    with IssuerServer(dev) as server:
        server.headers = {"Cache-Control": "max-age=60"}
        yield server


def make(endpoint: IssuerServer, clock: Clock, policy: FetchPolicy = POLICY) -> Verifier:
    return Verifier(ISSUER, jwks_url=endpoint.jwks_url, audience="api", clock=clock, fetch=policy)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def count_signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = verifier_module.check_signature  # type: ignore[attr-defined]

    def counting(*args: Any) -> bool:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(verifier_module, "check_signature", counting)
    return calls


def test_sync_verifications_never_wait_for_a_hanging_issuer(
    endpoint: IssuerServer, dev: DevIssuer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = make(endpoint, clock)
    try:
        cached = dev.mint(expires_in=3600)
        claims = verifier.verify(cached)
        assert endpoint.requests() == 1
        endpoint.hang = True
        clock.advance(61)  # the keys' freshness has run out
        checks = count_signature_checks(monkeypatch)
        durations = []
        for _ in range(30):
            elapsed, result = timed(lambda: verifier.verify(cached))
            assert result is claims  # the cached entry, kept alive while its key is
            durations.append(elapsed)
            elapsed, result = timed(lambda: verifier.verify(dev.mint()))
            assert result["iss"] == ISSUER
            durations.append(elapsed)
        assert max(durations) < NO_WAIT
        assert checks[0] == 30  # one per uncached token, none for the cached one
        assert eventually(lambda: endpoint.held() == 1, timeout=5)  # one refresh, hanging in the background
        store = verifier.key_stores()[ISSUER]
        assert store.refreshing == 1
        assert store.stale_served == 31  # the cached token's revalidation, then 30 new ones
        assert verifier.cached(cached) is claims  # revalidated: the plain cache hit again
    finally:
        endpoint.stop()  # releases the held connection, so the background thread ends
        verifier.close()


@pytest.mark.anyio
async def test_async_verifications_never_wait_and_never_stall_the_loop(
    endpoint: IssuerServer, dev: DevIssuer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = make(endpoint, clock)
    try:
        cached = dev.mint(expires_in=3600)
        claims = await verifier.verify_async(cached)
        endpoint.hang = True
        clock.advance(61)
        checks = count_signature_checks(monkeypatch)
        durations: list[float] = []
        gaps: list[float] = []
        done = anyio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await anyio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def requests() -> None:
            for _ in range(30):
                start = time.perf_counter()
                assert await verifier.verify_async(cached) is claims
                durations.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert (await verifier.verify_async(dev.mint()))["iss"] == ISSUER
                durations.append(time.perf_counter() - start)
                await anyio.sleep(0.01)  # requests spread over time, the refresh hanging meanwhile
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(requests)
        assert max(durations) < NO_WAIT
        assert max(gaps) < NO_WAIT  # the event loop never stalled
        assert checks[0] == 30
        assert endpoint.held() == 1  # the refresh: one connection, held
        assert verifier.key_stores()[ISSUER].refreshing == 1
        assert verifier.cached(cached) is claims
    finally:
        await verifier.aclose()


@pytest.mark.anyio
async def test_the_cached_hot_path_is_revalidated_without_waiting(
    endpoint: IssuerServer, dev: DevIssuer, clock: Clock
) -> None:
    # What the middleware does: cached() first, verify_async() when it says nothing.
    verifier = make(endpoint, clock)
    try:
        token = dev.mint(expires_in=3600)
        claims = await verifier.verify_async(token)
        assert verifier.cached(token) is claims
        endpoint.hang = True
        clock.advance(61)
        assert verifier.cached(token) is None  # due for a look at the key store
        elapsed = time.perf_counter()
        assert await verifier.verify_async(token) is claims
        assert time.perf_counter() - elapsed < NO_WAIT
        assert verifier.cached(token) is claims  # served from the cache until the next look
        clock.advance(POLICY.retry_interval)
        assert verifier.cached(token) is None
        assert await verifier.verify_async(token) is claims
    finally:
        await verifier.aclose()


def test_an_unknown_kid_waits_at_most_the_fetch_timeout(
    endpoint: IssuerServer, dev: DevIssuer, clock: Clock
) -> None:
    policy = FetchPolicy(default_ttl=60, min_ttl=30, retry_interval=5, timeout=0.5)
    verifier = make(endpoint, clock, policy)
    try:
        verifier.verify(dev.mint())
        endpoint.hang = True
        new = dev.add_key("ES256")  # not on the (stuck) endpoint
        token = dev.mint(kid=new)
        start = time.perf_counter()
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert 0.4 < time.perf_counter() - start < 0.5 + NO_WAIT
        assert info.value.description == "The token signing key is unknown"
        assert "ReadTimeout" in verifier.status()[0]["last_error"]
        # The known key still answers, at once.
        old = dev.mint(kid=dev.jwks()["keys"][0]["kid"])
        elapsed, claims = timed(lambda: verifier.verify(old))
        assert claims["iss"] == ISSUER
        assert elapsed < NO_WAIT
    finally:
        endpoint.stop()
        verifier.close()


@pytest.mark.anyio
async def test_a_cold_start_waits_at_most_the_fetch_timeout(
    endpoint: IssuerServer, dev: DevIssuer, clock: Clock
) -> None:
    endpoint.hang = True
    policy = FetchPolicy(timeout=0.5, retry_interval=5)
    verifier = make(endpoint, clock, policy)
    try:
        start = time.perf_counter()
        with pytest.raises(AuthError) as info:
            await verifier.verify_async(dev.mint())
        assert info.value.kind == "keys_unavailable"
        assert 0.4 < time.perf_counter() - start < 0.5 + NO_WAIT
        # Within the retry interval the next caller is answered at once, not after another wait.
        start = time.perf_counter()
        with pytest.raises(AuthError):
            await verifier.verify_async(dev.mint())
        assert time.perf_counter() - start < NO_WAIT
        assert verifier.key_stores()[ISSUER].fetch_counts == {"ok": 0, "not_modified": 0, "error": 1}
    finally:
        await verifier.aclose()
