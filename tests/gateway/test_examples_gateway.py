"""Every shipped gateway example configuration passes ``gatekeeper check-config``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gateway_process import GatewayProcess
from upstream import Upstream

from gatekeeper.devserver import IssuerServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "gateway"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))


def test_there_are_examples() -> None:
    assert (EXAMPLES / "addressfinder.toml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_example_passes_check_config(path: Path, tmp_path: Path) -> None:
    # Secrets are references: give every env: reference a value for the check.
    env = {name: "x" * 64 for name in re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', path.read_text())}
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"{path}: ok"


def test_addressfinder_example_serves_as_documented(tmp_path: Path) -> None:
    """The example as shipped, with only its addresses pointed at loopback stand-ins."""
    text = (EXAMPLES / "addressfinder.toml").read_text()
    with IssuerServer() as issuer, Upstream() as upstream:
        local = (
            text.replace('listen = "127.0.0.1:8080"', 'listen = "{listen}"')
            .replace('ops_listen = "127.0.0.1:9180"', 'ops_listen = "{ops}"')
            .replace('access_log = "stdout"', 'access_log = "{access_log}"')
            .replace('issuer = "https://api.addressfinder.io"', f'issuer = "{issuer.url}"')
            .replace("https://api.addressfinder.io/.well-known/jwks.json", issuer.jwks_url)
            .replace("http://127.0.0.1:8081", upstream.url)
        )
        audience = "https://api.addressfinder.io"
        address = issuer.issuer.mint(scope="address", subject="client-af", audience=audience)
        phone = issuer.issuer.mint(scope="phone", audience=audience)
        with GatewayProcess(local, tmp_path) as gateway:
            assert gateway.wait_for("/readyz", 200).status_code == 200
            with httpx.Client(base_url=gateway.url) as client:
                autocomplete = "/api/au/address/autocomplete/?q=274+Harb&format=json"
                ok = client.get(autocomplete, headers={"authorization": f"Bearer {address}"})
                assert ok.status_code == 200
                seen = dict(ok.json()["headers"])
                assert seen["x-auth-client-id"] == "client-af"
                assert seen["x-auth-scopes"] == "address"
                assert "authorization" not in seen
                for headers in ({}, {"authorization": f"Bearer {phone}"}):
                    denied = client.get(autocomplete, headers=headers)
                    assert denied.status_code == 400  # Addressfinder's shape, not RFC 6750's
                    assert denied.json()["error_code"] == "1024"
                assert client.get("/health").status_code == 200  # exempt: straight through
            assert gateway.stop() == 0, gateway.stderr()
