"""The I/O shells around :meth:`KeyStore.refresh`: one async and one sync driver over httpx.

Each driver runs at most one refresh per key store at a time (single-flight): callers that
arrive while a refresh is under way wait for that one instead of starting their own.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import weakref
from collections.abc import Callable

import httpx

from .keystore import FetchRequest, FetchResponse, KeyStore, RefreshFlow

Clock = Callable[[], float]


def _too_large(limit: int) -> FetchResponse:
    return FetchResponse(error=f"response larger than {limit} bytes")


def _transport_error(exc: Exception) -> FetchResponse:
    # The exception's class is enough for an operator; messages can embed URLs with secrets.
    return FetchResponse(error=f"transport error: {type(exc).__name__}")


class SyncFetcher:
    """Drives refreshes with an :class:`httpx.Client`; for ``Verifier.verify`` in threads."""

    def __init__(self, clock: Clock, client: httpx.Client | None = None) -> None:
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._locks: weakref.WeakKeyDictionary[KeyStore, threading.Lock] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    def _lock_for(self, store: KeyStore) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(store)
            if lock is None:
                lock = self._locks[store] = threading.Lock()
            return lock

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False)
        return self._client

    def refresh(self, store: KeyStore) -> None:
        """Refresh now; if another thread is already refreshing this store, wait for it."""
        seen = store.attempts
        with self._lock_for(store):
            if store.attempts != seen:
                return  # a refresh finished while we waited: its result is ours too
            self._drive(store.refresh(self._clock()), store)

    def refresh_in_background(self, store: KeyStore) -> None:
        lock = self._lock_for(store)
        if lock.locked():
            return
        threading.Thread(target=self.refresh, args=(store,), daemon=True, name="gatekeeper-jwks").start()

    def _drive(self, flow: RefreshFlow, store: KeyStore) -> None:
        try:
            request = next(flow)
            while True:
                request = flow.send(self._get(request, store))
        except StopIteration:
            pass

    def _get(self, request: FetchRequest, store: KeyStore) -> FetchResponse:
        policy = store.policy
        deadline = time.monotonic() + policy.timeout
        try:
            with self._http().stream(
                "GET", request.url, headers=dict(request.headers), timeout=policy.timeout
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        return _too_large(policy.max_bytes)
                    if time.monotonic() > deadline:
                        return FetchResponse(error="transport error: deadline exceeded")
                return FetchResponse(response.status_code, _lower(response.headers), bytes(body))
        except httpx.HTTPError as exc:
            return _transport_error(exc)

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None


class AsyncFetcher:
    """Drives refreshes with an :class:`httpx.AsyncClient`; never blocks the event loop."""

    def __init__(self, clock: Clock, client: httpx.AsyncClient | None = None) -> None:
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[KeyStore, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._own_client and (self._client is None or self._client_loop is not loop):
            # An AsyncClient belongs to the loop that made it; a new loop (a new test, a
            # restarted app) gets a new client rather than a broken one.
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._client_loop = loop
        assert self._client is not None
        return self._client

    async def refresh(self, store: KeyStore) -> None:
        """Refresh now, joining a refresh of the same store that is already under way."""
        task = self._inflight.get(store)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(self._drive(store))
            self._inflight[store] = task
            task.add_done_callback(functools.partial(self._forget, store))
        # shield: one caller being cancelled must not cancel the fetch the others wait on.
        await asyncio.shield(task)

    def refresh_in_background(self, store: KeyStore) -> None:
        if store in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self.refresh(store))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget(self, store: KeyStore, task: asyncio.Task[None]) -> None:
        if self._inflight.get(store) is task:
            del self._inflight[store]

    async def _drive(self, store: KeyStore) -> None:
        flow = store.refresh(self._clock())
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._get(request, store))
        except StopIteration:
            pass

    async def _get(self, request: FetchRequest, store: KeyStore) -> FetchResponse:
        policy = store.policy
        try:
            async with asyncio.timeout(policy.timeout):
                async with self._http().stream(
                    "GET", request.url, headers=dict(request.headers), timeout=policy.timeout
                ) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            return _too_large(policy.max_bytes)
                    return FetchResponse(response.status_code, _lower(response.headers), bytes(body))
        except TimeoutError:
            return FetchResponse(error="transport error: deadline exceeded")
        except httpx.HTTPError as exc:
            return _transport_error(exc)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
