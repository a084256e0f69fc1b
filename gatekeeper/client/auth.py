"""``ClientCredentialsAuth``: an :class:`httpx.Auth` that obtains, caches and renews bearer tokens.

One generator, :meth:`ClientCredentialsAuth._flow`, holds the whole algorithm (pick the token for
the URL, renew it single-flight with retries, send, renew and replay once on a 401). It performs no
I/O: it yields *steps*: an API request for httpx to send, a token request, a wait on another
caller's fetch, a backoff sleep. Two small drivers carry the steps out, one with blocking calls
(:meth:`sync_auth_flow`, for ``httpx.Client``) and one with awaits (:meth:`async_auth_flow`, for
``httpx.AsyncClient``), the way httpx's own auth classes serve both colours from one flow.

Token requests go through a client of their own (not the application's), so a timeout or a 500
from the token endpoint can be retried here rather than surfacing as the API call's failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import httpx

from ..redact import fingerprint
from .config import Credentials, RetryPolicy
from .errors import InvalidRefreshToken, TokenEndpointError, TokenEndpointUnavailable
from .manager import Claim, Slot, TokenManager
from .token import Token, parse_error, parse_token

__all__ = ["ClientCredentialsAuth", "NoCredentials"]

log = logging.getLogger("gatekeeper.client")

_DEFAULT_PORTS = {"http": 80, "https": 443}


class NoCredentials(LookupError):
    """No configured API base URL covers the request's URL, so no token may be sent to it."""


@dataclass(slots=True)
class _Fetch:
    """Step: send this token request; the driver answers with the response or the transport error."""

    request: httpx.Request


@dataclass(slots=True)
class _Wait:
    """Step: block until another caller's fetch settles ``future``."""

    future: concurrent.futures.Future[Token | None]


@dataclass(slots=True)
class _Sleep:
    """Step: back off for ``seconds`` before the next attempt."""

    seconds: float


_Step: TypeAlias = httpx.Request | _Fetch | _Wait | _Sleep
_Flow: TypeAlias = Generator[_Step, Any, None]


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    return scheme.lower(), host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme.lower(), 0)


class ClientCredentialsAuth(httpx.Auth):
    """Bearer tokens from an OAuth2 token endpoint for ``httpx.Client`` and ``httpx.AsyncClient``.

    ``credentials`` is one :class:`Credentials` (every request of the client gets its token), or a
    mapping from API base URL to credentials, for per-API tokens (Placepoint)::

        auth = ClientCredentialsAuth({
            "https://v1-customer-api.placepoint.no/": Credentials(".../auth", "id", client_secret_env="PP"),
            "https://matching-api.placepoint.no/": Credentials("https://matching-api...no/auth", ...),
        })

    A request is matched to the longest base URL with the same scheme, host and port whose path is a
    prefix of its path (on a segment boundary); a request no base URL covers raises
    :class:`NoCredentials` instead of being sent with somebody else's token.

    Tokens are renewed ``renew_before`` seconds before ``expires_in`` runs out (never in the first
    half of a token's life); ``default_expires_in`` is assumed when the issuer omits it. When the
    API answers with a status in ``retry_statuses`` (default 401; add 460 for Placewise), the token
    is renewed and the request replayed once, if its body can be sent again; the second answer goes
    back to the caller whatever it is. ``manager`` can be shared between several auths (and
    ``clock`` then is the manager's). ``client_options`` go to the ``httpx.Client``/``AsyncClient``
    that sends token requests (``verify``, ``proxy``, ``transport``, ...). ``sleep``,
    ``async_sleep`` and ``jitter`` are injectable for tests.
    """

    def __init__(
        self,
        credentials: Credentials | Mapping[str, Credentials],
        *,
        manager: TokenManager | None = None,
        renew_before: float = 60.0,
        default_expires_in: float = 300.0,
        retry: RetryPolicy | None = None,
        retry_statuses: Iterable[int] = (401,),
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if manager is not None and clock is not None:
            raise ValueError("pass clock= to the TokenManager when sharing one")
        self.manager = manager if manager is not None else TokenManager(clock=clock or time.monotonic)
        self.renew_before = renew_before
        self.default_expires_in = default_expires_in
        self.retry = retry or RetryPolicy()
        self.retry_statuses = frozenset(retry_statuses)
        self._sleep, self._async_sleep, self._jitter = sleep, async_sleep, jitter
        self._client_options = dict(client_options or {})
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._single: Slot | None = None
        self._routes: dict[tuple[str, str, int], list[tuple[str, Slot]]] = {}
        if isinstance(credentials, Credentials):
            self._single = self.manager.slot(credentials)
        else:
            if not credentials:
                raise ValueError("no credentials given")
            for base, creds in credentials.items():
                parts = urlsplit(base)
                if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
                    raise ValueError(f"API base URL must be an absolute http(s) URL: {base!r}")
                origin = _origin(parts.scheme, parts.hostname, parts.port)
                prefix = parts.path.rstrip("/")
                self._routes.setdefault(origin, []).append((prefix, self.manager.slot(creds)))
            for routes in self._routes.values():
                routes.sort(key=lambda route: len(route[0]), reverse=True)

    # -- routing ----------------------------------------------------------------------------------

    def _route(self, url: httpx.URL) -> Slot:
        if self._single is not None:
            return self._single
        routes = self._routes.get(_origin(url.scheme, url.host, url.port), ())
        path = url.path
        for prefix, slot in routes:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return slot
        raise NoCredentials(f"no API base URL configured for {url.scheme}://{url.netloc.decode()}{path}")

    # -- the flow (no I/O) ------------------------------------------------------------------------

    def _cached(self, request: httpx.Request) -> tuple[Slot, Token | None]:
        """The hot path, shared by both drivers: with a fresh cached token, set the header and
        return it (no generator, no lock); otherwise return ``None`` and let :meth:`_flow` work."""
        slot = self._single or self._route(request.url)
        token = slot.token
        if token is not None and self.manager.clock() < token.renew_at:
            request.headers["Authorization"] = "Bearer " + token.access_token
            return slot, token
        return slot, None

    def _flow(
        self, request: httpx.Request, slot: Slot, sent: Token | None, response: httpx.Response | None
    ) -> _Flow:
        """The whole algorithm. It starts either before the first send (``response`` is None:
        obtain a token, send) or after the hot path's send of ``sent`` got ``response``."""
        if response is None:
            sent = yield from self._obtain(slot, None)
            request.headers["Authorization"] = "Bearer " + sent.access_token
            response = yield request
        if (
            sent is not None
            and response.status_code in self.retry_statuses
            and isinstance(request.stream, httpx.ByteStream)
        ):
            log.info(
                "API answered %s to token fp:%s; renewing once and replaying %s %s",
                response.status_code, fingerprint(sent.access_token), request.method, request.url.path,
            )  # fmt: skip
            token = yield from self._obtain(slot, sent)
            request.headers["Authorization"] = "Bearer " + token.access_token
            yield request

    def _obtain(self, slot: Slot, stale: Token | None) -> Generator[_Step, Any, Token]:
        """A fresh token for ``slot``: the cached one, another caller's fetch, or our own."""
        while True:
            claim = self.manager.claim(slot, stale)
            if not isinstance(claim, Claim):
                return claim
            if not claim.leader:
                yield _Wait(claim.future)
                result = claim.future.result()  # raises the leader's error
                if result is not None:
                    return result
                continue  # the leader gave up (cancelled): try again, maybe as the leader
            try:
                token = yield from self._renew(slot)
            except Exception as exc:
                self.manager.settle(slot, claim.future, None, exc)
                raise
            except BaseException:
                self.manager.settle(slot, claim.future, None)
                raise
            self.manager.settle(slot, claim.future, token)
            return token

    def _renew(self, slot: Slot) -> Generator[_Step, Any, Token]:
        """Refresh grant first when there is a refresh token, then the configured grant."""
        creds = slot.credentials
        if slot.dead is not None:
            raise slot.dead
        refresh = slot.refresh_token
        if refresh is not None:
            try:
                return (yield from self._request(creds, refresh))
            except TokenEndpointError as exc:
                if not (exc.status == 462 or (exc.status in (400, 401) and exc.error == "invalid_grant")):
                    raise
                self.manager.drop_refresh_token(slot, refresh)
                log.warning(
                    "token endpoint %s refused refresh token fp:%s (%s)%s",
                    creds.endpoint, fingerprint(refresh), exc.error,
                    "" if creds.grant == "refresh_token" else f"; authenticating again with {creds.grant}",
                )  # fmt: skip
                if creds.grant == "refresh_token":
                    slot.dead = InvalidRefreshToken(exc.endpoint, exc.status, exc.error, exc.description)
                    raise slot.dead from None
        return (yield from self._request(creds, None))

    def _request(self, creds: Credentials, refresh: str | None) -> Generator[_Step, Any, Token]:
        """One token request with retries on 5xx/429 and transport errors (bounded, jittered)."""
        policy, endpoint = self.retry, creds.endpoint
        started = self.manager.clock()
        attempt, last = 0, ""
        while True:
            attempt += 1
            form = creds.grant_form(refresh)
            headers = {"Accept": "application/json"}
            secrets = creds.authenticate(form, headers)
            request = httpx.Request("POST", creds.token_url, data=form, headers=headers)
            result = yield _Fetch(request)
            if isinstance(result, httpx.Response):
                status = result.status_code
                if status == 200:
                    token = parse_token(
                        endpoint,
                        result.content,
                        self.manager.clock(),
                        renew_before=self.renew_before,
                        default_expires_in=self.default_expires_in,
                    )
                    log.debug("token fp:%s from %s (%r)", fingerprint(token.access_token), endpoint, token)
                    return token
                if status < 500 and status != 429:
                    raise parse_error(endpoint, status, result.content, secrets)
                last = f"HTTP {status}"
            else:
                last = type(result).__name__
            if attempt >= policy.attempts:
                break
            delay = policy.delay(attempt, self._jitter())
            if self.manager.clock() - started + delay > policy.total:
                break
            log.warning("token endpoint %s: %s; retry %d in %.2fs", endpoint, last, attempt, delay)
            yield _Sleep(delay)
        raise TokenEndpointUnavailable(endpoint, attempt, last)

    # -- the two drivers --------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Drive :meth:`_flow` with blocking calls (``httpx.Client``)."""
        slot, sent = self._cached(request)
        response = None
        if sent is not None:
            response = yield request
            if response.status_code not in self.retry_statuses:
                return
        flow = self._flow(request, slot, sent, response)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Request):
                    step = flow.send((yield step))
                    continue
                try:
                    value = self._do_sync(step)
                except BaseException as exc:  # the flow must learn, to hand over its flight
                    step = flow.throw(exc)
                else:
                    step = flow.send(value)
        except StopIteration:
            return
        finally:
            flow.close()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Drive :meth:`_flow` with awaits (``httpx.AsyncClient``)."""
        slot, sent = self._cached(request)
        response = None
        if sent is not None:
            response = yield request
            if response.status_code not in self.retry_statuses:
                return
        flow = self._flow(request, slot, sent, response)
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Request):
                    step = flow.send((yield step))
                    continue
                try:
                    value = await self._do_async(step)
                except BaseException as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(value)
        except StopIteration:
            return
        finally:
            flow.close()

    def _do_sync(self, step: _Fetch | _Wait | _Sleep) -> Any:
        if isinstance(step, _Fetch):
            try:
                return self._token_client().send(step.request)
            except httpx.TransportError as exc:
                return exc
        if isinstance(step, _Wait):
            concurrent.futures.wait([step.future])
            return None
        self._sleep(step.seconds)
        return None

    async def _do_async(self, step: _Fetch | _Wait | _Sleep) -> Any:
        if isinstance(step, _Fetch):
            try:
                # A client per fetch: an AsyncClient belongs to one event loop, and fetches are rare.
                async with httpx.AsyncClient(**self._options()) as client:
                    response = await client.send(step.request)
                    await response.aread()
                    return response
            except httpx.TransportError as exc:
                return exc
        if isinstance(step, _Wait):
            await _wait_async(step.future)
            return None
        await self._async_sleep(step.seconds)
        return None

    def _options(self) -> dict[str, Any]:
        return {"timeout": self.retry.timeout, **self._client_options}

    def _token_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(**self._options())
            return self._client

    def close(self) -> None:
        """Close the client that sends token requests (cached tokens are kept)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth({self.manager!r})"


async def _wait_async(future: concurrent.futures.Future[Token | None]) -> None:
    """Await a concurrent future without ever cancelling it (it belongs to the leader, and other
    waiters), so a cancelled waiter does not cancel the flight."""
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def on_done(_: object) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(wake)

    future.add_done_callback(on_done)
    await waiter
