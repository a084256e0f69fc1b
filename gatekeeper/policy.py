"""What an issuer's tokens must satisfy, and the claim checks that enforce it (no I/O)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from .claims import DEFAULT_SCOPE_CLAIMS
from .errors import AuthError
from .keys import HMAC_MIN_BYTES, KeySet, hmac_key, import_pem, parse_jwks
from .keystore import FetchPolicy, KeyStore

#: The default allow-list: asymmetric algorithms only (RFC 8725 3.1).
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_ACCESS_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
#: The range of a NumericDate that can be a real time: 0001-01-01T00:00:00Z to
#: 9999-12-31T23:59:59Z, what ``datetime`` (and most other languages' date types) can hold. Beyond
#: it a date is not "valid for ever" but malformed, and code that converts it would crash.
MIN_NUMERIC_DATE: Final = -62_135_596_800
MAX_NUMERIC_DATE: Final = 253_402_300_799


@dataclass(frozen=True)
class Issuer:
    """One trusted issuer: where its keys come from and what its tokens must carry.

    Exactly one key source: ``jwks_url``; ``discovery=True`` (OIDC / RFC 8414 metadata at the
    issuer URL, whose ``issuer`` must match); ``jwks`` (a JWKS dict, or a path to a JSON file);
    ``public_key`` (PEM); or ``hmac_secret`` (only when given explicitly, at least the hash
    size of each HS algorithm it is used for).

    ``audience`` is required unless ``verify_audience=False`` says otherwise. ``typ="at+jwt"``
    requires RFC 9068 access tokens. ``leeway`` (seconds) applies to ``exp``, ``nbf`` and
    ``iat``. ``exp`` is always required, whatever ``required_claims`` says.

    ``max_lifetime`` (seconds, like Envoy's): refuse a token whose ``exp - iat`` exceeds it, or,
    without ``iat``, whose ``exp - now`` exceeds it (plus ``leeway``). None, the default, sets no
    limit beyond the year-9999 bound on every date: lifetimes are the issuer's choice and differ
    widely (Okta and Entra ID at most a day, Auth0 up to 30 days, Keycloak anything), so a
    guessed default would reject every token of a correctly configured issuer. Set it to what
    your issuer actually issues.
    """

    issuer: str
    audience: str | Sequence[str] | None = None
    jwks_url: str | None = None
    discovery: bool = False
    jwks: Mapping[str, Any] | str | Path | None = None
    public_key: str | bytes | None = None
    hmac_secret: str | bytes | None = field(default=None, repr=False)
    algorithms: Sequence[str] | None = None
    leeway: float = 30.0
    required_claims: Sequence[str] = ()
    typ: str | None = None
    max_token_bytes: int = 8192
    scope_claims: Sequence[str] = DEFAULT_SCOPE_CLAIMS
    verify_audience: bool = True
    max_lifetime: float | None = None
    fetch: FetchPolicy = field(default_factory=FetchPolicy)

    def __post_init__(self) -> None:
        sources = [self.jwks_url, self.discovery or None, self.jwks, self.public_key, self.hmac_secret]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                f"issuer {self.issuer!r}: give exactly one key source "
                "(jwks_url, discovery, jwks, public_key or hmac_secret)"
            )
        if self.verify_audience and not self.audiences:
            raise ValueError(f"issuer {self.issuer!r}: give an audience (or verify_audience=False)")
        if not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError(f"issuer {self.issuer!r}: audiences are non-empty strings")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        if self.typ is not None and self.typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise ValueError("typ can only require 'at+jwt' (RFC 9068)")
        if self.max_lifetime is not None and not 0 < self.max_lifetime < math.inf:
            raise ValueError("max_lifetime must be a positive number of seconds (or None)")
        if self.max_token_bytes < 256:
            raise ValueError("max_token_bytes is too small for any real token")
        algs = self.allowed_algorithms
        if not algs and self.hmac_secret is not None and self.algorithms is None:
            raise ValueError(
                f"the hmac_secret is shorter than {HMAC_MIN_BYTES['HS256']} bytes (RFC 7518 3.2)"
            )
        if not algs:
            raise ValueError("the algorithm allow-list is empty")
        bad = {
            a for a in algs if a.lower() == "none" or a not in set(DEFAULT_ALGORITHMS) | set(HMAC_MIN_BYTES)
        }
        if bad:
            raise ValueError(f"algorithms not allowed: {sorted(bad)}")
        if self.hmac_secret is None and not algs.isdisjoint(HMAC_MIN_BYTES):
            raise ValueError("HS* algorithms need an explicitly configured hmac_secret")
        if self.hmac_secret is not None:
            if not algs <= set(HMAC_MIN_BYTES):
                raise ValueError("an hmac_secret issuer allows only HS* algorithms")
            short = sorted(a for a in algs if len(self._secret_bytes) < HMAC_MIN_BYTES[a])
            if short:
                # RFC 7518 3.2: a key shorter than the hash output is not allowed.
                raise ValueError(f"the hmac_secret is shorter than the hash size of {short}")

    @cached_property
    def audiences(self) -> frozenset[str]:
        if self.audience is None:
            return frozenset()
        if isinstance(self.audience, str):
            return frozenset({self.audience})
        return frozenset(self.audience)

    @cached_property
    def allowed_algorithms(self) -> frozenset[str]:
        if isinstance(self.algorithms, str):
            return frozenset({self.algorithms})
        if self.algorithms is not None:
            return frozenset(self.algorithms)
        if self.hmac_secret is not None:
            # By default, the HS algorithms the secret is long enough for.
            size = len(self._secret_bytes)
            return frozenset(alg for alg, need in HMAC_MIN_BYTES.items() if size >= need)
        return frozenset(DEFAULT_ALGORITHMS)

    @property
    def _secret_bytes(self) -> bytes:
        secret = self.hmac_secret
        if secret is None:
            return b""
        return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)

    def key_store(self) -> KeyStore:
        """A key store for this issuer's key source."""
        if self.jwks_url is not None:
            return KeyStore(self.issuer, jwks_url=self.jwks_url, policy=self.fetch)
        if self.discovery:
            base = self.issuer.rstrip("/")
            urls = (
                f"{base}/.well-known/openid-configuration",
                f"{base}/.well-known/oauth-authorization-server",
            )
            return KeyStore(self.issuer, discovery_urls=urls, policy=self.fetch)
        return KeyStore(self.issuer, static=self._static_keys())

    def _static_keys(self) -> KeySet:
        if self.hmac_secret is not None:
            return KeySet([hmac_key(self.hmac_secret, self.allowed_algorithms)])
        if self.public_key is not None:
            return KeySet([import_pem(self.public_key)])
        document = self.jwks
        if isinstance(document, (str, Path)):
            document = json.loads(Path(document).read_text(encoding="utf-8"))
        keyset = parse_jwks(document)
        if not keyset.keys:
            raise ValueError(f"issuer {self.issuer!r}: the static JWKS has no usable key")
        return keyset


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    # bool is an int in Python but not a NumericDate; NaN is refused by the JSON parser, but
    # 1e999 parses as inf and an integer of 400 digits does not fit a float at all.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError("invalid_token", f"The {name} claim must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise AuthError("invalid_token", f"The {name} claim must be a number")
    if not MIN_NUMERIC_DATE <= number <= MAX_NUMERIC_DATE:
        raise AuthError("invalid_token", f"The {name} claim is not a real date")
    return number


def check_header_type(header: Mapping[str, Any], issuer: Issuer) -> None:
    """RFC 9068 2.1: with ``typ`` required, the header must say ``at+jwt`` (case-insensitive)."""
    if issuer.typ is None:
        return
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
        raise AuthError("invalid_token", "The token is not an access token (typ)", issuer=issuer.issuer)


def check_claims(payload: Mapping[str, Any], issuer: Issuer, now: float) -> float:
    """Validate registered claims against the issuer's policy; return ``exp``."""
    exp = _number(payload, "exp")
    if exp is None:
        raise AuthError("invalid_token", "The token has no expiry", issuer=issuer.issuer)
    leeway = issuer.leeway
    if now >= exp + leeway:
        raise AuthError("expired_token", issuer=issuer.issuer)
    nbf = _number(payload, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise AuthError("invalid_token", "The token is not valid yet", issuer=issuer.issuer)
    iat = _number(payload, "iat")
    if iat is not None and now + leeway < iat:
        raise AuthError("invalid_token", "The token was issued in the future", issuer=issuer.issuer)
    if iat is not None and issuer.max_lifetime is not None:
        if exp - iat > issuer.max_lifetime:
            raise AuthError("invalid_token", "The token lifetime exceeds max_lifetime", issuer=issuer.issuer)
    elif issuer.max_lifetime is not None and exp - now > issuer.max_lifetime + leeway:
        raise AuthError("invalid_token", "The token lifetime exceeds max_lifetime", issuer=issuer.issuer)
    aud = payload.get("aud")
    # RFC 7519 4.1.3: a string or an array of strings. Anything else (a number, null, an object,
    # an array holding one) is malformed, even when some member matches: parsers disagree on
    # such values, and a token that says what it is for must say it plainly.
    if aud is not None and not (
        isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
    ):
        raise AuthError("invalid_token", "The token audience claim is malformed", issuer=issuer.issuer)
    if issuer.verify_audience:
        values = (aud,) if isinstance(aud, str) else aud or ()
        if issuer.audiences.isdisjoint(values):
            raise AuthError("invalid_token", "The token is not for this audience", issuer=issuer.issuer)
    sub = payload.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise AuthError("invalid_token", "The sub claim must be a string", issuer=issuer.issuer)
    for name in issuer.required_claims:
        if name not in payload:
            raise AuthError("invalid_token", f"The token lacks the {name} claim", issuer=issuer.issuer)
    return exp
