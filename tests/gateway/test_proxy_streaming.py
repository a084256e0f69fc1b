"""Bodies stream through the reverse proxy, never buffered whole.

The memory tests run the proxy in its own process (uvicorn, as ``gatekeeper serve`` runs it) and
read its peak RSS (``VmHWM`` in ``/proc/PID/status``) around a 256 MiB upload and a 256 MiB
download: the peak may grow by less than 50 MiB. Server-sent events must arrive one by one: each
event reaches the client before the upstream has even sent the next one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from upstream import ServerThread, Upstream, free_port

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamSettings
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.responses import get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

MiB = 1024 * 1024
SIZE = 256 * MiB
LIMIT = 50 * MiB

# The proxy process: every path exempt (the token path is not what is measured), no body limit.
PROXY_SCRIPT = textwrap.dedent(
    """
    import sys, uvicorn
    from gatekeeper.bearer import BearerSource
    from gatekeeper.decision import Gate
    from gatekeeper.gateway.identity import IdentityHeaders
    from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamSettings
    from gatekeeper.responses import get_profile
    from gatekeeper.rules import Rule, RuleSet
    from gatekeeper.verifier import Verifier

    port, upstream = int(sys.argv[1]), sys.argv[2]
    verifier = Verifier("https://issuer.example", jwks_url="https://issuer.example/jwks", audience="api")
    gate = Gate(verifier, rules=RuleSet((Rule("/**", access="exempt"),)), source=BearerSource.of())
    settings = ProxySettings(UpstreamSettings(upstream), max_request_body=None)
    app = ReverseProxy(gate, get_profile("rfc6750"), settings, IdentityHeaders(), lambda record: None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)
    """
)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


class ProxyProcess:
    def __init__(self, upstream_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROXY_SCRIPT, str(self.port), upstream_url], env=env
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/ready", timeout=1)
                break
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the proxy process did not start") from None
                time.sleep(0.05)

    def peak_rss(self) -> int:
        return status_kib(self.process.pid, "VmHWM") * 1024

    def rss(self) -> int:
        return status_kib(self.process.pid, "VmRSS") * 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def proxy_process(upstream: Upstream) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(upstream.url)
    # Warm up: the first requests import and allocate what every later one reuses.
    for _ in range(3):
        httpx.post(proxy.url + "/warm", content=b"x" * MiB, timeout=30)
        with httpx.stream("GET", proxy.url + f"/download?size={4 * MiB}", timeout=30) as response:
            for _ in response.iter_raw():
                pass
    yield proxy
    proxy.stop()


BLOCK = random.Random(7).randbytes(MiB)


def upload_body(total: int) -> Iterator[bytes]:
    for _ in range(total // MiB):
        yield BLOCK


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_256_mib_upload_streams_through(proxy_process: ProxyProcess, framing: str) -> None:
    expected = hashlib.sha256()
    for block in upload_body(SIZE):
        expected.update(block)
    headers = {"content-length": str(SIZE)} if framing == "content-length" else {}
    before = proxy_process.rss()
    response = httpx.post(
        proxy_process.url + "/upload", content=upload_body(SIZE), headers=headers, timeout=120
    )
    growth = proxy_process.peak_rss() - before
    assert response.status_code == 200
    seen = response.json()
    assert seen["body_bytes"] == SIZE
    assert seen["body_sha256"] == expected.hexdigest()
    assert ("transfer-encoding" in dict(seen["headers"])) == (framing == "chunked")
    assert growth < LIMIT, f"proxy peak RSS grew by {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_256_mib_download_streams_through(proxy_process: ProxyProcess, framing: str) -> None:
    query = f"size={SIZE}&chunk={MiB}" + ("&chunked=1" if framing == "chunked" else "")
    before = proxy_process.rss()
    received = 0
    with httpx.stream("GET", proxy_process.url + "/download?" + query, timeout=120) as response:
        assert response.status_code == 200
        assert (response.headers.get("content-length") == str(SIZE)) == (framing == "content-length")
        for chunk in response.iter_raw():
            received += len(chunk)
    growth = proxy_process.peak_rss() - before
    assert received == SIZE
    assert growth < LIMIT, f"proxy peak RSS grew by {growth / MiB:.1f} MiB"


def test_a_client_that_stops_reading_stops_the_upstream_not_the_memory(proxy_process: ProxyProcess) -> None:
    # Backpressure end to end: the client reads one chunk of a 256 MiB download, then nothing
    # for two seconds. The proxy must stop reading the upstream (its read-ahead is bounded)
    # rather than pull the rest into memory; then the whole body still arrives.
    before = proxy_process.rss()
    received = 0
    with httpx.stream(
        "GET", proxy_process.url + f"/download?size={SIZE}&chunk={MiB}&chunked=1", timeout=120
    ) as r:
        chunks = r.iter_raw()
        received += len(next(chunks))
        deadline = time.monotonic() + 2
        peak = 0
        while time.monotonic() < deadline:
            peak = max(peak, proxy_process.rss() - before)
            time.sleep(0.05)
        for chunk in chunks:
            received += len(chunk)
    assert received == SIZE
    assert peak < LIMIT, f"the proxy buffered {peak / MiB:.1f} MiB for a client that was not reading"


# -- in-process: event streams ------------------------------------------------------------------


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[tuple[ServerThread, list[RequestRecord]]]:
    verifier = Verifier("https://issuer.example", jwks_url="https://issuer.example/jwks", audience="api")
    gate = Gate(verifier, rules=RuleSet((Rule("/**", access="exempt"),)), source=BearerSource.of())
    records: list[RequestRecord] = []
    app = ReverseProxy(
        gate,
        get_profile("rfc6750"),
        ProxySettings(UpstreamSettings(upstream.url)),
        IdentityHeaders(),
        records.append,
    )
    with ServerThread(app) as server:
        yield server, records


def test_server_sent_events_arrive_one_by_one(proxy: tuple[ServerThread, list[RequestRecord]]) -> None:
    server, _ = proxy
    events: list[tuple[dict[str, Any], float]] = []
    with httpx.stream("GET", server.url + "/sse?n=5&interval=0.3", timeout=30) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append((json.loads(line[6:]), time.monotonic()))
    assert [event["i"] for event, _ in events] == [0, 1, 2, 3, 4]
    # Each event was in the client's hands before the upstream sent the next one: nothing
    # between them (the proxy included) held it back waiting for more.
    for (_, arrived), (following, _) in itertools.pairwise(events):
        assert arrived < following["sent"]


def test_a_gone_client_stops_the_upstream_stream(
    proxy: tuple[ServerThread, list[RequestRecord]], upstream: Upstream
) -> None:
    # 1,000 events 50 ms apart: 50 s of stream. The client leaves after the first; the proxy
    # must notice (not keep pulling events nobody reads) and finish the request.
    server, records = proxy
    earlier = len(upstream.seen)
    with httpx.stream("GET", server.url + "/sse?n=1000&interval=0.05", timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    deadline = time.monotonic() + 5
    while not records and time.monotonic() < deadline:
        time.sleep(0.01)
    assert records, "the proxy was still streaming to a client that had gone"
    assert records[0].upstream_status == 200
    # ...and it hung up on the upstream, which stopped early.
    while not any("sse_sent" in seen for seen in upstream.seen[earlier:]) and time.monotonic() < deadline:
        time.sleep(0.01)
    (stopped,) = [seen for seen in upstream.seen[earlier:] if "sse_sent" in seen]
    assert stopped["sse_reader_gone"]
    assert stopped["sse_sent"] < 1000
