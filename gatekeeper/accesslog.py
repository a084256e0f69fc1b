"""One log record per rejected request: what, who and where, never the token."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .errors import AuthError
from .redact import fingerprint, redact_query

logger = logging.getLogger("gatekeeper.access")

#: Longest path (with its redacted query) written to a record; the rest is cut off.
MAX_LOGGED_PATH: Final = 512
# Control characters (CR/LF would forge log lines), DEL and C1 controls are escaped.
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str, limit: int = MAX_LOGGED_PATH) -> str:
    """Text safe to put in a log line: control characters escaped, at most ``limit`` chars."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNPRINTABLE.sub(_escape, text)


def client_address(scope: Mapping[str, Any]) -> str | None:
    """``host:port`` of the client (``[host]:port`` for IPv6), or None when unknown."""
    client = scope.get("client")
    if not client:
        return None
    host, port = str(client[0]), client[1]
    if ":" in host:
        host = f"[{host}]"
    return printable(f"{host}:{port}", 128)


def log_rejection(
    error: AuthError,
    scope: Mapping[str, Any],
    token: str | None,
    query_params: Sequence[str] = (),
    log: logging.Logger = logger,
) -> None:
    """Log a rejection at INFO (``keys_unavailable`` at WARNING: it is our problem, not the
    client's). The structured fields are in ``record.gatekeeper`` for JSON log handlers.

    The token appears only as its fingerprint; token query parameters (``query_params``, and
    always ``access_token`` and ``bearer_token``) are redacted from the logged path.
    """
    level = logging.WARNING if error.kind == "keys_unavailable" else logging.INFO
    if not log.isEnabledFor(level):
        return
    query = redact_query(scope.get("query_string", b""), query_params)
    path = scope.get("path", "")
    fields = {
        "kind": error.kind,
        "issuer": error.issuer,
        "kid": None if error.kid is None else printable(error.kid, 128),
        "token": fingerprint(token) if token else None,
        "client": client_address(scope),
        "method": scope.get("method", "WEBSOCKET" if scope.get("type") == "websocket" else ""),
        "path": printable(f"{path}?{query}" if query else path),
    }
    log.log(
        level,
        "rejected %(method)s %(path)s: %(kind)s "
        "(issuer=%(issuer)s kid=%(kid)s token=%(token)s client=%(client)s)",
        fields,
        extra={"gatekeeper": fields},
    )
