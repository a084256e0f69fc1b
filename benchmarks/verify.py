"""Benchmark token verification: gatekeeper (cached and uncached) against bare joserfc and PyJWT.

What it measures, in one run and on the same realistic access tokens (RFC 9068 claims; ~825
characters for RS256) for RS256, ES256 and EdDSA, the median microseconds per verification of:

- ``gk cached``: ``Verifier.verify`` of a token it has already verified (the same ``str`` object);
- ``gk cached, fresh str``: the same, but each call gets a new equal string, as each request
  delivers one (Python must hash ~825 characters again and compare them on the hit);
- ``gk uncached``: ``Verifier(..., cache_size=0).verify``: parse, policy, key choice, signature;
- ``bare joserfc``: ``joserfc.jwt.decode`` with a ``KeySet`` and a registry built once, then
  ``JWTClaimsRegistry(iss=..., aud=..., exp=essential).validate``, the least a correct caller of
  joserfc does;
- ``PyJWT``: ``jwt.decode(token, key, algorithms=[alg], audience=..., issuer=...)`` with the
  ``PyJWK`` already loaded and ``exp`` required.

Every contender is checked first to accept the token (same ``jti``) and, where it verifies, to
reject a forged signature. Contenders and algorithms are interleaved in a shuffled order on every
repeat so that machine noise hits all of them alike; each batch is calibrated to take about the
same wall time; the cyclic GC is off while timing (as timeit does). Ratios are the median of the
per-repeat ratios, each from two batches measured moments apart.

Run it from the repository root::

    python benchmarks/verify.py            # full run, about 10 s
    python benchmarks/verify.py --quick    # a few-second smoke run

Targets:

- cached speed-up vs PyJWT (PyJWT / gk cached) >= 50x for RS256; judged on the fresh-string
  variant, which is what a request costs (the same-object figure is shown too);
- gk uncached / bare joserfc <= 1.10x for every algorithm: gatekeeper's strictness (canonical
  base64url, duplicate-member checks, key policy) may cost at most 10% over joserfc alone.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import jwt as pyjwt
from _common import (
    AUDIENCE,
    ISSUER,
    calibrate,
    fmt_us,
    fresh_copy,
    median,
    realistic_token,
    table,
    time_batch,
)
from cryptography.hazmat.backends.openssl import backend as openssl_backend
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from gatekeeper import AuthError, Verifier
from gatekeeper.issuer import DevIssuer

TIMES_HEADER = "## Token verification: median µs per call"
TARGETS_HEADER = "## Ratios and targets"

ALGORITHMS = ("RS256", "ES256", "EdDSA")
CACHED, CACHED_FRESH, UNCACHED, JOSERFC, PYJWT = (
    "gk cached",
    "gk cached, fresh str",
    "gk uncached",
    "bare joserfc",
    "PyJWT",
)
CONTENDERS = (CACHED, CACHED_FRESH, UNCACHED, JOSERFC, PYJWT)
SPEEDUP_TARGET = 50.0  # PyJWT / gk cached, RS256
OVERHEAD_TARGET = 1.10  # gk uncached / bare joserfc, every algorithm
LEEWAY = 30  # gatekeeper's default, given to the peers too
# Fresh strings are built before each batch; this bounds the memory they take (~825 B each).
FRESH_CAP = 20_000


@dataclass
class Contender:
    name: str
    verify: Callable[[str], Any]
    fresh_inputs: bool = False
    n: int = 0
    samples: list[float] = field(default_factory=list)

    def inputs(self, token: str) -> list[str]:
        if self.fresh_inputs:
            return [fresh_copy(token) for _ in range(self.n)]
        return [token] * self.n


def contenders_for(issuer: DevIssuer, alg: str, token: str) -> dict[str, Contender]:
    jwks = issuer.jwks()
    cached = Verifier(issuer=ISSUER, jwks=jwks, audience=AUDIENCE)
    cached.verify(token)  # now in the cache
    uncached = Verifier(issuer=ISSUER, jwks=jwks, audience=AUDIENCE, cache_size=0)

    key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    registry = JWSRegistry(algorithms=[alg])
    claims_registry = jose_jwt.JWTClaimsRegistry(
        leeway=LEEWAY,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    )

    def bare_joserfc(value: str) -> dict[str, Any]:
        decoded = jose_jwt.decode(value, key_set, registry=registry)
        claims_registry.validate(decoded.claims)
        return decoded.claims

    [jwk] = [k for k in jwks["keys"] if k["alg"] == alg]
    pyjwk = pyjwt.PyJWK(jwk)

    def pyjwt_decode(value: str) -> dict[str, Any]:
        return pyjwt.decode(
            value,
            pyjwk,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["exp"]},
        )

    return {
        CACHED: Contender(CACHED, cached.verify),
        CACHED_FRESH: Contender(CACHED_FRESH, cached.verify, fresh_inputs=True),
        UNCACHED: Contender(UNCACHED, uncached.verify),
        JOSERFC: Contender(JOSERFC, bare_joserfc),
        PYJWT: Contender(PYJWT, pyjwt_decode),
    }


def forge(token: str) -> str:
    """The token with one signature byte changed (still canonical base64url)."""
    head, sig = token.rsplit(".", 1)
    middle = len(sig) // 2
    swapped = "A" if sig[middle] != "A" else "B"
    return f"{head}.{sig[:middle]}{swapped}{sig[middle + 1 :]}"


def check(contenders: dict[str, Contender], token: str, jti: str) -> None:
    """Refuse to time anything that does not verify: each contender accepts the token, and each
    that checks signatures rejects a forgery."""
    for contender in contenders.values():
        claims = contender.verify(fresh_copy(token))
        if claims["jti"] != jti:
            raise SystemExit(f"{contender.name} returned the wrong claims")
    forged = forge(token)
    for name in (UNCACHED, JOSERFC, PYJWT):
        try:
            contenders[name].verify(forged)
        except (AuthError, JoseError, pyjwt.InvalidTokenError):
            continue
        raise SystemExit(f"{name} accepted a forged signature")


@dataclass
class Suite:
    alg: str
    token: str
    contenders: dict[str, Contender]

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """One ratio per repeat, from two batches measured moments apart."""
        top, bottom = self.contenders[numerator].samples, self.contenders[denominator].samples
        return [a / b for a, b in zip(top, bottom, strict=True)]


def build(issuer: DevIssuer, batch_s: float) -> list[Suite]:
    suites = []
    for alg in ALGORITHMS:
        token = realistic_token(issuer, alg)
        contenders = contenders_for(issuer, alg, token)
        jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
        check(contenders, token, jti)
        for contender in contenders.values():
            contender.n = calibrate(contender.verify, token, batch_s)
            if contender.fresh_inputs:
                contender.n = min(contender.n, FRESH_CAP)
        suites.append(Suite(alg, token, contenders))
    return suites


def run(suites: list[Suite], repeats: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    batches = [(suite, contender) for suite in suites for contender in suite.contenders.values()]
    for _ in range(repeats):
        rng.shuffle(batches)
        for suite, contender in batches:
            inputs = contender.inputs(suite.token)
            contender.samples.append(time_batch(contender.verify, inputs))


def spread(values: list[float], template: str) -> list[str]:
    """The median and the interquartile range of per-repeat ratios, formatted."""
    if len(values) < 2:
        return [template.format(median(values)), ""]
    low, _, high = statistics.quantiles(values, n=4)
    return [template.format(median(values)), f"{template.format(low)} - {template.format(high)}"]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(suites: list[Suite], repeats: int, total_s: float, cpu_s: float) -> str:
    time_rows = [
        [suite.alg, str(len(suite.token)), *(fmt_us(median(suite.contenders[c].samples)) for c in CONTENDERS)]
        for suite in suites
    ]
    target_rows = []
    for suite in suites:
        rs256 = suite.alg == "RS256"
        same = suite.ratios(PYJWT, CACHED)
        fresh = suite.ratios(PYJWT, CACHED_FRESH)
        overhead = suite.ratios(UNCACHED, JOSERFC)
        target_rows += [
            [
                suite.alg,
                "cached speed-up vs PyJWT (PyJWT / gk cached)",
                *spread(same, "{:,.0f}x"),
                "(info)",
                "",
            ],
            [
                suite.alg,
                "cached speed-up vs PyJWT, fresh str",
                *spread(fresh, "{:,.0f}x"),
                f">= {SPEEDUP_TARGET:.0f}x" if rs256 else "(info)",
                verdict(median(fresh) >= SPEEDUP_TARGET) if rs256 else "",
            ],
            [
                suite.alg,
                "gk uncached / bare joserfc",
                *spread(overhead, "{:.2f}x"),
                f"<= {OVERHEAD_TARGET:.2f}x",
                verdict(median(overhead) <= OVERHEAD_TARGET),
            ],
        ]
    return "\n".join(
        [
            TIMES_HEADER,
            f"(median of {repeats} interleaved repeats; batches calibrated to similar wall time; "
            "GC off while timing)",
            "",
            table(["alg", "token chars", *CONTENDERS], time_rows),
            "",
            TARGETS_HEADER,
            "(median of per-repeat ratios, both sides measured in the same repeat; IQR = their middle half)",
            "",
            table(["alg", "ratio", "median", "IQR", "target", "result"], target_rows),
            "",
            f"total {total_s:.1f} s ({cpu_s:.1f} s CPU)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 31, quick 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 31)
    batch_s = 0.005 if args.quick else 0.02

    started, cpu_started = time.perf_counter(), time.process_time()
    print(
        f"Python {sys.version.split()[0]}, joserfc {version('joserfc')}, PyJWT {version('PyJWT')}, "
        f"cryptography {version('cryptography')}, {openssl_backend.openssl_version_text()}\n"
    )
    with warnings.catch_warnings():
        # joserfc warns on every EdDSA use (RFC 9864 deprecates the name "EdDSA" in favour of
        # "Ed25519"); the tokens here are EdDSA on purpose, as many issuers still send.
        warnings.simplefilter("ignore", SecurityWarning)
        issuer = DevIssuer(ISSUER, audience=AUDIENCE, algorithms=ALGORITHMS)
        suites = build(issuer, batch_s)
        run(suites, repeats)
    print(report(suites, repeats, time.perf_counter() - started, time.process_time() - cpu_started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
