"""The proxy's header rewriting (gatekeeper.gateway.rewrite), as plain data: hop-by-hop removal
both ways (RFC 9110 7.6.1), identity copies, Host and X-Forwarded-*, the body's framing.

Every test runs with each common pass (the C one where it was built, and its Python twin), and
the helpers rewrite each message twice: once with the names unknown (the general pass), once
with them classified (the common pass, where the message is a common one); both must agree."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper.claims import Claims
from gatekeeper.gateway import rewrite as rewrite_module
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import UpstreamSettings
from gatekeeper.gateway.rewrite import (
    BAD_LENGTH,
    CLASSIFIED_MAX,
    RequestRewriter,
    ResponseRewriter,
    rewrite_request_py,
    rewrite_response_py,
)

try:
    from gatekeeper.gateway import _headers
except ImportError:  # no compiler where the package was installed
    _headers = None  # type: ignore[assignment]

STAMPED = frozenset({b"date", b"server"})
IDENTITY = ((b"x-auth-subject", b"alice"),)


Headers = list[tuple[bytes, bytes]]
PASSES = [pytest.param((rewrite_request_py, rewrite_response_py), id="python")]
if _headers is not None:
    PASSES.append(pytest.param((_headers.rewrite_request, _headers.rewrite_response), id="c"))


@pytest.fixture(autouse=True, params=PASSES)
def common_pass(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test with each implementation of the common passes."""
    request_pass, response_pass = request.param
    monkeypatch.setattr(rewrite_module, "COMMON_REQUEST", request_pass)
    monkeypatch.setattr(rewrite_module, "COMMON_RESPONSE", response_pass)


def rewrite(headers: Headers, **settings: Any) -> tuple[Headers, Any, bool]:
    upstream = UpstreamSettings("http://up.internal:8080", **settings)
    rewriter = RequestRewriter(IdentityHeaders())
    answers = [
        rewriter.rewrite(list(headers), upstream, b"up.internal:8080", b"10.0.0.9", b"https", IDENTITY)
        for _ in range(2)
    ]
    assert answers[0] == answers[1]  # names unknown, then classified
    return answers[0]


def relayed(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return response(headers)[0]


def response(headers: Headers) -> tuple[Headers, Any]:
    rewriter = ResponseRewriter(STAMPED)
    answers = [rewriter.rewrite(list(headers)) for _ in range(2)]
    assert answers[0] == answers[1]
    return answers[0]


HOP_BY_HOP = [
    (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Sum"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"h2c"),
    (b"Proxy-Authorization", b"Basic eA=="),
    (b"proxy-connection", b"keep-alive"),
    (b"Proxy-Anything", b"1"),
    (b"Content-Type", b"text/plain"),
]


def test_fixed_hop_by_hop_response_headers_are_removed_in_any_case() -> None:
    assert relayed(HOP_BY_HOP) == [(b"content-type", b"text/plain")]


def test_fixed_hop_by_hop_request_headers_are_removed_in_any_case() -> None:
    out, _, coded = rewrite(HOP_BY_HOP, x_forwarded="off")
    assert out == [(b"content-type", b"text/plain"), (b"host", b"up.internal:8080"), *IDENTITY]
    assert coded  # Transfer-Encoding came: the body is chunked on to the upstream


def test_headers_named_in_every_connection_header_are_removed_both_ways() -> None:
    headers = [
        (b"Connection", b"close, X-One"),
        (b"connection", b" x-two ,,"),
        (b"X-ONE", b"1"),
        (b"X-Two", b"2"),
        (b"x-two", b"2 again"),
        (b"X-Three", b"3"),
    ]
    assert relayed(headers) == [(b"x-three", b"3")]
    out, _, _ = rewrite(headers, x_forwarded="off")
    assert out == [(b"x-three", b"3"), (b"host", b"up.internal:8080"), *IDENTITY]


def test_a_connection_named_header_goes_in_its_underscore_spelling_too() -> None:
    out, _, _ = rewrite([(b"Connection", b"x_one"), (b"X-One", b"1"), (b"X_One", b"1")], x_forwarded="off")
    assert [name for name, _ in out] == [b"host", b"x-auth-subject"]


def test_end_to_end_headers_keep_their_order_and_repeats() -> None:
    headers = [(b"Accept", b"a"), (b"X-Custom", b"1"), (b"accept", b"b"), (b"Set-Cookie", b"c")]
    expected = [(b"accept", b"a"), (b"x-custom", b"1"), (b"accept", b"b"), (b"set-cookie", b"c")]
    assert relayed(headers) == expected
    assert rewrite(headers, x_forwarded="off")[0][:4] == expected


def test_stamped_response_headers_are_removed_in_any_case() -> None:
    assert relayed([(b"Date", b"then"), (b"SERVER", b"up"), (b"X-Kept", b"1")]) == [(b"x-kept", b"1")]


@pytest.mark.parametrize(
    ("values", "length"),
    [
        ([], None),
        ([b"12"], 12),
        ([b"12", b"12"], 12),  # repeated with the same value: one length
        ([b"12", b"13"], BAD_LENGTH),
        ([b"-1"], BAD_LENGTH),
        ([b"1e3"], BAD_LENGTH),
        ([b""], BAD_LENGTH),
    ],
)
def test_the_content_length_is_read_in_the_same_pass(values: list[bytes], length: int | None) -> None:
    headers = [(b"Content-Length", value) for value in values]
    assert rewrite(headers)[1] == length
    assert response(headers)[1] == length


def test_content_length_named_in_connection_still_frames_the_request_body() -> None:
    # Dropping it would make the upstream read the body as the next request (smuggling).
    headers = [(b"Connection", b"content-length"), (b"Content-Length", b"41")]
    out, length, _ = rewrite(headers, x_forwarded="off")
    assert length == 41
    assert (b"content-length", b"41") in out


@pytest.mark.parametrize(
    "name", [b"X-Auth-Subject", b"x-auth-subject", b"X_AUTH_SUBJECT", b"X-Auth-Anything", b"x_auth_role"]
)
def test_client_copies_of_identity_headers_never_reach_the_upstream(name: bytes) -> None:
    out, _, _ = rewrite([(name, b"forged"), (b"Accept", b"*/*")], x_forwarded="off")
    assert out == [(b"accept", b"*/*"), (b"host", b"up.internal:8080"), *IDENTITY]


def test_host_and_x_forwarded_set_replace_what_the_client_sent() -> None:
    headers = [
        (b"Host", b"api.example.com"),
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"X-Forwarded-Proto", b"gopher"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"Forwarded", b"for=6.6.6.6"),
        (b"Expect", b"100-continue"),
    ]
    out, _, _ = rewrite(headers)
    assert out == [
        (b"host", b"up.internal:8080"),
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"api.example.com"),
        *IDENTITY,
    ]


def test_x_forwarded_append_keeps_the_chain_and_host_forward_keeps_the_host() -> None:
    headers = [
        (b"Host", b"api.example.com"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"front.example"),
        (b"Forwarded", b"for=1.1.1.1"),
    ]
    out, _, _ = rewrite(headers, x_forwarded="append", host="forward")
    assert out == [
        (b"forwarded", b"for=1.1.1.1"),
        (b"host", b"api.example.com"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.9"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"front.example"),
        *IDENTITY,
    ]


def test_authorization_goes_on_only_when_configured() -> None:
    headers = [(b"Authorization", b"Bearer t")]
    assert (b"authorization", b"Bearer t") not in rewrite(headers)[0]
    assert (b"authorization", b"Bearer t") in rewrite(headers, forward_authorization=True)[0]


def test_classifications_are_remembered_up_to_the_bound() -> None:
    rewriter = RequestRewriter(IdentityHeaders())
    responses = ResponseRewriter(STAMPED)
    upstream = UpstreamSettings("http://up")
    flood = [(b"x-n%d" % n, b"v") for n in range(CLASSIFIED_MAX + 50)]
    out, _, _ = rewriter.rewrite(flood, upstream, b"up", b"peer", b"http", ())
    assert out[: len(flood)] == flood  # past the bound, names are still classified, just not kept
    assert responses.rewrite(flood)[0] == flood
    assert len(rewriter._classified) == CLASSIFIED_MAX
    assert len(responses._classified) == CLASSIFIED_MAX
    late = [(b"X-Auth-Subject", b"forged"), (b"Keep-Alive", b"1"), (b"x-late", b"kept")]
    assert rewriter.rewrite(late, upstream, b"up", b"peer", b"http", ())[0][0] == (b"x-late", b"kept")
    assert responses.rewrite(late)[0] == [(b"x-auth-subject", b"forged"), (b"x-late", b"kept")]


def test_the_rendered_identity_comes_last_after_every_client_copy_is_gone() -> None:
    identity = IdentityHeaders()
    data = {"sub": "alice", "client_id": "app"}
    claims = Claims(data, frozenset({"read"}), issuer="https://issuer", kid=None)
    rendered = identity.rendered(claims)
    out, _, _ = RequestRewriter(identity).rewrite(
        [(b"X-Auth-Subject", b"mallory")], UpstreamSettings("http://up"), b"up", b"p", b"http", rendered
    )
    assert out[-len(rendered) :] == list(rendered)
    assert [value for name, value in out if name == b"x-auth-subject"] == [b"alice"]


def test_every_client_copy_of_an_identity_header_goes_and_connection_names_go_too() -> None:
    headers = [
        (b"host", b"api"),
        (b"x-auth-subject", b"admin"),
        (b"X-AUTH-SUBJECT", b"admin2"),
        (b"x_auth_subject", b"admin3"),
        (b"X_Auth_Client_Id", b"evil"),
        (b"x-auth-role", b"superuser"),  # under the prefix, not a configured name
        (b"x-forwarded-user", b"named-in-connection"),
        (b"connection", b"keep-alive, X-Forwarded-User, x-auth-issuer"),
        (b"authorization", b"Bearer t"),
        (b"x-authority", b"kept: not under X-Auth-"),
    ]
    out, _, _ = rewrite(headers, x_forwarded="off", forward_authorization=True)
    assert out == [
        (b"authorization", b"Bearer t"),
        (b"x-authority", b"kept: not under X-Auth-"),
        (b"host", b"up.internal:8080"),
        *IDENTITY,
    ]


def test_without_a_prefix_other_x_auth_headers_are_kept() -> None:
    identity = IdentityHeaders.from_mapping({"X-User": "sub"}, prefix=None)
    headers = [(b"x-auth-role", b"r"), (b"X_USER", b"evil")]
    out, _, _ = RequestRewriter(identity).rewrite(
        headers, UpstreamSettings("http://up"), b"up", b"p", b"http", ()
    )
    assert out[0] == (b"x-auth-role", b"r")
    assert b"x_user" not in [name for name, _ in out]


def test_an_identity_header_first_seen_after_the_bound_is_still_removed() -> None:
    rewriter = RequestRewriter(IdentityHeaders())
    upstream = UpstreamSettings("http://up", x_forwarded="off")
    rewriter.rewrite(
        [(b"x-n%d" % n, b"v") for n in range(CLASSIFIED_MAX)], upstream, b"up", b"p", b"http", ()
    )
    late = [
        (b"X_AUTH_SUBJECT", b"admin"),
        (b"x-auth-anything", b"x"),
        (b"accept", b"*/*"),
        (b"Connection", b"keep-alive, X-Auth-Subject, accept"),
    ]
    for _ in range(2):  # neither classification is remembered: both calls classify afresh
        assert rewriter.rewrite(late, upstream, b"up", b"p", b"http", ())[0] == [(b"host", b"up")]
