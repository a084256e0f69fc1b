"""Benchmark the verified-token cache (``gatekeeper.cache.TokenCache``) on its own.

What it measures, with realistic RS256 access tokens (~825 characters, RFC 9068 claims):

- time per operation (median ns/op over interleaved repeats): a hit (with the same ``str`` object,
  whose hash Python has cached, and with a fresh equal string, as each request delivers one),
  a miss followed by an insert (the verifier's path for a newly verified token) into a cache that
  is not full, and that is full (each insert evicts); and the worst single insert: into a full
  cache whose every entry was recently used, so eviction first gives all of them their second
  chance (this runs under the cache's write lock);
- memory per cached entry (tracemalloc): the token string, the claims object and the cache's own
  structure, and the total for the default maxsize;
- a flood of 1,000,000 distinct tokens into a cache of the default maxsize (10,000): traced peak
  and final memory, memory at checkpoints and the final length, to show the cache stays bounded;
  and the hit rate of a hot working set of 100 tokens looked up between flood inserts, next to a
  plain FIFO cache under the same pattern, to show that second-chance eviction keeps hot tokens.

The flood uses distinct token-shaped strings with a shared claims object: the cache does not
verify, and signing 1M tokens would take minutes.

- revocation on the hot path: a cached ``Verifier.verify`` with an empty revocation list, next to
  the same call with 100,000 entries in the list (a third each by jti, subject and client, one of
  them naming this token's subject with a ``before`` older than its ``iat``, so it is looked at and
  found not to apply); the added time and the ratio, against the 0.2 µs target. Also the one-off
  re-check a cached token pays after the list changed (the full lookup), and the list's memory
  per entry (what its ``max_entries`` bound costs).

Run it from the repository root::

    python benchmarks/hot_path.py            # full run: ~35 s of CPU (more wall time on a busy machine)
    python benchmarks/hot_path.py --quick    # a few-second smoke run
    python benchmarks/hot_path.py --flood 200000 --repeats 5   # a shorter full run

Targets (DESIGN.md, "The hot path"): a hit costs well under a microsecond (the whole cached
``verify`` should be a few microseconds); an insert into a full cache costs about what one into
a cache with room costs (eviction O(1) amortised, no insert stalls the lock); memory is bounded by
maxsize under a flood of distinct tokens (final length == maxsize, traced memory flat once the
cache is full); hot tokens reused within one turn of the cache keep hitting under a flood, where
plain FIFO loses them. Numbers are medians of interleaved repeats; the machine is shared and
noisy, so compare rows of one run rather than absolute values across runs.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from _common import (
    fmt_bytes,
    fmt_ns,
    fresh_copy,
    median,
    realistic_token,
    table,
)

from gatekeeper.cache import TokenCache
from gatekeeper.claims import Claims, normalise_scopes
from gatekeeper.issuer import DevIssuer
from gatekeeper.jws import loads_object, parse_compact
from gatekeeper.keys import VerificationKey, import_jwk
from gatekeeper.revocation import Revocation, Revocations, enforce
from gatekeeper.verifier import Verifier

TIMING_HEADER = "## Verified-token cache: time per operation"
MEMORY_HEADER = "## Verified-token cache: memory per entry"
FLOOD_HEADER = "## Verified-token cache: flood of distinct tokens"
REVOCATION_HEADER = "## Revocation on the hot path"
REVOCATION_ENTRIES = 100_000
REVOCATION_TARGET_NS = 200.0

DEFAULT_MAXSIZE = TokenCache().maxsize
HOT_SET = 100
SHORT_FLOOD = 100_000


@dataclass
class Fixture:
    """A real token, its claims and key, and a generator of distinct token-shaped strings."""

    token: str
    claims: Claims
    key: VerificationKey
    payload: bytes
    expires_at: float
    issued: int = 0  # distinct strings handed out so far

    def distinct(self, count: int) -> list[str]:
        """Strings shaped like the token (same length and alphabet), each different, never repeated."""
        prefix = self.token[:-12]
        start = self.issued
        self.issued += count
        return [f"{prefix}{i:012x}" for i in range(start, start + count)]

    def new_claims(self) -> Claims:
        """A claims object of its own, as the verifier builds one per verified token."""
        return build_claims(self.payload, self.key)


def build_claims(payload_json: bytes, key: VerificationKey) -> Claims:
    payload = loads_object(payload_json, "payload")
    return Claims(payload, normalise_scopes(payload), issuer=payload["iss"], kid=key.kid)


def make_fixture() -> Fixture:
    issuer = DevIssuer(algorithms=("RS256",))
    token = realistic_token(issuer, "RS256")
    key = import_jwk(issuer.jwks()["keys"][0])
    payload = parse_compact(token).payload
    return Fixture(token, build_claims(payload, key), key, payload, time.time() + 3600)


def full_cache(fx: Fixture, maxsize: int = DEFAULT_MAXSIZE) -> TokenCache:
    cache = TokenCache(maxsize)
    for token in fx.distinct(maxsize):
        cache.put(token, fx.claims, fx.expires_at, fx.key)
    return cache


# -- timing ----------------------------------------------------------------------------------------


def _timed(loop: Callable[[], None], ops: int) -> float:
    gc.disable()
    try:
        start = time.perf_counter_ns()
        loop()
        return (time.perf_counter_ns() - start) / ops
    finally:
        gc.enable()


def _get_loop(get: Callable[[str, float], object], tokens: list[str], now: float) -> Callable[[], None]:
    def loop() -> None:
        for token in tokens:
            get(token, now)

    return loop


def _miss_insert_loop(cache: TokenCache, fx: Fixture, tokens: list[str], now: float) -> Callable[[], None]:
    get, put = cache.get, cache.put
    claims, expires_at, key = fx.claims, fx.expires_at, fx.key

    def loop() -> None:
        for token in tokens:
            if get(token, now) is None:
                put(token, claims, expires_at, key)

    return loop


def _noop(token: str, now: float) -> None:
    return None


class TimingCase:
    """One row of the timing table: ``batch()`` prepares inputs (untimed) and times one batch."""

    def __init__(self, name: str, note: str, batch: Callable[[], float]) -> None:
        self.name, self.note, self.batch = name, note, batch
        self.samples: list[float] = []


def timing_cases(fx: Fixture, n: int) -> list[TimingCase]:
    now = time.time()
    hit_cache = full_cache(fx)
    hit_cache.put(fx.token, fx.claims, fx.expires_at, fx.key)
    evict_cache = full_cache(fx)
    worst_cache = full_cache(fx)

    def hit_same() -> float:
        return _timed(_get_loop(hit_cache.get, [fx.token] * n, now), n)

    def hit_fresh() -> float:
        tokens = [fresh_copy(fx.token) for _ in range(n)]
        return _timed(_get_loop(hit_cache.get, tokens, now), n)

    def insert_not_full() -> float:
        cache = TokenCache(n)
        return _timed(_miss_insert_loop(cache, fx, fx.distinct(n), now), n)

    def insert_full() -> float:
        return _timed(_miss_insert_loop(evict_cache, fx, fx.distinct(n), now), n)

    def insert_worst() -> float:
        # Mark every resident entry recently used (untimed), then time one insert: its eviction
        # must pass over every used entry before one can go. The cache has no public listing of
        # its tokens, so this reads its dict.
        for token in list(worst_cache._data):
            worst_cache.get(token, now)
        return _timed(_miss_insert_loop(worst_cache, fx, fx.distinct(1), now), 1)

    def reference() -> float:
        return _timed(_get_loop(_noop, [fx.token] * n, now), n)

    return [
        TimingCase("hit, same str object", "hash cached by Python: dict lookup + exp + key.alive", hit_same),
        TimingCase("hit, fresh equal str", "as from a request: hashes and compares ~825 chars", hit_fresh),
        TimingCase(
            "miss + insert, not full", "get() -> None, then put(); includes dict growth", insert_not_full
        ),
        TimingCase("miss + insert, full", "every insert evicts the oldest entry (FIFO)", insert_full),
        TimingCase(
            "miss + insert, full, all used",
            "worst single insert: second chance for every entry, under the lock",
            insert_worst,
        ),
        TimingCase("reference: no-op call", "loop + call overhead included in every row", reference),
    ]


def run_timing(fx: Fixture, repeats: int, n: int) -> str:
    cases = timing_cases(fx, n)
    rng = random.Random(7)
    for _ in range(repeats):
        order = cases[:]
        rng.shuffle(order)  # interleave: machine noise spreads over every row alike
        for case in order:
            case.samples.append(case.batch())
    rows = [
        [
            case.name,
            fmt_ns(median(case.samples)),
            f"{fmt_ns(min(case.samples))} - {fmt_ns(max(case.samples))}",
            case.note,
        ]
        for case in cases
    ]
    return "\n".join(
        [
            TIMING_HEADER,
            f"(median of {repeats} interleaved repeats x {n:,} ops; cache of {DEFAULT_MAXSIZE:,} entries; "
            f"GC off while timing)",
            "",
            table(["operation", "median per op", "range per op", "what it covers"], rows),
        ]
    )


# -- memory ----------------------------------------------------------------------------------------


@dataclass
class EntryMemory:
    token: float
    claims: float
    structure: float
    total: float


def run_memory(fx: Fixture, count: int) -> tuple[str, EntryMemory]:
    """Trace what ``count`` realistic entries keep alive, split into token, claims and cache structure."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tokens = fx.distinct(count)
        after_tokens = tracemalloc.get_traced_memory()[0]
        claims = [fx.new_claims() for _ in range(count)]
        after_claims = tracemalloc.get_traced_memory()[0]
        cache = TokenCache(count)
        for token, entry_claims in zip(tokens, claims, strict=True):
            cache.put(token, entry_claims, fx.expires_at, fx.key)
        after_put = tracemalloc.get_traced_memory()[0]
        # The cache alone keeps the tokens and claims alive now.
        del tokens, claims
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(cache) == count
    token_b = (after_tokens - base) / count
    claims_b = (after_claims - after_tokens) / count
    structure_b = (after_put - after_claims) / count
    per_entry = EntryMemory(token_b, claims_b, structure_b, retained / count)
    rows = [
        ["token string", fmt_bytes(token_b), f"{len(fx.token)}-character RS256 access token"],
        ["claims object", fmt_bytes(claims_b), "Claims + payload dict (11 claims) + scopes frozenset"],
        ["cache structure", fmt_bytes(structure_b), "dict slot + [claims, exp, key, used] list"],
        ["total per entry", fmt_bytes(retained / count), "retained by the cache alone (traced)"],
        [
            f"total for {count:,} entries",
            fmt_bytes(retained),
            "default maxsize" if count == DEFAULT_MAXSIZE else "",
        ],
    ]
    text = "\n".join(
        [
            MEMORY_HEADER,
            f"(tracemalloc, {count:,} distinct tokens each with its own claims object)",
            "",
            table(["part", "bytes per entry", "what"], rows),
        ]
    )
    return text, per_entry


# -- flood -----------------------------------------------------------------------------------------


class FifoCache:
    """Reference for the flood: a bounded cache evicting the oldest entry, with no second chance."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, token: str, now: float) -> Any:
        return self._data.get(token)

    def put(self, token: str, claims: Claims, expires_at: float, key: VerificationKey) -> None:
        data = self._data
        if token not in data and len(data) >= self.maxsize:
            data.popitem(last=False)
        data[token] = claims


@dataclass
class FloodResult:
    hits: int
    lookups: int
    length: int
    seconds: float
    cpu_seconds: float
    peak: int = 0
    final: int = 0
    checkpoints: tuple[tuple[int, int], ...] = ()

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


def flood(
    cache: TokenCache | FifoCache, fx: Fixture, count: int, hot_every: int, *, trace: bool = False
) -> FloodResult:
    """Insert ``count`` distinct tokens as the verifier would (get, then put on a miss); after every
    ``hot_every`` of them look up the next token of a hot set of 100, re-inserting it on a miss."""
    now = time.time()
    claims, expires_at, key = fx.claims, fx.expires_at, fx.key
    get, put = cache.get, cache.put
    hot = fx.distinct(HOT_SET)
    for token in hot:
        put(token, claims, expires_at, key)
    prefix = fx.token[:-12]
    start_index = fx.issued
    fx.issued += count
    marks = {count // 10, count // 4, count // 2, count}
    checkpoints: list[tuple[int, int]] = []
    hits = lookups = 0
    gc.collect()
    gc.disable()  # nothing here makes cycles; collections would only slow the flood down
    if trace:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if trace else 0
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        for i in range(1, count + 1):
            token = f"{prefix}{start_index + i:012x}"
            if get(token, now) is None:
                put(token, claims, expires_at, key)
            if i % hot_every == 0:
                hot_token = hot[lookups % HOT_SET]
                lookups += 1
                if get(hot_token, now) is None:
                    put(hot_token, claims, expires_at, key)
                elif lookups > HOT_SET:
                    hits += 1
            if trace and i in marks:
                checkpoints.append((i, tracemalloc.get_traced_memory()[0] - base))
    finally:
        gc.enable()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # The first round of the hot set only warms up; the hit rate counts the lookups after it.
    steady = max(0, lookups - HOT_SET)
    result = FloodResult(hits, steady, len(cache), seconds, cpu_seconds, checkpoints=tuple(checkpoints))
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.peak, result.final = peak - base, current - base
    return result


def hit_cell(result: FloodResult, inserts: int) -> str:
    if not result.lookups:
        return f"n/a: flood of {inserts:,} too short"
    return f"{result.hit_rate:.2%} of {result.lookups:,} ({inserts:,} inserts)"


def run_flood(fx: Fixture, count: int, entry: EntryMemory) -> str:
    # One hot lookup per 10 inserts: each hot token is reused every 1,000 inserts, a tenth of a
    # turn of the cache. One per 500: every 50,000 inserts, five turns; second chance keeps an
    # entry at most two turns after its last use, so no bounded cache keeps these (the limit).
    traced = flood(TokenCache(), fx, count, 10, trace=True)
    # The hit rate is steady once the cache has turned over a few times; the untraced reference
    # floods are shorter to keep the run short.
    short = min(count, SHORT_FLOOD)
    clock_hot = traced
    fifo_hot = flood(FifoCache(DEFAULT_MAXSIZE), fx, short, 10)
    clock_rare = flood(TokenCache(), fx, short, 500)
    fifo_rare = flood(FifoCache(DEFAULT_MAXSIZE), fx, short, 500)
    # Flood entries share one claims object: each holds a token string and the cache structure.
    expected = DEFAULT_MAXSIZE * (entry.token + entry.structure)

    memory_rows = [
        ["distinct tokens inserted", f"{count:,}", f"into TokenCache() (maxsize {DEFAULT_MAXSIZE:,})"],
        ["final cache length", f"{traced.length:,}", "bounded: == maxsize" if traced.length == DEFAULT_MAXSIZE
         else "!= maxsize"],
        ["traced peak", fmt_bytes(traced.peak), "above the pre-flood baseline"],
        ["traced final", fmt_bytes(traced.final), "above the pre-flood baseline"],
        ["expected when full", fmt_bytes(expected), "maxsize x (token string + cache structure)"],
        *[[f"traced after {i:,}", fmt_bytes(b), ""] for i, b in traced.checkpoints],
        [
            "flood time (traced)",
            f"{traced.seconds:.1f} s ({traced.cpu_seconds:.1f} s CPU)",
            "tracemalloc slows allocation several-fold",
        ],
    ]  # fmt: skip
    hot_rows = [
        ["1 per 10 inserts (each reused every 1,000)", hit_cell(clock_hot, count), hit_cell(fifo_hot, short)],
        [
            "1 per 500 inserts (each reused every 50,000)",
            hit_cell(clock_rare, short),
            hit_cell(fifo_rare, short),
        ],
    ]
    return "\n".join(
        [
            FLOOD_HEADER,
            f"({count:,} distinct token-shaped strings, shared claims object; hot set of {HOT_SET} tokens "
            "looked up round-robin between inserts, re-inserted on a miss; hit rates count the lookups "
            "after the first round)",
            "",
            table(["measurement", "value", "notes"], memory_rows),
            "",
            table(
                ["hot-set lookups", "hit rate, TokenCache (second chance)", "hit rate, plain FIFO"],
                hot_rows,
            ),
        ]
    )


# -- revocation ------------------------------------------------------------------------------------


def revocation_list(claims: Claims, count: int) -> Revocations:
    """``count`` entries, a third per kind, none revoking ``claims`` (one names its subject)."""
    revocations = Revocations(max_entries=count + 1)
    until = time.time() + 3600
    issuer = claims.issuer
    entries = [Revocation("sub", claims["sub"], issuer, until, before=float(claims["iat"]) - 100)]
    for i in range(count - 1):
        kind: Literal["jti", "sub", "client_id"] = ("jti", "sub", "client_id")[i % 3]
        if kind == "jti":
            entries.append(Revocation("jti", f"jti-{i}", issuer, until))
        else:
            entries.append(
                Revocation(kind, f"{kind}-{i}", None if i % 2 else issuer, until, before=until - 7200)
            )
    revocations.replace_all(entries)
    return revocations


def _list_bytes(claims: Claims, count: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        revocations = revocation_list(claims, count)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(revocations) == count
    return used / count


def run_revocation(repeats: int, n: int, entries: int) -> str:
    """Cached verify with an empty list vs ``entries`` entries, interleaved, in one run."""
    issuer = DevIssuer(algorithms=("ES256",))
    token = realistic_token(issuer, "ES256")
    empty = Verifier(issuer.issuer, jwks=issuer.jwks(), audience=issuer.audience)
    claims = empty.verify(token)
    full_list = revocation_list(claims, entries)
    full = Verifier(issuer.issuer, jwks=issuer.jwks(), audience=issuer.audience, revocations=full_list)
    full_claims = full.verify(token)
    assert full.verify(token) is full_claims  # a cache hit, not revoked
    tokens = [token] * n
    samples: dict[str, list[float]] = {"empty": [], "full": [], "recheck": [], "noop": []}

    def recheck() -> None:
        for _ in tokens:
            enforce(full_list, full_claims)

    def noop() -> None:
        for item in tokens:
            _noop(item, 0.0)

    def verify_loop(verify: Callable[[str], object]) -> Callable[[], None]:
        def loop() -> None:
            for item in tokens:
                verify(item)

        return loop

    cases: dict[str, Callable[[], None]] = {
        "empty": verify_loop(empty.verify),
        "full": verify_loop(full.verify),
        "recheck": recheck,
        "noop": noop,
    }
    for case in cases.values():
        case()  # warm up (first calls pay for lazy set-up), untimed
    rng = random.Random(11)
    for _ in range(repeats):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            samples[name].append(_timed(cases[name], n))
    none_ns, full_ns = median(samples["empty"]), median(samples["full"])
    added = full_ns - none_ns
    per_entry = _list_bytes(claims, entries)
    verdict = "PASS" if added <= REVOCATION_TARGET_NS else "MISS"
    rows = [
        ["cached verify, empty list", fmt_ns(none_ns), "1.00x", "the reference (nothing revoked)"],
        [
            f"cached verify, {entries:,} entries",
            fmt_ns(full_ns),
            f"{full_ns / none_ns:.2f}x",
            "list unchanged since the claims were checked: one generation comparison",
        ],
        [
            "added by the list",
            fmt_ns(added),
            "",
            f"target <= {fmt_ns(REVOCATION_TARGET_NS)}: {verdict}",
        ],
        [
            "re-check after a change",
            fmt_ns(median(samples["recheck"]) - median(samples["noop"])),
            "",
            "once per cached token after each change: the jti/sub/client_id lookups",
        ],
        [
            "list memory per entry",
            fmt_bytes(per_entry),
            "",
            f"{fmt_bytes(per_entry * entries)} for {entries:,}; bounded by max_entries",
        ],
    ]
    return "\n".join(
        [
            f"{REVOCATION_HEADER}: cached verify, empty list vs {entries:,} entries",
            f"(median of {repeats} interleaved repeats x {n:,} calls, same str object, ES256 token; GC off)",
            "",
            table(["case", "median per call", "ratio", "notes"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--repeats", type=int, help="interleaved timing repeats (default 11, quick 3)")
    parser.add_argument("--flood", type=int, help="distinct tokens in the flood (default 1,000,000)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 11)
    ops = 2_000 if args.quick else 20_000
    flood_count = args.flood or (20_000 if args.quick else 1_000_000)

    started, cpu_started = time.perf_counter(), time.process_time()
    fx = make_fixture()
    print(f"Python {sys.version.split()[0]}, token {len(fx.token)} characters (RS256)\n")
    print(run_timing(fx, repeats, ops), end="\n\n", flush=True)
    memory_text, per_entry = run_memory(fx, DEFAULT_MAXSIZE)
    print(memory_text, end="\n\n", flush=True)
    print(run_flood(fx, flood_count, per_entry), end="\n\n", flush=True)
    entries = 3_000 if args.quick else REVOCATION_ENTRIES
    print(run_revocation(repeats, ops, entries), end="\n\n", flush=True)
    # CPU time too: on a shared machine the wall time mostly says how busy the neighbours were.
    print(f"total {time.perf_counter() - started:.1f} s ({time.process_time() - cpu_started:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
