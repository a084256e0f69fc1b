from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .claims import Claims
from .revocation import Revocations
from .rules import Rule

_Record = tuple[bytes, str, list[Any], Claims]

def probe(
    headers: Iterable[Sequence[bytes]],
    memo: Mapping[bytes, _Record],
    now: float,
    revocations: Revocations,
    rule: Rule,
) -> _Record | None: ...

class Dispatch:
    """The middleware's ASGI call with a cached token, in C (see gatekeeper.middleware)."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        decide: Callable[[Rule, Scope, Receive, Send], Awaitable[None]],
        fallback: Callable[[Scope, Receive, Send], Awaitable[None]],
        memo: dict[bytes, _Record],
        clock: Callable[[], float],
        revocations: Revocations,
        user_class: type,
        rule: Rule | None,
        match_scope: Callable[[Scope], Rule],
    ) -> None: ...
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]: ...
