"""The hot-path cache of verified tokens: bounded, never past ``exp``, never past its key, and
safe under threads and asyncio. Unit tests on TokenCache, then the same through a Verifier."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import Clock

from gatekeeper import AuthError, Verifier
from gatekeeper.cache import DEAD, UNTIL, TokenCache
from gatekeeper.claims import Claims
from gatekeeper.issuer import DevIssuer
from gatekeeper.keys import VerificationKey

T0 = 1_700_000_000.0


def run_threads(worker: Callable[[int], None], count: int) -> None:
    """Run ``worker(n)`` for n in range(count) on that many threads, and wait for them all."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def key(kid: str = "k") -> VerificationKey:
    return VerificationKey(kid, "EC", frozenset({"ES256"}), None, f"fp-{kid}")


def claims(sub: str = "s") -> Claims:
    return Claims({"sub": sub}, frozenset(), issuer="https://issuer.example", kid="k")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Switch threads as often as possible, so that races show up within a short test.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


# -- TokenCache ---------------------------------------------------------------------------------


def test_a_hit_returns_the_stored_claims_until_exp_and_not_after() -> None:
    cache = TokenCache(10)
    c = claims()
    cache.put("t", c, T0 + 60, key())
    assert cache.get("t", T0) is c
    assert cache.get("t", T0 + 59.999) is c
    assert cache.get("t", T0 + 60) is None
    assert len(cache) == 0  # dropped, not kept around
    assert cache.get("t", T0) is None  # and not revived by going back in time
    assert cache.get("unknown", T0) is None


def test_an_entry_dies_with_its_key() -> None:
    cache = TokenCache(10)
    leaving, staying = key("leaving"), key("staying")
    cache.put("a", claims("a"), T0 + 60, leaving)
    cache.put("b", claims("b"), T0 + 60, staying)
    leaving.alive = False  # what KeyStore does when the key leaves the JWKS
    assert cache.get("a", T0) is None
    assert cache.get("b", T0) is not None
    assert len(cache) == 1


def test_an_entry_due_for_revalidation_is_kept_for_it_while_its_key_lives() -> None:
    cache = TokenCache(10)
    k, c = key(), claims()
    cache.put("t", c, T0 + 600, k, revalidate_at=T0 + 60)
    assert cache.get("t", T0 + 59.9) is c
    assert cache.get("t", T0 + 60) is None  # due: the verifier must ask the key store first
    assert len(cache) == 1  # but kept, so that costs no signature check
    assert cache.revalidate("t", T0 + 60, T0 + 90) is c
    assert cache.get("t", T0 + 89.9) is c
    assert cache.get("t", T0 + 90) is None
    # Revalidation never extends an entry past the token's exp.
    assert cache.revalidate("t", T0 + 90, T0 + 10_000) is c
    assert cache.get("t", T0 + 599.9) is c
    assert cache.get("t", T0 + 600) is None
    assert len(cache) == 0
    assert cache.revalidate("t", T0 + 90, T0 + 100) is None  # gone for good


def test_revalidation_refuses_entries_of_dead_keys_and_past_exp() -> None:
    cache = TokenCache(10)
    leaving, staying = key("leaving"), key("staying")
    cache.put("a", claims("a"), T0 + 600, leaving, revalidate_at=T0 + 60)
    cache.put("b", claims("b"), T0 + 600, staying, revalidate_at=T0 + 60)
    leaving.alive = False
    assert cache.revalidate("a", T0 + 60, T0 + 90) is None
    assert cache.get("a", T0 + 60) is None
    assert len(cache) == 1  # a dead key's entry is dropped, not kept for revalidation
    assert cache.revalidate("b", T0 + 600, T0 + 700) is None  # past exp
    assert cache.revalidate("unknown", T0, T0 + 1) is None


def test_without_revalidate_at_an_entry_lives_until_exp() -> None:
    cache = TokenCache(10)
    c = claims()
    cache.put("t", c, T0 + 60, key())
    assert cache.get("t", T0 + 59.9) is c
    cache.put("u", c, T0 + 60, key(), revalidate_at=T0 + 1000)  # never past exp either
    assert cache.get("u", T0 + 60) is None


def test_a_flood_of_distinct_tokens_stays_within_the_bound() -> None:
    cache = TokenCache(100)
    k, c = key(), claims()
    for i in range(10_000):
        cache.put(f"token-{i}", c, T0 + 60, k)
        assert len(cache) <= 100
    assert len(cache) == 100
    # The newest are the ones kept (FIFO among entries never hit).
    assert cache.get("token-9999", T0) is c
    assert cache.get("token-0", T0) is None


def test_putting_a_cached_token_again_does_not_evict_anything() -> None:
    cache = TokenCache(3)
    k = key()
    for t in "abc":
        cache.put(t, claims(t), T0 + 60, k)
    newer = claims("again")
    cache.put("b", newer, T0 + 120, k)
    assert len(cache) == 3
    assert all(cache.get(t, T0) is not None for t in "abc")
    assert cache.get("b", T0 + 100) is newer


@pytest.mark.parametrize("hot_count", [10, 100])
def test_second_chance_keeps_hot_entries_under_a_flood(hot_count: int) -> None:
    # 100 hot entries: more than any small fixed scan limit, which used to evict hot entries
    # whenever that many of them sat at the front of the queue.
    cache = TokenCache(2 * hot_count)
    k, c = key(), claims()
    hot = [f"hot-{i}" for i in range(hot_count)]
    for t in hot:
        cache.put(t, c, T0 + 60, k)
    for round_ in range(50):
        for t in hot:
            assert cache.get(t, T0) is c, (round_, t)
        for i in range(hot_count // 2):
            cache.put(f"cold-{round_}-{i}", c, T0 + 60, k)
        assert len(cache) <= 2 * hot_count
    assert all(cache.get(t, T0) is c for t in hot)
    assert cache.get("cold-0-0", T0) is None  # the one-off tokens were the ones evicted


def test_eviction_takes_entries_of_dead_keys_without_using_up_the_others_second_chance() -> None:
    cache = TokenCache(3)
    dead, live = key("dead"), key("live")
    cache.put("a", claims(), T0 + 60, dead)
    cache.put("b", claims(), T0 + 60, live)
    cache.put("c", claims(), T0 + 60, live)
    for t in "abc":
        assert cache.get(t, T0) is not None  # all recently used
    dead.alive = False
    cache.put("d", claims(), T0 + 60, live)  # evicts "a" at once: b and c keep their flags
    cache.put("e", claims(), T0 + 60, live)  # so "d", never hit, goes next
    assert [t for t in "abcde" if cache.get(t, T0) is not None] == ["b", "c", "e"]


def test_size_zero_disables_and_negative_is_refused() -> None:
    cache = TokenCache(0)
    cache.put("t", claims(), T0 + 60, key())
    assert len(cache) == 0
    assert cache.get("t", T0) is None
    with pytest.raises(ValueError, match="maxsize"):
        TokenCache(-1)


def test_clear() -> None:
    cache = TokenCache(5)
    cache.put("t", claims(), T0 + 60, key())
    cache.clear()
    assert len(cache) == 0
    assert cache.get("t", T0) is None


@pytest.mark.usefixtures("fast_switching")
def test_threads_hitting_expiring_and_inserting_at_once() -> None:
    # Readers drop expired entries while writers evict: an unlocked drop between eviction's
    # next(iter(...)) and pop() made put() raise StopIteration/KeyError.
    cache = TokenCache(4)
    k, c = key(), claims()
    tokens = [f"t{i}" for i in range(6)]
    errors: list[BaseException] = []
    sizes: list[int] = []

    def writer() -> None:
        try:
            for i in range(60_000):
                cache.put(tokens[i % 6], c, T0 + 1, k)
                sizes.append(len(cache))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(60_000):
                cache.get(tokens[i % 6], T0 + 5)  # every read finds them expired
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (writer, reader) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert max(sizes) <= 4
    assert len(cache) <= 4


@pytest.mark.usefixtures("fast_switching")
def test_threads_with_hot_and_cold_tokens_respect_the_bound() -> None:
    cache = TokenCache(50)
    k, c = key(), claims()
    errors: list[BaseException] = []
    over: list[int] = []

    def worker(n: int) -> None:
        try:
            for i in range(5_000):
                token = f"hot-{i % 20}" if i % 2 else f"cold-{n}-{i}"
                if cache.get(token, T0) is None:
                    cache.put(token, c, T0 + 60, k)
                if len(cache) > 50:
                    over.append(len(cache))
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, 8)
    assert errors == []
    assert over == []
    assert len(cache) <= 50


# -- through the verifier -------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def issuer(clock: Clock) -> DevIssuer:
    return DevIssuer("https://issuer.example", algorithms=("ES256",), clock=clock)


def static_verifier(issuer: DevIssuer, clock: Clock, **options: Any) -> Verifier:
    # A static key set: these tests are about the token cache, not fetching (see test_jwks_http).
    return Verifier(issuer=issuer.issuer, jwks=issuer.jwks(), audience="api", clock=clock, **options)


def test_verifier_serves_a_cached_token_only_until_its_exp(issuer: DevIssuer, clock: Clock) -> None:
    v = static_verifier(issuer, clock, leeway=0)
    token = issuer.mint(expires_in=60)
    first = v.verify(token)
    assert v.verify(token) is first  # a cache hit
    clock.now += 59
    assert v.verify(token) is first
    clock.now += 1
    with pytest.raises(AuthError) as info:
        v.verify(token)
    assert info.value.kind == "expired_token"


def test_verifier_cache_is_bounded_under_a_flood(issuer: DevIssuer, clock: Clock) -> None:
    v = static_verifier(issuer, clock, cache_size=25)
    hot = issuer.mint()
    hot_claims = v.verify(hot)
    for _ in range(300):
        v.verify(issuer.mint())
        assert v.verify(hot) is hot_claims  # stays cached: it is hit between the one-offs
    assert len(v._cache) == 25


def test_verifier_cache_under_threads(issuer: DevIssuer, clock: Clock) -> None:
    v = static_verifier(issuer, clock, cache_size=20)
    tokens = [issuer.mint(subject=f"c{i}") for i in range(60)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(300):
                j = (n * 7 + i) % 60
                assert v.verify(tokens[j])["sub"] == f"c{j}"
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, 8)
    assert errors == []
    assert len(v._cache) <= 20


@pytest.mark.anyio
async def test_verifier_cache_under_asyncio(issuer: DevIssuer, clock: Clock) -> None:
    v = static_verifier(issuer, clock, cache_size=20)
    tokens = [issuer.mint(subject=f"c{i}") for i in range(60)]
    seen: list[str] = []

    async def one(i: int) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append((await v.verify_async(tokens[i % 60]))["sub"])

    async with anyio.create_task_group() as tg:
        for i in range(600):
            tg.start_soon(one, i)
    assert sorted(seen) == sorted(f"c{i % 60}" for i in range(600))
    assert len(v._cache) <= 20
    await v.aclose()


def test_an_entry_leaving_the_cache_is_killed_for_its_holders() -> None:
    # A holder of an entry list (the decision's memo) serves it while now < entry[UNTIL] and
    # its key is alive: every way out of the cache must end that.
    cache = TokenCache(2)
    cache.put("a", claims("a"), T0 + 60, key())
    entry = cache.entry("a")
    assert entry is not None
    assert entry[UNTIL] == T0 + 60
    assert cache.entry("unknown") is None
    cache.put("a", claims("a2"), T0 + 60, key())  # replaced by a new verification
    assert entry[UNTIL] == DEAD
    replacement = cache.entry("a")
    assert replacement is not None
    assert replacement is not entry
    cache.put("b", claims("b"), T0 + 60, key())
    cache.put("c", claims("c"), T0 + 60, key())  # evicts "a" (never used)
    assert cache.entry("a") is None
    assert replacement[UNTIL] == DEAD
    dropped = cache.entry("b")
    assert dropped is not None
    assert cache.get("b", T0 + 60) is None  # past exp: dropped
    assert dropped[UNTIL] == DEAD
    cleared = cache.entry("c")
    assert cleared is not None
    assert cleared[UNTIL] == T0 + 60
    cache.clear()
    assert cleared[UNTIL] == DEAD


def test_revalidation_extends_the_entry_in_place() -> None:
    cache = TokenCache(10)
    cache.put("t", claims(), T0 + 600, key(), revalidate_at=T0 + 60)
    entry = cache.entry("t")
    assert entry is not None
    assert entry[UNTIL] == T0 + 60
    cache.revalidate("t", T0 + 60, T0 + 120)
    assert cache.entry("t") is entry  # a holder of the list sees the new time
    assert entry[UNTIL] == T0 + 120
