"""The proxy's header loops in C (gatekeeper.gateway._headers) and their Python twins agree.

Where the extension was not built (no C compiler), the proxy runs the twins, so both must give
the same answer for every input: each case runs against both, and property tests compare them on
random header lists. tests/gateway/test_rewrite.py runs the whole rewriting on each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.gateway import rewrite, upstream_conn
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.rewrite import (
    RequestRewriter,
    ResponseRewriter,
    rewrite_request_py,
    rewrite_response_py,
)
from gatekeeper.gateway.upstream_conn import request_head_py

try:
    from gatekeeper.gateway import _headers
except ImportError:  # no compiler where the package was installed
    _headers = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_headers is None, reason="gatekeeper.gateway._headers was not built")


def implementations(python: Callable[..., Any], name: str) -> list[Any]:
    params = [pytest.param(python, id="python")]
    if _headers is not None:
        params.append(pytest.param(getattr(_headers, name), id="c"))
    return params


Headers = list[tuple[bytes, bytes]]
STAMPED = frozenset({b"date", b"server"})


def odd(value: Any) -> Any:
    """A value of the wrong type, on purpose."""
    return value


def warm_request_table(headers: Headers) -> dict[bytes, tuple[int, bytes]]:
    """The request rewriter's classification table once it has seen these names."""
    rewriter = RequestRewriter(IdentityHeaders())
    for name, _ in headers:
        rewriter.classify(name)
    return rewriter._classified


def warm_response_table(headers: Headers) -> dict[bytes, tuple[bool, bool, bool, bytes]]:
    rewriter = ResponseRewriter(STAMPED)
    for name, _ in headers:
        rewriter.classify(name)
    return rewriter._classified


def test_the_extension_is_built_and_used_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the Python twins run (install gcc to build the extension)")
    assert _headers is not None, "gatekeeper.gateway._headers was not built: pip install -e . with gcc"
    assert upstream_conn._build_head is _headers.request_head
    assert rewrite.COMMON_REQUEST is _headers.rewrite_request
    assert rewrite.COMMON_RESPONSE is _headers.rewrite_response


# -- request_head ----------------------------------------------------------------------------


@pytest.mark.parametrize("build", implementations(request_head_py, "request_head"))
def test_request_head_is_the_line_the_headers_and_the_framing(build: Any) -> None:
    headers = [(b"host", b"up"), (b"x-one", b"1"), (b"x-empty", b"")]
    assert build(b"GET", b"/a?b=1", headers, False) == (
        b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\nx-one: 1\r\nx-empty: \r\n\r\n"
    )
    assert build(b"POST", b"/", (), True) == b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("build", implementations(request_head_py, "request_head"))
@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/a", [(b"x", b"1\r\nx-injected: 1")]),
        (b"GET", b"/a", [(b"x", b"1\n")]),
        (b"GET", b"/a", [(b"x", b"\r")]),
        (b"GET", b"/a", [(b"x\r\ny", b"1")]),
        (b"GET", b"/a", [(b"x", b"\x00")]),
        (b"GET", b"/a\r\nx: 1", []),
        (b"GET", b"/a\x00", []),
        (b"GET /b HTTP/1.1\r\n", b"/a", []),
    ],
)
def test_request_head_refuses_what_would_change_the_framing(
    build: Any, method: bytes, target: bytes, headers: Headers
) -> None:
    assert build(method, target, headers, False) is None


@needs_c
def test_request_head_in_c_takes_only_pairs_of_bytes() -> None:
    with pytest.raises(TypeError):
        _headers.request_head(b"GET", b"/", odd([(b"x", "str")]), False)
    with pytest.raises(TypeError):
        _headers.request_head(b"GET", b"/", odd([[b"x", b"1"]]), False)
    with pytest.raises(TypeError):
        _headers.request_head(odd("GET"), b"/", [], False)


header_bytes = st.binary(max_size=12) | st.sampled_from([b"\r", b"\n", b"\x00", b"a\r\nb", b""])
header_lists = st.lists(st.tuples(header_bytes, header_bytes), max_size=8)


@needs_c
@given(method=header_bytes, target=header_bytes, headers=header_lists, chunked=st.booleans())
def test_request_head_twins_agree_on_any_input(
    method: bytes, target: bytes, headers: Headers, chunked: bool
) -> None:
    assert _headers.request_head(method, target, headers, chunked) == request_head_py(
        method, target, headers, chunked
    )


# -- rewrite_request -------------------------------------------------------------------------


IDENTITY = ((b"x-auth-subject", b"alice"), (b"x-auth-scopes", b"read"))


def request_pass(
    common: Any,
    headers: Any,
    table: Any,
    *,
    forward_authorization: bool = False,
    forward_host: bool = False,
    x_forwarded: bool = True,
    identity: Any = IDENTITY,
) -> Any:
    return common(
        headers, table, forward_authorization, forward_host, x_forwarded, b"up:80", b"10.0.0.1", b"https",
        identity,
    )  # fmt: skip


@pytest.mark.parametrize("common", implementations(rewrite_request_py, "rewrite_request"))
def test_the_request_pass_keeps_drops_and_adds_host_forwarding_and_identity(common: Any) -> None:
    headers = [
        (b"Accept", b"*/*"),
        (b"Host", b"api.example"),
        (b"X-Auth-Subject", b"forged"),
        (b"Keep-Alive", b"5"),
        (b"Authorization", b"Bearer t"),
        (b"host", b"second"),
    ]
    table = warm_request_table(headers)
    forwarding = [
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"second"),
    ]
    assert request_pass(common, headers, table) == [
        (b"accept", b"*/*"), (b"host", b"up:80"), *forwarding, *IDENTITY
    ]  # fmt: skip
    assert request_pass(common, headers, table, forward_authorization=True, forward_host=True) == [
        (b"accept", b"*/*"), (b"authorization", b"Bearer t"), (b"host", b"second"), *forwarding, *IDENTITY
    ]  # fmt: skip
    assert request_pass(common, headers, table, x_forwarded=False, identity=()) == [
        (b"accept", b"*/*"), (b"host", b"up:80")
    ]  # fmt: skip
    assert request_pass(common, [], table, forward_host=True) == [
        (b"host", b"up:80"), *forwarding[:2], *IDENTITY
    ]  # fmt: skip
    empty_host = [(b"host", b"")]  # forwarded as it came, never as the upstream's Host
    assert request_pass(common, empty_host, table, forward_host=True, identity=()) == [
        (b"host", b"up:80"), *forwarding[:2], (b"x-forwarded-host", b"")
    ]  # fmt: skip


@pytest.mark.parametrize("common", implementations(rewrite_request_py, "rewrite_request"))
@pytest.mark.parametrize(
    "rare",
    [
        (b"Content-Length", b"3"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"front"),
        (b"Forwarded", b"for=1.1.1.1"),
    ],
)
def test_the_request_pass_leaves_the_rare_kinds_to_the_general_one(
    common: Any, rare: tuple[bytes, bytes]
) -> None:
    headers = [(b"accept", b"*/*"), rare]
    assert request_pass(common, headers, warm_request_table(headers)) is None


@pytest.mark.parametrize("common", implementations(rewrite_request_py, "rewrite_request"))
def test_the_request_pass_leaves_unknown_names_to_the_general_one(common: Any) -> None:
    table = warm_request_table([(b"accept", b"")])
    assert request_pass(common, [(b"accept", b"*/*"), (b"x-new", b"1")], table) is None


@needs_c
def test_the_c_request_pass_leaves_anything_but_tuples_of_bytes_to_the_general_one() -> None:
    table = warm_request_table([(b"accept", b"")])
    common = _headers.rewrite_request
    assert request_pass(common, [[b"accept", b"1"]], table) is None
    assert request_pass(common, [(b"accept", "1")], table) is None
    assert request_pass(common, iter([(b"accept", b"1")]), table) is None
    assert request_pass(common, [(b"accept", b"1")], {b"accept": (0, "lower")}) is None
    assert request_pass(common, [(b"accept", b"1")], {b"accept": (2**80, b"accept")}) is None
    with pytest.raises(TypeError):
        request_pass(common, [], table, identity=None)


names = st.sampled_from(
    [b"Accept", b"host", b"X-Auth-Subject", b"x_auth_scopes", b"Keep-Alive", b"authorization",
     b"Content-Length", b"Connection", b"X-Forwarded-For", b"x-new", b"TE", b"proxy-x", b"Expect"]
)  # fmt: skip
pairs = st.lists(st.tuples(names, st.binary(max_size=6)), max_size=8)
flags = st.booleans()


@needs_c
@given(headers=pairs, seen=pairs, forward=flags, forward_host=flags, x_forwarded=flags, identity=pairs)
def test_request_pass_twins_agree_on_any_headers(
    headers: Headers, seen: Headers, forward: bool, forward_host: bool, x_forwarded: bool, identity: Headers
) -> None:
    table = warm_request_table(seen)
    settings: dict[str, Any] = {
        "forward_authorization": forward, "forward_host": forward_host, "x_forwarded": x_forwarded,
        "identity": tuple(identity),
    }  # fmt: skip
    assert request_pass(_headers.rewrite_request, headers, table, **settings) == request_pass(
        rewrite_request_py, headers, table, **settings
    )


# -- rewrite_response ------------------------------------------------------------------------


@pytest.mark.parametrize("common", implementations(rewrite_response_py, "rewrite_response"))
def test_the_response_pass_relays_and_reads_the_length(common: Any) -> None:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"16"),
        (b"Date", b"upstream's"),
        (b"Server", b"upstream"),
        (b"Keep-Alive", b"5"),
    ]
    table = warm_response_table(headers)
    relayed = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    assert common(headers, table) == (relayed, 16)
    assert common([(b"Content-Type", b"x")], table) == ([(b"content-type", b"x")], None)


@pytest.mark.parametrize("common", implementations(rewrite_response_py, "rewrite_response"))
@pytest.mark.parametrize(
    "headers",
    [
        [(b"Connection", b"close")],
        [(b"Content-Length", b"1"), (b"content-length", b"1")],
        [(b"Content-Length", b"")],
        [(b"Content-Length", b" 1")],
        [(b"Content-Length", b"+1")],
        [(b"Content-Length", b"1" * 19)],
    ],
)
def test_the_response_pass_leaves_the_unusual_to_the_general_one(common: Any, headers: Headers) -> None:
    assert common(headers, warm_response_table(headers)) is None


@pytest.mark.parametrize("common", implementations(rewrite_response_py, "rewrite_response"))
def test_the_response_pass_takes_the_longest_plain_length(common: Any) -> None:
    headers = [(b"Content-Length", b"9" * 18)]
    assert common(headers, warm_response_table(headers)) == ([(b"content-length", b"9" * 18)], 10**18 - 1)


response_names = st.sampled_from(
    [b"Content-Type", b"content-length", b"Date", b"server", b"Connection", b"Keep-Alive",
     b"X-New", b"Transfer-Encoding", b"Set-Cookie"]
)  # fmt: skip
response_values = st.binary(max_size=4) | st.sampled_from([b"0", b"16", b"007", b"9" * 18, b"9" * 19])


@needs_c
@given(
    headers=st.lists(st.tuples(response_names, response_values), max_size=6),
    seen=st.lists(st.tuples(response_names, st.just(b"")), max_size=9),
)
def test_response_pass_twins_agree_on_any_headers(headers: Headers, seen: Headers) -> None:
    table = warm_response_table(seen)
    assert _headers.rewrite_response(headers, table) == rewrite_response_py(headers, table)
