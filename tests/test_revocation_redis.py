"""The Redis store against a real redis-server (started on a free loopback port, killed, paused
and restarted empty by the tests): propagation, TTLs, catch-up, every fault, both stale policies.

Each "process" is a store with its own :class:`Revocations` mirror and its own connections, as
in separate gateway processes. Waiting for a follower to see a change polls with a deadline
(the follower runs in its own thread); time-dependent behaviour (TTLs, the mirror's age) runs on
injected clocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import redis
from polling import eventually
from redis_server import RedisServer, free_port, redis_server  # noqa: F401 (the fixture)

from gatekeeper import AuthError, StoreUnavailable, Verifier
from gatekeeper.revocation import Revocation, RevocationListFull, Revocations
from gatekeeper.revocation_redis import RedisRevocationStore, RedisSettings, entry_key

if TYPE_CHECKING:
    from conftest import Clock, MakeIssuer

ISS = "https://issuer.example"


class Monotonic:
    """A hand-moved monotonic clock for the mirror's age."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Processes:
    """Stores sharing one Redis, each with its own mirror; all stopped at the end."""

    def __init__(self, server: RedisServer, clock: Clock) -> None:
        self.server = server
        self.clock = clock
        self.stores: list[RedisRevocationStore] = []

    def new(
        self,
        *,
        start: bool = True,
        max_entries: int = 1000,
        monotonic: Callable[[], float] = time.monotonic,
        **settings: object,
    ) -> RedisRevocationStore:
        options: dict[str, object] = {"url": self.server.url, "prefix": "test", "timeout": 0.5, "block": 0.2}
        options.update(settings)
        store = RedisRevocationStore(
            Revocations(clock=self.clock, max_entries=max_entries),
            RedisSettings(**options),  # type: ignore[arg-type]
            monotonic=monotonic,
        )
        self.stores.append(store)
        if start:
            store.start()
            assert store.wait_synced(10)
        return store

    def close(self) -> None:
        for store in self.stores:
            store.stop()


@pytest.fixture
def processes(redis_server: RedisServer, clock: Clock) -> Iterator[Processes]:  # noqa: F811
    group = Processes(redis_server, clock)
    yield group
    group.close()


def jti(value: str, clock: Clock, lifetime: float = 300) -> Revocation:
    return Revocation("jti", value, ISS, clock.now + lifetime)


def values(store: RedisRevocationStore) -> set[str]:
    return {entry.value for entry in store.revocations.entries()}


def test_revocation_reaches_every_process(processes: Processes, clock: Clock) -> None:
    a, b, c = processes.new(), processes.new(), processes.new()
    a.publish(jti("one", clock))
    assert "one" in values(a)  # the writer's own mirror at once
    assert eventually(lambda: "one" in values(b) and "one" in values(c))
    assert b.retract(jti("one", clock)) is True
    assert eventually(lambda: not values(a) and not values(c))


@pytest.mark.anyio
async def test_async_writes(processes: Processes, clock: Clock) -> None:
    a, b = processes.new(), processes.new()
    await a.publish_async(Revocation("sub", "alice", None, clock.now + 600, before=clock.now))
    assert eventually(lambda: "alice" in values(b))
    assert await b.retract_async(Revocation("sub", "alice", None, clock.now + 600, before=clock.now))
    assert eventually(lambda: not values(a))
    assert await a.retract_async(Revocation("sub", "alice", None, 1.0, before=0.0)) is False
    await a.aclose()


def test_entry_ttl_is_its_remaining_need(processes: Processes, clock: Clock) -> None:
    a = processes.new()
    entry = jti("ttl", clock, lifetime=120)
    a.publish(entry)
    raw = redis.Redis.from_url(processes.server.url)
    ttl_ms = raw.pttl(entry_key("test", entry))
    assert 119_000 < ttl_ms <= 120_001
    # An entry no longer needed is not written at all.
    a.publish(jti("gone", clock, lifetime=-1))
    assert raw.exists(entry_key("test", jti("gone", clock))) == 0
    raw.close()


def test_verifier_uses_the_mirror(processes: Processes, clock: Clock, make_issuer: MakeIssuer) -> None:
    issuer = make_issuer(ISS)
    a, b = processes.new(), processes.new()
    one = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=a.revocations)
    two = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=b.revocations)
    token = issuer.mint()
    claims = two.verify(token)  # cached in the second process
    one.revoke(jti=claims["jti"], issuer=ISS, expires_at=claims["exp"])
    assert eventually(lambda: two.cached(token) is None)
    with pytest.raises(AuthError) as info:
        two.verify(token)
    assert info.value.kind == "revoked_token"


def test_late_process_catches_up_with_a_full_sync(processes: Processes, clock: Clock) -> None:
    a = processes.new()
    b = processes.new()
    b.stop()  # disconnected
    a.publish(jti("x", clock))
    a.publish(jti("y", clock))
    a.retract(jti("x", clock))
    # Back: a new connection to the same mirror resyncs (the deletion included).
    b_mirror = b.revocations
    b_mirror.add(jti("x", clock))  # what it knew before (deleted meanwhile)
    back = RedisRevocationStore(b_mirror, b.settings)
    processes.stores.append(back)
    back.start()
    assert back.wait_synced(10)
    assert values(back) == {"y"}


def test_gap_in_the_stream_triggers_a_full_resync(processes: Processes, clock: Clock) -> None:
    a = processes.new(stream_length=100)
    lagging = processes.new(start=False, stream_length=100)
    lagging._resync()
    for i in range(400):  # more than the stream keeps
        a.publish(jti(f"j{i}", clock))
    lagging._follow_once()
    assert lagging.synced is False  # it noticed what it missed
    lagging._resync()
    assert len(values(lagging)) == 400


def test_redis_down_at_startup(clock: Clock, make_issuer: MakeIssuer) -> None:
    port = free_port()
    revocations = Revocations(clock=clock)
    known = jti("known-before", clock)
    revocations.add(known)  # in this process's mirror already
    store = RedisRevocationStore(
        revocations, RedisSettings(url=f"redis://127.0.0.1:{port}/0", prefix="test", timeout=0.3, block=0.2)
    )
    started = time.monotonic()
    store.start()
    assert time.monotonic() - started < 1.0  # starting does not wait for Redis
    try:
        assert not store.ready()
        assert store.status()["connected"] is False
        issuer = make_issuer(ISS)
        verifier = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=revocations)
        with pytest.raises(AuthError) as info:
            verifier.verify(issuer.mint(claims={"jti": "known-before"}))
        assert info.value.kind == "revoked_token"  # the mirror still applies
        with pytest.raises(StoreUnavailable):
            verifier.revoke(sub="someone")
        assert store.errors["publish"] == 1
        assert eventually(lambda: store.errors["sync"] > 0)
        # Redis comes up: the store connects and syncs by itself.
        with RedisServer(port=port):
            assert eventually(store.ready)
    finally:
        store.stop()


def test_redis_killed_mid_run(processes: Processes, clock: Clock, make_issuer: MakeIssuer) -> None:
    monotonic = Monotonic()
    a = processes.new(monotonic=monotonic, stale_after=30)
    issuer = make_issuer(ISS)
    verifier = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=a.revocations)
    revoked, good = issuer.mint(), issuer.mint()
    verifier.revoke(jti=verifier.verify(revoked)["jti"], issuer=ISS)
    verifier.verify(good)
    age_before = a.mirror_age()
    processes.server.kill()
    assert eventually(lambda: not a.connected)
    monotonic.advance(10)
    assert a.mirror_age() >= age_before + 10  # the age grows while Redis is away
    # Verifications go on from the mirror, with no call to Redis.
    assert verifier.verify(good)["sub"] == "client-123"
    with pytest.raises(AuthError) as info:
        verifier.verify(revoked)
    assert info.value.kind == "revoked_token"
    # A revocation while unreachable is an error, never a silent success, and it is bounded.
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        verifier.revoke(sub="alice")
    assert time.monotonic() - started < 3.0
    assert a.revocations.get("sub", "alice", None) is None
    assert a.errors["publish"] == 1


@pytest.mark.anyio
async def test_hung_redis_bounds_every_write(processes: Processes, clock: Clock) -> None:
    a = processes.new(timeout=0.3)
    processes.server.pause()  # accepts connections, never answers
    try:
        for write in (
            lambda: a.publish(jti("p", clock)),
            lambda: a.retract(jti("p", clock)),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                write()
            assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await a.publish_async(jti("q", clock))
        assert time.monotonic() - started < 2.0
        assert eventually(lambda: not a.connected)  # the follower's read timed out too
    finally:
        processes.server.resume()
    assert eventually(a.ready)
    await a.aclose()


def test_redis_restarted_empty_restores_from_the_mirrors(processes: Processes, clock: Clock) -> None:
    a, b = processes.new(), processes.new()
    a.publish(jti("from-a", clock))
    b.publish(Revocation("client_id", "from-b", None, clock.now + 900, before=clock.now))
    assert eventually(lambda: values(a) == values(b) == {"from-a", "from-b"})
    a.publish(jti("short", clock, lifetime=10))
    assert eventually(lambda: "short" in values(b))
    clock.advance(20)  # "short" is no longer needed: it must not come back
    processes.server.restart_empty()
    # A process started after the restart learns every revocation still needed.
    assert eventually(lambda: a.ready() and b.ready() and a.restored + b.restored >= 2)
    fresh = processes.new()
    assert values(fresh) == {"from-a", "from-b"}
    raw = redis.Redis.from_url(processes.server.url)
    assert (
        860_000
        < raw.pttl(entry_key("test", Revocation("client_id", "from-b", None, 1.0, before=0.0)))
        <= 880_001  # restored with its remaining need: 900 s minus the 20 s that passed
    )
    raw.close()


def test_stale_mirror_fail_closed(processes: Processes, clock: Clock, make_issuer: MakeIssuer) -> None:
    monotonic = Monotonic()
    a = processes.new(monotonic=monotonic, stale_after=30, on_stale="closed")
    issuer = make_issuer(ISS)
    verifier = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=a.revocations)
    token = issuer.mint()
    verifier.verify(token)
    processes.server.kill()
    assert eventually(lambda: not a.connected)
    monotonic.advance(10)
    assert verifier.verify(token)  # younger than stale_after: still served
    monotonic.advance(30)
    assert eventually(lambda: a.revocations.blocked)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.kind == "keys_unavailable"
    processes.server.start()
    assert eventually(lambda: not a.revocations.blocked)
    assert verifier.verify(token)


def test_stale_mirror_fail_open(processes: Processes, clock: Clock, make_issuer: MakeIssuer) -> None:
    monotonic = Monotonic()
    a = processes.new(monotonic=monotonic, stale_after=30, on_stale="open")
    issuer = make_issuer(ISS)
    verifier = Verifier(ISS, jwks=issuer.jwks(), audience="api", clock=clock, revocations=a.revocations)
    token = issuer.mint()
    processes.server.kill()
    assert eventually(lambda: not a.connected)
    monotonic.advance(100)
    assert a.stale
    assert not a.ready()
    time.sleep(0.5)  # let the follower run its policy a few times: it must not block
    assert not a.revocations.blocked
    assert verifier.verify(token)


def test_full_mirror_refuses_before_writing(processes: Processes, clock: Clock) -> None:
    a = processes.new(max_entries=2)
    a.publish(jti("1", clock))
    a.publish(jti("2", clock))
    with pytest.raises(RevocationListFull):
        a.publish(jti("3", clock))
    raw = redis.Redis.from_url(processes.server.url)
    assert raw.exists(entry_key("test", jti("3", clock))) == 0
    raw.close()


def test_password_and_prefix(clock: Clock, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    with RedisServer(password="s3cret-pass") as server:
        monkeypatch.setenv("GK_REDIS_PASSWORD", "s3cret-pass")
        (tmp_path / "pw").write_text("s3cret-pass\n")
        from_env = RedisSettings.password_from(env="GK_REDIS_PASSWORD")
        from_file = RedisSettings.password_from(file=tmp_path / "pw")
        assert from_env == from_file == "s3cret-pass"
        one = RedisRevocationStore(
            Revocations(clock=clock), RedisSettings(url=server.url, password=from_env, prefix="one")
        )
        two = RedisRevocationStore(
            Revocations(clock=clock), RedisSettings(url=server.url, password=from_env, prefix="two")
        )
        wrong = RedisRevocationStore(
            Revocations(clock=clock), RedisSettings(url=server.url, password="nope", prefix="one")
        )
        try:
            for store in (one, two):
                store.start()
                assert store.wait_synced(10)
            one.publish(jti("only-one", clock))
            time.sleep(0.3)
            assert values(two) == set()  # another prefix, another list
            with pytest.raises(StoreUnavailable):
                wrong.publish(jti("x", clock))
        finally:
            for store in (one, two, wrong):
                store.stop()


@pytest.mark.parametrize(
    "settings",
    [
        {"url": "http://127.0.0.1:6379"},
        {"prefix": "has space"},
        {"prefix": "glob*"},
        {"timeout": 0},
        {"on_stale": "maybe"},
        {"stream_length": 5},
        {"stale_after": -1},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must|url|on_stale"):
        RedisSettings(**settings)  # type: ignore[arg-type]


def test_password_from_missing_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GK_NOT_SET", raising=False)
    with pytest.raises(ValueError, match="GK_NOT_SET"):
        RedisSettings.password_from(env="GK_NOT_SET")


def test_restart_between_two_reads_is_noticed(processes: Processes, clock: Clock) -> None:
    # No read in flight when Redis restarts: the connection is re-opened without an error, so
    # only the epoch tells the follower that the data set is a new (empty) one.
    a = processes.new(start=False)
    a._resync()
    a.publish(jti("kept", clock))
    assert a._follow_once() is True  # its own change, read back
    processes.server.restart_empty()
    assert a._follow_once() is False
    assert a.synced is False
    a._resync()
    assert a.restored == 1
    fresh = processes.new()
    assert values(fresh) == {"kept"}
