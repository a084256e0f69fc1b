"""The I/O shells around :meth:`KeyStore.refresh`: one async and one sync driver over httpx.

Each driver runs at most one refresh per key store at a time (single-flight): callers that
arrive while a refresh is under way wait for that one instead of starting their own. Background
refreshes (stale-while-revalidate, refresh-ahead) run in a task or a daemon thread: the caller
that starts one never waits on the network. A refresh, discovery included, ends within the
policy's ``timeout``.

A fetch never raises: whatever goes wrong on the way (refused, timeout, a URL httpx will not
parse, a body over the size limit) comes back as a :class:`FetchResponse` with ``error`` set, so
the key store decides what it means (stale-if-error) and no request ever fails with a 500.
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


# httpx raises InvalidURL and StreamError outside its HTTPError hierarchy (a discovery document
# can name a jwks_uri httpx will not parse); OSError/ValueError cover the layers underneath.
_FETCH_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError)


def _too_large(limit: int) -> FetchResponse:
    return FetchResponse(error=f"response larger than {limit} bytes")


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    # Refuse up front what announces itself as too large; the byte count below still applies
    # (Content-Length can lie, be absent, or describe the compressed body).
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


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
        self._background: weakref.WeakSet[KeyStore] = weakref.WeakSet()
        self._guard = threading.Lock()

    def _lock_for(self, store: KeyStore) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(store)
            if lock is None:
                lock = self._locks[store] = threading.Lock()
            return lock

    def _http(self) -> httpx.Client:
        client = self._client
        if client is not None:
            return client
        # Built outside the guard (loading the CA bundle takes tens of ms), so a caller starting
        # a background refresh never waits for it; threads refreshing different stores must
        # still end up sharing one client.
        made: httpx.Client | None = httpx.Client(follow_redirects=False)
        with self._guard:
            if self._client is None:
                self._client, made = made, None
            client = self._client
        assert client is not None
        if made is not None:
            made.close()
        return client

    def refresh(self, store: KeyStore, kid: str | None = None) -> None:
        """Refresh now (looking for ``kid``, if given); if another thread is already refreshing
        this store, wait for it instead."""
        seen = store.attempts
        with self._lock_for(store):
            if store.attempts != seen:
                return  # a refresh finished while we waited: its result is ours too
            # A refresh may also have finished between the caller's decision and `seen`:
            # ask the store again rather than repeat it.
            now = self._clock()
            if not store.refresh_due(now, kid):
                return
            self._drive(store.refresh(now, kid), store)

    def refresh_in_background(self, store: KeyStore) -> None:
        """Start a refresh in a daemon thread, unless one for this store is already pending."""
        with self._guard:
            if store in self._background:
                return
            self._background.add(store)
        threading.Thread(
            target=self._background_refresh, args=(store,), daemon=True, name="gatekeeper-jwks"
        ).start()

    def _background_refresh(self, store: KeyStore) -> None:
        try:
            self.refresh(store)
        finally:
            with self._guard:
                self._background.discard(store)

    def _drive(self, flow: RefreshFlow, store: KeyStore) -> None:
        try:
            # Building the client takes tens of ms the first time (the CA bundle): not part of
            # the fetch's time. The deadline then bounds the whole refresh.
            client = self._http()
            deadline = time.monotonic() + store.policy.timeout
            request = next(flow)
            while True:
                request = flow.send(self._get(client, request, store, deadline))
        except StopIteration:
            pass
        finally:
            flow.close()  # on an unexpected error too: the store must not think it is refreshing

    def _get(
        self, client: httpx.Client, request: FetchRequest, store: KeyStore, deadline: float
    ) -> FetchResponse:
        policy = store.policy
        # httpx's timeout applies to each phase (connect, each read), so each gets what is left
        # of the deadline, which also bounds a body that trickles in. A server trickling its
        # headers can still take ~2x what is left.
        left = deadline - time.monotonic()
        if left <= 0:
            return FetchResponse(error="transport error: deadline exceeded")
        try:
            with client.stream("GET", request.url, headers=dict(request.headers), timeout=left) as response:
                if _declared_too_large(response, policy.max_bytes):
                    return _too_large(policy.max_bytes)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        return _too_large(policy.max_bytes)
                    if time.monotonic() > deadline:
                        return FetchResponse(error="transport error: deadline exceeded")
                return FetchResponse(response.status_code, _lower(response.headers), bytes(body))
        except _FETCH_ERRORS as exc:
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

    async def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._own_client and (self._client is None or self._client_loop is not loop):
            # An AsyncClient belongs to the loop that made it; a new loop (a new test, a
            # restarted app) gets a new client rather than a broken one. Building one loads
            # the CA bundle, tens of milliseconds: done in a thread, not on the event loop.
            client = await asyncio.to_thread(httpx.AsyncClient, follow_redirects=False)
            if self._client is not None and self._client_loop is loop:
                await client.aclose()  # another refresh on this loop made one meanwhile
            else:
                self._client, self._client_loop = client, loop
        assert self._client is not None
        return self._client

    def _task_for(self, store: KeyStore, kid: str | None = None) -> asyncio.Task[None]:
        # No await between a caller's decision to fetch and this lookup, so on one loop the
        # first caller creates the task and every later one joins it (or sees its result).
        # A done task is not joined: it leaves the table a loop turn after it ends (a done
        # callback), and a caller deciding in that turn (a kid the finished refresh did not
        # see) needs a fetch of its own.
        loop = asyncio.get_running_loop()
        task = self._inflight.get(store)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._drive(store, kid), name="gatekeeper-jwks")
            self._inflight[store] = task
            task.add_done_callback(functools.partial(self._forget, store))
        return task

    async def refresh(self, store: KeyStore, kid: str | None = None) -> None:
        """Refresh now (looking for ``kid``, if given), joining a refresh of the same store
        that is already under way."""
        # shield: one caller being cancelled must not cancel the fetch the others wait on.
        await asyncio.shield(self._task_for(store, kid))

    def refresh_in_background(self, store: KeyStore) -> None:
        """Start a refresh (or leave the one under way) without waiting for it."""
        self._task_for(store)  # referenced from _inflight until done, so it is not collected

    def _forget(self, store: KeyStore, task: asyncio.Task[None]) -> None:
        if self._inflight.get(store) is task:
            del self._inflight[store]

    async def _drive(self, store: KeyStore, kid: str | None) -> None:
        # Building the client takes tens of ms the first time (in a thread): not part of the
        # fetch's time. The deadline then bounds the whole refresh.
        client = await self._http()
        flow = store.refresh(self._clock(), kid)
        deadline = asyncio.get_running_loop().time() + store.policy.timeout
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._get(client, request, store, deadline))
        except StopIteration:
            pass
        finally:
            flow.close()  # cancelled (aclose) or failed: the store must not think it is refreshing

    async def _get(
        self, client: httpx.AsyncClient, request: FetchRequest, store: KeyStore, deadline: float
    ) -> FetchResponse:
        policy = store.policy
        try:
            async with asyncio.timeout_at(deadline):
                async with client.stream(
                    "GET", request.url, headers=dict(request.headers), timeout=policy.timeout
                ) as response:
                    if _declared_too_large(response, policy.max_bytes):
                        return _too_large(policy.max_bytes)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            return _too_large(policy.max_bytes)
                    return FetchResponse(response.status_code, _lower(response.headers), bytes(body))
        except TimeoutError:
            return FetchResponse(error="transport error: deadline exceeded")
        except _FETCH_ERRORS as exc:
            return _transport_error(exc)

    async def aclose(self) -> None:
        """Cancel refreshes under way on this loop and close the client this driver opened."""
        loop = asyncio.get_running_loop()
        tasks = [task for task in self._inflight.values() if task.get_loop() is loop]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
