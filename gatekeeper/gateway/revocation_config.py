"""The ``[revocation]`` table: where revocations live, and what the gateway builds from it.

::

    [revocation]
    store = "redis"               # "memory" (default): this process only; "redis": shared
    max_entries = 100000          # the bound on the list (see gatekeeper.revocation)
    admin = true                  # POST/GET/DELETE /revocations on the ops listener
    admin_token = "auto"          # "auto": required when the ops listener is not loopback;
                                  # "always"; "never" (only for a loopback listener)
    admin_scope = "gatekeeper:admin"

    [revocation.redis]
    url = "redis://127.0.0.1:6379/0"   # or rediss:// (TLS)
    password = "env:REDIS_PASSWORD"    # or "file:/run/secrets/redis" (never inline)
    username = "gatekeeper"            # optional (Redis ACL user)
    prefix = "gatekeeper"              # key prefix: several gateways can share one Redis
    timeout = 1.0                      # bound on every store call (seconds)
    stale_after = 30.0                 # the mirror's age beyond which on_stale applies
    on_stale = "open"                  # "open": keep serving; "closed": 503 every request
    stream_length = 10000              # change stream cap (a follower further behind resyncs)
    block = 1.0                        # a follower's read waits this long for news
    coalesce = 0.005                   # pause after a read with news: bursts share one read

The gateway's assembly calls the hooks here (``verifier_options``, ``ops_checks``,
``ops_routes``, ``mirror_metrics``): the settings build one :class:`RevocationRuntime` (the
list, and the Redis store following it) per verifier.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..revocation import DEFAULT_MAX_ENTRIES, Revocations
from ..verifier import Verifier
from .schema import Table, default_of

logger = logging.getLogger("gatekeeper.gateway")

STORES: Final = ("memory", "redis")
ADMIN_TOKEN_MODES: Final = ("auto", "always", "never")
DEFAULT_ADMIN_SCOPE: Final = "gatekeeper:admin"


@dataclass(frozen=True)
class RedisConfig:
    """``[revocation.redis]`` as read (the password resolved, never shown)."""

    url: str = "redis://127.0.0.1:6379/0"
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    prefix: str = "gatekeeper"
    timeout: float = 1.0
    stale_after: float = 30.0
    on_stale: Literal["open", "closed"] = "open"
    stream_length: int = 10_000
    block: float = 1.0
    coalesce: float = 0.005


@dataclass
class RevocationRuntime:
    """One process's live revocation state: the list the verifier reads, and its store."""

    revocations: Revocations
    store: Any = None  # RedisRevocationStore when store = "redis"

    def status(self) -> dict[str, Any]:
        """For ``/readyz`` and ``GET /revocations``: state and counts, never identities.

        ``ready`` is False only when the list refuses every verification (fail-closed and
        stale): then this process is of no use behind a load balancer. A store that is merely
        unreachable makes it ``degraded``: it still serves from its mirror (fail-open).
        """
        counts = self.revocations.counts()
        body: dict[str, Any] = {"entries": counts, "max_entries": self.revocations.max_entries}
        if self.store is None:
            body.update(store="memory", status="ok")
            return body
        body.update(self.store.status())
        body["status"] = "ok" if self.store.ready() else "degraded"
        if self.revocations.blocked:
            body["ready"] = False
        return body

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop()


@dataclass(frozen=True)
class RevocationSettings:
    """The ``[revocation]`` table. ``store``: ``memory`` or ``redis``; ``admin``: mount the
    admin endpoint; ``admin_token``/``admin_scope``: who may use it."""

    store: Literal["memory", "redis"] = "memory"
    max_entries: int = DEFAULT_MAX_ENTRIES
    admin: bool = True
    admin_token: Literal["auto", "always", "never"] = "auto"
    admin_scope: str = DEFAULT_ADMIN_SCOPE
    redis: RedisConfig | None = None
    # Live state built by the hooks (one per verifier built), not configuration.
    _runtimes: list[RevocationRuntime] = field(default_factory=list, compare=False, repr=False)

    # -- building --------------------------------------------------------------------------

    def open(self, *, start: bool = True) -> RevocationRuntime:
        """A new list (and store, when Redis is configured); ``start`` runs its follower."""
        revocations = Revocations(max_entries=self.max_entries)
        store = None
        if self.store == "redis":
            # Imported here: the redis extra is needed only when configured.
            from ..revocation_redis import RedisRevocationStore, RedisSettings

            redis = self.redis or RedisConfig()
            store = RedisRevocationStore(
                revocations,
                RedisSettings(
                    url=redis.url,
                    password=redis.password,
                    username=redis.username,
                    prefix=redis.prefix,
                    timeout=redis.timeout,
                    stale_after=redis.stale_after,
                    on_stale=redis.on_stale,
                    stream_length=redis.stream_length,
                    block=redis.block,
                    coalesce=redis.coalesce,
                ),
            )
            if start:
                store.start()  # returns at once: an unreachable Redis does not stop the gateway
        return RevocationRuntime(revocations, store)

    def runtime_for(self, verifier: Verifier) -> RevocationRuntime:
        """The runtime whose list ``verifier`` reads (one wrapping its own list otherwise)."""
        for runtime in reversed(self._runtimes):
            if runtime.revocations is verifier.revocations:
                return runtime
        return RevocationRuntime(verifier.revocations, verifier.revocations.store)

    # -- the gateway's hooks (gatekeeper.gateway.app) ---------------------------------------

    def verifier_options(self) -> dict[str, Any]:
        """What the verifier is built with: a fresh list (and its running store)."""
        runtime = self.open()
        self._runtimes.append(runtime)
        return {"revocations": runtime.revocations}

    def ops_checks(self) -> dict[str, Any]:
        """``/readyz``'s ``revocation`` entry, for the list built last."""
        if not self._runtimes:
            return {}
        runtime = self._runtimes[-1]
        return {"revocation": runtime.status}

    def ops_routes(self, verifier: Verifier, listen: Any = None) -> list[Any]:
        """The admin routes (``/revocations``) for the ops listener, when ``admin`` is on.

        ``listen`` is the ops listener's address (``host`` attribute): with ``admin_token =
        "auto"`` a token is required unless it is a loopback address (unknown: required).
        """
        if not self.admin:
            return []
        from .revocation_admin import admin_routes

        require = self.admin_token == "always" or (
            self.admin_token == "auto" and not is_loopback(getattr(listen, "host", None))
        )
        return admin_routes(
            verifier, self.runtime_for(verifier), admin_scope=self.admin_scope, require_token=require
        )

    def mirror_metrics(self, metrics: Any, verifier: Verifier) -> None:
        """Copy the list's counts, the mirror's age and the store's errors into the metrics."""
        from .revocation_admin import revocation_metrics

        revocation_metrics(metrics).update(self.runtime_for(verifier))


def is_loopback(host: str | None) -> bool:
    """Whether a listen host is a loopback address (``localhost`` counts; None does not)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _redis(table: Table) -> RedisConfig:
    def default(name: str) -> Any:
        return default_of(RedisConfig, name)

    url = table.url("url", default("url"), schemes=("redis", "rediss"))
    secret = table.secret("password")
    username = table.string("username", None)
    prefix = table.string("prefix", default("prefix"))
    if any(c in prefix for c in " \r\n\t*?[]"):
        raise table.error("prefix", "must not contain spaces or glob characters (* ? [ ])")
    timeout = table.number("timeout", default("timeout"), positive=True, maximum=60)
    stale_after = table.number("stale_after", default("stale_after"), positive=True)
    on_stale = table.enum("on_stale", ("open", "closed"), default("on_stale"))
    stream_length = table.integer("stream_length", default("stream_length"), minimum=100)
    block = table.number("block", default("block"), positive=True, maximum=60)
    coalesce = table.number("coalesce", default("coalesce"), minimum=0, maximum=1)
    table.finish()
    return RedisConfig(
        url=url,
        password=secret.value if secret is not None else None,
        username=username,
        prefix=prefix,
        timeout=timeout,
        stale_after=stale_after,
        on_stale=on_stale,
        stream_length=stream_length,
        block=block,
        coalesce=coalesce,
    )


def read(table: Table) -> RevocationSettings:
    """Build the settings from the ``[revocation]`` table (called by gateway.config)."""

    def default(name: str) -> Any:
        return default_of(RevocationSettings, name)

    store = table.enum("store", STORES, default("store"))
    max_entries = table.integer("max_entries", default("max_entries"), minimum=1, maximum=100_000_000)
    admin = table.boolean("admin", default("admin"))
    admin_token = table.enum("admin_token", ADMIN_TOKEN_MODES, default("admin_token"))
    admin_scope = table.string("admin_scope", default("admin_scope"))
    redis: RedisConfig | None = None
    if table.has("redis"):
        if store != "redis":
            table.value("redis")
            raise table.error("redis", 'a [revocation.redis] table needs store = "redis"')
        redis = _redis(table.table("redis"))
    elif store == "redis":
        redis = RedisConfig()
    table.finish()
    return RevocationSettings(
        store=store,
        max_entries=max_entries,
        admin=admin,
        admin_token=admin_token,
        admin_scope=admin_scope,
        redis=redis,
    )


def settings_from(mapping: Mapping[str, Any], file: str = "<dict>") -> RevocationSettings:
    """The settings from a plain mapping (tests, embedding): as if it were the TOML table."""
    return read(Table(mapping, file=file, path="revocation"))
