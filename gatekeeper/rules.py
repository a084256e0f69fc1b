"""Route requirements: which requests need a token, and which scopes (sans-I/O).

Patterns are paths with ``{name}`` for one segment, ``*`` for any run within a segment and
``**`` for anything (including ``/``): ``/health``, ``/items/{id}``, ``/admin/**``. The first
rule that matches the method and path wins; requests no rule matches get the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .claims import ScopeMode

Access = Literal["required", "optional", "exempt"]
_TOKEN: re.Pattern[str] = re.compile(r"\*\*|\*|\{[^/{}]+\}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn a path pattern into an anchored regex."""
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern must start with '/': {pattern!r}")
    parts: list[str] = []
    last = 0
    for match in _TOKEN.finditer(pattern):
        parts.append(re.escape(pattern[last : match.start()]))
        token = match.group()
        parts.append(".*" if token == "**" else "[^/]*" if token == "*" else "[^/]+")
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts))


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
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("all", "any"):
            raise ValueError("mode must be 'all' or 'any'")
        if self.access not in ("required", "optional", "exempt"):
            raise ValueError("access must be 'required', 'optional' or 'exempt'")
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "_regex", compile_pattern(self.path))
        methods = None if self.methods is None else frozenset(m.upper() for m in self.methods)
        object.__setattr__(self, "_methods", methods)

    def matches(self, method: str, path: str) -> bool:
        if self._methods is not None and method not in self._methods:
            return False
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
        scopes: Sequence[str] = (),
    ) -> RuleSet:
        """Rules from the middleware's arguments: ``exempt`` paths first, then ``rules``."""
        ordered = [Rule(path, access="exempt") for path in exempt] + list(rules)
        default = Rule("/**", scopes=tuple(scopes), access="optional" if optional else "required")
        return cls(tuple(ordered), default)

    def match(self, method: str, path: str) -> Rule:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return self.default
