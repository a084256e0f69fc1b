from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
