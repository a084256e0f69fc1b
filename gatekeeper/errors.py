"""Errors are data: the core raises one :class:`AuthError` whose ``kind`` says what went wrong.

Only the error profiles (:mod:`gatekeeper.responses`) turn a kind into HTTP. A description is
written for the client: it never contains the token, a key, or a stack trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, get_args

ErrorKind = Literal[
    "missing_token",
    "invalid_request",
    "invalid_token",
    "expired_token",
    "insufficient_scope",
    "revoked_token",
    "unknown_principal",
    "keys_unavailable",
]

#: Every kind, in a stable order (profiles must cover them all).
ERROR_KINDS: Final[tuple[ErrorKind, ...]] = get_args(ErrorKind)

_DEFAULT_DESCRIPTIONS: Final[dict[ErrorKind, str]] = {
    "missing_token": "A bearer token is required",
    "invalid_request": "The request is malformed",
    "invalid_token": "The access token is invalid",
    "expired_token": "The access token has expired",
    "insufficient_scope": "The access token lacks the required scope",
    "revoked_token": "The access token has been revoked",
    "unknown_principal": "The access token does not belong to a known principal",
    "keys_unavailable": "The token signing keys are temporarily unavailable",
}


class AuthError(Exception):
    """Why a request's token was not good enough.

    ``kind`` is one of :data:`ERROR_KINDS`; ``description`` is short and safe to show a client.
    ``required_scopes`` is set for ``insufficient_scope``; ``issuer`` and ``kid`` are filled in
    where known, for logs (they are public values, not secrets). ``retry_after`` is a hint in
    seconds for ``keys_unavailable``.
    """

    __slots__ = ("description", "issuer", "kid", "kind", "required_scopes", "retry_after", "scope_mode")

    def __init__(
        self,
        kind: ErrorKind,
        description: str | None = None,
        *,
        required_scopes: Iterable[str] = (),
        scope_mode: Literal["all", "any"] = "all",
        issuer: str | None = None,
        kid: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        if kind not in _DEFAULT_DESCRIPTIONS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind: ErrorKind = kind
        self.description: str = description or _DEFAULT_DESCRIPTIONS[kind]
        self.required_scopes: tuple[str, ...] = tuple(required_scopes)
        self.scope_mode: Literal["all", "any"] = scope_mode
        self.issuer = issuer
        self.kid = kid
        self.retry_after = retry_after
        super().__init__(kind, self.description)

    def __str__(self) -> str:
        return f"{self.kind}: {self.description}"

    def __repr__(self) -> str:
        return f"AuthError({self.kind!r}, {self.description!r})"
