"""Verified claims: a read-only mapping with the token's scopes normalised into a frozenset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from .errors import AuthError

ScopeMode = Literal["all", "any"]

#: Claims that carry scopes, in the order they are read. ``scope`` is RFC 8693/9068's
#: space-separated string; ``scp`` is Entra's/Okta's (string or list).
DEFAULT_SCOPE_CLAIMS: tuple[str, ...] = ("scope", "scp")


def normalise_scopes(
    payload: Mapping[str, Any], claim_names: Sequence[str] = DEFAULT_SCOPE_CLAIMS
) -> frozenset[str]:
    """Collect scopes from every named claim: a space-separated string or a list of strings.

    Values of any other type are ignored rather than trusted (a number is not a scope).
    """
    scopes: set[str] = set()
    for name in claim_names:
        value = payload.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str) and item)
    return frozenset(scopes)


class Claims(Mapping[str, Any]):
    """The claims of a verified token. Read-only; ``scopes`` is a frozenset.

    ``issuer`` is the configured issuer that verified the token and ``kid`` the key that did.
    ``checked_at`` is the revocation list's generation at which these claims were last found
    not revoked (-1: never), so a cache hit re-checks the list only when it has changed.
    """

    __slots__ = ("_data", "checked_at", "issuer", "kid", "scopes")

    def __init__(self, data: dict[str, Any], scopes: frozenset[str], *, issuer: str, kid: str | None) -> None:
        self._data = data
        self.scopes = scopes
        self.issuer = issuer
        self.kid = kid
        self.checked_at = -1

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        # Claims are not secrets, but keep reprs short and predictable in logs.
        return f"Claims(sub={self._data.get('sub')!r}, iss={self.issuer!r}, scopes={sorted(self.scopes)!r})"

    @property
    def subject(self) -> str | None:
        """The ``sub`` claim, when it is a string."""
        sub = self._data.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def expires_at(self) -> float:
        """The ``exp`` claim (always present on verified claims)."""
        return float(self._data["exp"])

    def has_scopes(self, scopes: Iterable[str], mode: ScopeMode = "all") -> bool:
        """Whether the token carries the scopes: all of them, or at least one with ``mode="any"``.

        Requiring no scopes is always satisfied. A plain string is a space-separated scope
        list (``"read write"``), as in OAuth, never a sequence of one-letter scopes.
        """
        if isinstance(scopes, str):
            scopes = scopes.split()
        wanted = scopes if isinstance(scopes, frozenset) else frozenset(scopes)
        if not wanted:
            return True
        if mode == "all":
            return wanted <= self.scopes
        return not wanted.isdisjoint(self.scopes)

    def require(self, *scopes: str, mode: ScopeMode = "all") -> Claims:
        """Raise ``insufficient_scope`` (carrying what was required) unless the scopes are present.

        Returns the claims, so ``claims = verifier.verify(token).require("read")`` reads well.
        Each argument may itself be a space-separated list: ``require("read write")``.
        """
        if mode not in ("all", "any"):
            raise ValueError("mode must be 'all' or 'any'")
        wanted = tuple(dict.fromkeys(part for scope in scopes for part in scope.split()))
        if not self.has_scopes(wanted, mode):
            raise AuthError(
                "insufficient_scope",
                required_scopes=wanted,
                scope_mode=mode,
                issuer=self.issuer,
                kid=self.kid,
            )
        return self
