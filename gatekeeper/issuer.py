"""An in-memory OAuth2 token issuer for tests, the demo and benchmarks.

``DevIssuer`` generates signing keys, publishes their public halves as a JWKS and mints JWT access
tokens (RFC 9068 style). It performs no I/O; :mod:`gatekeeper.devserver` serves it over HTTP.

It is deliberately permissive: ``mint`` never validates what it is asked to put in a token, so tests
can produce expired, unsigned, mislabelled or otherwise hostile tokens. Never use it in production.
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from joserfc import jws
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey
from joserfc.util import urlsafe_b64encode

__all__ = ["SUPPORTED_ALGORITHMS", "DevIssuer"]


class _Default(enum.Enum):
    """Sentinel type: lets ``None`` mean "leave it out" while the default means "use the usual"."""

    TOKEN = enum.auto()


_DEFAULT: Final = _Default.TOKEN

# alg -> function generating a fresh private key suited to it.
_GENERATORS: Final[dict[str, Callable[[], Key]]] = {
    **{f"{p}{n}": lambda: RSAKey.generate_key(2048) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": lambda: ECKey.generate_key("P-256"),
    "ES384": lambda: ECKey.generate_key("P-384"),
    "ES512": lambda: ECKey.generate_key("P-521"),
    "EdDSA": lambda: OKPKey.generate_key("Ed25519"),
    # RFC 7518 section 3.2: an HMAC key must be at least as long as the hash output.
    "HS256": lambda: OctKey.generate_key(256),
    "HS384": lambda: OctKey.generate_key(384),
    "HS512": lambda: OctKey.generate_key(512),
}

#: Every algorithm ``add_key`` accepts (``mint`` additionally accepts ``"none"`` for unsigned tokens).
SUPPORTED_ALGORITHMS: Final = frozenset(_GENERATORS)


@dataclass
class _Entry:
    kid: str
    key: Key
    alg: str
    published: bool = True


def _b64json(value: Mapping[str, Any]) -> bytes:
    return urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode())


class DevIssuer:
    """An in-memory token issuer with rotating keys.

    One key is generated per entry of ``algorithms``; ``algorithms[0]`` is the algorithm ``mint`` uses by
    default. HMAC (``HS*``) keys are only created through an explicit ``add_key`` and are never published.
    """

    def __init__(
        self,
        issuer: str = "https://issuer.example",
        *,
        audience: str | list[str] | None = "api",
        algorithms: Sequence[str] = ("RS256",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: The ``iss`` claim of minted tokens; may be reassigned (e.g. once a server knows its port).
        self.issuer = issuer
        #: The default ``aud`` claim; ``None`` omits it.
        self.audience = audience
        self.clock = clock
        self._keys: dict[str, _Entry] = {}
        for alg in algorithms:
            if alg.startswith("HS"):
                raise ValueError(f"{alg}: symmetric keys must be requested explicitly with add_key()")
            self.add_key(alg)
        self._default_alg = algorithms[0] if algorithms else None

    def add_key(self, alg: str = "RS256", *, kid: str | None = None) -> str:
        """Generate and publish a new signing key for ``alg`` and return its kid.

        The kid defaults to the key's RFC 7638 thumbprint. The newest published key of an algorithm is
        the one ``mint`` picks, so adding a key is how a test rotates keys.
        """
        if alg not in _GENERATORS:
            raise ValueError(f"unsupported algorithm {alg!r}; expected one of {sorted(SUPPORTED_ALGORITHMS)}")
        key = _GENERATORS[alg]()
        kid = kid if kid is not None else key.thumbprint()
        if kid in self._keys:
            raise ValueError(f"duplicate kid {kid!r}")
        self._keys[kid] = _Entry(kid, key, alg)
        return kid

    def remove_key(self, kid: str) -> None:
        """Unpublish a key (the second half of a rotation).

        The key is kept so that ``mint(kid=...)`` can still produce tokens signed by a key the JWKS no
        longer lists, which is exactly what a verifier must then reject.
        """
        self._keys[kid].published = False

    def secret(self, kid: str) -> bytes:
        """Return the raw secret of an HMAC key; these are never published in the JWKS."""
        key = self._keys[kid].key
        if not isinstance(key, OctKey):
            raise ValueError(f"key {kid!r} is not a symmetric key")
        return key.raw_value

    def jwks(self) -> dict[str, Any]:
        """Return the published public keys as a JWK Set, each with ``kid``, ``alg`` and ``use``."""
        keys = [
            e.key.as_dict(private=False, kid=e.kid, alg=e.alg, use="sig")
            for e in self._entries()
            # An oct JWK *is* its secret, so symmetric keys are never published.
            if e.published and not isinstance(e.key, OctKey)
        ]
        return {"keys": keys}

    def discovery(self, jwks_uri: str, *, token_endpoint: str | None = None) -> dict[str, Any]:
        """Return an OpenID Connect / RFC 8414 discovery document for this issuer."""
        algs = sorted({e.alg for e in self._entries() if e.published and not e.alg.startswith("HS")})
        return {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "token_endpoint": token_endpoint or f"{self.issuer.rstrip('/')}/oauth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        }

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        alg: str | None = None,
        kid: str | _Default | None = _DEFAULT,
        scope: str | Sequence[str] | None = None,
        subject: str = "client-123",
        expires_in: float = 300,
        not_before: float | None = None,
        typ: str | None = "at+jwt",
        headers: Mapping[str, Any] | None = None,
        audience: str | list[str] | _Default | None = _DEFAULT,
    ) -> str:
        """Mint a signed JWT access token.

        Key choice: ``kid`` names the key (published or not); otherwise the newest published key for
        ``alg`` (default ``algorithms[0]``) signs. ``kid=None`` signs with that default key but omits the
        ``kid`` header. ``alg="none"`` yields an unsigned token.

        Claims: ``iss``, ``sub``, ``aud`` (unless ``None``), ``iat``, ``exp = iat + expires_in``,
        ``nbf = iat + not_before`` (only when given; both are offsets in seconds and may be negative),
        ``jti``, ``client_id`` and ``scope`` (space-joined) when given. ``claims`` then overrides them;
        a ``None`` value deletes the claim. ``headers`` is merged into the JOSE header last, also with
        ``None`` deleting; it is not validated and can relabel ``alg`` (the signature always uses the
        chosen key's real algorithm).
        """
        entry = self._select(alg, kid)
        now = self.clock()
        aud = self.audience if isinstance(audience, _Default) else audience
        payload: dict[str, Any] = {"iss": self.issuer, "sub": subject}
        if aud is not None:
            payload["aud"] = aud
        payload["iat"] = int(now)
        if not_before is not None:
            payload["nbf"] = int(now + not_before)
        payload["exp"] = int(now + expires_in)
        payload["jti"] = secrets.token_urlsafe(16)
        payload["client_id"] = subject
        if scope is not None:
            payload["scope"] = scope if isinstance(scope, str) else " ".join(scope)
        _merge(payload, claims)

        header: dict[str, Any] = {"alg": entry.alg if entry else "none"}
        if kid is _DEFAULT and entry is not None:
            header["kid"] = entry.kid
        elif isinstance(kid, str):
            header["kid"] = kid
        if typ is not None:
            header["typ"] = typ
        _merge(header, headers)

        signing_input = _b64json(header) + b"." + _b64json(payload)
        signature = b"" if entry is None else self._sign(entry, signing_input)
        return (signing_input + b"." + urlsafe_b64encode(signature)).decode()

    def _entries(self) -> tuple[_Entry, ...]:
        # A snapshot: the dev server reads keys from handler threads while a test may add keys, and
        # iterating a dict that another thread grows raises RuntimeError. tuple() copies atomically.
        return tuple(self._keys.values())

    def _select(self, alg: str | None, kid: str | _Default | None) -> _Entry | None:
        """Pick the signing key; ``None`` means an unsigned (``alg=none``) token."""
        if alg == "none":
            return None
        if isinstance(kid, str):
            entry = self._keys[kid]
            if alg is not None and alg != entry.alg:
                raise ValueError(f"key {kid!r} is a {entry.alg} key, not {alg}")
            return entry
        alg = alg or self._default_alg
        if alg is None:
            raise ValueError("no default algorithm (algorithms=() was given); pass alg=")
        candidates = [e for e in self._entries() if e.alg == alg and e.published]
        if not candidates:
            raise ValueError(f"no published {alg} key; call add_key({alg!r}) first")
        return candidates[-1]

    @staticmethod
    def _sign(entry: _Entry, signing_input: bytes) -> bytes:
        # The model is taken from joserfc's algorithm table rather than JWSRegistry.get_alg(): get_alg
        # emits a SecurityWarning for EdDSA, and silencing it with warnings.catch_warnings() is not
        # thread-safe, while the dev server mints from several threads. serialize_compact() is not used
        # because it validates the header, and hostile headers are the point of this class.
        model = jws.JWSRegistry.algorithms[entry.alg]
        model.check_key(entry.key)
        return model.sign(signing_input, entry.key)


def _merge(target: dict[str, Any], changes: Mapping[str, Any] | None) -> None:
    """Apply ``changes`` onto ``target``, where a value of ``None`` deletes the member."""
    for name, value in (changes or {}).items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
