"""The ``gatekeeper`` command. One subcommand per job, each registered by its own module.

A module that adds subcommands exposes ``register(commands)``, taking the ``add_subparsers``
action, and is named in :data:`COMMAND_MODULES`. Registration must stay cheap: modules import
their heavy dependencies (uvicorn, prometheus-client, redis) inside their handlers, so
``gatekeeper --help`` works with only the core dependencies installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from . import __version__

Handler = Callable[[argparse.Namespace], int]
#: What ``register`` receives: the parser's ``add_subparsers()`` action.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Modules whose ``register(commands)`` adds subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "gatekeeper.cli",
    "gatekeeper.gateway.commands",
    "gatekeeper.issuer_cli",
    "gatekeeper.revoke_cli",
)


def port(text: str) -> int:
    """argparse type for a TCP port (0 allowed: pick a free one)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return number


_port = port  # the old private name


def _demo(args: argparse.Namespace) -> int:
    try:
        # Imported here: uvicorn is needed by the demo only. (import_module, not ``from .
        # import demo``: that returns the package attribute even when sys.modules says absent.)
        demo = importlib.import_module("gatekeeper.demo")
    except ImportError as exc:
        print(f"gatekeeper demo needs {exc.name}: pip install 'gatekeeper-jwt[server]'", file=sys.stderr)
        return 1
    try:
        run: Callable[..., int] = demo.serve if args.serve else demo.run
        return run(sys.stdout, port=args.port)
    except OSError as exc:  # e.g. the --port is taken
        where = f" (port {args.port})" if args.port else ""
        print(f"gatekeeper demo: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def register(commands: Commands) -> None:
    """The ``demo`` subcommand."""
    demo = commands.add_parser(
        "demo",
        help="run the middleware and the gateway end to end on 127.0.0.1 and show every error profile",
        description=(
            "Start a local JWKS endpoint with a fresh key and an example API behind the middleware "
            "on 127.0.0.1, send it good and bad tokens over HTTP under the rfc6750, placepoint, "
            "addressfinder and placewise error profiles, and print what came back; then the same "
            "verifier as a gateway, through nginx-style forward-auth and the reverse proxy. Exits 0 "
            "when every response was as expected. Tokens are shown only by fingerprint."
        ),
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep running until Ctrl-C and print curl commands with throwaway dev tokens",
    )
    demo.add_argument("--port", type=port, default=0, help="port of the example API (default: a free port)")
    demo.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Verify OAuth2 JWT access tokens in front of APIs.",
    )
    parser.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
