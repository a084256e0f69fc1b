"""``gatekeeper verify`` and ``gatekeeper keys``: operators' commands on the gateway's config."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper import cli
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer


@pytest.fixture
def issuer() -> Iterator[IssuerServer]:
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",))
    with server:
        yield server


@pytest.fixture
def config(issuer: IssuerServer, tmp_path: Path) -> Path:
    path = tmp_path / "gatekeeper.toml"
    path.write_text(
        f"""
[[issuers]]
issuer = "{issuer.url}"
audience = "api"
jwks_url = "{issuer.jwks_url}"
"""
    )
    return path


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_prints_the_claims(issuer: IssuerServer, config: Path) -> None:
    token = issuer.issuer.mint(scope="read write", subject="svc-1", audience="api")
    done = run("verify", "--config", str(config), stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims["sub"] == "svc-1"
    assert claims["scope"] == "read write"
    assert claims["iss"] == issuer.url
    assert token not in done.stdout + done.stderr


def test_verify_accepts_a_pasted_header_value(issuer: IssuerServer, config: Path) -> None:
    token = issuer.issuer.mint(audience="api")
    done = run("verify", "--config", str(config), stdin=f"Bearer {token}")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("mint", "expected"),
    [
        ({"expires_in": -3600}, "expired_token: The access token has expired"),
        ({"audience": "someone-else"}, "invalid_token: The token is not for this audience"),
    ],
)
def test_verify_failure_prints_kind_and_description(
    issuer: IssuerServer, config: Path, mint: dict[str, object], expected: str
) -> None:
    token = issuer.issuer.mint(**mint)  # type: ignore[arg-type]
    done = run("verify", "--config", str(config), stdin=token)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == expected


def test_verify_with_nothing_on_stdin(config: Path) -> None:
    done = run("verify", "--config", str(config), stdin="")
    assert done.returncode == 1
    assert done.stderr.startswith("missing_token:")


def test_verify_refuses_a_token_in_argv_without_echoing_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    assert cli.main(["verify", "--config", str(config), token]) == 2
    out = capsys.readouterr()
    assert "stdin" in out.err
    assert token not in out.err + out.out


def test_keys_lists_kids_with_kty_alg_and_skipped_keys(issuer: IssuerServer, config: Path) -> None:
    jwks = issuer.issuer.jwks()
    jwks["keys"].append({"kty": "XYZ", "kid": "mystery"})
    issuer.body = json.dumps(jwks).encode()
    done = run("keys", "--config", str(config))
    assert done.returncode == 0, done.stderr
    kid = issuer.issuer.jwks()["keys"][0]["kid"]
    assert f"{issuer.url}: usable, fresh for " in done.stdout
    assert f"  key {kid}: kty=EC alg=ES256" in done.stdout
    assert "  skipped mystery: " in done.stdout
    as_json = json.loads(run("keys", "--config", str(config), "--json").stdout)
    assert as_json[0]["keys"] == [{"kid": kid, "kty": "EC", "alg": ["ES256"]}]
    assert as_json[0]["skipped"][0]["kid"] == "mystery"


def test_keys_exits_1_when_an_issuer_has_no_usable_key(issuer: IssuerServer, config: Path) -> None:
    issuer.status = 503
    done = run("keys", "--config", str(config))
    assert done.returncode == 1
    assert f"{issuer.url}: NO USABLE KEY" in done.stdout
    assert "last fetch error: HTTP 503" in done.stdout


def test_commands_refuse_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[issuers]]\nissuer = "https://a.example"\naudience = "api"\njwks_url = "nope"\n')
    for command in ("verify", "keys"):
        done = run(command, "--config", str(path))
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1
        assert "issuers[0].jwks_url: 'nope' is not a URL" in done.stderr


@pytest.mark.parametrize("workers", ["0", "-1", "many"])
def test_serve_refuses_a_bad_worker_count(config: Path, workers: str) -> None:
    done = run("serve", "--config", str(config), "--workers", workers)
    assert done.returncode == 2
    assert "argument --workers:" in done.stderr
