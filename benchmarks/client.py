"""Client-credentials auth: per-request cost with a cached token, and a renewal under concurrency.

    python benchmarks/client.py            # full run (about a minute)
    python benchmarks/client.py --quick    # a few-second smoke run

Three measurements, each side by side with a static ``Authorization`` header and with Authlib's
httpx ``OAuth2Client`` (client credentials) on the same work, in the same run:

1. auth flow alone: the auth's per-request work as httpx drives it (build the flow, get the request
   with its header, hand back a response), against httpx's no-op auth plus setting a static header.
   Target: gatekeeper adds at most 2 µs.
2. end to end: ``client.get()`` through an ``httpx.MockTransport`` (no network), sync and async, so
   the numbers include httpx's own per-request cost.
3. renewal under concurrency: the cached token has expired and 100 requests start at once (threads
   for the sync clients, tasks for the async ones) against a real loopback issuer whose token
   endpoint takes 50 ms. Counted: token requests made (target: exactly 1) and API requests that
   carried the expired token (target: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from _common import ManualClock, fmt_us, median, table

with warnings.catch_warnings():  # Authlib >= 1.9 would rather drive httpx2; httpx is what we compare on
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client  # type: ignore[import-untyped]

from gatekeeper.client import ClientCredentialsAuth, Credentials
from gatekeeper.devserver import TOKEN_PATH, IssuerServer
from gatekeeper.issuer import DevIssuer

warnings.filterwarnings("ignore", message="The httpx module is deprecated")

API = "https://api.example/plots"
CLIENT_ID, SECRET = "bench-worker", "bench-secret"
TARGET_ADDED_NS = 2_000


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"{}")


def gatekeeper_auth(idp: IssuerServer, clock: Callable[[], float] = time.monotonic) -> ClientCredentialsAuth:
    return ClientCredentialsAuth(Credentials(idp.token_url, CLIENT_ID, client_secret=SECRET), clock=clock)


def real_token(idp: IssuerServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.post(
        idp.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, SECRET)
    ).json()
    return body


def authlib_kwargs(idp: IssuerServer) -> dict[str, Any]:
    return {
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "token_endpoint": idp.token_url,
        "grant_type": "client_credentials",
    }


def authlib_token(idp: IssuerServer, expires_in: int) -> dict[str, Any]:
    token = real_token(idp)
    token["expires_at"] = int(time.time()) + expires_in
    return token


def timed(fn: Callable[[int], None], n: int) -> float:
    """ns per iteration of ``fn(n)`` (which loops ``n`` times itself), GC off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        fn(n)
        return (time.perf_counter_ns() - start) / n
    finally:
        gc.enable()


def interleaved(contenders: dict[str, Callable[[int], None]], n: int, repeats: int) -> dict[str, float]:
    """Median ns per iteration of each contender, repeats interleaved so drift hits all alike."""
    for fn in contenders.values():
        fn(max(1, n // 10))  # warm up
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            samples[name].append(timed(fn, n))
    return {name: median(values) for name, values in samples.items()}


# -- 1. the auth flow alone --------------------------------------------------------------------


def flow_contenders(
    idp: IssuerServer,
) -> tuple[dict[str, Callable[[int], None]], dict[str, Callable[[int], None]]]:
    auth = gatekeeper_auth(idp)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(ok)) as warm:
        warm.get(API)  # the token is now cached
    noop = httpx.Auth()
    header = "Bearer " + real_token(idp)["access_token"]
    request = httpx.Request("GET", API)
    response = httpx.Response(200)

    def drive_sync(flow_auth: httpx.Auth, static: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                flow = flow_auth.sync_auth_flow(request)
                sent = next(flow)
                if static:
                    sent.headers["Authorization"] = header
                with suppress(StopIteration):
                    flow.send(response)

        return run

    def drive_async(flow_auth: httpx.Auth, static: bool) -> Callable[[int], None]:
        async def loop(n: int) -> None:
            for _ in range(n):
                flow = flow_auth.async_auth_flow(request)
                sent = await flow.__anext__()
                if static:
                    sent.headers["Authorization"] = header
                with suppress(StopAsyncIteration):
                    await flow.asend(response)

        def run(n: int) -> None:
            asyncio.run(loop(n))

        return run

    sync = {"static header": drive_sync(noop, True), "gatekeeper": drive_sync(auth, False)}
    async_ = {"static header": drive_async(noop, True), "gatekeeper": drive_async(auth, False)}
    return sync, async_


# -- 2. end to end through a MockTransport -------------------------------------------------------


def e2e_sync(idp: IssuerServer) -> dict[str, Callable[[int], None]]:
    mock = httpx.MockTransport(ok)
    header = {"Authorization": "Bearer " + real_token(idp)["access_token"]}
    static = httpx.Client(transport=mock, headers=header)
    gk = httpx.Client(transport=mock, auth=gatekeeper_auth(idp))
    gk.get(API)
    authlib = OAuth2Client(transport=mock, token=authlib_token(idp, 3600), **authlib_kwargs(idp))

    def loop(client: httpx.Client) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                client.get(API)

        return run

    return {"static header": loop(static), "gatekeeper": loop(gk), "Authlib OAuth2Client": loop(authlib)}


def e2e_async(idp: IssuerServer) -> dict[str, Callable[[int], None]]:
    header = {"Authorization": "Bearer " + real_token(idp)["access_token"]}
    auth = gatekeeper_auth(idp)
    token = authlib_token(idp, 3600)

    def make(kind: str) -> httpx.AsyncClient:
        mock = httpx.MockTransport(ok)
        if kind == "static header":
            return httpx.AsyncClient(transport=mock, headers=header)
        if kind == "gatekeeper":
            return httpx.AsyncClient(transport=mock, auth=auth)
        client: httpx.AsyncClient = AsyncOAuth2Client(transport=mock, token=token, **authlib_kwargs(idp))
        return client

    def loop(kind: str) -> Callable[[int], None]:
        async def many(n: int) -> None:
            async with make(kind) as client:
                await client.get(API)  # warm: gatekeeper fetches its token here, untimed below
                start = time.perf_counter_ns()
                for _ in range(n):
                    await client.get(API)
                elapsed[0] = time.perf_counter_ns() - start

        elapsed = [0]

        def run(n: int) -> None:
            asyncio.run(many(n))

        run.elapsed = elapsed  # type: ignore[attr-defined]
        return run

    return {kind: loop(kind) for kind in ("static header", "gatekeeper", "Authlib OAuth2Client")}


def interleaved_async(contenders: dict[str, Callable[[int], None]], n: int, repeats: int) -> dict[str, float]:
    """Like :func:`interleaved`, timing only the request loop (not loop and client start-up)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn(max(1, n // 10))
    for _ in range(repeats):
        for name, fn in contenders.items():
            gc.collect()
            gc.disable()
            try:
                fn(n)
            finally:
                gc.enable()
            samples[name].append(fn.elapsed[0] / n)  # type: ignore[attr-defined]
    return {name: median(values) for name, values in samples.items()}


# -- 3. renewal under concurrency -----------------------------------------------------------------


class Recorder:
    """A loopback API that answers 200 and records each request's bearer token."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with lock:
                    recorder.tokens.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/plots"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def counting(idp: IssuerServer, api: Recorder) -> Iterator[dict[str, int]]:
    result: dict[str, int] = {}
    before, seen = idp.requests(TOKEN_PATH), len(api.tokens)
    yield result
    result["token requests"] = idp.requests(TOKEN_PATH) - before
    result["api requests"] = len(api.tokens) - seen


def in_threads(n: int, call: Callable[[], object]) -> None:
    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        call()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def renewal(idp: IssuerServer, api: Recorder, n: int) -> list[list[str]]:
    limits = httpx.Limits(max_connections=n + 10)
    rows = []

    def stale(old: str, count: dict[str, int]) -> str:
        return str(api.tokens[-count["api requests"] :].count(old))

    # gatekeeper, threads
    clock = ManualClock(1_000.0)
    with httpx.Client(auth=gatekeeper_auth(idp, clock), limits=limits) as client:
        client.get(api.url)
        old = api.tokens[-1]
        clock.now += 3600
        with counting(idp, api) as count:
            in_threads(n, lambda: client.get(api.url))
    rows.append(["gatekeeper", f"{n} threads", str(count["token requests"]), stale(old, count), "1 / 0"])

    # gatekeeper, tasks
    clock = ManualClock(1_000.0)

    async def gk_tasks() -> None:
        async with httpx.AsyncClient(auth=gatekeeper_auth(idp, clock), limits=limits) as client:
            await client.get(api.url)
            clock.now += 3600
            await asyncio.gather(*(client.get(api.url) for _ in range(n)))

    with counting(idp, api) as count:
        asyncio.run(gk_tasks())
    count["token requests"] -= 1  # the first, warming request
    count["api requests"] -= 1
    old = api.tokens[-n - 1]
    rows.append(["gatekeeper", f"{n} tasks", str(count["token requests"]), stale(old, count), "1 / 0"])

    # Authlib, threads: an expired token (its clock is the wall clock, so expires_at is in the past).
    expired = authlib_token(idp, -10)
    with (
        OAuth2Client(token=expired, limits=limits, **authlib_kwargs(idp)) as authlib,
        counting(idp, api) as count,
    ):
        in_threads(n, lambda: authlib.get(api.url))
    rows.append(
        [
            "Authlib OAuth2Client",
            f"{n} threads",
            str(count["token requests"]),
            stale(expired["access_token"], count),
            "-",
        ]
    )

    expired = authlib_token(idp, -10)

    async def authlib_tasks() -> None:
        async with AsyncOAuth2Client(token=expired, limits=limits, **authlib_kwargs(idp)) as client:
            await asyncio.gather(*(client.get(api.url) for _ in range(n)))

    with counting(idp, api) as count:
        asyncio.run(authlib_tasks())
    stale_async = stale(expired["access_token"], count)
    rows.append(["Authlib AsyncOAuth2Client", f"{n} tasks", str(count["token requests"]), stale_async, "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--repeats", type=int, help="interleaved timing repeats (default 9, quick 3)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 9)
    flow_n, e2e_n, concurrent = (2_000, 300, 100) if args.quick else (50_000, 5_000, 100)

    idp = IssuerServer(DevIssuer(algorithms=("ES256",)))
    idp.issuer.issuer = idp.url
    idp.add_client(CLIENT_ID, SECRET, expires_in=3600)
    api = Recorder()
    with idp:
        sync_flow, async_flow = flow_contenders(idp)
        flow_sync = interleaved(sync_flow, flow_n, repeats)
        flow_async = interleaved(async_flow, flow_n, repeats)
        end_sync = interleaved(e2e_sync(idp), e2e_n, repeats)
        end_async = interleaved_async(e2e_async(idp), e2e_n, repeats)
        idp.token_delay = 0.05
        renew_rows = renewal(idp, api, concurrent)
    api.close()

    print(f"1. auth flow alone, cached token (median of {repeats} interleaved runs x {flow_n:,} requests)\n")
    rows = []
    for mode, result in (("sync", flow_sync), ("async", flow_async)):
        base, gk = result["static header"], result["gatekeeper"]
        verdict = "ok" if gk - base <= TARGET_ADDED_NS else "MISSED"
        rows.append([mode, fmt_us(base), fmt_us(gk), f"{(gk - base) / 1000:+.2f}", f"<= 2.00 ({verdict})"])
    print(table(["flow", "static header µs", "gatekeeper µs", "added µs", "target added µs"], rows))

    print(f"\n2. end to end through httpx.MockTransport, cached token (median of {repeats} x {e2e_n:,})\n")
    rows = []
    for mode, result in (("sync", end_sync), ("async", end_async)):
        base = result["static header"]
        gk, authlib = result["gatekeeper"], result["Authlib OAuth2Client"]
        rows.append(
            [
                mode,
                fmt_us(base),
                f"{fmt_us(gk)} ({(gk - base) / 1000:+.2f})",
                f"{fmt_us(authlib)} ({(authlib - base) / 1000:+.2f})",
                f"{gk / base:.2f}x",
                f"{authlib / base:.2f}x",
                f"{gk / authlib:.2f}x",
            ]
        )
    print(
        table(
            [
                "client",
                "static µs/req",
                "gatekeeper µs/req (added)",
                "Authlib µs/req (added)",
                "gatekeeper/static",
                "Authlib/static",
                "gatekeeper/Authlib",
            ],
            rows,
        )
    )

    print(
        f"\n3. {concurrent} concurrent requests when the cached token has expired (token endpoint: 50 ms)\n"
    )
    print(
        table(
            ["client", "concurrency", "token requests", "API requests with the expired token", "target"],
            renew_rows,
        )
    )


if __name__ == "__main__":
    main()
