"""Operators' revocation endpoints, mounted on the ops listener, and the revocation metrics.

- ``POST /revocations``: a JSON object naming exactly one of ``jti`` (with ``iss``), ``sub`` or
  ``client_id``; optional ``iss`` (sub/client: one issuer only), ``before`` (sub/client: Unix
  time, default now) and ``exp`` (jti: the token's ``exp``, so the entry lives no longer).
  201 with the entry's kind and lifetime; 400 on bad input; 503 when the shared store cannot be
  written (nothing was revoked); 507 when the list is full of entries still needed.
- ``GET /revocations``: counts per kind and the store's state; never an identity.
- ``DELETE /revocations``: the same body as POST; 200 if an entry was removed, 404 if none.

The ops listener is loopback by default. When it is exposed (or ``admin_token = "always"``),
every call needs ``Authorization: Bearer <token>``: a token the gateway's own verifier accepts
(revocations included) carrying the configured admin scope.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter, Gauge
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import AuthError
from ..redact import fingerprint
from ..responses import rfc6750
from ..revocation import KINDS, Revocation, RevocationListFull, StoreUnavailable, revocation_request
from ..verifier import Verifier

if TYPE_CHECKING:
    from .revocation_config import RevocationRuntime

logger = logging.getLogger("gatekeeper.gateway")

#: A revocation request is a few short strings: anything bigger is refused unread.
MAX_BODY: Final = 8192
#: A jti, subject or client id longer than this is not one any issuer sends.
MAX_VALUE: Final = 1024
_FIELDS: Final = frozenset({"jti", "sub", "client_id", "iss", "before", "exp"})
_NO_STORE: Final = {"cache-control": "no-store"}
_PROFILE: Final = rfc6750("gatekeeper-admin")

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": message}, status_code=status, headers=_NO_STORE)


async def _read_json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise BadRequest(413, f"the body must be at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(413, f"the body must be at most {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise BadRequest(400, f"unknown field {unknown[0][:40]!r}; known: {', '.join(sorted(_FIELDS))}")
    for name in ("jti", "sub", "client_id", "iss"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_VALUE):
            raise BadRequest(400, f"{name} must be a non-empty string of at most {MAX_VALUE} characters")
    for name in ("before", "exp"):
        value = data.get(name)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
        ):
            raise BadRequest(400, f"{name} must be a number (Unix time)")
    return data


def _entry(verifier: Verifier, data: dict[str, Any]) -> Revocation:
    try:
        return revocation_request(
            verifier.issuers,
            time.time(),
            jti=data.get("jti"),
            sub=data.get("sub"),
            client_id=data.get("client_id"),
            issuer=data.get("iss"),
            before=data.get("before"),
            expires_at=data.get("exp"),
        )
    except ValueError as exc:
        raise BadRequest(400, str(exc).replace("issuer", "iss")) from None


def _described(entry: Revocation) -> dict[str, Any]:
    # What was revoked, by kind and lifetime only: the caller knows the identity it sent.
    return {
        "kind": entry.kind,
        "until": entry.until,
        "before": entry.before,
        "all_issuers": entry.issuer is None,
    }


def admin_routes(
    verifier: Verifier,
    runtime: RevocationRuntime,
    *,
    admin_scope: str,
    require_token: bool,
) -> list[Route]:
    """``/revocations`` (POST, GET, DELETE) for ``verifier``'s list. With ``require_token``,
    each call needs a bearer token the verifier accepts, carrying ``admin_scope``."""
    revocations = runtime.revocations

    def guarded(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if require_token:
                denied = await _authorise(verifier, request, admin_scope)
                if denied is not None:
                    return denied
            try:
                return await handler(request)
            except BadRequest as exc:
                code = "invalid_request" if exc.status == 400 else "request_too_large"
                return _error(exc.status, code, exc.message)
            except StoreUnavailable as exc:
                logger.warning("revocation refused: %s", exc)
                return _error(
                    503, "store_unavailable", "The revocation store is unreachable: nothing was changed"
                )
            except RevocationListFull as exc:
                logger.error("revocation refused: %s", exc)
                return _error(507, "list_full", str(exc))

        return endpoint

    async def revoke(request: Request) -> Response:
        entry = _entry(verifier, await _read_json(request))
        await revocations.submit_async(entry)
        logger.info("revoked a %s (fingerprint %s)", entry.kind, fingerprint(entry.value))
        return JSONResponse({"revoked": _described(entry)}, status_code=201, headers=_NO_STORE)

    async def counts(request: Request) -> Response:
        return JSONResponse(runtime.status(), headers=_NO_STORE)

    async def undo(request: Request) -> Response:
        entry = _entry(verifier, await _read_json(request))
        removed = await revocations.withdraw_async(entry)
        if removed:
            logger.info("revocation of a %s withdrawn (fingerprint %s)", entry.kind, fingerprint(entry.value))
        return JSONResponse({"removed": removed}, status_code=200 if removed else 404, headers=_NO_STORE)

    return [
        Route("/revocations", guarded(revoke), methods=["POST"]),
        Route("/revocations", guarded(counts), methods=["GET"]),
        Route("/revocations", guarded(undo), methods=["DELETE"]),
    ]


async def _authorise(verifier: Verifier, request: Request, scope: str) -> Response | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing_token")
        claims = await verifier.verify_async(token.strip())
        claims.require(scope)
    except AuthError as error:
        rendered = _PROFILE.render(error)
        return Response(rendered.body, status_code=rendered.status, headers=dict(rendered.headers))
    return None


# -- metrics -------------------------------------------------------------------------------------


class RevocationMetrics:
    """Revocation gauges and counters in the gateway's registry (multiprocess aware like the
    rest: ``registry=None`` under ``--workers``). Rejections for ``revoked_token`` are counted by
    ``gatekeeper_decisions{kind="revoked_token"}``."""

    def __init__(self, registry: Any) -> None:
        self.entries = Gauge(
            "gatekeeper_revocations",
            "Revocation entries in this process's list, by kind (jti, sub, client_id).",
            ["kind"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.mirror_age = Gauge(
            "gatekeeper_revocation_mirror_age_seconds",
            "Seconds since this process's revocation mirror last matched the shared store.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.blocked = Gauge(
            "gatekeeper_revocation_blocked",
            "1 while the revocation list refuses every verification (fail-closed, stale mirror).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.store_errors = Counter(
            "gatekeeper_revocation_store_errors",
            "Revocation store failures by operation (publish, retract, sync).",
            ["operation"],
            registry=registry,
        )
        self._seen: dict[str, int] = {}

    def update(self, runtime: RevocationRuntime) -> None:
        for kind, count in runtime.revocations.counts().items():
            self.entries.labels(kind).set(count)
        self.blocked.set(1 if runtime.revocations.blocked else 0)
        store = runtime.store
        if store is None:
            self.mirror_age.set(0)
            return
        self.mirror_age.set(store.mirror_age())
        for operation, total in dict(store.errors).items():
            grown = total - self._seen.get(operation, 0)
            if grown > 0:
                self.store_errors.labels(operation).inc(grown)
                self._seen[operation] = total


_METRICS: weakref.WeakKeyDictionary[Any, RevocationMetrics] = weakref.WeakKeyDictionary()


def revocation_metrics(metrics: Any) -> RevocationMetrics:
    """The revocation metrics that go with a ``GatewayMetrics`` (made on first use)."""
    found = _METRICS.get(metrics)
    if found is None:
        found = _METRICS[metrics] = RevocationMetrics(getattr(metrics, "registry", None))
    return found


__all__ = ["KINDS", "RevocationMetrics", "admin_routes", "revocation_metrics"]
