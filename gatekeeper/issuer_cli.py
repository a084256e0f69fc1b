"""``gatekeeper issuer``: the development issuer as a standalone OAuth2 server on loopback.

It registers one client with a freshly generated secret and prints the client id and secret once,
on start-up: they are development credentials the user needs to ask for tokens, and printing them
is the point. Tokens are never printed or logged (the server's request log is silenced).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from types import FrameType
from typing import TextIO

from .cli import Commands, port

__all__ = ["register", "serve"]


def register(commands: Commands) -> None:
    """Add ``gatekeeper issuer``."""
    parser = commands.add_parser(
        "issuer",
        help="run a development OAuth2 issuer (token, revocation, JWKS, discovery) on 127.0.0.1",
        description=(
            "Serve a development OAuth2 authorization server: client credentials, refresh token and "
            "password grants, RFC 7009 revocation, a JWKS and discovery. Prints a client id and a "
            "generated secret to use, then runs until Ctrl-C. For development and tests only."
        ),
    )
    parser.add_argument("--port", type=port, default=0, help="port to listen on (default: a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--client-id", default="dev-client", help="id of the client to register")
    parser.add_argument(
        "--scope", action="append", default=[], help="a scope the client may request (repeatable)"
    )
    parser.add_argument("--audience", default="api", help="the aud claim of issued tokens (default: api)")
    parser.add_argument("--expires-in", type=int, default=300, help="token lifetime in seconds")
    parser.add_argument(
        "--error-shape",
        choices=("rfc6749", "placepoint", "placewise"),
        default="rfc6749",
        help="shape of token endpoint errors",
    )
    parser.add_argument("--token-path", default="/oauth/token", help="path of the token endpoint")
    parser.add_argument(
        "--refresh-tokens", action="store_true", help="issue refresh tokens with client credentials too"
    )
    parser.set_defaults(handler=_issuer)


def _issuer(args: argparse.Namespace) -> int:
    try:
        return serve(sys.stdout, args)
    except OSError as exc:
        print(f"gatekeeper issuer: {exc.strerror or exc} (port {args.port})", file=sys.stderr)
        return 1


def serve(out: TextIO, args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); prints where everything is."""
    from .devserver import IssuerServer  # imported here: keeps ``gatekeeper --help`` cheap
    from .issuer import DevIssuer

    if not args.token_path.startswith("/"):
        print("gatekeeper issuer: --token-path must start with /", file=sys.stderr)
        return 2
    issuer = DevIssuer(audience=args.audience, algorithms=("ES256",))
    server = IssuerServer(
        issuer, host=args.host, port=args.port, error_shape=args.error_shape, token_path=args.token_path
    )
    issuer.issuer = server.url
    server.token_lifetime = args.expires_in
    secret = secrets.token_urlsafe(24)
    scopes = [s for value in args.scope for s in value.split()] or ["api:read", "api:write"]
    server.add_client(args.client_id, secret, scopes=scopes, refresh_tokens=args.refresh_tokens)

    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    with server:
        print(
            f"gatekeeper development issuer on {server.url} (for development only)\n"
            f"  issuer            {server.url}\n"
            f"  token endpoint    {server.token_url}\n"
            f"  revocation        {server.revocation_url}\n"
            f"  JWKS              {server.jwks_url}\n"
            f"  discovery         {server.url}/.well-known/openid-configuration\n"
            f"  client_id         {args.client_id}\n"
            f"  client_secret     {secret}\n"
            f"  scopes            {' '.join(scopes)}\n"
            f"\nGet a token:\n"
            f"  curl -s -X POST {server.token_url} -d grant_type=client_credentials \\\n"
            f"    -d client_id={args.client_id} -d client_secret={secret}\n"
            f"\nPoint a verifier at it:\n"
            f"  export GATEKEEPER_ISSUER={server.url} GATEKEEPER_AUDIENCE={args.audience} "
            f"GATEKEEPER_JWKS_URL={server.jwks_url}\n"
            f"\nCtrl-C stops it.",
            file=out,
            flush=True,
        )
        stop.wait()
    print("gatekeeper issuer: stopped", file=out, flush=True)
    return 0
