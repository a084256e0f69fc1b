"""Gateway replicas for tests and benchmarks: ``gatekeeper serve`` processes sharing one Redis
revocation store, each on its own free loopback ports, requests through the forward-auth
endpoint (Envoy style: ``/auth/<path>``).

Used by tests/gateway/test_replicas.py and benchmarks/revocation.py (which, like the other
benchmarks that start real processes, puts ``tests/`` and ``tests/gateway/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from gateway_process import GatewayProcess

from gatekeeper.issuer import DevIssuer

#: One issuer (its JWKS from a file), every route requiring a token, the Redis revocation store.
#: ``{{listen}}``/``{{ops}}`` are left for :class:`GatewayProcess` to fill in.
CONFIG = """
[server]
listen = "{{listen}}"
ops_listen = "{{ops}}"

[[issuers]]
issuer = "{iss}"
audience = "api"
jwks = "{jwks}"
max_lifetime = 3600

[forward_auth]
proxy = "envoy"

[default]
access = "required"

[logging]
access_log = "off"
level = "{level}"

[revocation]
store = "redis"

[revocation.redis]
url = "{url}"
prefix = "{prefix}"
{redis_options}
"""


def replica_config(
    issuer: DevIssuer,
    jwks: Path,
    redis_url: str,
    *,
    prefix: str,
    level: str = "info",
    redis_options: Mapping[str, float] | None = None,
) -> str:
    """The replicas' config text: ``issuer``'s keys read from the file ``jwks`` (written by the
    caller), revocations in Redis at ``redis_url`` under ``prefix``; ``redis_options`` are more
    ``[revocation.redis]`` settings (``timeout``, ``block``: seconds)."""
    options = "\n".join(f"{name} = {value!r}" for name, value in (redis_options or {}).items())
    return CONFIG.format(
        iss=issuer.issuer, jwks=jwks, url=redis_url, prefix=prefix, level=level, redis_options=options
    )


class Replicas:
    """Replicas started one at a time with :meth:`start`, each in its own subdirectory of
    ``directory``; :meth:`close` kills them all (``with Replicas(...) as group:`` too)."""

    def __init__(
        self,
        directory: Path,
        issuer: DevIssuer,
        redis_url: str,
        *,
        prefix: str = "replicas",
        level: str = "info",
        redis_options: Mapping[str, float] | None = None,
    ) -> None:
        self.directory = directory
        jwks = directory / "jwks.json"
        jwks.write_text(json.dumps(issuer.jwks()))
        self.config = replica_config(
            issuer, jwks, redis_url, prefix=prefix, level=level, redis_options=redis_options
        )
        #: The replicas started so far, in order.
        self.replicas: list[GatewayProcess] = []
        self._stack = ExitStack()

    def start(self) -> GatewayProcess:
        """Start one more replica and wait until it is healthy (not until Redis is reachable)."""
        where = self.directory / f"replica{len(self.replicas) + 1}"
        where.mkdir()
        replica = self._stack.enter_context(GatewayProcess(self.config, where))
        self.replicas.append(replica)
        return replica

    def close(self) -> None:
        """Kill every replica started."""
        self._stack.close()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_ready(replica: GatewayProcess, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``/readyz`` until the replica's revocation store is ``ok`` (Redis reached and the
    list loaded: a state change, not a clock); returns the last body. RuntimeError with the
    replica's stderr when it does not get there within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(replica.ops_url + "/readyz", timeout=5).json()
        if body.get("revocation", {}).get("status") == "ok":
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"replica not ready within {timeout:g} s: {replica.stderr()}")
        time.sleep(0.02)
