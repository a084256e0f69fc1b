"""One log record per rejected request: what, who and where, never the token."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import AuthError
from .redact import fingerprint, redact_query

logger = logging.getLogger("gatekeeper.access")


def client_address(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    if client:
        host, port = client[0], client[1]
        return f"{host}:{port}"
    return None


def log_rejection(
    error: AuthError,
    scope: Mapping[str, Any],
    token: str | None,
    query_params: Sequence[str] = (),
    log: logging.Logger = logger,
) -> None:
    """Log a rejection at INFO (``keys_unavailable`` at WARNING: it is our problem, not the
    client's). The structured fields are in ``record.gatekeeper`` for JSON log handlers."""
    query = redact_query(scope.get("query_string", b""), query_params)
    path = scope.get("path", "")
    fields = {
        "kind": error.kind,
        "issuer": error.issuer,
        "kid": error.kid,
        "token": fingerprint(token) if token else None,
        "client": client_address(scope),
        "method": scope.get("method", "WEBSOCKET" if scope.get("type") == "websocket" else ""),
        "path": f"{path}?{query}" if query else path,
    }
    level = logging.WARNING if error.kind == "keys_unavailable" else logging.INFO
    log.log(
        level,
        "rejected %(method)s %(path)s: %(kind)s "
        "(issuer=%(issuer)s kid=%(kid)s token=%(token)s client=%(client)s)",
        fields,
        extra={"gatekeeper": fields},
    )
