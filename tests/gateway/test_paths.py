"""The gateway's one path normalisation: each bypass shape is refused or lands on the rule
that protects the prefix it is aimed at."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.gateway import paths
from gatekeeper.gateway.paths import PathRejected, normalise_path, split_target
from gatekeeper.rules import Rule, RuleSet

RULES = RuleSet(
    (Rule("/admin/**", scopes="admin"), Rule("/public/**", access="exempt")),
    default=Rule("/**"),
)


def rule_for(raw: str) -> Rule:
    return RULES.match("GET", normalise_path(raw))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("/admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//x", "/admin/x"),
        ("/admin/./x", "/admin/x"),
        ("/admin/../admin/x", "/admin/x"),
        ("/public/../admin/x", "/admin/x"),
        ("/public/x/../../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%41%44MIN", "/ADMIN"),
        ("/adm%69n/x", "/admin/x"),
        ("/admin/", "/admin/"),
        ("/admin/.", "/admin/"),
        ("/admin/x/..", "/admin/"),
        ("/a//", "/a/"),
        ("/%7euser/%2d%2E%5f", "/~user/-._"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/files/100%25", "/files/100%25"),
        ("/x/.../y", "/x/.../y"),
        ("/x/.%2e./y", "/x/.../y"),
        ("/x/a.%2e", "/x/a.."),
        ("/sub:delims!$&'()*+,=@", "/sub:delims!$&'()*+,=@"),
    ],
)
def test_normal_form(raw: str, normal: str) -> None:
    assert normalise_path(raw) == normal


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "does not start with '/'"),
        ("admin", "does not start with '/'"),
        ("*", "does not start with '/'"),
        ("http://evil/admin", "does not start with '/'"),
        ("/admin%2Fx", "encoded '/'"),
        ("/admin%2fx", "encoded '/'"),
        ("/public/..%2Fadmin", "encoded '/'"),
        ("/public/..%5Cadmin", "encoded '\\'"),
        ("/public/%2e%2e/admin", "encoded dot segment"),
        ("/public/%2E%2E/admin", "encoded dot segment"),
        ("/public/.%2e/admin", "encoded dot segment"),
        ("/public/%2e./admin", "encoded dot segment"),
        ("/admin/%2e/x", "encoded dot segment"),
        ("/public/%252e%252e/admin", "double-encoded"),
        ("/admin%00", "encoded control character"),
        ("/admin%0d%0aX-Auth-Subject:%20root", "encoded control character"),
        ("/admin%7f", "encoded control character"),
        ("/admin\x00", "NUL"),
        ("/admin\r\nx", "control character"),
        ("/admin\tx", "control character"),
        ("/admin\x7f", "control character"),
        ("/admin\\x", "backslash"),
        ("/public\\..\\admin", "backslash"),
        ("/admin;x", "';'"),
        ("/admin;jsessionid=1/x", "';'"),
        ("/admin%3Bx", "encoded ';'"),
        ("/..", "climbs above the root"),
        ("/../admin", "climbs above the root"),
        ("/public/../../admin", "climbs above the root"),
        ("/admin%", "invalid percent-encoding"),
        ("/admin%4", "invalid percent-encoding"),
        ("/admin%zz", "invalid percent-encoding"),
        ("/admin%ff", "not UTF-8"),
        ("/admin%c3", "not UTF-8"),
        ("/admin%ed%a0%80", "not UTF-8"),  # an encoded surrogate
        ("/public/%c0%ae%c0%ae/admin", "not UTF-8"),  # overlong UTF-8 dots (old IIS, Tomcat)
        ("/public/%u002e%u002e/admin", "invalid percent-encoding"),  # IIS %u escapes
        ("/public/..%c0%afadmin", "not UTF-8"),  # overlong "/"
        ("/admin/..;/x", "';'"),  # Tomcat: "..;" is a dot segment behind a reverse proxy
        ("/café", "non-ASCII"),
        ("/a b", "must be percent-encoded"),
        ("/a<b>", "must be percent-encoded"),
        ("/a?b", "'?'"),
        ("/a#b", "'#'"),
    ],
)
def test_refused(raw: str, reason: str) -> None:
    with pytest.raises(PathRejected) as info:
        normalise_path(raw)
    assert reason in info.value.reason
    if len(raw) > 3:  # the reason names the construct, never echoes the path
        assert raw not in info.value.reason


def test_bytes_are_ascii_only() -> None:
    assert normalise_path(b"/%61dmin") == "/admin"
    with pytest.raises(PathRejected, match="non-ASCII"):
        normalise_path("/caf\u00e9".encode())


def test_semicolons_can_be_allowed_and_are_never_stripped() -> None:
    assert normalise_path("/admin;x", allow_semicolon=True) == "/admin;x"
    assert normalise_path("/a%3bb", allow_semicolon=True) == "/a%3Bb"


@pytest.mark.parametrize(
    "raw",
    [
        "/admin/../admin/x",
        "//admin",
        "/%61dmin",
        "/admin/./x",
        "/public/../admin",
        "/adm%69n",
        "/admin//x",
        "/admin/",
    ],
)
def test_bypass_shapes_land_on_the_admin_rule(raw: str) -> None:
    assert rule_for(raw).path == "/admin/**"


def test_paths_are_case_sensitive() -> None:
    # Documented: /Admin is another path; it gets the default rule (a token, no admin scope).
    assert rule_for("/Admin/x") is RULES.default
    assert normalise_path("/Admin") == "/Admin"


def test_split_target() -> None:
    assert split_target("/a/b?x=1&bearer_token=t") == ("/a/b", "x=1&bearer_token=t")
    assert split_target("/a") == ("/a", "")
    assert split_target("/a?b?c") == ("/a", "b?c")
    with pytest.raises(PathRejected, match="fragment"):
        split_target("/a#frag")


_SEGMENT_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@%/.\\;"


@given(st.text(alphabet=_SEGMENT_CHARS + "\x00\r\n é", max_size=40).map(lambda s: "/" + s))
def test_normalisation_is_idempotent_and_safe(raw: str) -> None:
    try:
        once = normalise_path(raw)
    except PathRejected:
        return
    # Normal form is a fixed point: the upstream, normalising again, sees the same path.
    assert normalise_path(once) == once
    assert once.startswith("/")
    assert "//" not in once
    segments = once.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert not any(c in once for c in "\\\x00\r\n ")


# -- the fast path for already-normal paths --------------------------------------------------------

_PATHISH = st.text(alphabet="/.%2eEfF5cC3bBa;\\\x00\x7f é?#:@!~-_", max_size=24)


def _outcome(call: object, raw: str, allow_semicolon: bool) -> tuple[str, str]:
    try:
        return "ok", call(raw, allow_semicolon=allow_semicolon)  # type: ignore[operator]
    except PathRejected as rejected:
        return "rejected", rejected.reason


def _full(raw: str, *, allow_semicolon: bool) -> str:
    return paths._normalise(raw, allow_semicolon)


@given(tail=_PATHISH, lead=st.sampled_from(["/", "", "//", "/.", "/a/"]), allow_semicolon=st.booleans())
def test_the_fast_path_agrees_with_the_full_rule(tail: str, lead: str, allow_semicolon: bool) -> None:
    raw = lead + tail
    assert _outcome(normalise_path, raw, allow_semicolon) == _outcome(_full, raw, allow_semicolon)


@pytest.mark.parametrize("raw", ["/", "/items/1", "/a/b/", "/a;b", "/x.y/z-_~!$&'()*+,=:@"])
def test_a_normal_path_comes_back_as_the_same_string(raw: str) -> None:
    allow = ";" in raw
    assert normalise_path(raw, allow_semicolon=allow) is raw  # the fast path: no rebuilt copy
    assert _full(raw, allow_semicolon=allow) == raw
