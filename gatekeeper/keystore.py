"""The key store: when to fetch an issuer's keys and what a response means, with no I/O.

A refresh is a generator (the shape of httpx's auth flows): it yields :class:`FetchRequest`
objects and is sent back :class:`FetchResponse` objects, so one algorithm serves the async and
the sync drivers in :mod:`gatekeeper.fetch`. Time comes from an injected clock.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from .errors import AuthError
from .jws import loads_object
from .keys import KeySet, parse_jwks

logger = logging.getLogger("gatekeeper.keys")

_MAX_AGE_RE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_CACHE_RE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """How an issuer's remote keys are fetched and cached. All durations are seconds.

    - ``default_ttl``: freshness when the response has no ``Cache-Control: max-age``;
      ``min_ttl``/``max_ttl`` clamp what the server asks for.
    - ``refresh_ahead``: refresh this long before expiry, in the background (None: off).
    - ``stale_grace``: how long past expiry the last good keys keep verifying
      (stale-while-revalidate, stale-if-error). Once the keys expire, requests go on verifying
      with them without waiting while one refresh runs in the background; only a request with
      no usable keys at all (a cold start, or past the grace) waits for a fetch.
    - ``unknown_kid_cooldown``: a token whose ``kid`` is not in the set triggers a refetch at
      once, however recent the last routine fetch; this limits only how often such *unknown-kid*
      refetches happen, so a flood of made-up ids costs one request per interval.
    - ``retry_interval``: after a failed fetch, wait this long before trying again; also the
      most often a background refresh starts.
    - ``timeout``: for each refresh, in total (discovery included); ``max_bytes``: the largest
      response accepted.
    """

    default_ttl: float = 300.0
    min_ttl: float = 30.0
    max_ttl: float = 86400.0
    refresh_ahead: float | None = None
    unknown_kid_cooldown: float = 10.0
    retry_interval: float = 5.0
    stale_grace: float = 6 * 3600.0
    timeout: float = 5.0
    max_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError("need 0 < min_ttl <= default_ttl <= max_ttl")
        if self.timeout <= 0 or self.max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """A GET the driver should make."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """What came back: a status, lower-cased headers and the body; or ``error`` for a transport
    failure (refused, timeout, too large) with no response."""

    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


RefreshFlow = Generator[FetchRequest, FetchResponse, None]


def ttl_from_headers(headers: Mapping[str, str], policy: FetchPolicy) -> float:
    """Freshness from ``Cache-Control``, clamped to the policy's floor and ceiling."""
    cache_control = headers.get("cache-control", "")
    if _NO_CACHE_RE.search(cache_control):
        return policy.min_ttl
    match = _MAX_AGE_RE.search(cache_control)
    ttl = float(match.group(1)) if match else policy.default_ttl
    return min(max(ttl, policy.min_ttl), policy.max_ttl)


class KeyStore:
    """One issuer's verification keys and the state that decides when to fetch them.

    Static sources (a JWKS dict or file, a PEM key, an HMAC secret) are a store that is always
    fresh. Remote sources start empty; ``discovery_url`` first resolves the ``jwks_uri`` from
    the issuer's metadata and checks that the document names this issuer.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str | None = None,
        discovery_urls: tuple[str, ...] = (),
        static: KeySet | None = None,
        policy: FetchPolicy | None = None,
    ) -> None:
        if static is None and jwks_url is None and not discovery_urls:
            raise ValueError("a key store needs a JWKS URL, discovery, or static keys")
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.discovery_urls = discovery_urls
        self.policy = policy or FetchPolicy()
        self.keys: KeySet | None = static
        self.remote = static is None
        self.fresh_until = -math.inf if self.remote else math.inf
        self.last_attempt = -math.inf
        #: When the last refetch for an unknown ``kid`` started (the cooldown counts from it).
        self.last_kid_fetch = -math.inf
        self.last_failure = -math.inf
        self.last_error: str | None = None
        self.attempts = 0
        #: Refreshes started and not finished (a driver runs at most one at a time).
        self.refreshing = 0
        #: Fetch outcomes by result ("ok", "not_modified", "error"), for the gateway's metrics.
        self.fetch_counts: dict[str, int] = {"ok": 0, "not_modified": 0, "error": 0}
        #: Verifications answered with keys past their freshness (stale-while-revalidate or
        #: stale-if-error); cache hits within a cached entry's window are not counted.
        self.stale_served = 0
        self._etag: str | None = None

    # -- decisions ---------------------------------------------------------------------------

    def usable(self, now: float) -> KeySet | None:
        """The keys to verify with now: fresh ones, or stale ones within the grace period."""
        if self.keys is not None and now < self.fresh_until + self.policy.stale_grace:
            return self.keys
        return None

    def _may_retry(self, now: float) -> bool:
        # After a failure, nothing (expiry, refresh-ahead, unknown kids) fetches again before
        # retry_interval: an outage must not turn every request into a request to the endpoint.
        return now >= self.last_failure + self.policy.retry_interval

    def needs_refresh(self, now: float) -> bool:
        """A refresh the caller must wait for: no usable keys at all (a cold start, or the last
        good keys are past their grace), and no failed attempt is still cooling down.

        Keys past their freshness but within ``stale_grace`` are never waited for: they keep
        verifying while :meth:`wants_refresh_ahead` refreshes them in the background, so a slow
        or hanging endpoint never becomes request latency.
        """
        return self.remote and self.usable(now) is None and self._may_retry(now)

    def wants_refresh_ahead(self, now: float) -> bool:
        """A refresh to start in the background, not waited for: the keys are usable and have
        expired (stale-while-revalidate) or expire within ``refresh_ahead``.

        At most one per ``retry_interval`` and none while another is under way, whatever the
        endpoint does (a hanging one holds a refresh for the whole timeout).
        """
        if (
            not self.remote
            or self.refreshing
            or not self._may_retry(now)
            or now < self.last_attempt + self.policy.retry_interval
            or self.usable(now) is None
        ):
            return False
        if now >= self.fresh_until:
            return True
        ahead = self.policy.refresh_ahead
        return ahead is not None and now >= self.fresh_until - ahead

    def may_refetch_for_kid(self, kid: str | None, now: float) -> bool:
        """A token names a key id we do not have: refetch now (the issuer may have just rotated
        its keys), however recent the last routine fetch, but at most once per
        ``unknown_kid_cooldown`` of unknown-kid refetches (and not during an outage's retry
        interval)."""
        if not self.remote or kid is None or (self.keys is not None and self.keys.has_kid(kid)):
            return False
        if self.refreshing:
            # A fetch is under way (it may be the one looking for this very kid): wait for it
            # rather than reject now; the drivers join it, so this costs no request.
            return True
        return self._kid_cooled_down(now)

    def _kid_cooled_down(self, now: float) -> bool:
        return now >= self.last_kid_fetch + self.policy.unknown_kid_cooldown and self._may_retry(now)

    def refresh_due(self, now: float, kid: str | None = None) -> bool:
        """Whether the reason to fetch still holds now (for ``kid``, when looking for one).

        A driver that had to wait for another caller's refresh checks this before starting its
        own, so callers that decided to fetch just before that refresh finished do not repeat it.
        """
        if not self.remote:
            return False
        if self.needs_refresh(now) or self.wants_refresh_ahead(now):
            return True
        if kid is None or (self.keys is not None and self.keys.has_kid(kid)):
            return False
        return self._kid_cooled_down(now)

    def revalidate_at(self, now: float) -> float:
        """Until when a token verified now may be served from the token cache without asking
        the key store again: the keys' freshness; once they are stale, one retry interval (a
        refresh is due or under way, and a key it removes ends the entry at once), never past
        the grace."""
        if now < self.fresh_until:
            return self.fresh_until
        return min(now + self.policy.retry_interval, self.fresh_until + self.policy.stale_grace)

    def unavailable(self, now: float) -> AuthError:
        """The error to answer when there are no usable keys, with a Retry-After hint."""
        next_try = self.last_failure + self.policy.retry_interval
        # No failure recorded (e.g. a fetch that raised): ceil(-inf) would raise OverflowError.
        retry = max(1, math.ceil(next_try - now)) if math.isfinite(next_try) else 1
        return AuthError("keys_unavailable", issuer=self.issuer, retry_after=retry)

    # -- the refresh flow --------------------------------------------------------------------

    def refresh(self, now: float, kid: str | None = None) -> RefreshFlow:
        """Fetch (discovery, then) the JWKS and apply it. Failures are recorded, not raised.

        ``kid``: the unknown key id this refresh looks for (it starts the unknown-kid cooldown).
        A driver must run the flow to its end or ``close()`` it.
        """
        self.last_attempt = now
        if kid is not None:
            self.last_kid_fetch = now
        self.attempts += 1
        self.refreshing += 1
        try:
            if self.jwks_url is None:
                error = yield from self._discover()
                if error is not None:
                    self._failed(now, error)
                    return
            assert self.jwks_url is not None
            headers = {"accept": "application/json"}
            if self._etag and self.keys is not None:
                headers["if-none-match"] = self._etag
            response = yield FetchRequest(self.jwks_url, headers)
            self._apply(response, now)
        finally:
            self.refreshing -= 1

    def _discover(self) -> Generator[FetchRequest, FetchResponse, str | None]:
        error = "no discovery URL"
        for url in self.discovery_urls:
            response = yield FetchRequest(url, {"accept": "application/json"})
            if response.error is not None or response.status != 200:
                error = f"discovery failed: {response.error or f'HTTP {response.status}'}"
                continue
            try:
                metadata = loads_object(response.body, "discovery document")
            except AuthError:
                return "discovery document is not a JSON object"
            if metadata.get("issuer") != self.issuer:
                # RFC 8414 3.3 / OIDC Discovery 4.3: a mismatch means the document is not ours.
                return "discovery document names another issuer"
            jwks_uri = metadata.get("jwks_uri")
            if not _is_http_url(jwks_uri):
                return "discovery document has no usable jwks_uri"
            self.jwks_url = jwks_uri
            return None
        return error

    def _apply(self, response: FetchResponse, now: float) -> None:
        if response.error is not None:
            self._failed(now, response.error)
            return
        if response.status == 304 and self.keys is not None:
            self._etag = response.headers.get("etag", self._etag)
            self._fresh(now, response.headers)
            self.fetch_counts["not_modified"] += 1  # last: whoever sees the count sees the state
            return
        if response.status != 200:
            self._failed(now, f"HTTP {response.status}")
            return
        try:
            document: Any = loads_object(response.body, "key set")
            keyset = parse_jwks(document)
        except (AuthError, ValueError):
            self._failed(now, "response is not a JWK Set")
            return
        for skipped in keyset.skipped:
            logger.warning("issuer %s: key %s skipped: %s", self.issuer, skipped.kid, skipped.reason)
        if not keyset.keys:
            # An identity provider that issues tokens does not publish an empty set; a broken one
            # (or a proxy in front of it) does. Keep the last good keys (stale-if-error).
            reasons = "; ".join(f"{s.kid}: {s.reason}" for s in keyset.skipped[:5])
            self._failed(now, "key set has no usable key" + (f" ({reasons})" if reasons else ""))
            return
        self._replace(keyset)
        self._etag = response.headers.get("etag")
        self._fresh(now, response.headers)
        self.fetch_counts["ok"] += 1

    def _replace(self, new: KeySet) -> None:
        """Swap in a new key set, keeping the objects of keys that did not change (so tokens
        cached against them stay cached) and retiring those that left."""
        old = {(k.kid, k.fingerprint): k for k in self.keys.keys} if self.keys is not None else {}
        keys = [old.pop((k.kid, k.fingerprint), k) for k in new.keys]
        for gone in old.values():
            gone.alive = False
        self.keys = KeySet(keys, new.skipped)

    def _fresh(self, now: float, headers: Mapping[str, str]) -> None:
        self.fresh_until = now + ttl_from_headers(headers, self.policy)
        self.last_error = None

    def _failed(self, now: float, error: str) -> None:
        self.last_failure = now
        self.last_error = error
        self.fetch_counts["error"] += 1
        logger.warning("issuer %s: key fetch failed: %s", self.issuer, error)

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-able summary for operators: key ids, freshness, the last error."""
        keys = self.keys
        return {
            "issuer": self.issuer,
            "jwks_url": self.jwks_url,
            "kids": [k.kid for k in keys.keys] if keys is not None else [],
            "skipped": [{"kid": s.kid, "reason": s.reason} for s in keys.skipped] if keys is not None else [],
            "fresh_for": None if math.isinf(self.fresh_until) else round(self.fresh_until - now, 3),
            "usable": self.usable(now) is not None,
            "last_error": self.last_error,
            "fetches": dict(self.fetch_counts),
            "stale_served": self.stale_served,
        }


def _is_http_url(value: object) -> TypeGuard[str]:
    """An absolute http(s) URL with a host that httpx will accept (not just a prefix match)."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for an out-of-range port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
