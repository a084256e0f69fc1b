"""``gatekeeper serve`` as a real process on loopback: readiness, ops isolation, metrics, the
access log, several workers with multi-process metrics, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import GatewayProcess, metric_samples
from upstream import ServerThread, Upstream

from gatekeeper.devserver import IssuerServer
from gatekeeper.errors import ERROR_KINDS
from gatekeeper.gateway.metrics import FLUSH_INTERVAL
from gatekeeper.gateway.server import MIN_WORKER_LIFETIME
from gatekeeper.issuer import DevIssuer
from gatekeeper.redact import fingerprint

CONFIG = """
[server]
listen = "{listen}"
ops_listen = "{ops}"
shutdown_timeout = 20

[tokens]
query_params = ["bearer_token"]

[[issuers]]
issuer = "ISSUER"
audience = "api"
jwks_url = "JWKS"

[issuers.fetch]
retry_interval = 0.1

[[routes]]
path = "/open/**"
access = "exempt"

[[routes]]
path = "/api/**"
scopes = ["read"]

[upstreams.app]
url = "UPSTREAM"

[proxy]
upstream = "app"

[logging]
access_log = "{access_log}"
"""


@pytest.fixture
def issuer() -> Iterator[IssuerServer]:
    """A JWKS server on loopback whose issuer mints tokens on the real clock (the gateway
    process checks them against the real clock)."""
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",))
    with server:
        yield server


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


def config_for(issuer: IssuerServer, upstream_url: str) -> str:
    return (
        CONFIG.replace("ISSUER", issuer.url)
        .replace("JWKS", issuer.jwks_url)
        .replace("UPSTREAM", upstream_url)
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_readyz_says_not_ready_until_keys_arrive(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    issuer.status = 503  # the JWKS endpoint fails at startup
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path) as gateway:
        response = httpx.get(gateway.ops_url + "/readyz")
        assert response.status_code == 503
        # Once the first fetch has failed, the status says why.
        deadline_body: dict[str, Any] = response.json()
        for _ in range(200):
            deadline_body = httpx.get(gateway.ops_url + "/readyz").json()
            if deadline_body["issuers"][0]["last_error"]:
                break
        (status,) = deadline_body["issuers"]
        assert deadline_body["ready"] is False
        assert status["issuer"] == issuer.url
        assert status["usable"] is False
        assert status["kids"] == []
        assert "503" in status["last_error"]
        assert httpx.get(gateway.ops_url + "/healthz").status_code == 200  # alive, just not ready

        issuer.status = 200  # the endpoint recovers: the keeper fetches without any request
        ready = gateway.wait_for("/readyz", 200)
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True
        assert body["issuers"][0]["kids"] == [key["kid"] for key in issuer.issuer.jwks()["keys"]]
        assert body["issuers"][0]["fresh_for"] > 0
        assert ready.headers["cache-control"] == "no-store"
        assert gateway.stop() == 0, gateway.stderr()


def test_ops_endpoints_are_not_reachable_through_the_main_listener(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.issuer.mint(scope="read", audience="api")
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path) as gateway:
        gateway.wait_for("/readyz", 200)
        for path in ("/healthz", "/readyz", "/metrics"):
            anonymous = httpx.get(gateway.url + path)
            assert anonymous.status_code == 401  # the default rule, like any other path
            assert "gatekeeper_" not in anonymous.text
            with_token = httpx.get(gateway.url + path, headers=bearer(token))
            # Proxied to the upstream like any other path: its echo, never the ops answer.
            assert with_token.json()["path"] == path
            assert "gatekeeper_" not in with_token.text
        assert gateway.stop() == 0, gateway.stderr()


BOUNDED_RULES = {"/open/**", "/api/**", "/**", ""}


def test_metrics_and_access_log(issuer: IssuerServer, upstream: Upstream, tmp_path: Path) -> None:
    good = issuer.issuer.mint(scope="read", subject="alice-secret-sub", audience="api")
    no_scope = issuer.issuer.mint(scope="write", audience="api")
    expired = issuer.issuer.mint(scope="read", expires_in=-3600, audience="api")
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path) as gateway:
        gateway.wait_for("/readyz", 200)
        with httpx.Client(base_url=gateway.url) as client:
            assert client.get("/api/items?x=1", headers=bearer(good)).status_code == 200  # verified
            assert client.get("/api/items?x=2", headers=bearer(good)).status_code == 200  # cached
            assert client.get(f"/api/items?bearer_token={good}&y=3").status_code == 200  # query token
            assert client.get("/api/items", headers=bearer(no_scope)).status_code == 403
            assert client.get("/api/items", headers=bearer(expired)).status_code == 401
            assert client.get("/api/items").status_code == 401
            assert client.get("/open/status?code=503").status_code == 503  # the upstream's own
            # Many distinct paths and tokens: none may become a label value.
            distinct = [
                issuer.issuer.mint(scope="read", subject=f"user-{i}", audience="api") for i in range(20)
            ]
            for i, token in enumerate(distinct):
                assert client.get(f"/api/unique-path-{i}", headers=bearer(token)).status_code == 200
        # A request is reported just after its response is sent: wait for the 27th.
        for _ in range(100):
            text = httpx.get(gateway.ops_url + "/metrics").text
            if metric_samples(text, "gatekeeper_decision_seconds_count").get((("door", "proxy"),)) == 27:
                break
        assert gateway.stop() == 0, gateway.stderr()
        lines = gateway.log_lines()

    decisions = metric_samples(text, "gatekeeper_decisions_total")
    by_labels = {tuple(v for _, v in labels): value for labels, value in decisions.items()}
    # (door, kind, outcome, rule), sorted by label name
    assert by_labels[("proxy", "", "allow", "/api/**")] == 23
    assert by_labels[("proxy", "insufficient_scope", "deny", "/api/**")] == 1
    assert by_labels[("proxy", "expired_token", "deny", "/api/**")] == 1
    assert by_labels[("proxy", "missing_token", "deny", "/api/**")] == 1
    assert by_labels[("proxy", "", "allow", "/open/**")] == 1
    for labels in decisions:
        values = dict(labels)
        assert values["door"] in {"proxy", "forward_auth"}
        assert values["outcome"] in {"allow", "deny", "error"}
        assert values["kind"] in {"", *ERROR_KINDS} or re.fullmatch(r"[a-z_]+", values["kind"])
        assert values["rule"] in BOUNDED_RULES
    cache = {
        dict(labels)["result"]: value
        for labels, value in metric_samples(text, "gatekeeper_token_cache_total").items()
    }
    assert cache["hit"] >= 2  # the second header request and the query one
    assert cache["miss"] >= 21
    responses = metric_samples(text, "gatekeeper_upstream_responses_total")
    assert responses[(("status_class", "2xx"),)] == 23
    assert responses[(("status_class", "5xx"),)] == 1
    assert metric_samples(text, "gatekeeper_upstream_seconds_count")[()] == 24
    assert metric_samples(text, "gatekeeper_decision_seconds_count")[(("door", "proxy"),)] == 27
    assert metric_samples(text, "gatekeeper_keys")[(("issuer", issuer.url),)] == 1
    fetches = metric_samples(text, "gatekeeper_jwks_fetches_total")
    assert fetches[(("issuer", issuer.url), ("result", "ok"))] >= 1
    # No token, no sub, no raw path anywhere in the exposition.
    for secret in (good, no_scope, expired, *distinct):
        assert secret not in text
    assert "alice-secret-sub" not in text
    assert "unique-path" not in text

    # The access log: one JSON line per request, tokens only as fingerprints.
    assert len(lines) == 27
    first = lines[0]
    assert first["method"] == "GET"
    assert first["path"] == "/api/items?x=1"
    assert first["status"] == 200
    assert first["decision"] == "allow"
    assert first["rule"] == "/api/**"
    assert first["issuer"] == issuer.url
    assert first["sub"] == "alice-secret-sub"
    assert first["client_id"] == "alice-secret-sub"
    assert first["token"] == fingerprint(good)
    assert first["upstream_status"] == 200
    assert first["latency_ms"] >= first["decision_ms"] >= 0
    assert lines[1]["cached"] is True
    query = lines[2]
    assert good not in query["path"]
    assert "bearer_token=" in query["path"]
    assert query["token"] == fingerprint(good)
    assert lines[3]["error_kind"] == "insufficient_scope"
    assert lines[3]["status"] == 403
    assert lines[5]["error_kind"] == "missing_token"
    assert lines[5]["token"] is None
    raw = gateway.access_log.read_text()
    for secret in (good, no_scope, expired, *distinct):
        assert secret not in raw


def refused_soon(url: str, attempts: int = 200) -> bool:
    for _ in range(attempts):
        try:
            httpx.get(url, timeout=1)
        except httpx.ConnectError:
            return True
        except (httpx.RemoteProtocolError, httpx.ReadError):
            continue  # accepted just before the listener closed, then closed unanswered: fine
        threading.Event().wait(0.02)
    return False


class Held:
    """An upstream whose responses wait until released, so a test knows a request is in flight."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.arrived.set()
        # The release comes from another thread: wait for it without blocking this loop.
        await asyncio.to_thread(self.release.wait, 30)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"finished after SIGTERM"})


@pytest.mark.parametrize("workers", [None, 2], ids=["one-process", "two-workers"])
def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    issuer: IssuerServer, tmp_path: Path, workers: int | None
) -> None:
    held = Held()
    token = issuer.issuer.mint(scope="read", audience="api")
    with (
        ServerThread(held) as slow,
        GatewayProcess(config_for(issuer, slow.url), tmp_path, workers=workers) as gateway,
    ):
        gateway.wait_for("/readyz", 200)
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["response"] = httpx.get(gateway.url + "/api/slow", headers=bearer(token), timeout=30)
            except httpx.HTTPError as exc:
                result["error"] = exc

        client = threading.Thread(target=call)
        client.start()
        assert held.arrived.wait(20), gateway.stderr()
        gateway.process.send_signal(15)  # SIGTERM while the request is in flight
        # Draining: new connections are refused soon, while the held request goes on.
        assert refused_soon(gateway.url + "/api/denied")  # (answered by gatekeeper, not held upstream)
        held.release.set()
        client.join(30)
        assert "error" not in result
        assert result["response"].status_code == 200
        assert result["response"].text == "finished after SIGTERM"
        assert gateway.stop() == 0, gateway.stderr()


def test_two_workers_share_the_ports_and_the_metrics(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.issuer.mint(scope="read", audience="api")
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path, workers=2) as gateway:
        # Each worker fetches its own keys; ready once the worker answering says so.
        gateway.wait_for("/readyz", 200)
        for i in range(30):
            # A new connection each time, so the kernel spreads them over both workers.
            assert httpx.get(f"{gateway.url}/api/n{i}", headers=bearer(token)).status_code == 200

        def allowed() -> float:
            text = httpx.get(gateway.ops_url + "/metrics", headers={"connection": "close"}).text
            samples = metric_samples(text, "gatekeeper_decisions_total")
            return sum(v for labels, v in samples.items() if dict(labels)["outcome"] == "allow")

        # A request is reported just after its response is sent, and each worker hands its
        # counts to the shared files every FLUSH_INTERVAL (the scraped one at the scrape): poll.
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL
        while allowed() != 30 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        # Whichever worker answers the scrape, it counts every worker's requests.
        assert {allowed() for _ in range(5)} == {30}
        pids = set(re.findall(r"Started server process \[(\d+)\]", gateway.stderr()))
        assert len(pids) == 2

        # A worker that dies is replaced; the listener keeps answering meanwhile.
        os.kill(int(min(pids)), signal.SIGKILL)
        for _ in range(400):
            if len(set(re.findall(r"Started server process \[(\d+)\]", gateway.stderr()))) == 3:
                break
            threading.Event().wait(0.05)
        assert len(set(re.findall(r"Started server process \[(\d+)\]", gateway.stderr()))) == 3
        assert httpx.get(f"{gateway.url}/api/after", headers=bearer(token)).status_code == 200
        assert gateway.stop() == 0, gateway.stderr()
        assert "Traceback" not in gateway.stderr()


def _multiprocess_allowed(metrics_dir: Path) -> float:
    """Allowed decisions in the workers' metric files, read as a scrape would (no worker asked)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    samples = metric_samples(generate_latest(registry).decode(), "gatekeeper_decisions_total")
    return sum(v for labels, v in samples.items() if dict(labels)["outcome"] == "allow")


def test_readyz_under_two_workers_is_ready_only_when_every_worker_has_keys(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path, workers=2) as gateway:

        def ask() -> httpx.Response:
            # A new connection each time, so the kernel spreads them over both workers.
            return httpx.get(gateway.ops_url + "/readyz", headers={"connection": "close"})

        ready = gateway.wait_for("/readyz", 200)
        both_ready = time.monotonic()  # later than the supervisor started either worker
        assert ready.json()["workers"] == {
            "ready": True,
            "expected": 2,
            "ready_workers": 2,
            "answered_by": ready.json()["workers"]["answered_by"],
        }
        pids = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", gateway.stderr())}
        assert len(pids) == 2

        # The JWKS endpoint fails from now on; one worker dies and is replaced: the new one has
        # no keys, the survivor still has its own (fresh) ones.
        issuer.status = 503
        killed = min(pids)
        survivor = max(pids)
        # The supervisor (another process, on its real clock) takes a worker that dies sooner
        # than MIN_WORKER_LIFETIME after starting for a startup failure and stops: outlive it.
        threading.Event().wait(max(0.0, both_ready + MIN_WORKER_LIFETIME + 0.2 - time.monotonic()))
        os.kill(killed, signal.SIGKILL)
        for _ in range(400):
            if len(set(re.findall(r"Started server process \[(\d+)\]", gateway.stderr()))) == 3:
                break
            threading.Event().wait(0.05)
        # Whichever worker answers, /readyz says not ready: the survivor too (without the
        # shared board it answered 200 about its own keys).
        answers: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while survivor not in answers or len(answers) < 2:
            assert time.monotonic() < deadline, f"not every worker answered: {sorted(answers)}"
            response = ask()
            body = response.json()
            pid = body["workers"]["answered_by"]
            if pid == survivor and body["workers"]["ready_workers"] == 2:
                continue  # the supervisor has not yet noticed the death (at most ~0.5 s)
            assert response.status_code == 503, body
            answers[pid] = body
        assert killed not in answers
        assert answers[survivor]["issuers"][0]["usable"] is True  # its own keys are fine ...
        assert answers[survivor]["workers"]["ready"] is False  # ... the other worker has none
        assert answers[survivor]["workers"]["ready_workers"] == 1
        (newcomer,) = set(answers) - {survivor}
        assert answers[newcomer]["issuers"][0]["usable"] is False

        issuer.status = 200  # the new worker's keeper fetches: every worker ready again
        ready = gateway.wait_for("/readyz", 200)
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while seen != {survivor, newcomer}:
            assert time.monotonic() < deadline, f"not every worker answered: {sorted(seen)}"
            response = ask()
            assert response.status_code == 200, response.json()
            seen.add(response.json()["workers"]["answered_by"])
        assert gateway.stop() == 0, gateway.stderr()
        assert "Traceback" not in gateway.stderr()


def test_one_process_readyz_has_no_workers_section(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    with GatewayProcess(config_for(issuer, upstream.url), tmp_path) as gateway:
        ready = gateway.wait_for("/readyz", 200)
        assert "workers" not in ready.json()
        assert gateway.stop() == 0, gateway.stderr()


def test_workers_flush_their_counts_to_the_files_on_a_timer_and_at_shutdown(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    # Workers count requests in plain ints and hand them to the shared files in batches. Nobody
    # scrapes here (a scrape would flush the answering worker): the files must still fill up,
    # within a few FLUSH_INTERVALs, and hold every request once the workers have exited.
    from upstream import free_port

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    config = tmp_path / "gatekeeper.toml"
    stderr = tmp_path / "stderr"
    token = issuer.issuer.mint(scope="read", audience="api")
    args = [sys.executable, "-m", "gatekeeper.cli", "serve", "--config", str(config), "--workers", "2"]
    access_log = tmp_path / "access.log"

    def start() -> tuple[subprocess.Popen[bytes], int]:
        """The gateway under --workers 2, ready; started again on other ports if a port picked
        free was taken meanwhile (it then exits at once)."""
        for _ in range(3):
            port, ops_port = free_port(), free_port()
            config.write_text(
                config_for(issuer, upstream.url).format(
                    listen=f"127.0.0.1:{port}", ops=f"127.0.0.1:{ops_port}", access_log=access_log
                )
            )
            with stderr.open("w") as err:
                process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{ops_port}/readyz", timeout=1).status_code == 200:
                        return process, port
                except httpx.HTTPError:
                    pass
                threading.Event().wait(0.05)
            if process.poll() is None:
                process.kill()
                process.wait(10)
                pytest.fail(f"gatekeeper serve --workers 2 was not ready in 30 s: {stderr.read_text()}")
        pytest.fail(f"gatekeeper serve --workers 2 exited at start, three times: {stderr.read_text()}")

    process, port = start()
    try:
        for i in range(30):
            response = httpx.get(f"http://127.0.0.1:{port}/api/n{i}", headers=bearer(token))
            assert response.status_code == 200
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL
        while _multiprocess_allowed(metrics_dir) != 30 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert _multiprocess_allowed(metrics_dir) == 30
        # Requests just before SIGTERM: flushed at shutdown if no tick came first.
        for i in range(10):
            response = httpx.get(f"http://127.0.0.1:{port}/api/m{i}", headers=bearer(token))
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, stderr.read_text()
        assert _multiprocess_allowed(metrics_dir) == 40
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_forward_auth_and_proxy_on_one_listener(
    issuer: IssuerServer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.issuer.mint(scope="read", subject="svc-7", audience="api")
    text = config_for(issuer, upstream.url) + '\n[forward_auth]\npath = "/auth"\nproxy = "traefik"\n'
    with GatewayProcess(text, tmp_path) as gateway:
        gateway.wait_for("/readyz", 200)
        original = {"x-forwarded-method": "GET", "x-forwarded-uri": "/api/things?page=2"}
        allowed = httpx.get(gateway.url + "/auth", headers={**original, **bearer(token)})
        assert allowed.status_code == 200
        assert allowed.headers["x-auth-subject"] == "svc-7"
        assert allowed.content == b""
        denied = httpx.get(gateway.url + "/auth", headers=original)
        assert denied.status_code == 401
        assert denied.json() == {"error_description": "A bearer token is required"}  # rfc6750's shape
        assert denied.headers["www-authenticate"].startswith("Bearer ")
        proxied = httpx.get(gateway.url + "/api/things", headers=bearer(token))
        assert proxied.json()["path"] == "/api/things"  # everything but /auth goes upstream
        assert gateway.stop() == 0, gateway.stderr()
        lines = gateway.log_lines()  # complete once the process has drained
    assert [line["door"] for line in lines] == ["forward_auth", "forward_auth", "proxy"]
    assert lines[0]["rule"] == "/api/**"  # the rule of the original URI, not of /auth


def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "gatekeeper.toml"
        path.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n'
            '[[issuers]]\nissuer = "https://i.example"\naudience = "api"\njwks_url = "https://i.example/jwks"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "gatekeeper.cli", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"gatekeeper serve: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
