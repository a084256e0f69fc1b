"""Route rules (gatekeeper.rules): path patterns, methods, access and the rule set's order."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper.rules import Rule, RuleSet, compile_pattern, route_path


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/health", "/health", True),
        ("/health", "/health/", False),
        ("/health", "/healthz", False),
        ("/health", "/HEALTH", False),
        ("/items/{id}", "/items/42", True),
        ("/items/{id}", "/items/", False),
        ("/items/{id}", "/items/42/parts", False),
        ("/items/{id}/parts", "/items/42/parts", True),
        ("/files/*.txt", "/files/a.txt", True),
        ("/files/*.txt", "/files/.txt", True),
        ("/files/*.txt", "/files/a/b.txt", False),
        ("/admin/**", "/admin", True),  # a tree's rule covers its root too
        ("/admin/**", "/admin/", True),
        ("/admin/**", "/admin/users/7", True),
        ("/admin/**", "/administrator", False),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/z", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/v1.0/x", "/v1x0/x", False),  # regex metacharacters are literal
        ("/a+b", "/a+b", True),
        ("/a+b", "/aab", False),
    ],
)
def test_patterns(pattern: str, path: str, matches: bool) -> None:
    assert Rule(pattern).matches("GET", path) is matches
    # The compiled regex agrees (literal patterns are compared as strings instead).
    assert (compile_pattern(pattern).fullmatch(path) is not None) is matches


def test_pattern_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        Rule("health")


def test_methods_are_case_insensitive_and_get_covers_head() -> None:
    rule = Rule("/items", methods=["post", "Get"])
    assert rule.matches("POST", "/items")
    assert rule.matches("GET", "/items")
    assert rule.matches("HEAD", "/items")  # as Starlette routes answer HEAD for GET
    assert not rule.matches("DELETE", "/items")
    assert not Rule("/items", methods=["POST"]).matches("HEAD", "/items")


def test_strings_are_lists_not_characters() -> None:
    rule = Rule("/items", scopes="read write", methods="POST")
    assert rule.scopes == ("read", "write")
    assert rule.matches("POST", "/items")
    assert not rule.matches("P", "/items")
    assert RuleSet.build(scopes="read").default.scopes == ("read",)
    assert RuleSet.build(exempt="/health").match("GET", "/health").access == "exempt"


@pytest.mark.parametrize(("field", "value"), [("mode", "some"), ("access", "maybe")])
def test_bad_mode_or_access(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        Rule("/x", **{field: value})  # type: ignore[arg-type]


def test_rule_set_first_match_wins_exempt_first() -> None:
    rules = RuleSet.build(
        [
            Rule("/items/**", scopes=["write"], methods=["POST", "DELETE"]),
            Rule("/items/**", scopes=["read", "admin"], mode="any"),
            Rule("/health", scopes=["never"]),  # shadowed: exempt paths come first
            Rule("/public/**", access="optional"),
        ],
        exempt=["/health", "/metrics"],
        scopes=["base"],
    )
    assert rules.match("POST", "/items/1").scopes == ("write",)
    get = rules.match("GET", "/items/1")
    assert (get.scopes, get.mode) == (("read", "admin"), "any")
    assert rules.match("GET", "/health").access == "exempt"
    assert rules.match("GET", "/metrics").access == "exempt"
    assert rules.match("GET", "/public").access == "optional"
    default = rules.match("GET", "/other")
    assert (default.access, default.scopes) == ("required", ("base",))
    assert RuleSet.build(optional=True).match("GET", "/x").access == "optional"


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"path": "/api/items"}, "/api/items"),
        ({"path": "/api/items", "root_path": ""}, "/api/items"),
        ({"path": "/api/items", "root_path": "/api"}, "/items"),
        ({"path": "/api", "root_path": "/api"}, "/"),
        ({"path": "/apiary/x", "root_path": "/api"}, "/apiary/x"),
        ({"path": "/items", "root_path": "/api"}, "/items"),  # a server that left root_path out
    ],
)
def test_route_path(scope: dict[str, Any], expected: str) -> None:
    assert route_path(scope) == expected


def test_match_scope_uses_route_path_and_websocket_is_get() -> None:
    rules = RuleSet.build([Rule("/admin/**", scopes=["admin"], methods=["GET"])], exempt=["/health"])
    mounted = {"type": "http", "method": "GET", "path": "/api/health", "root_path": "/api"}
    assert rules.match_scope(mounted).access == "exempt"
    socket = {"type": "websocket", "path": "/api/admin/feed", "root_path": "/api"}
    assert rules.match_scope(socket).scopes == ("admin",)
    # No rules: the default, without looking at the path.
    assert RuleSet.build().match_scope({"type": "http", "path": "/x"}).access == "required"
