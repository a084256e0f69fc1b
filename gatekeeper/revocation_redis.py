"""Redis as the shared revocation store: every process keeps a local mirror the hot path reads.

Layout under the key prefix ``P`` (several gateways can share one Redis with different
prefixes):

- ``P:rev:<hash>``: one entry (JSON), with a TTL equal to its remaining need (``until - now``);
- ``P:stream``: every change (``add``/``del``, with a sequence number), capped at about
  ``stream_length`` items (``XADD MAXLEN ~``);
- ``P:seq``: the sequence counter; ``P:epoch``: a random id naming this Redis's data set.

A write is one Lua script (entry + sequence + stream item, atomic). Each process runs one
follower thread: it reads the stream (``XREAD BLOCK``) and applies each change to the mirror.
It catches up by itself: on start, on every reconnect, and when it sees a gap in the sequence
(the stream was trimmed past what it had read), it does a full resync: the stream's position
first, then a snapshot of every entry (``SCAN``), which replaces the mirror.

Redis restarted empty: the epoch is gone (or new). A follower that knew the old epoch writes its
mirror's entries still needed back (``SET NX`` with their remaining TTL, announced on the
stream), so revocations survive as long as one replica still holds them. Deletions made while a
replica was away are not resurrected: the mirror is restored only when the epoch changed.

Faults never reach the hot path: verifications read the mirror only. Writes are bounded by
``timeout`` and raise :class:`~gatekeeper.revocation.StoreUnavailable`. When the mirror is older
than ``stale_after`` seconds, ``on_stale="open"`` keeps serving from it and ``"closed"`` blocks
the list, so every verification answers ``keys_unavailable`` (503) until the mirror is fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .revocation import Revocation, RevocationListFull, Revocations, StoreUnavailable

log = logging.getLogger("gatekeeper.revocation")

StalePolicy = Literal["open", "closed"]

#: What a store failure looks like from redis-py (timeouts, refused or dropped connections,
#: a server error such as LOADING or a wrong password).
_FAILURES = (redis.RedisError, OSError)

_WRITE = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  redis.call('SET', KEYS[4], ARGV[5])
  epoch = ARGV[5]
end
if ARGV[1] == 'add' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
elseif ARGV[1] == 'restore' then
  if not redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX') then return {epoch, -1} end
  ARGV[1] = 'add'
else
  if redis.call('DEL', KEYS[1]) == 0 then return {epoch, -1} end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'op', ARGV[1], 'entry', ARGV[2])
return {epoch, seq}
"""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis and how to behave when it is not there.

    ``url``: ``redis://`` or ``rediss://`` (TLS), with a database number; ``password`` (read
    from the environment or a file by the config, never written inline); ``prefix`` for every
    key; ``timeout`` bounds each store call (connect and answer), so an admin request or a
    ``revoke()`` never waits longer; ``stale_after`` and ``on_stale`` are the stale-mirror
    policy; ``stream_length`` caps the change stream; ``block`` is how long a follower's read
    waits for news (the mirror's age stays under it while Redis answers); ``coalesce`` is how
    long a follower pauses after a read that brought changes, so that a burst arrives in one
    read (each read costs a Redis round trip of CPU time in every process; it adds at most
    this much to the propagation time).
    """

    url: str = "redis://127.0.0.1:6379/0"
    password: str | None = None
    prefix: str = "gatekeeper"
    timeout: float = 1.0
    stale_after: float = 30.0
    on_stale: StalePolicy = "open"
    stream_length: int = 10_000
    block: float = 1.0
    username: str | None = None
    coalesce: float = 0.005

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the Redis url must start with redis://, rediss:// or unix://")
        if not self.prefix or any(c in self.prefix for c in " \r\n*?[]"):
            raise ValueError("the key prefix must be non-empty, without spaces or glob characters")
        if not 0 < self.timeout <= 60 or not 0 < self.block <= 60:
            raise ValueError("timeout and block must be between 0 and 60 seconds")
        if self.stale_after <= 0:
            raise ValueError("stale_after must be positive")
        if self.on_stale not in ("open", "closed"):
            raise ValueError("on_stale is 'open' or 'closed'")
        if self.stream_length < 100:
            raise ValueError("stream_length must be at least 100")
        if not 0 <= self.coalesce <= 1:
            raise ValueError("coalesce must be between 0 and 1 second")

    @staticmethod
    def password_from(env: str | None = None, file: str | Path | None = None) -> str | None:
        """A password from an environment variable or a file (first line), or None."""
        if env:
            value = os.environ.get(env)
            if not value:
                raise ValueError(f"environment variable {env} is not set")
            return value
        if file:
            return Path(file).read_text(encoding="utf-8").splitlines()[0].strip()
        return None


def entry_key(prefix: str, entry: Revocation) -> str:
    """The entry's Redis key: a hash of what identifies it (values may hold any character)."""
    ident = json.dumps([entry.kind, entry.value, entry.issuer], separators=(",", ":"))
    return f"{prefix}:rev:{hashlib.sha256(ident.encode('utf-8')).hexdigest()[:40]}"


def _dump(entry: Revocation) -> str:
    return json.dumps(entry.to_dict(), separators=(",", ":"))


class RedisRevocationStore:
    """The shared store behind a :class:`Revocations` list (which it keeps as its mirror).

    ``start()`` runs the follower thread; ``stop()`` ends it. Writes (``publish``/``retract``,
    sync and async) go to Redis first and then to the local mirror, so the writing process sees
    its revocation at once and the others within a stream read.
    """

    def __init__(
        self,
        revocations: Revocations,
        settings: RedisSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.revocations = revocations
        self.settings = settings
        self._monotonic = monotonic
        self._keys = [f"{settings.prefix}:{name}" for name in ("stream", "seq", "epoch")]
        options: dict[str, Any] = {
            "password": settings.password,
            "username": settings.username,
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.timeout,
            "decode_responses": True,
        }
        # No retries inside redis-py: the caller's bound is one attempt of ``timeout``.
        self._sync = redis.Redis.from_url(settings.url, retry=Retry(NoBackoff(), 0), **options)
        self._async_options = options
        self._async_clients: dict[int, redis.asyncio.Redis] = {}
        # The follower blocks up to ``block`` in XREAD, so its socket waits that much longer.
        follower_options = dict(options, socket_timeout=settings.block + settings.timeout)
        self._follower = redis.Redis.from_url(settings.url, retry=Retry(NoBackoff(), 0), **follower_options)
        self._write = self._sync.register_script(_WRITE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._started_at = monotonic()
        self._last_contact: float | None = None
        self.epoch: str | None = None
        self._last_id = "0-0"
        self._last_seq = 0
        self.connected = False
        self.synced = False
        #: Store failures by operation ("publish", "retract", "sync"), for the metrics.
        self.errors: dict[str, int] = {"publish": 0, "retract": 0, "sync": 0}
        self.resyncs = 0
        self.restored = 0
        revocations.store = self

    # -- status ------------------------------------------------------------------------------

    def mirror_age(self) -> float:
        """Seconds since the mirror was last known to match Redis (since start, before that)."""
        with self._state_lock:
            since = self._last_contact if self._last_contact is not None else self._started_at
        return max(0.0, self._monotonic() - since)

    @property
    def stale(self) -> bool:
        return self.mirror_age() > self.settings.stale_after

    def ready(self) -> bool:
        """Whether the mirror is in sync with a reachable Redis (``/readyz`` says degraded if not)."""
        return self.connected and self.synced and not self.stale

    def status(self) -> dict[str, Any]:
        """For ``/readyz`` and the admin endpoint: no identities, only state and counts."""
        return {
            "store": "redis",
            "connected": self.connected,
            "synced": self.synced,
            "mirror_age_seconds": round(self.mirror_age(), 3),
            "stale_after_seconds": self.settings.stale_after,
            "on_stale": self.settings.on_stale,
            "blocked": self.revocations.blocked,
        }

    # -- the follower ------------------------------------------------------------------------

    def start(self) -> None:
        """Start following Redis in a daemon thread (returns at once, reachable or not)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gatekeeper-revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.block + 2 * self.settings.timeout + 1)
            self._thread = None
        self._follower.close()
        self._sync.close()

    async def aclose(self) -> None:
        """Stop the follower and close the async clients too."""
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
        for client in list(self._async_clients.values()):
            with contextlib.suppress(*_FAILURES, RuntimeError):
                await client.aclose()
        self._async_clients.clear()

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first full sync is done (tests, the CLI); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced:
                return True
            time.sleep(0.01)
        return self.synced

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self._resync()
                    backoff = 0.05
                if self._follow_once() and self.settings.coalesce:
                    self._stop.wait(self.settings.coalesce)
            except _FAILURES as exc:
                self._failed("sync", exc)
                self._apply_policy()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:  # a bug must not kill the follower silently
                log.exception("revocation follower error")
                self._failed("sync", None)
                self._stop.wait(1.0)
                continue
            self._apply_policy()

    def _failed(self, operation: str, exc: BaseException | None) -> None:
        with self._state_lock:
            self.errors[operation] += 1
            if operation == "sync":
                if self.connected:
                    log.warning("revocation store unreachable: %s", type(exc).__name__ if exc else "error")
                self.connected = False
                self.synced = False

    def _contact(self) -> None:
        with self._state_lock:
            self._last_contact = self._monotonic()
            self.connected = True

    def _apply_policy(self) -> None:
        closed = self.settings.on_stale == "closed" and self.stale
        if closed != self.revocations.blocked:
            log.warning(
                "revocation mirror %s (age %.1f s): %s",
                "stale" if closed else "fresh again",
                self.mirror_age(),
                "refusing verifications" if closed else "serving",
            )
            self.revocations.set_blocked(closed)

    def _resync(self) -> None:
        client = self._follower
        stream, seq_key, epoch_key = self._keys
        epoch = client.get(epoch_key)
        if epoch is None:
            client.set(epoch_key, os.urandom(12).hex(), nx=True)
            epoch = client.get(epoch_key)
        if self.epoch is not None and epoch != self.epoch:
            # Redis lost its data (restarted empty): put back what this mirror still needs.
            self._restore(client, self.revocations.entries(), str(epoch))
        # The stream position first, then the snapshot: a change made in between is in both,
        # and applying it twice does no harm.
        with client.pipeline(transaction=True) as pipe:
            pipe.xrevrange(stream, count=1)
            pipe.get(seq_key)
            tail, seq = pipe.execute()
        last_id = tail[0][0] if tail else "0-0"
        snapshot = self._snapshot(client)
        self.revocations.replace_all(snapshot)
        with self._state_lock:
            self.epoch = str(epoch)
            self._last_id = last_id
            self._last_seq = int(seq or 0)
            self.synced = True
            self.resyncs += 1
        self._contact()

    def _snapshot(self, client: redis.Redis) -> list[Revocation]:
        entries: list[Revocation] = []
        batch: list[str] = []

        def flush() -> None:
            for raw in client.mget(batch) if batch else []:
                if raw is None:
                    continue  # expired between SCAN and MGET
                try:
                    entries.append(Revocation.from_dict(json.loads(raw)))
                except ValueError:
                    log.warning("skipping a malformed revocation entry in Redis")
            batch.clear()

        for key in client.scan_iter(match=f"{self.settings.prefix}:rev:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                flush()
        flush()
        return entries

    def _restore(self, client: redis.Redis, entries: Iterable[Revocation], epoch: str) -> None:
        restored = 0
        for entry in entries:
            ttl_ms = self._ttl_ms(entry)
            if ttl_ms is None:
                continue
            _, seq = self._call_write(client, "restore", entry, ttl_ms, epoch)
            restored += int(seq) >= 0
        self.restored += restored
        if restored:
            log.warning("revocation store was emptied: restored %d entries from this mirror", restored)

    def _follow_once(self) -> bool:
        """Read and apply the next changes (waiting up to ``block``); whether there were any."""
        stream = self._keys[0]
        block_ms = int(self.settings.block * 1000)
        reply: Any = self._follower.xread({stream: self._last_id}, count=1000, block=block_ms)
        # Quiet for a whole block: make sure this is still the same data set. redis-py
        # reconnects an idle connection silently, so a Redis restarted empty between two reads
        # shows no error; its epoch (gone or new) gives it away.
        if not reply and self._follower.get(self._keys[2]) != self.epoch:
            with self._state_lock:
                self.synced = False
            return False
        self._contact()
        for _, items in reply or ():
            for item_id, fields in items:
                seq = int(fields.get("seq", 0))
                if seq != self._last_seq + 1:
                    # Missed changes (trimmed away, or a Redis that restarted): start over.
                    with self._state_lock:
                        self.synced = False
                    return True
                self._apply(fields)
                self._last_id, self._last_seq = item_id, seq
        return bool(reply)

    def _apply(self, fields: dict[str, str]) -> None:
        try:
            entry = Revocation.from_dict(json.loads(fields["entry"]))
        except (KeyError, ValueError):
            log.warning("skipping a malformed revocation change in the stream")
            return
        if fields.get("op") == "del":
            self.revocations.remove(entry.kind, entry.value, entry.issuer)
        else:
            self.revocations.add(entry)

    # -- writes ------------------------------------------------------------------------------

    def _ttl_ms(self, entry: Revocation) -> int | None:
        remaining = entry.until - self.revocations.clock()
        return int(remaining * 1000) + 1 if remaining > 0 else None

    def _args(
        self, op: str, entry: Revocation, ttl_ms: int, epoch: str | None
    ) -> tuple[list[str], list[Any]]:
        stream, seq_key, epoch_key = self._keys
        keys = [entry_key(self.settings.prefix, entry), stream, seq_key, epoch_key]
        args = [op, _dump(entry), ttl_ms, self.settings.stream_length, epoch or os.urandom(12).hex()]
        return keys, args

    def _call_write(
        self, client: redis.Redis, op: str, entry: Revocation, ttl_ms: int, epoch: str | None
    ) -> Any:
        keys, args = self._args(op, entry, ttl_ms, epoch)
        return self._write(keys=keys, args=args, client=client)

    def publish(self, entry: Revocation) -> None:
        """Write a revocation to Redis, then to the mirror. Raises StoreUnavailable."""
        ttl_ms = self._ttl_ms(entry)
        if ttl_ms is None:
            return  # nothing left to revoke
        self._check_room(entry)
        try:
            self._call_write(self._sync, "add", entry, ttl_ms, None)
        except _FAILURES as exc:
            self._failed("publish", exc)
            raise StoreUnavailable(f"the revocation store did not answer ({type(exc).__name__})") from None
        self.revocations.add(entry)

    async def publish_async(self, entry: Revocation) -> None:
        """:meth:`publish` for async code."""
        ttl_ms = self._ttl_ms(entry)
        if ttl_ms is None:
            return
        self._check_room(entry)
        try:
            await self._async_write("add", entry, ttl_ms)
        except _FAILURES as exc:
            self._failed("publish", exc)
            raise StoreUnavailable(f"the revocation store did not answer ({type(exc).__name__})") from None
        self.revocations.add(entry)

    def retract(self, entry: Revocation) -> bool:
        """Undo a revocation in Redis and the mirror; False if Redis had no such entry."""
        try:
            _, seq = self._call_write(self._sync, "del", entry, 1, None)
        except _FAILURES as exc:
            self._failed("retract", exc)
            raise StoreUnavailable(f"the revocation store did not answer ({type(exc).__name__})") from None
        removed = self.revocations.remove(entry.kind, entry.value, entry.issuer)
        return int(seq) >= 0 or removed

    async def retract_async(self, entry: Revocation) -> bool:
        """:meth:`retract` for async code."""
        try:
            _, seq = await self._async_write("del", entry, 1)
        except _FAILURES as exc:
            self._failed("retract", exc)
            raise StoreUnavailable(f"the revocation store did not answer ({type(exc).__name__})") from None
        removed = self.revocations.remove(entry.kind, entry.value, entry.issuer)
        return int(seq) >= 0 or removed

    def _check_room(self, entry: Revocation) -> None:
        # Refuse before writing to Redis what this mirror (and so every mirror) cannot hold.
        revocations = self.revocations
        if len(revocations) >= revocations.max_entries and revocations.get(*entry.key) is None:
            revocations.purge()
            if len(revocations) >= revocations.max_entries:
                raise RevocationListFull(
                    f"the revocation list holds {len(revocations):,} entries still needed "
                    f"(max_entries={revocations.max_entries:,}); refusing the new one"
                )

    async def _async_write(self, op: str, entry: Revocation, ttl_ms: int) -> Any:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(id(loop))
        if client is None:
            # One client per event loop: redis.asyncio connections belong to the loop that
            # opened them.
            client = redis.asyncio.Redis.from_url(
                self.settings.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0), **self._async_options
            )
            self._async_clients[id(loop)] = client
        keys, args = self._args(op, entry, ttl_ms, None)
        # asyncio.timeout as well as the socket timeouts: DNS or TLS set-up has no socket bound.
        async with asyncio.timeout(self.settings.timeout * 2):
            return await client.eval(_WRITE, len(keys), *keys, *args)
