"""Hop-by-hop header removal (RFC 9110 7.6.1), as plain data."""

from __future__ import annotations

from gatekeeper.gateway.hop import connection_tokens, strip_hop_by_hop


def test_fixed_hop_by_hop_headers_are_removed_in_any_case() -> None:
    headers = [
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
    assert strip_hop_by_hop(headers) == [(b"content-type", b"text/plain")]


def test_headers_named_in_every_connection_header_are_removed() -> None:
    headers = [
        (b"Connection", b"close, X-One"),
        (b"connection", b" x-two ,,"),
        (b"X-ONE", b"1"),
        (b"X-Two", b"2"),
        (b"x-two", b"2 again"),
        (b"X-Three", b"3"),
    ]
    assert connection_tokens(headers) == frozenset({b"close", b"x-one", b"x-two"})
    assert strip_hop_by_hop(headers) == [(b"x-three", b"3")]


def test_end_to_end_headers_keep_their_order_and_repeats() -> None:
    headers = [(b"Accept", b"a"), (b"X-Forwarded-For", b"1.2.3.4"), (b"accept", b"b"), (b"Set-Cookie", b"c")]
    assert strip_hop_by_hop(headers) == [
        (b"accept", b"a"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"accept", b"b"),
        (b"set-cookie", b"c"),
    ]


def test_also_named_headers_are_removed_in_any_case() -> None:
    headers = [(b"Date", b"then"), (b"Server", b"up"), (b"X-Kept", b"1")]
    assert strip_hop_by_hop(headers, frozenset({b"date", b"server"})) == [(b"x-kept", b"1")]
