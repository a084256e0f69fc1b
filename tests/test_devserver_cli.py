"""``gatekeeper issuer``: the development issuer as a standalone process, used as a real user would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from test_client import Api

from gatekeeper import Verifier
from gatekeeper.client import ClientCredentialsAuth, Credentials


@pytest.fixture
def issuer_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatekeeper.cli",
            "issuer",
            "--port",
            "0",
            "--scope",
            "plots:read plots:write",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    fields: dict[str, str] = {}
    try:
        for line in proc.stdout:
            match = re.match(
                r"\s+(issuer|token endpoint|JWKS|client_id|client_secret|revocation)\s+(\S+)", line
            )
            if match:
                fields[match[1]] = match[2]
            if line.startswith("Ctrl-C"):
                break
        yield proc, fields
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_standalone_issuer_prints_working_credentials(
    issuer_process: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    proc, fields = issuer_process
    assert fields["issuer"].startswith("http://127.0.0.1:")
    assert fields["client_id"] == "dev-client"
    assert len(fields["client_secret"]) >= 32

    # The printed credentials work with gatekeeper's own client, and the token verifies.
    creds = Credentials(
        fields["token endpoint"], "dev-client", client_secret=fields["client_secret"], scope="plots:read"
    )
    api = Api()
    try:
        with httpx.Client(auth=ClientCredentialsAuth(creds)) as client:
            assert client.get(api.url + "/plots").status_code == 200
    finally:
        api.close()
    seen = [token or "" for token in api.tokens()]
    verifier = Verifier(fields["issuer"], jwks_url=fields["JWKS"], audience="api")
    assert verifier.verify(seen[0])["scope"] == "plots:read"
    revoked = httpx.post(
        fields["revocation"], data={"token": seen[0]}, auth=("dev-client", fields["client_secret"])
    )
    assert revoked.status_code == 200

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "stopped" in out
    assert seen[0] not in out + err  # tokens are never printed


def test_bad_port_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", "issuer", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "port out of range" in result.stderr
