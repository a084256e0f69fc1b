"""Keeping tokens out of logs: a short fingerprint instead of the token, redacted query strings."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote


def fingerprint(token: str) -> str:
    """A short, stable, non-reversible id for a token (a SHA-256 prefix), safe to log."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def redact_query(query_string: bytes, names: Iterable[str]) -> str:
    """The query string with the values of token parameters replaced, for logs."""
    if not query_string:
        return ""
    secret = set(names) | {"access_token", "bearer_token"}
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return "&".join(
        f"{quote(key, safe='')}={'[redacted]' if key in secret else quote(value, safe='')}"
        for key, value in pairs
    )
