"""The gateway's subcommands: ``serve``, ``check-config``, ``verify`` and ``keys``.

Each handler imports what it needs when it runs, so ``gatekeeper --help`` needs only the core.
A configuration mistake is one line on stderr and exit code 2, before any port is bound.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import Commands


def _not_yet(args: argparse.Namespace) -> int:
    print(f"gatekeeper {args.command}: not implemented yet", file=sys.stderr)
    return 1


def register(commands: Commands) -> None:
    """Add ``serve``, ``check-config``, ``verify`` and ``keys``."""
    for name in ("serve", "check-config", "verify", "keys"):
        parser = commands.add_parser(name, help=f"{name} (gateway)")
        parser.set_defaults(handler=_not_yet, command=name)
