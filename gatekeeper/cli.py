"""The ``gatekeeper`` command. One subcommand per job; each adds its parser in :func:`build_parser`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__

Handler = Callable[[argparse.Namespace], int]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _demo(args: argparse.Namespace) -> int:
    try:
        from . import demo  # imported here: uvicorn is needed by the demo only
    except ImportError as exc:
        print(f"gatekeeper demo needs {exc.name}: pip install 'gatekeeper-jwt[server]'", file=sys.stderr)
        return 1
    try:
        if args.serve:
            return demo.serve(sys.stdout, port=args.port)
        return demo.run(sys.stdout, port=args.port)
    except OSError as exc:  # e.g. the --port is taken
        where = f" (port {args.port})" if args.port else ""
        print(f"gatekeeper demo: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Verify OAuth2 JWT access tokens in front of APIs.",
    )
    parser.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the middleware end to end on 127.0.0.1 and show every error profile",
        description=(
            "Start a local JWKS endpoint with a fresh key and an example API behind the middleware "
            "on 127.0.0.1, send it good and bad tokens over HTTP under the rfc6750, placepoint, "
            "addressfinder and placewise error profiles, and print what came back. Exits 0 when "
            "every response had the expected status. Tokens are shown only by fingerprint."
        ),
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep running until Ctrl-C and print curl commands with throwaway dev tokens",
    )
    demo.add_argument("--port", type=_port, default=0, help="port of the example API (default: a free port)")
    demo.set_defaults(handler=_demo)
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
