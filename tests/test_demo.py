"""``gatekeeper demo`` end to end: the installed console script, real servers on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import gatekeeper
from gatekeeper import demo

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
PROFILES = ("rfc6750", "placepoint", "addressfinder", "placewise")
# The statuses each provider's documents call for, written out independently of the demo's table.
EXPECTED = {
    "good-token": (200, 200, 200, 200),
    "no-token": (401, 401, 400, 460),
    "expired-token": (401, 401, 400, 460),
    "missing-scope": (403, 401, 400, 460),
    "forged-signature": (401, 401, 400, 460),
    "query-param": (200, 200, 200, 200),
    "revoked-token": (401, 401, 400, 460),
}
SCENARIO_LINE = re.compile(r"^\[\d+/\d+\] ([\w-]+): ")
ROW_LINE = re.compile(r"^  (rfc6750|placepoint|addressfinder|placewise)\s+(\d{3})\s+(.+)$")


def gatekeeper_command() -> list[str]:
    script = Path(sys.executable).parent / "gatekeeper"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gatekeeper.cli"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*gatekeeper_command(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def rows(stdout: str) -> dict[tuple[str, str], tuple[int, str, str]]:
    """(scenario, profile) -> (status, check, the row's header and body lines)."""
    found: dict[tuple[str, str], tuple[int, str, str]] = {}
    scenario = None
    key = None
    for line in stdout.splitlines():
        if match := SCENARIO_LINE.match(line):
            scenario, key = match.group(1), None
        elif (match := ROW_LINE.match(line)) and scenario is not None:
            key = (scenario, match.group(1))
            found[key] = (int(match.group(2)), match.group(3).strip(), "")
        elif key is not None and line.startswith("      "):
            status, check, detail = found[key]
            found[key] = (status, check, detail + line.strip() + "\n")
        else:
            key = None
    return found


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    return run_cli("demo")


def test_demo_exits_0_and_says_all_passed(demo_run: subprocess.CompletedProcess[str]) -> None:
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    assert "all 28 checks passed" in demo_run.stdout
    assert "FAIL" not in demo_run.stdout


def test_every_scenario_and_profile_has_its_expected_status(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    found = rows(demo_run.stdout)
    expected = {
        (scenario, profile): status
        for scenario, statuses in EXPECTED.items()
        for profile, status in zip(PROFILES, statuses, strict=True)
    }
    assert {key: value[0] for key, value in found.items()} == expected
    assert all(check == "ok" for _, check, _ in found.values())


def test_summary_table_matches(demo_run: subprocess.CompletedProcess[str]) -> None:
    lines = demo_run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary"))
    assert lines[start].split() == ["summary", *PROFILES]
    table = {
        line.split()[0]: tuple(int(c) for c in line.split()[1:])
        for line in lines[start + 1 : start + 1 + len(EXPECTED)]
    }
    assert table == EXPECTED


def test_rows_show_the_profiles_headers_and_bodies(demo_run: subprocess.CompletedProcess[str]) -> None:
    found = rows(demo_run.stdout)

    def detail(scenario: str, profile: str) -> str:
        return found[(scenario, profile)][2]

    # The good token: the claims the API saw, through both the header and the query parameter.
    for scenario in ("good-token", "query-param"):
        assert '"sub":"demo-client"' in detail(scenario, "rfc6750")
        assert '"places:read"' in detail(scenario, "placewise")
    assert 'www-authenticate: Bearer realm="api"\n' in detail("no-token", "rfc6750")
    assert 'error="invalid_token"' in detail("expired-token", "rfc6750")
    assert "has expired" in detail("expired-token", "placepoint")
    assert 'error="insufficient_scope"' in detail("missing-scope", "rfc6750")
    assert 'scope="places:read"' in detail("missing-scope", "rfc6750")
    assert "signature is invalid" in detail("forged-signature", "rfc6750")
    assert "has been revoked" in detail("revoked-token", "rfc6750")
    assert '{"error":{"code":401,' in detail("no-token", "placepoint")
    for scenario in ("no-token", "expired-token", "missing-scope", "forged-signature"):
        assert '"error_code":"1024"' in detail(scenario, "addressfinder")
        assert "www-authenticate" not in detail(scenario, "addressfinder")
        assert '{"error":"Member not authorized"}' in detail(scenario, "placewise")
        assert "content-type: application/json" in detail(scenario, "placewise")


def test_no_token_is_printed(demo_run: subprocess.CompletedProcess[str]) -> None:
    assert not JWT.search(demo_run.stdout)
    assert not JWT.search(demo_run.stderr)
    # Tokens are identified by fingerprint instead.
    assert re.search(r"Authorization: Bearer <token [0-9a-f]{12}>", demo_run.stdout)
    assert re.search(r"\?bearer_token=<token [0-9a-f]{12}>", demo_run.stdout)


def test_a_wrong_expectation_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The exit status comes from real checks: expect a 200 for "no token" and the run must fail.
    caplog.set_level(logging.DEBUG)  # and even with every log on, no token gets logged
    broken = replace(demo.SCENARIOS[1], expected=dict.fromkeys(PROFILES, 200))
    query = next(s for s in demo.SCENARIOS if s.via == "query")
    monkeypatch.setattr(demo, "SCENARIOS", (demo.SCENARIOS[0], broken, query))
    out = io.StringIO()
    assert demo.run(out) == 1
    text = out.getvalue()
    assert "FAILED: 4 of 12 checks" in text
    assert "no-token / addressfinder: got 400, expected 200" in text
    assert not JWT.search(text)
    assert "gatekeeper.access" in {record.name for record in caplog.records}  # rejections were logged
    assert not JWT.search(caplog.text)
    assert not [record for record in caplog.records if record.name == "httpx"]


def test_help_and_version() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "demo" in top.stdout
    sub = run_cli("demo", "--help")
    assert sub.returncode == 0
    assert "--serve" in sub.stdout
    assert "--port" in sub.stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"gatekeeper {gatekeeper.__version__}"
    bare = run_cli()
    assert bare.returncode == 2
    assert "usage: gatekeeper" in bare.stderr


def test_port_must_be_a_port() -> None:
    result = run_cli("demo", "--port", "70000")
    assert result.returncode == 2
    assert "port out of range" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def serving() -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], int]]:
    port = free_port()
    process = subprocess.Popen(
        [*gatekeeper_command(), "demo", "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Buffered stdout, as in real use: the demo has to flush the commands itself.
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield process, lines, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def read_until(lines: queue.Queue[str], prefix: str, timeout: float = 20) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        seen.append(line)
        if line.startswith(prefix):
            return seen


def test_serve_prints_working_curl_commands_and_stops_on_sigterm(
    serving: tuple[subprocess.Popen[str], queue.Queue[str], int],
) -> None:
    process, lines, port = serving
    output = read_until(lines, f"curl -i http://127.0.0.1:{port}/placewise/places")
    text = "".join(output)
    assert "throwaway development tokens" in text
    curls = [line.strip() for line in output if line.startswith("curl ")]
    assert len(curls) == 4
    assert sum(bool(JWT.search(c)) for c in curls) == 3  # good, query parameter, missing scope

    # Run what the commands say, over real HTTP.
    statuses = []
    for command in curls:
        url = re.search(r"http://127\.0\.0\.1:\d+/\S+?(?=\"|$)", command)
        assert url is not None
        header = re.search(r'-H "Authorization: (Bearer [^"]+)"', command)
        headers = {"authorization": header.group(1)} if header else {}
        statuses.append(httpx.get(url.group(0), headers=headers).status_code)
    assert statuses == [200, 200, 403, 460]

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert process.stderr is not None
    assert not JWT.search(process.stderr.read())


# -- the gateway part ------------------------------------------------------------------------------

GATEWAY_STEP = re.compile(
    r"^\[g(\d+)/(\d+)\] (forward-auth|proxy): .*\n\s+GET .+?  -> (\d{3}) (.*)$", re.MULTILINE
)


def test_demo_runs_the_gateway_part(demo_run: subprocess.CompletedProcess[str]) -> None:
    steps = GATEWAY_STEP.findall(demo_run.stdout)
    assert len(steps) == 8
    assert {door for _, _, door, _, _ in steps} == {"forward-auth", "proxy"}
    assert all(result == "ok" for *_, result in steps)
    assert "gateway: all 8 checks passed" in demo_run.stdout


def test_gateway_part_in_process_checks_what_the_upstream_saw() -> None:
    from gatekeeper import demo_gateway

    out = io.StringIO()
    assert demo_gateway.run(out) == 0
    text = out.getvalue()
    assert not JWT.search(text)
    # The forged identity never reached the upstream, on a protected or an exempt route.
    assert '"admin"' not in text
    assert '"identity":{}' in text  # the exempt route: no client-chosen identity
    assert '"query":"q=x"' in text  # the query token was removed from the upstream URL
    assert text.count('"error_code":"1024"') == 3  # the profile's body, through nginx too


def test_gateway_part_fails_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatekeeper import demo_gateway

    real = demo_gateway.steps

    def wrong(tokens: Any, issuer: str) -> list[Any]:
        first, *rest = real(tokens, issuer)
        return [replace(first, status=299), *rest]

    monkeypatch.setattr(demo_gateway, "steps", wrong)
    out = io.StringIO()
    assert demo_gateway.run(out) == 1
    assert "gateway: FAILED 1 of 8 checks" in out.getvalue()
