"""Key rotation without a window of rejections, over real HTTP (a dev IssuerServer on 127.0.0.1).

The issuer publishes a new key and signs with it at once. The first token naming the new ``kid``
triggers one JWKS refetch, however recent the last routine fetch; concurrent callers share that
fetch; the unknown-kid cooldown limits only how often *unknown-kid* refetches happen, so a flood
of made-up ids still costs at most one request per cooldown. The clock is injected and never
moved unless a test says so: "right after the warm-up" means at the same instant.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from conftest import Clock

from gatekeeper import AuthError, FetchPolicy, Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

COOLDOWN = 10.0
POLICY = FetchPolicy(default_ttl=300, unknown_kid_cooldown=COOLDOWN, retry_interval=30, timeout=5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(clock: Clock) -> Iterator[IssuerServer]:
    srv = IssuerServer(DevIssuer(algorithms=("ES256",), clock=clock))
    srv.issuer.issuer = srv.url
    with srv:
        yield srv


@pytest.fixture
def verifier(server: IssuerServer, clock: Clock) -> Iterator[Verifier]:
    v = Verifier(server.url, jwks_url=server.jwks_url, audience="api", clock=clock, fetch=POLICY)
    yield v
    v.close()


def warm(server: IssuerServer, verifier: Verifier) -> None:
    verifier.verify(server.issuer.mint())
    assert server.requests() == 1


def flood(verifier: Verifier, server: IssuerServer, prefix: str, count: int = 50) -> None:
    for i in range(count):
        with pytest.raises(AuthError) as info:
            verifier.verify(server.issuer.mint(headers={"kid": f"{prefix}-{i}"}))
        assert info.value.description == "The token signing key is unknown"


def test_the_first_token_of_a_rotated_in_key_verifies_with_one_more_fetch(
    server: IssuerServer, verifier: Verifier
) -> None:
    warm(server, verifier)
    new = server.issuer.add_key("ES256")  # the issuer rotates and signs with the new key at once
    assert verifier.verify(server.issuer.mint()).kid == new
    assert server.requests() == 2
    for _ in range(20):  # every later token of the new key: no more fetches
        assert verifier.verify(server.issuer.mint()).kid == new
    assert server.requests() == 2


@pytest.mark.anyio
async def test_the_first_token_of_a_rotated_in_key_verifies_with_one_more_fetch_async(
    server: IssuerServer, clock: Clock
) -> None:
    v = Verifier(server.url, jwks_url=server.jwks_url, audience="api", clock=clock, fetch=POLICY)
    try:
        await v.verify_async(server.issuer.mint())
        new = server.issuer.add_key("ES256")
        assert (await v.verify_async(server.issuer.mint())).kid == new
        assert server.requests() == 2
    finally:
        await v.aclose()


@pytest.mark.anyio
async def test_200_concurrent_tokens_of_a_rotated_in_key_share_one_fetch(
    server: IssuerServer, clock: Clock
) -> None:
    v = Verifier(server.url, jwks_url=server.jwks_url, audience="api", clock=clock, fetch=POLICY)
    try:
        await v.verify_async(server.issuer.mint())
        new = server.issuer.add_key("ES256")
        tokens = [server.issuer.mint() for _ in range(200)]
        server.delay = 0.2  # the fetch is still under way while all 200 arrive
        results: list[Any] = [None] * 200

        async def one(i: int) -> None:
            results[i] = await v.verify_async(tokens[i])

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert all(r is not None and r.kid == new for r in results)
        assert server.requests() == 2
    finally:
        await v.aclose()


def test_threads_with_tokens_of_a_rotated_in_key_share_one_fetch(
    server: IssuerServer, verifier: Verifier
) -> None:
    warm(server, verifier)
    new = server.issuer.add_key("ES256")
    tokens = [server.issuer.mint() for _ in range(32)]
    server.delay = 0.2
    barrier = threading.Barrier(32)
    results: list[Any] = [None] * 32

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = verifier.verify(tokens[i]).kid
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [new] * 32
    assert server.requests() == 2


def test_a_flood_of_made_up_kids_right_after_a_rotation_costs_nothing_more(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    warm(server, verifier)
    server.issuer.add_key("ES256")
    verifier.verify(server.issuer.mint())
    assert server.requests() == 2
    flood(verifier, server, "made-up")  # within the cooldown of the rotation's refetch
    assert server.requests() == 2
    clock.advance(COOLDOWN)
    flood(verifier, server, "later")
    assert server.requests() == 3  # one per cooldown


@pytest.mark.parametrize("periods", [3])
def test_a_flood_of_made_up_kids_costs_at_most_one_fetch_per_cooldown(
    server: IssuerServer, verifier: Verifier, clock: Clock, periods: int
) -> None:
    warm(server, verifier)
    for period in range(periods):
        flood(verifier, server, f"p{period}")
        assert server.requests() == 2 + period
        clock.advance(COOLDOWN / 2)
        flood(verifier, server, f"p{period}-half")
        assert server.requests() == 2 + period
        clock.advance(COOLDOWN / 2)


@pytest.mark.anyio
async def test_a_concurrent_flood_of_made_up_kids_shares_one_fetch(
    server: IssuerServer, clock: Clock
) -> None:
    v = Verifier(server.url, jwks_url=server.jwks_url, audience="api", clock=clock, fetch=POLICY)
    try:
        await v.verify_async(server.issuer.mint())
        tokens = [server.issuer.mint(headers={"kid": f"x{i}"}) for i in range(200)]
        server.delay = 0.1
        descriptions: list[str] = []

        async def one(token: str) -> None:
            try:
                await v.verify_async(token)
            except AuthError as error:
                descriptions.append(error.description)

        async with anyio.create_task_group() as tg:
            for token in tokens:
                tg.start_soon(one, token)
        assert descriptions == ["The token signing key is unknown"] * 200
        assert server.requests() == 2
    finally:
        await v.aclose()


def test_a_key_rotated_in_during_a_flood_cooldown_is_found_after_it(
    server: IssuerServer, verifier: Verifier, clock: Clock
) -> None:
    # The price of bounding the flood: a key that appears within the cooldown of a made-up
    # kid's refetch waits for the cooldown. The rejection is not remembered meanwhile.
    warm(server, verifier)
    flood(verifier, server, "made-up", count=1)
    assert server.requests() == 2
    new = server.issuer.add_key("ES256")
    token = server.issuer.mint()
    with pytest.raises(AuthError):
        verifier.verify(token)
    clock.advance(COOLDOWN)
    assert verifier.verify(token).kid == new
    assert server.requests() == 3


def test_a_cold_start_does_not_refetch_at_once_for_the_kid_it_just_missed(
    server: IssuerServer, verifier: Verifier
) -> None:
    # The keys were fetched for this very call: a second request would find the same set.
    with pytest.raises(AuthError) as info:
        verifier.verify(server.issuer.mint(headers={"kid": "made-up"}))
    assert info.value.description == "The token signing key is unknown"
    assert server.requests() == 1
