"""``gatekeeper revoke``: the installed command against a real redis-server, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port, redis_server  # noqa: F401 (the fixture)

from gatekeeper.issuer import DevIssuer
from gatekeeper.redact import fingerprint
from gatekeeper.revocation import Revocations
from gatekeeper.revocation_redis import RedisRevocationStore, RedisSettings

ISS = "https://issuer.example"


def write_config(tmp_path: Path, revocation: str) -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(DevIssuer(ISS, audience="api", algorithms=("ES256",)).jwks()))
    path = tmp_path / "gatekeeper.toml"
    path.write_text(
        f"""
[[issuers]]
issuer = "{ISS}"
audience = "api"
jwks = "{jwks}"
max_lifetime = 600

{revocation}
"""
    )
    return path


def redis_config(tmp_path: Path, url: str) -> Path:
    return write_config(
        tmp_path,
        f'[revocation]\nstore = "redis"\n[revocation.redis]\nurl = "{url}"\nprefix = "cli"\ntimeout = 0.5',
    )


def revoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", "revoke", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored(url: str) -> dict[str, int]:
    store = RedisRevocationStore(Revocations(), RedisSettings(url=url, prefix="cli"))
    try:
        store._resync()
        return store.revocations.counts()
    finally:
        store.stop()


def test_revoke_writes_to_the_shared_store(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    config = str(redis_config(tmp_path, redis_server.url))
    done = revoke("--config", config, "--sub", "alice-secret-subject")
    assert done.returncode == 0, done.stderr
    assert fingerprint("alice-secret-subject") in done.stdout
    assert "alice-secret-subject" not in done.stdout + done.stderr
    assert (
        revoke("--config", config, "--jti", "j-1", "--issuer", ISS, "--exp", str(time.time() + 60)).returncode
        == 0
    )
    assert revoke("--config", config, "--client-id", "billing", "--issuer", ISS).returncode == 0
    assert stored(redis_server.url) == {"jti": 1, "sub": 1, "client_id": 1}
    undo = revoke("--config", config, "--sub", "alice-secret-subject", "--undo")
    assert undo.returncode == 0, undo.stderr
    assert revoke("--config", config, "--sub", "alice-secret-subject", "--undo").returncode == 3
    assert stored(redis_server.url) == {"jti": 1, "sub": 0, "client_id": 1}


def test_unreachable_store_is_an_error(tmp_path: Path) -> None:
    config = str(redis_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    result = revoke("--config", config, "--sub", "alice")
    assert result.returncode == 1
    assert "nothing was revoked" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jti", "x"], "issuer"),
        (["--jti", "x", "--issuer", "https://other.example"], "trusted"),
        (["--sub", "a", "--before", "soon"], "not a Unix time"),
        (["--sub", "a", "--exp", "5"], "expires_at applies"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    config = str(redis_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    result = revoke("--config", config, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_memory_store_cannot_be_reached_from_the_cli(tmp_path: Path) -> None:
    result = revoke("--config", str(write_config(tmp_path, "[revocation]")), "--sub", "a")
    assert result.returncode == 2
    assert "POST /revocations" in result.stderr
    missing = revoke("--config", str(tmp_path / "nope.toml"), "--sub", "a")
    assert missing.returncode == 2
