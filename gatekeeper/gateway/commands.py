"""The gateway's subcommands: ``serve``, ``check-config``, ``verify`` and ``keys``.

Each handler imports what it needs when it runs, so ``gatekeeper --help`` needs only the core.
A configuration mistake is one line on stderr and exit code 2, before any port is bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..cli import Commands
from .schema import ConfigError


def _load(path: str) -> Any:
    from .config import load_config

    return load_config(path)


def _config_error(command: str, error: ConfigError) -> int:
    print(f"gatekeeper {command}: {error}", file=sys.stderr)
    return 2


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args.file)
    except ConfigError as error:
        return _config_error("check-config", error)
    json.dump(config.resolved, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    print(f"{args.file}: ok", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as error:
        return _config_error("serve", error)
    try:
        from .server import serve
    except ImportError as exc:
        print(f"gatekeeper serve needs {exc.name}: pip install 'gatekeeper-jwt[server]'", file=sys.stderr)
        return 1
    return serve(config, workers=args.workers)


def _read_token() -> str | None:
    """One token from stdin: surrounding whitespace is dropped, and ``Bearer `` too, so a
    pasted header value works."""
    text = sys.stdin.read().strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    return text or None


def _verify(args: argparse.Namespace) -> int:
    from ..errors import AuthError
    from .app import build_verifier

    if args.token is not None:
        # Not echoed: an argument lands in shell history and process lists, so refuse it.
        print("gatekeeper verify: give the token on stdin, not as an argument", file=sys.stderr)
        return 2
    try:
        config = _load(args.config)
    except ConfigError as error:
        return _config_error("verify", error)
    if sys.stdin.isatty():
        print("paste the token, then Ctrl-D (it is read from stdin, never from arguments)", file=sys.stderr)
    token = _read_token()
    verifier = build_verifier(config, cache_size=0)
    try:
        claims = verifier.verify(token)
    except AuthError as error:
        print(f"{error.kind}: {error.description}", file=sys.stderr)
        return 1
    finally:
        verifier.close()
    json.dump(dict(claims), sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .app import build_verifier, key_stores

    try:
        config = _load(args.config)
    except ConfigError as error:
        return _config_error("keys", error)
    verifier = build_verifier(config, cache_size=0)
    try:
        verifier.prefetch_sync()
        now = time.time()
        report = []
        for issuer, store in key_stores(verifier).items():
            status = store.status(now)
            keys = store.keys.keys if store.keys is not None else ()
            status["keys"] = [{"kid": k.kid, "kty": k.kty, "alg": sorted(k.algorithms)} for k in keys]
            report.append((issuer, status))
    finally:
        verifier.close()
    if args.json:
        json.dump([status for _, status in report], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for issuer, status in report:
            _print_status(issuer, status)
    return 0 if all(status["usable"] for _, status in report) else 1


def _print_status(issuer: str, status: dict[str, Any]) -> None:
    fresh = status["fresh_for"]
    freshness = (
        "static (always fresh)" if fresh is None else f"fresh for {fresh:g}s" if fresh > 0 else "stale"
    )
    print(f"{issuer}: {'usable' if status['usable'] else 'NO USABLE KEY'}, {freshness}")
    if status.get("jwks_url"):
        print(f"  jwks_url: {status['jwks_url']}")
    for key in status["keys"]:
        print(f"  key {key['kid'] or '(no kid)'}: kty={key['kty']} alg={','.join(key['alg'])}")
    for skipped in status["skipped"]:
        print(f"  skipped {skipped['kid'] or '(no kid)'}: {skipped['reason']}")
    if status["last_error"]:
        print(f"  last fetch error: {status['last_error']}")


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256, not {count}")
    return count


def register(commands: Commands) -> None:
    """Add ``serve``, ``check-config``, ``verify`` and ``keys``."""
    serve = commands.add_parser(
        "serve",
        help="run the gateway (forward-auth endpoint and reverse proxy) from a TOML file",
        description=(
            "Serve the forward-auth decision endpoint and the reverse proxy on the main listener, "
            "and /healthz, /readyz and /metrics on the ops listener, as the TOML file says. "
            "SIGTERM lets in-flight requests finish, then exits 0."
        ),
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML file")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="worker processes (default: [server] workers)",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a gateway TOML file and print the resolved configuration",
        description=(
            "Check every key of the file; print the resolved configuration (defaults filled in, "
            "secrets shown only as their env:/file: references) as JSON and exit 0, or print "
            "one line naming the file, the key path and the problem and exit 2."
        ),
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=_check_config)

    verify = commands.add_parser(
        "verify",
        help="verify one token read from stdin against the configured issuers",
        description=(
            "Read one token from stdin (never from the command line, which shell history keeps), "
            "verify it as the gateway would, print its claims as JSON and exit 0; or print the "
            "error kind and description and exit 1."
        ),
    )
    verify.add_argument("--config", required=True, metavar="FILE")
    # Accepted only to refuse it without argparse echoing the token in its error message.
    verify.add_argument("token", nargs="?", help=argparse.SUPPRESS)
    verify.set_defaults(handler=_verify)

    keys = commands.add_parser(
        "keys",
        help="fetch and show each configured issuer's keys",
        description=(
            "Fetch each issuer's keys and print the key ids with kty and alg, the keys skipped "
            "and why, and how long they stay fresh. Exit 1 if an issuer has no usable key."
        ),
    )
    keys.add_argument("--config", required=True, metavar="FILE")
    keys.add_argument("--json", action="store_true", help="print the status as JSON")
    keys.set_defaults(handler=_keys)
