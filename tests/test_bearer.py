"""Bearer token extraction from an ASGI scope, and keeping tokens out of logs."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper import AuthError
from gatekeeper.bearer import BearerSource
from gatekeeper.redact import fingerprint, redact_query

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjIn0.c2ln"


def scope(*headers: tuple[bytes, bytes], query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "headers": list(headers), "query_string": query}


def auth(value: str | bytes) -> tuple[bytes, bytes]:
    return (b"authorization", value.encode("latin-1") if isinstance(value, str) else value)


def refused(source: BearerSource, request: dict[str, Any]) -> AuthError:
    with pytest.raises(AuthError) as info:
        source.extract(request)
    assert info.value.kind == "invalid_request"
    assert TOKEN not in info.value.description
    return info.value


HEADER_ONLY = BearerSource.of()
PLACEOS = BearerSource.of(query_param="bearer_token")
RFC6750 = BearerSource.of(access_token=True)
BOTH = BearerSource.of(query_param="bearer_token", access_token=True)


# -- the Authorization header -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert HEADER_ONLY.extract(scope(auth(f"{scheme} {TOKEN}"))) == TOKEN


def test_b64token_characters_and_padding() -> None:
    for token in ("abc", "a-b_c.d~e+f/g", "abc==", "A" * 5000):
        assert HEADER_ONLY.extract(scope(auth(f"Bearer {token}"))) == token
    assert HEADER_ONLY.extract(scope(auth(f"Bearer   {TOKEN}"))) == TOKEN  # 1*SP


def test_header_name_case_in_a_hand_built_scope() -> None:
    assert HEADER_ONLY.extract(scope((b"Authorization", f"Bearer {TOKEN}".encode()))) == TOKEN


def test_no_token() -> None:
    assert HEADER_ONLY.extract(scope()) is None
    assert HEADER_ONLY.extract({"type": "http"}) is None
    assert HEADER_ONLY.extract(scope((b"x-authorization", f"Bearer {TOKEN}".encode()))) is None


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Digest username=x", "Token abc", "DPoP abc", "Negotiate YII="]
)
def test_other_schemes_count_as_no_token(value: str) -> None:
    assert HEADER_ONLY.extract(scope(auth(value))) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer",
        "Bearer ",
        "bearer  ",
        f"Bearer {TOKEN} extra",
        f"Bearer {TOKEN} ",
        f"Bearer\t{TOKEN}",
        f"Bearer{TOKEN}",
        f" Bearer {TOKEN}",
        f"Bearer {TOKEN},",
        'Bearer "quoted"',
        "Bearer =abc",
        "Bearer a=b",
        "Bearer é",
        f"Bearer {TOKEN}\x00",
    ],
)
def test_malformed_header_is_invalid_request(value: str) -> None:
    refused(HEADER_ONLY, scope(auth(value)))


def test_two_authorization_headers_are_invalid_request() -> None:
    refused(HEADER_ONLY, scope(auth(f"Bearer {TOKEN}"), auth(f"Bearer {TOKEN}")))
    refused(HEADER_ONLY, scope(auth(f"Bearer {TOKEN}"), auth("Basic dXNlcjpwYXNz")))
    refused(HEADER_ONLY, scope(auth("Basic dXNlcjpwYXNz"), (b"Authorization", b"Basic eA==")))


def test_header_can_be_turned_off() -> None:
    source = BearerSource.of(query_param="bearer_token", header=False)
    assert source.extract(scope(auth(f"Bearer {TOKEN}"))) is None
    assert source.extract(scope(auth(f"Bearer {TOKEN}"), query=f"bearer_token={TOKEN}".encode())) == TOKEN


# -- query parameters ---------------------------------------------------------------------------


def test_query_parameter_only_when_configured() -> None:
    query = f"bearer_token={TOKEN}".encode()
    assert HEADER_ONLY.extract(scope(query=query)) is None
    assert RFC6750.extract(scope(query=query)) is None
    assert PLACEOS.extract(scope(query=query)) == TOKEN
    assert PLACEOS.extract(scope(query=b"page=2&" + query + b"&q=x")) == TOKEN


def test_rfc6750_access_token_only_when_enabled() -> None:
    query = f"access_token={TOKEN}".encode()
    assert HEADER_ONLY.extract(scope(query=query)) is None
    assert PLACEOS.extract(scope(query=query)) is None
    assert RFC6750.extract(scope(query=query)) == TOKEN
    assert BOTH.extract(scope(query=query)) == TOKEN
    assert BearerSource.of(query_param="access_token").extract(scope(query=query)) == TOKEN
    assert RFC6750.query_params == ("access_token",)
    assert BOTH.query_params == ("bearer_token", "access_token")
    assert BearerSource.of(query_param="access_token", access_token=True).query_params == ("access_token",)


def test_query_values_are_percent_decoded_and_names_too() -> None:
    assert PLACEOS.extract(scope(query=b"bearer_token=a%2Eb%2Ec")) == "a.b.c"
    assert PLACEOS.extract(scope(query=b"bearer%5Ftoken=abc")) == "abc"
    assert PLACEOS.extract(scope(query=b"q=%20&x=1")) is None


@pytest.mark.parametrize(
    "query",
    [
        b"bearer_token=a&bearer_token=b",
        b"bearer_token=a&bearer_token=a",
        b"bearer_token=a&bearer%5Ftoken=b",
        b"bearer_token=",
        b"bearer_token",
    ],
)
def test_repeated_or_empty_parameter_is_invalid_request(query: bytes) -> None:
    refused(PLACEOS, scope(query=query))


def test_a_token_sent_two_ways_is_invalid_request() -> None:
    header = auth(f"Bearer {TOKEN}")
    refused(PLACEOS, scope(header, query=f"bearer_token={TOKEN}".encode()))
    refused(RFC6750, scope(header, query=f"access_token={TOKEN}".encode()))
    refused(BOTH, scope(query=f"access_token={TOKEN}&bearer_token={TOKEN}".encode()))
    # Without the query parameter configured, the header alone counts.
    assert HEADER_ONLY.extract(scope(header, query=f"bearer_token={TOKEN}".encode())) == TOKEN


def test_another_scheme_and_a_query_token() -> None:
    # Basic is not ours (no token from the header), so the query token is the only one.
    assert PLACEOS.extract(scope(auth("Basic dXNlcjpwYXNz"), query=b"bearer_token=abc")) == "abc"


def test_a_parameter_name_is_required() -> None:
    with pytest.raises(ValueError, match="name"):
        BearerSource.of(query_param="")


# -- logs ---------------------------------------------------------------------------------------


def test_fingerprint() -> None:
    value = fingerprint(TOKEN)
    assert len(value) == 12
    assert all(c in "0123456789abcdef" for c in value)
    assert value == fingerprint(TOKEN)
    assert value != fingerprint(TOKEN + "x")
    assert value not in TOKEN
    assert len(fingerprint("\ud800")) == 12  # any str, even one that is not valid UTF-8


def test_redact_query() -> None:
    query = f"page=2&bearer_token={TOKEN}&access_token={TOKEN}&mine={TOKEN}&q=a%20b".encode()
    redacted = redact_query(query, ["mine"])
    assert TOKEN not in redacted
    assert redacted == ("page=2&bearer_token=[redacted]&access_token=[redacted]&mine=[redacted]&q=a%20b")
    assert redact_query(b"", ["x"]) == ""
    assert TOKEN not in redact_query(f"bearer%5Ftoken={TOKEN}".encode(), [])
