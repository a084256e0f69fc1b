"""``gatekeeper revoke``: write a revocation to the store a gateway configuration names.

::

    gatekeeper revoke --config gatekeeper.toml --jti ID --issuer ISS [--exp UNIX_TIME]
    gatekeeper revoke --config gatekeeper.toml --sub SUBJECT [--issuer ISS] [--before UNIX_TIME]
    gatekeeper revoke --config gatekeeper.toml --client-id CLIENT [--issuer ISS] [--before ...]
    gatekeeper revoke --config gatekeeper.toml --sub SUBJECT --undo

The store must be shared (``[revocation] store = "redis"``): an in-process list lives only in
the gateway's processes (use their admin endpoint, ``POST /revocations``, for that). Exit codes:
0 done, 1 the store could not be written (nothing changed), 2 bad arguments or configuration,
3 nothing to undo.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from .cli import Commands
from .redact import fingerprint


def _unix_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a Unix time: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a Unix time: {text!r}")
    return value


def _revoke(args: argparse.Namespace) -> int:
    from .gateway.config import load_config
    from .gateway.revocation_config import RevocationSettings
    from .gateway.schema import ConfigError
    from .revocation import RevocationListFull, StoreUnavailable, revocation_request

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"gatekeeper revoke: {error}", file=sys.stderr)
        return 2
    settings = config.revocation
    if not isinstance(settings, RevocationSettings) or settings.store != "redis":
        print(
            'gatekeeper revoke: the configuration has no shared store ([revocation] store = "redis"); '
            "an in-process list is reached through the gateway's POST /revocations",
            file=sys.stderr,
        )
        return 2
    issuers = {issuer.issuer: issuer for issuer in config.issuers}
    try:
        entry = revocation_request(
            issuers,
            time.time(),
            jti=args.jti,
            sub=args.sub,
            client_id=args.client_id,
            issuer=args.issuer,
            before=args.before,
            expires_at=args.exp,
        )
    except ValueError as exc:
        print(f"gatekeeper revoke: {exc}", file=sys.stderr)
        return 2
    runtime = settings.open(start=False)  # writes only: no follower needed
    try:
        if args.undo:
            removed = runtime.revocations.withdraw(entry)
            what = "withdrawn" if removed else "not found (nothing to undo)"
            print(f"{entry.kind} {fingerprint(entry.value)}: {what}")
            return 0 if removed else 3
        runtime.revocations.submit(entry)
    except StoreUnavailable as exc:
        print(f"gatekeeper revoke: {exc}; nothing was revoked", file=sys.stderr)
        return 1
    except RevocationListFull as exc:
        print(f"gatekeeper revoke: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.stop()
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.until))
    scope = f"issuer {entry.issuer}" if entry.issuer else "every issuer"
    print(f"revoked {entry.kind} {fingerprint(entry.value)} ({scope}) until {until}")
    return 0


def register(commands: Commands) -> None:
    """The ``revoke`` subcommand."""
    parser = commands.add_parser(
        "revoke",
        help="revoke a token (jti), a subject or a client in the configured shared store",
        description=(
            "Write a revocation to the Redis store named by the gateway configuration; every "
            "gateway process sharing it refuses the matching tokens within a stream read. "
            "A subject or client revocation covers tokens issued up to --before (default now)."
        ),
    )
    parser.add_argument("--config", required=True, help="the gateway's TOML configuration")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti", help="a token's jti (with --issuer)")
    target.add_argument("--sub", help="every token of this subject")
    target.add_argument("--client-id", dest="client_id", help="every token of this client_id")
    parser.add_argument("--issuer", help="the issuer (required with --jti; optional otherwise)")
    parser.add_argument("--before", type=_unix_time, help="sub/client: tokens issued up to this Unix time")
    parser.add_argument("--exp", type=_unix_time, help="jti: the token's exp (the entry lives no longer)")
    parser.add_argument("--undo", action="store_true", help="withdraw the revocation instead")
    parser.set_defaults(handler=_revoke)
