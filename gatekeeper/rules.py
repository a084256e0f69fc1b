"""Route requirements: which requests need a token, and which scopes (sans-I/O).

Patterns are paths with ``{name}`` for one segment, ``*`` for any run within a segment and
``**`` for anything (including ``/``): ``/health``, ``/items/{id}``, ``/admin/**``. A trailing
``/**`` also matches the bare prefix (``/admin/**`` covers ``/admin``), so a scope rule for a
tree cannot be sidestepped by requesting its root. A rule for ``GET`` also covers ``HEAD``,
as Starlette's routes do. The first rule that matches the method and path wins; requests no
rule matches get the default. Paths are matched as the app routes them, under its
``root_path`` (see :func:`route_path`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .claims import ScopeMode

Access = Literal["required", "optional", "exempt"]
_TOKEN: re.Pattern[str] = re.compile(r"\*\*|\*|\{[^/{}]+\}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn a path pattern into a regex for ``fullmatch``."""
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern must start with '/': {pattern!r}")
    tree = pattern.endswith("/**")
    body = pattern[:-3] if tree else pattern
    parts: list[str] = []
    last = 0
    for match in _TOKEN.finditer(body):
        parts.append(re.escape(body[last : match.start()]))
        token = match.group()
        parts.append(".*" if token == "**" else "[^/]*" if token == "*" else "[^/]+")
        last = match.end()
    parts.append(re.escape(body[last:]))
    if tree:
        parts.append("(?:/.*)?")
    return re.compile("".join(parts))


def route_path(scope: Mapping[str, Any]) -> str:
    """The path the app routes on: ``path`` without the ``root_path`` it is mounted under
    (Starlette's rule, so rules see the same path as the app's routes)."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if not root or not path.startswith(root):
        return path
    if len(path) == len(root):
        return "/"
    return path[len(root) :] if path[len(root)] == "/" else path


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    # A bare string is a space-separated list, never a sequence of characters; so is each item
    # of a list (as ``Claims.require`` reads them), and a name given twice counts once.
    items = (value,) if isinstance(value, str) else value
    return tuple(dict.fromkeys(part for item in items for part in item.split()))


@dataclass(frozen=True)
class Rule:
    """A requirement for requests whose path matches ``path`` (and method, if given).

    ``access``: ``"required"`` (a good token), ``"optional"`` (anonymous allowed; claims
    attached when a good token is present) or ``"exempt"`` (not looked at: health checks).
    ``scopes`` are required of the token, all of them or, with ``mode="any"``, one.
    """

    path: str
    scopes: Sequence[str] = ()
    mode: ScopeMode = "all"
    methods: Sequence[str] | None = None
    access: Access = "required"
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, repr=False, compare=False)
    #: The scopes as a set, for the hot path's subset test (empty: nothing to check).
    wanted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("all", "any"):
            raise ValueError("mode must be 'all' or 'any'")
        if self.access not in ("required", "optional", "exempt"):
            raise ValueError("access must be 'required', 'optional' or 'exempt'")
        object.__setattr__(self, "scopes", _names(self.scopes))
        object.__setattr__(self, "wanted", frozenset(self.scopes))
        regex = compile_pattern(self.path)
        # A pattern without wildcards is compared as a string: cheaper than a regex match.
        literal = _TOKEN.search(self.path) is None
        object.__setattr__(self, "_regex", None if literal else regex)
        methods = None
        if self.methods is not None:
            methods = {m.upper() for m in _names(self.methods)}
            if "GET" in methods:
                methods.add("HEAD")
        object.__setattr__(self, "_methods", None if methods is None else frozenset(methods))

    def satisfied_by(self, scopes: frozenset[str]) -> bool:
        """Whether a token carrying ``scopes`` has what this rule requires."""
        wanted = self.wanted
        if not wanted:
            return True
        return wanted <= scopes if self.mode == "all" else not wanted.isdisjoint(scopes)

    def matches(self, method: str, path: str) -> bool:
        if self._methods is not None and method not in self._methods:
            return False
        if self._regex is None:
            return path == self.path
        return self._regex.fullmatch(path) is not None


DEFAULT_RULE = Rule("/**")


@dataclass(frozen=True)
class RuleSet:
    """Ordered rules plus the default for requests no rule matches."""

    rules: tuple[Rule, ...] = ()
    default: Rule = DEFAULT_RULE

    @classmethod
    def build(
        cls,
        rules: Iterable[Rule] = (),
        *,
        exempt: Iterable[str] = (),
        optional: bool = False,
        scopes: str | Sequence[str] = (),
    ) -> RuleSet:
        """Rules from the middleware's arguments: ``exempt`` paths first, then ``rules``."""
        if isinstance(exempt, str):
            exempt = (exempt,)
        ordered = [Rule(path, access="exempt") for path in exempt] + list(rules)
        default = Rule("/**", scopes=_names(scopes), access="optional" if optional else "required")
        return cls(tuple(ordered), default)

    def match(self, method: str, path: str) -> Rule:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return self.default

    def match_scope(self, scope: Mapping[str, Any]) -> Rule:
        """The rule for an ASGI http or websocket scope (a websocket counts as ``GET``)."""
        if not self.rules:
            return self.default
        return self.match(scope.get("method", "GET"), route_path(scope))
