"""Verifying tokens in a worker: ``verifier.verify`` from a thread pool, no web framework.

    python examples/worker.py

Without configuration it starts a local development issuer and checks a batch of tokens,
good and bad. With GATEKEEPER_ISSUER and GATEKEEPER_AUDIENCE set (and GATEKEEPER_JWKS_URL,
else the issuer's discovery document is used) it trusts that issuer and checks the tokens
given on standard input, one per line. Outcomes are printed with a token fingerprint, never
the token.

``verify`` is the sync call: a key fetch, when one is needed, blocks only the thread that
needs it, and concurrent threads share a single fetch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gatekeeper import AuthError, Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer
from gatekeeper.redact import fingerprint

DEV_AUDIENCE = "jobs"
REQUIRED_SCOPE = "jobs:run"


@dataclass(frozen=True)
class Outcome:
    label: str
    token: str  # the token's fingerprint, never the token
    accepted: bool
    detail: str


def check(verifier: Verifier, label: str, token: str, scope: str = REQUIRED_SCOPE) -> Outcome:
    """Verify one token and require ``scope``; a rejection is an outcome, not an exception."""
    fp = fingerprint(token) if token else "-"
    try:
        claims = verifier.verify(token).require(scope)
    except AuthError as error:
        return Outcome(label, fp, False, f"{error.kind}: {error.description}")
    return Outcome(label, fp, True, f"sub={claims.subject} scopes={' '.join(sorted(claims.scopes))}")


def verify_batch(
    verifier: Verifier, batch: Iterable[tuple[str, str]], *, scope: str = REQUIRED_SCOPE, workers: int = 4
) -> list[Outcome]:
    """Check (label, token) pairs on a thread pool; outcomes come back in the batch's order."""
    items = list(batch)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        return list(pool.map(lambda item: check(verifier, item[0], item[1], scope), items))


def sample_batch(issuer: DevIssuer) -> list[tuple[str, str]]:
    """Good and bad tokens from the development issuer."""
    forger = DevIssuer(issuer.issuer, audience=issuer.audience)  # a key the JWKS does not list
    [published] = issuer.jwks()["keys"]
    good = [
        (f"good ({name})", issuer.mint(subject=name, scope=[REQUIRED_SCOPE])) for name in ("ann", "bo", "cy")
    ]
    return [
        *good,
        good[0],  # the same token again: served from the verified-token cache
        ("expired", issuer.mint(subject="ann", scope=[REQUIRED_SCOPE], expires_in=-3600)),
        ("missing scope", issuer.mint(subject="ann", scope=["jobs:read"])),
        ("wrong audience", issuer.mint(subject="ann", scope=[REQUIRED_SCOPE], audience="another-api")),
        (
            "forged signature",
            forger.mint(subject="ann", scope=[REQUIRED_SCOPE], headers={"kid": published["kid"]}),
        ),
        ("unsigned (alg none)", issuer.mint(subject="ann", scope=[REQUIRED_SCOPE], alg="none")),
        ("not a JWT", "hello"),
        ("empty", ""),
    ]


def print_outcomes(outcomes: Sequence[Outcome]) -> None:
    width = max((len(o.label) for o in outcomes), default=5) + 2
    print(f"{'token':<{width}}{'fingerprint':<14}outcome")
    for o in outcomes:
        print(f"{o.label:<{width}}{o.token:<14}{'accepted' if o.accepted else 'rejected'}  {o.detail}")
    accepted = sum(o.accepted for o in outcomes)
    print(f"{len(outcomes)} tokens: {accepted} accepted, {len(outcomes) - accepted} rejected")


def main() -> None:
    verifier = Verifier.from_env()
    if verifier is not None:
        batch = [(f"line {n}", line.strip()) for n, line in enumerate(sys.stdin, 1) if line.strip()]
        try:
            print_outcomes(verify_batch(verifier, batch))
        finally:
            verifier.close()
        return
    with IssuerServer() as server:
        server.issuer.audience = DEV_AUDIENCE
        verifier = Verifier(server.url, jwks_url=server.jwks_url, audience=DEV_AUDIENCE)
        try:
            print(f"dev issuer {server.url}; verifying on 4 threads, requiring scope {REQUIRED_SCOPE}")
            print_outcomes(verify_batch(verifier, sample_batch(server.issuer)))
            print(f"JWKS fetched {server.requests()} time(s)")
        finally:
            verifier.close()


if __name__ == "__main__":
    main()
