"""The decision's fast path: the C extension (gatekeeper._speedups.probe) and its Python twin
(gatekeeper.decision.probe_py) agree.

They must give the same answer for every input, or the middleware would decide differently
depending on whether the package was built with a compiler. Each case runs against both, and a
property test compares them on random header lists. (tests/test_decision.py and
tests/test_middleware.py also run whole decisions on each.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import decision
from gatekeeper.cache import CLAIMS, DEAD, EXPIRES, KEY, UNTIL, USED
from gatekeeper.claims import Claims
from gatekeeper.decision import SPEEDUPS, probe_py
from gatekeeper.revocation import Revocation, Revocations
from gatekeeper.rules import Rule

try:
    from gatekeeper import _speedups
except ImportError:  # no compiler where the package was installed
    _speedups = None  # type: ignore[assignment]
probe_c = None if _speedups is None else _speedups.probe

Probe = Callable[[Any, Any, float, Any, Rule], Any]
IMPLEMENTATIONS = [pytest.param(probe_py, id="python")]
if probe_c is not None:
    IMPLEMENTATIONS.append(pytest.param(probe_c, id="c"))

TOKEN_VALUE = b"Bearer " + b"x" * 200 + b"signature-tail-0123456789"
OTHER = [(b"host", b"api.example"), (b"accept", b"*/*"), (b"user-agent", b"test")]
NOW = 1_000.0
ANY_TOKEN = Rule("/**")
Record = tuple[bytes, str, list[Any], Claims]


def claims(scopes: str = "read write", checked_at: int = 0) -> Claims:
    made = Claims({"sub": "u", "exp": NOW + 60}, frozenset(scopes.split()), issuer="i", kid="k")
    made.checked_at = checked_at
    return made


def record(value: bytes, *, until: float = NOW + 60, alive: bool = True, **kwargs: Any) -> Record:
    """A memo record holding a cache entry laid out as gatekeeper.cache lays it out."""
    entry: list[Any] = [None] * 5
    entry[CLAIMS], entry[UNTIL], entry[KEY], entry[USED], entry[EXPIRES] = (
        claims(**kwargs),
        until,
        SimpleNamespace(alive=alive),
        False,
        NOW + 60,
    )
    return (value, value.decode(), entry, entry[CLAIMS])


def memo_for(*records: Record) -> dict[bytes, Record]:
    return {made[0][-16:]: made for made in records}


def run(probe: Probe, headers: Any, memo: Any, rule: Rule = ANY_TOKEN, revocations: Any = None) -> Any:
    return probe(headers, memo, NOW, revocations or Revocations(), rule)


def test_the_extension_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the Python twin runs (install gcc to build the extension)")
    assert probe_c is not None, "gatekeeper._speedups was not built: pip install -e . with gcc"
    assert SPEEDUPS
    assert decision.fast_probe is probe_c


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
@pytest.mark.parametrize("container", [list, tuple])
def test_one_header_finds_its_record(probe: Probe, container: Callable[[Any], Any]) -> None:
    memo = memo_for(record(TOKEN_VALUE))
    found = run(probe, container([*OTHER, (b"authorization", TOKEN_VALUE)]), memo)
    assert found is memo[TOKEN_VALUE[-16:]]
    assert found[2][USED] is True  # marked used, for the cache's eviction


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", [b"Authorization", b"AUTHORIZATION", b"aUtHoRiZaTiOn"])
def test_any_spelling_of_one_header_is_found(probe: Probe, name: bytes) -> None:
    memo = memo_for(record(TOKEN_VALUE))
    assert run(probe, [(name, TOKEN_VALUE), *OTHER], memo) is memo[TOKEN_VALUE[-16:]]


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="no headers"),
        pytest.param(OTHER, id="no authorization"),
        pytest.param([(b"authorization", TOKEN_VALUE), (b"authorization", TOKEN_VALUE)], id="two"),
        pytest.param([(b"authorization", TOKEN_VALUE), (b"Authorization", TOKEN_VALUE)], id="two spellings"),
        pytest.param([(b"authorization", b"Bearer other" + TOKEN_VALUE[-16:])], id="same tail, other value"),
        pytest.param([(b"authorization", b"Bearer unknown-token-value-xyz")], id="not remembered"),
        pytest.param([(b"authorization", TOKEN_VALUE.decode())], id="str value"),
        pytest.param([("authorization", TOKEN_VALUE)], id="str name"),
        pytest.param([(b"host",)], id="not a pair"),
        pytest.param([(b"authorization", TOKEN_VALUE, b"x")], id="a triple"),
        pytest.param([None], id="not a sequence"),
        pytest.param(None, id="headers not iterable"),
        pytest.param([(b"authorizatio", TOKEN_VALUE)], id="a shorter name"),
        pytest.param([(b"authorizationx", TOKEN_VALUE)], id="a longer name"),
    ],
)
def test_anything_unusual_is_for_the_slow_path(probe: Probe, headers: Any) -> None:
    memo = memo_for(record(TOKEN_VALUE))
    assert run(probe, headers, memo) is None
    assert memo[TOKEN_VALUE[-16:]][2][USED] is False


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
def test_a_value_shorter_than_the_tail_is_its_own_key(probe: Probe) -> None:
    memo = memo_for(record(b"Bearer ab"))
    assert run(probe, [(b"authorization", b"Bearer ab")], memo) is memo[b"Bearer ab"]


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "made",
    [
        pytest.param(record(TOKEN_VALUE, until=NOW), id="due for revalidation"),
        pytest.param(record(TOKEN_VALUE, until=DEAD), id="killed"),
        pytest.param(record(TOKEN_VALUE, alive=False), id="key left the key set"),
    ],
)
def test_an_entry_the_cache_rules_out_is_not_served(probe: Probe, made: Record) -> None:
    assert run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(made)) is None
    assert made[2][USED] is False


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
def test_claims_checked_at_an_older_revocation_list_are_not_served(probe: Probe) -> None:
    revocations = Revocations(clock=lambda: NOW)
    revocations.add(Revocation("jti", "someone-else", "i", NOW + 60))
    assert revocations.active
    stale = record(TOKEN_VALUE, checked_at=revocations.generation - 1)
    assert run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(stale), revocations=revocations) is None
    fresh = record(TOKEN_VALUE, checked_at=revocations.generation)
    found = run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(fresh), revocations=revocations)
    assert found is fresh


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("rule", "served"),
    [
        pytest.param(Rule("/**", scopes="read"), True, id="all present"),
        pytest.param(Rule("/**", scopes="read admin"), False, id="one missing"),
        pytest.param(Rule("/**", scopes="admin write", mode="any"), True, id="any, one present"),
        pytest.param(Rule("/**", scopes="admin root", mode="any"), False, id="any, none present"),
    ],
)
def test_the_rules_scopes_decide(probe: Probe, rule: Rule, served: bool) -> None:
    made = record(TOKEN_VALUE, scopes="read write")
    found = run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(made), rule=rule)
    assert (found is made) is served
    assert made[2][USED] is served


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
def test_a_memo_that_is_not_a_dict_is_refused_or_read(probe: Probe) -> None:
    # The Gate always passes its dict; the C function insists on one, the Python one reads any
    # mapping. Neither may answer wrongly.
    try:
        found = run(probe, [(b"authorization", b"Bearer ab")], [])
    except (TypeError, AttributeError):
        return
    assert found is None


names = st.sampled_from([b"authorization", b"Authorization", b"host", b"accept", b"x-auth", "authorization"])
values = st.sampled_from([TOKEN_VALUE, b"Bearer " + b"y" * 40, b"Bearer " + b"z" * 40, b"short", "str", 7])
items = st.one_of(
    st.tuples(names, values),
    st.tuples(names, values).map(list),
    st.tuples(names),
    st.tuples(names, values, values),
    st.none(),
)


@pytest.mark.skipif(probe_c is None, reason="gatekeeper._speedups not built (needs a C compiler)")
@given(
    headers=st.lists(items, max_size=6),
    container=st.sampled_from([list, tuple]),
    now=st.sampled_from([NOW, NOW + 59.5, NOW + 60, NOW + 1e9]),
    rule=st.sampled_from([ANY_TOKEN, Rule("/**", scopes="read"), Rule("/**", scopes="admin")]),
)
def test_c_and_python_agree(
    headers: list[Any], container: Callable[[Any], Any], now: float, rule: Rule
) -> None:
    memo = memo_for(record(TOKEN_VALUE), record(b"Bearer " + b"y" * 40, scopes="admin"))
    memo.update(memo_for(record(b"Bearer " + b"z" * 40, alive=False)))
    revocations = Revocations()
    assert probe_c is not None
    c_answer = probe_c(container(headers), memo, now, revocations, rule)
    c_used = {key: made[2][USED] for key, made in memo.items()}
    for made in memo.values():
        made[2][USED] = False
    assert c_answer is probe_py(container(headers), memo, now, revocations, rule)
    assert c_used == {key: made[2][USED] for key, made in memo.items()}


class _MeddlingKey:
    """A signing key whose ``alive`` runs code: it empties the entry holding it, or raises."""

    def __init__(self, entry: list[Any], error: Exception | None = None) -> None:
        self.entry, self.error = entry, error

    @property
    def alive(self) -> bool:
        if self.error is not None:
            raise self.error
        del self.entry[:]
        return True


@pytest.mark.parametrize("probe", IMPLEMENTATIONS)
def test_python_code_run_by_the_checks_cannot_crash_it(probe: Probe) -> None:
    # Never the case with gatekeeper's own keys; the C twin must still hold its references
    # and report errors rather than crash, and both twins must fail the same way.
    made = record(TOKEN_VALUE)
    made[2][KEY] = _MeddlingKey(made[2])
    with pytest.raises(IndexError):
        run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(made))
    made = record(TOKEN_VALUE)
    made[2][KEY] = _MeddlingKey(made[2], RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        run(probe, [(b"authorization", TOKEN_VALUE)], memo_for(made))
