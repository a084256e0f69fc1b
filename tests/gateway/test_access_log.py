"""The JSON access log: one line per record, every field, never more than a fingerprint."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from gatekeeper.claims import Claims
from gatekeeper.gateway.access_log import AccessLog, record_fields
from gatekeeper.gateway.record import RequestRecord, logged_query, token_fingerprint
from gatekeeper.redact import fingerprint, redact_query


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


# -- what the doors put in a record, computed cheaply ------------------------------------------

_PIECE = st.sampled_from(
    [
        "a",
        "x1",
        "",
        "%41",
        "%2",
        "+",
        "~._-",
        "bearer_token",
        "%62earer_token",
        "token",
        "é",
        ";",
        "\x00",
        "=",
    ]
)
_PAIR = st.tuples(st.lists(_PIECE, max_size=3), st.none() | st.lists(_PIECE, max_size=3)).map(
    lambda kv: "".join(kv[0]) + ("" if kv[1] is None else "=" + "".join(kv[1]))
)
_QUERYISH = st.lists(_PAIR, max_size=4).map("&".join) | st.text(alphabet="ab=&%+2041;~._- é\x00", max_size=30)


@given(query=_QUERYISH, names=st.sampled_from([(), ("token",), ("a",), ("",)]))
@example(query="%41=1", names=())
@example(query="a=1&%62earer_token=x", names=())
@example(query="a+b=1&c=%7e", names=())
@example(query="a=1&b", names=())
def test_logged_query_is_exactly_redact_query(query: str, names: tuple[str, ...]) -> None:
    raw = query.encode("utf-8")
    assert logged_query(raw, frozenset(names)) == redact_query(raw, names)


def test_logged_query_redacts_token_parameters() -> None:
    assert logged_query(b"x=1&bearer_token=secret", frozenset()) == "x=1&bearer_token=[redacted]"
    assert logged_query(b"x=1&token=secret", frozenset({"token"})) == "x=1&token=[redacted]"
    assert logged_query(b"x=1&y=2", frozenset({"token"})) == "x=1&y=2"


def test_token_fingerprint_is_the_fingerprint_and_checks_the_token() -> None:
    claims = Claims({"sub": "a", "exp": 2_000_000_000}, frozenset(), issuer="https://i", kid=None)
    assert token_fingerprint("token-one", claims) == fingerprint("token-one")
    assert token_fingerprint("token-one", claims) == fingerprint("token-one")
    # the same claims object with another token (never seen in practice): that token's own
    assert token_fingerprint("token-two", claims) == fingerprint("token-two")
    assert token_fingerprint("token-three") == fingerprint("token-three")
