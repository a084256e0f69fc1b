"""Assembly: from a :class:`GatewayConfig` to the main listener's app and the ops app.

One :class:`~gatekeeper.verifier.Verifier`, one :class:`~gatekeeper.decision.Gate`, one error
profile and one reporter serve both front doors: the forward-auth decision endpoint at its
configured path, and the reverse proxy for everything else when an upstream is configured. The
ops app (health, readiness, metrics) shares the verifier but is served on its own listener.

A background task started with the main app keeps keys fetched (so ``/readyz`` turns ready
without waiting for a request) and mirrors the key stores' counters into the metrics. Under
``--workers`` a second one hands this worker's batched request counts to the shared metric files
every :data:`~gatekeeper.gateway.metrics.FLUSH_INTERVAL` seconds (and once more at shutdown).
Under ``--workers`` the keeper also publishes this worker's readiness on the
:class:`~gatekeeper.gateway.workers.WorkerBoard`, so ``/readyz`` (answered by any worker) says
whether every worker has keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.routing import BaseRoute

from ..decision import Gate
from ..keystore import KeyStore
from ..verifier import Verifier
from .access_log import AccessLog
from .config import GatewayConfig
from .forward_auth import ForwardAuth
from .metrics import FLUSH_INTERVAL, GatewayMetrics
from .ops import Check, ops_app
from .proxy import ReverseProxy
from .record import Reporter, RequestRecord
from .respond import DIRECT, DirectCycle, send_whole
from .workers import WorkerBoard

logger = logging.getLogger("gatekeeper.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Builds a front door: ``factory(gate, profile, settings, identity, reporter) -> ASGI app``
#: (the doors take the scope as the dict ASGI servers pass, hence ``Any`` here).
DoorFactory = Callable[..., Any]


class DecisionEndpoint(Protocol):
    """The forward-auth door: an ASGI app that says which of the listener's paths are its own
    (``/auth``, nginx's ``/auth/render``, Envoy's prefix), so every other path, ``/auth/...``
    included, reaches the proxy."""

    def handles(self, path: str) -> bool: ...

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


#: Builds the forward-auth door, as :data:`DoorFactory` does the proxy.
EndpointFactory = Callable[..., DecisionEndpoint]

#: While an issuer has no usable keys, how often the keeper tries (each store's own
#: retry_interval still limits the fetches); once all are ready, how often it looks again.
KEEP_INTERVAL_NOT_READY = 0.5
KEEP_INTERVAL_READY = 5.0


def build_verifier(config: GatewayConfig, **options: Any) -> Verifier:
    """The verifier for ``config``'s issuers (``options`` go to :class:`Verifier`: a clock,
    http clients)."""
    options.setdefault("cache_size", config.server.cache_size)
    options.setdefault("rejection_ttl", config.server.rejection_ttl)
    if config.revocation is not None:
        # The revocation settings say what the verifier needs (a shared Revocations object).
        options.update(config.revocation.verifier_options())
    return Verifier(issuers=config.issuers, **options)


def key_stores(verifier: Verifier) -> Mapping[str, KeyStore]:
    """Issuer -> key store."""
    return verifier.key_stores()


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b'{"error":"not_found"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send_whole(send, 404, headers, body)


@dataclass
class Gateway:
    """The assembled gateway of one process: ``main`` and ``ops`` are its two ASGI apps."""

    config: GatewayConfig
    verifier: Verifier
    gate: Gate
    metrics: GatewayMetrics | None
    access_log: AccessLog | None
    forward_auth: DecisionEndpoint | None
    proxy: ASGIApp | None
    ops: ASGIApp
    board: WorkerBoard | None = field(default=None, repr=False)
    _keeper: asyncio.Task[None] | None = field(default=None, repr=False)
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)

    def report(self, record: RequestRecord) -> None:
        """The reporter both doors get: metrics, then the access log. Never raises."""
        try:
            if self.metrics is not None:
                self.metrics.observe(record)
            if self.access_log is not None:
                self.access_log(record)
        except Exception:  # a reporting bug must not fail the request it reports
            logger.exception("reporting a request failed")

    def mirror(self) -> None:
        """Copy the key stores' counters and key counts into the metrics."""
        if self.metrics is not None:
            self.metrics.mirror(key_stores(self.verifier), time.time())
            if self.config.revocation is not None:
                self.config.revocation.mirror_metrics(self.metrics, self.verifier)

    def flush_metrics(self) -> None:
        """Hand the requests counted since the last flush to prometheus-client."""
        if self.metrics is not None:
            self.metrics.flush()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.flush_metrics()
            except Exception:  # a metrics bug must not end the flushing for good
                logger.exception("flushing metrics failed")

    def ready(self) -> bool:
        """Every issuer has usable keys."""
        return all(entry.get("usable") for entry in self.verifier.status())

    async def _keep(self) -> None:
        while True:
            try:
                await self.verifier.prefetch()
            except Exception as exc:  # the store records it; readyz shows it
                logger.debug("key prefetch failed: %s", exc)
            try:
                self.mirror()
            except Exception:  # metrics must never stop the keys being kept fresh
                logger.exception("mirroring metrics failed")
            ready = self.ready()
            if self.board is not None:
                try:
                    self.board.publish(ready)
                except OSError:  # the other workers then count this one as not ready
                    logger.exception("publishing this worker's readiness failed")
            await asyncio.sleep(KEEP_INTERVAL_READY if ready else KEEP_INTERVAL_NOT_READY)

    async def startup(self) -> None:
        """Start fetching keys (in the background: ``/readyz`` says when they are there)."""
        loop = asyncio.get_running_loop()
        if self._keeper is None:
            self._keeper = loop.create_task(self._keep())
        if self._flusher is None and self.metrics is not None and self.metrics.multiprocess:
            # Another worker may answer the scrape: it reads this one's files, not its memory.
            self._flusher = loop.create_task(self._flush_periodically())

    async def shutdown(self) -> None:
        """Stop the keeper, close the doors' clients and the verifier's; flush the metrics."""
        for task in (self._keeper, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._keeper = self._flusher = None
        if self.board is not None:
            with contextlib.suppress(OSError):
                self.board.withdraw()  # a stopping worker is not ready
        self.flush_metrics()  # the last requests' counts reach the files before the worker ends
        for door in (self.proxy, self.forward_auth):
            close = getattr(door, "aclose", None)
            if close is not None:
                await close()
        revocation = self.config.revocation
        if revocation is not None:  # stop its store's follower (Redis)
            await asyncio.to_thread(revocation.runtime_for(self.verifier).stop)
        await self.verifier.aclose()
        if self.access_log is not None:
            self.access_log.close()

    async def main(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The main listener's app: lifespan, then forward-auth at its path, else the proxy."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.forward_auth is not None and self.forward_auth.handles(scope.get("path", "")):
            await self.forward_auth(scope, receive, send)
        elif self.proxy is not None:
            await self.proxy(scope, receive, send)
        else:
            await _not_found(scope, receive, send)

    #: The gateway is itself the main listener's ASGI app (one coroutine per request, not two).
    __call__ = main

    def gatekeeper_direct(self, cycle: DirectCycle) -> bool:
        """The proxy's direct path (:data:`.respond.DIRECT`) for a request that is the proxy's."""
        direct = getattr(self.proxy, DIRECT, None)
        if direct is None:
            return False
        if self.forward_auth is not None and self.forward_auth.handles(cycle.scope["path"]):
            return False
        return bool(direct(cycle))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_gateway(
    config: GatewayConfig,
    *,
    verifier: Verifier | None = None,
    forward_auth: EndpointFactory = ForwardAuth,
    proxy: DoorFactory = ReverseProxy,
    access_log: AccessLog | bool | None = True,
    checks: Mapping[str, Check] | None = None,
    ops_routes: Sequence[BaseRoute] = (),
) -> Gateway:
    """Assemble the gateway for ``config``.

    ``forward_auth``/``proxy`` replace the front doors' classes (default: ``ForwardAuth`` and
    ``ReverseProxy``); ``access_log=True`` opens the configured log, an :class:`AccessLog`
    replaces it, None/False turns it off. ``checks`` and ``ops_routes`` extend the ops app.
    """
    verifier = verifier or build_verifier(config)
    gate = Gate(verifier, rules=config.rules, source=config.source)
    metrics = GatewayMetrics() if config.metrics.enabled else None
    log = AccessLog.open(config.logging.access_log) if access_log is True else access_log or None
    gateway = Gateway(config, verifier, gate, metrics, log, None, None, _not_found)
    reporter: Reporter = gateway.report

    if config.forward_auth is not None:
        gateway.forward_auth = forward_auth(
            gate, config.profile, config.forward_auth, config.identity, reporter
        )
    if config.proxy is not None:
        gateway.proxy = proxy(gate, config.profile, config.proxy, config.identity, reporter)

    extra = dict(checks or {})
    gateway.board = WorkerBoard.from_environment()
    if gateway.board is not None:
        # Under --workers: ready only when every worker is (any of them answers /readyz).
        extra["workers"] = gateway.board.check(gateway.ready)
    revocation = config.revocation
    if revocation is not None:
        # The revocation settings contribute a readiness check and the admin routes.
        extra.update(revocation.ops_checks())
        ops_routes = (*ops_routes, *revocation.ops_routes(verifier, config.server.ops_listen))
    gateway.ops = ops_app(verifier, metrics, checks=extra, routes=ops_routes, before_metrics=gateway.mirror)
    return gateway
