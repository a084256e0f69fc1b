"""The access log: one JSON line per request, from a :class:`RequestRecord`.

A record never holds a token (``token`` is already a fingerprint and ``path`` has token query
parameters redacted), so every field can be written as it is. One ``write`` per line, so lines
from several worker processes appending to the same file do not interleave.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import IO, Any

from .record import RequestRecord

logger = logging.getLogger("gatekeeper.gateway")


def record_fields(record: RequestRecord) -> dict[str, Any]:
    """The JSON object for one record (durations in milliseconds, rounded)."""
    return {
        "time": round(time.time(), 3),
        "door": record.door,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "decision": record.decision,
        "error_kind": record.error_kind,
        "rule": record.rule,
        "issuer": record.issuer,
        "sub": record.subject,
        "client_id": record.client_id,
        "token": record.token,
        "cached": record.cached,
        "latency_ms": round(record.latency * 1000, 3),
        "decision_ms": round(record.decision_latency * 1000, 3),
        "upstream_status": record.upstream_status,
        "upstream_ms": None if record.upstream_latency is None else round(record.upstream_latency * 1000, 3),
    }


class AccessLog:
    """A reporter writing one JSON line per record to ``stream``."""

    def __init__(self, stream: IO[str], *, close: bool = False) -> None:
        self.stream = stream
        self._close = close
        self._lock = threading.Lock()

    @classmethod
    def open(cls, target: str) -> AccessLog | None:
        """``stdout``, ``stderr``, ``off`` (None) or a file path (appended to)."""
        if target == "off":
            return None
        if target == "stdout":
            return cls(sys.stdout)
        if target == "stderr":
            return cls(sys.stderr)
        return cls(open(target, "a", encoding="utf-8", buffering=1), close=True)

    def __call__(self, record: RequestRecord) -> None:
        line = json.dumps(record_fields(record), separators=(",", ":"), ensure_ascii=True) + "\n"
        try:
            with self._lock:
                self.stream.write(line)
                self.stream.flush()
        except (OSError, ValueError) as exc:  # a full disk or a closed stream must not fail a request
            logger.warning("access log write failed: %s", exc)

    def close(self) -> None:
        if self._close:
            self.stream.close()
