"""The ops listener's app: ``/healthz``, ``/readyz``, ``/metrics`` (and admin routes mounted in).

It is served on its own socket (loopback by default) and is never part of the main listener's
app, so nothing on the proxy or the decision endpoint can reach it.

- ``/healthz``: 200 while the process's event loop answers.
- ``/readyz``: 200 when every issuer has usable keys (and every extra check says ready), else
  503; the JSON body has, per issuer, the key ids, skipped keys and why, the freshness left and
  the last fetch error.
- ``/metrics``: Prometheus text, when metrics are enabled.

Other components add themselves through ``checks`` (name -> a function returning a JSON-able
dict; ``"ready": False`` in it makes ``/readyz`` answer 503) and ``routes`` (Starlette routes,
e.g. the revocation admin endpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..verifier import Verifier
from .metrics import GatewayMetrics

Check = Callable[[], Mapping[str, Any]]
_NO_STORE = {"cache-control": "no-store"}


def readiness(verifier: Verifier, checks: Mapping[str, Check] = {}) -> tuple[bool, dict[str, Any]]:
    """Whether the gateway is ready, and the per-issuer (and per-check) status behind it."""
    issuers = verifier.status()
    ready = all(entry.get("usable") for entry in issuers)
    body: dict[str, Any] = {"ready": ready, "issuers": issuers}
    for name, check in checks.items():
        result = dict(check())
        body[name] = result
        if result.get("ready") is False:
            ready = False
    body["ready"] = ready
    return ready, body


def ops_app(
    verifier: Verifier,
    metrics: GatewayMetrics | None,
    *,
    checks: Mapping[str, Check] | None = None,
    routes: Sequence[BaseRoute] = (),
    before_metrics: Callable[[], None] | None = None,
) -> Starlette:
    """The ops ASGI app. ``before_metrics`` runs before ``/metrics`` renders (to mirror the key
    stores' counters at scrape time)."""
    extra = dict(checks or {})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    async def readyz(request: Request) -> Response:
        ready, body = readiness(verifier, extra)
        return JSONResponse(body, status_code=200 if ready else 503, headers=_NO_STORE)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics is None:
            return JSONResponse({"error": "metrics are disabled"}, status_code=404)
        if before_metrics is not None:
            before_metrics()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type, headers=_NO_STORE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_endpoint, methods=["GET", "HEAD"]),
            *routes,
        ]
    )
