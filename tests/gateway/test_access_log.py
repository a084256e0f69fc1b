"""The JSON access log: one line per record, every field, never more than a fingerprint."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gatekeeper.gateway.access_log import AccessLog, record_fields
from gatekeeper.gateway.record import RequestRecord


def _record(**changes: object) -> RequestRecord:
    record = RequestRecord(
        "proxy", "GET", "/api/x?bearer_token=[redacted]", 200, "allow", 0.0123456, 0.0004,
        rule="/api/**", issuer="https://i", subject="alice", client_id="app", token="0123abcd4567",
        cached=False, upstream_status=200, upstream_latency=0.01,
    )  # fmt: skip
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_fields() -> None:
    fields = record_fields(_record())
    assert {k: fields[k] for k in fields if k != "time"} == {
        "door": "proxy",
        "method": "GET",
        "path": "/api/x?bearer_token=[redacted]",
        "status": 200,
        "decision": "allow",
        "error_kind": None,
        "rule": "/api/**",
        "issuer": "https://i",
        "sub": "alice",
        "client_id": "app",
        "token": "0123abcd4567",
        "cached": False,
        "latency_ms": 12.346,
        "decision_ms": 0.4,
        "upstream_status": 200,
        "upstream_ms": 10.0,
    }


def test_one_line_per_record_even_with_newlines_in_values() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log(_record(path="/a\nfake-line"))
    log(_record(decision="deny", status=401, error_kind="missing_token", token=None))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["path"] == "/a\nfake-line"
    assert json.loads(lines[1])["error_kind"] == "missing_token"


def test_targets(tmp_path: Path) -> None:
    assert AccessLog.open("off") is None
    path = tmp_path / "access.log"
    path.write_text('{"earlier": true}\n')
    log = AccessLog.open(str(path))
    assert log is not None
    log(_record())
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # appended
    assert json.loads(lines[1])["status"] == 200


def test_a_failing_stream_does_not_raise() -> None:
    stream = io.StringIO()
    stream.close()
    AccessLog(stream)(_record())  # logged as a warning, the request goes on
