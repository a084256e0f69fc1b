"""Verification keys: import a JWKS one key at a time, and pick the keys that fit a token.

One key, one algorithm (RFC 8725 3.1): a key is used only for an ``alg`` its type, curve and
declared ``alg``/``use``/``key_ops`` all allow. A key that cannot be trusted (private material,
RSA under 2048 bits, an unknown type or curve, a point off its curve) is skipped and reported;
the rest of the set still works.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from .jws import SUPPORTED_ALGORITHMS

_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALG_CURVE: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
#: Minimum HMAC secret length in bytes for each algorithm: the hash size (RFC 7518 3.2).
HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS: Final = 2048


class KeyImportError(ValueError):
    """A JWK that will not be used, and why (the reason names no key material)."""


def algorithms_for(kty: str, crv: str | None) -> frozenset[str]:
    """The JWS algorithms a key of this type and curve can verify."""
    if kty == "RSA":
        return _RSA_ALGS
    if kty == "EC":
        return frozenset(alg for alg, curve in _EC_ALG_CURVE.items() if curve == crv)
    if kty == "OKP":
        return frozenset({"EdDSA"}) if crv in _OKP_CURVES else frozenset()
    if kty == "oct":
        return frozenset(HMAC_MIN_BYTES)
    return frozenset()


@dataclass(eq=False, slots=True)
class VerificationKey:
    """A public (or explicitly configured HMAC) key and the algorithms it may verify.

    ``alive`` turns False the moment the key leaves its key set; cached verifications made with
    it check this flag, so a removed key stops verifying at once.
    """

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any
    fingerprint: str
    alive: bool = field(default=True)

    def fits(self, alg: str) -> bool:
        return alg in self.algorithms


def _import_native(data: Mapping[str, Any]) -> Any:
    kty = data.get("kty")
    if kty == "RSA":
        return RSAKey.import_key(dict(data))
    if kty == "EC":
        return ECKey.import_key(dict(data))
    if kty == "OKP":
        return OKPKey.import_key(dict(data))
    raise KeyImportError(f"unsupported key type {kty!r}" if isinstance(kty, str) else "missing key type")


def _allowed_algorithms(data: Mapping[str, Any], kty: str, crv: str | None) -> frozenset[str]:
    use = data.get("use")
    if use is not None and use != "sig":
        raise KeyImportError("key is not for signatures (use)")
    key_ops = data.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise KeyImportError("key is not for verification (key_ops)")
    algs = algorithms_for(kty, crv)
    declared = data.get("alg")
    if declared is not None:
        if declared not in algs or declared not in SUPPORTED_ALGORITHMS:
            raise KeyImportError("key alg does not fit its type and curve")
        algs = frozenset({declared})
    if not algs:
        raise KeyImportError("key curve cannot sign")
    return algs


def import_jwk(data: object) -> VerificationKey:
    """Import one public JWK for verification, or raise :class:`KeyImportError`."""
    if not isinstance(data, Mapping):
        raise KeyImportError("key is not a JSON object")
    kty = data.get("kty")
    if not isinstance(kty, str):
        raise KeyImportError("missing key type")
    if kty == "oct":
        raise KeyImportError("symmetric keys are only accepted as an explicitly configured secret")
    if not _PRIVATE_MEMBERS.isdisjoint(data):
        raise KeyImportError("private key material in a public key set")
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyImportError("kid is not a string")
    crv = data.get("crv")
    algs = _allowed_algorithms(data, kty, crv if isinstance(crv, str) else None)
    try:
        native = _import_native(data)
    except KeyImportError:
        raise
    except Exception:  # joserfc/cryptography raise many types for bad material (off-curve, ...)
        raise KeyImportError("key material is invalid") from None
    if kty == "RSA" and native.public_key.key_size < MIN_RSA_BITS:
        raise KeyImportError(f"RSA key is shorter than {MIN_RSA_BITS} bits")
    return VerificationKey(kid, kty, algs, native, native.thumbprint())


def hmac_key(secret: bytes | str, algorithms: Iterable[str], kid: str | None = None) -> VerificationKey:
    """A key for an HMAC secret given explicitly; only algorithms the secret is long enough for."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    algs = frozenset(a for a in algorithms if a in HMAC_MIN_BYTES and len(raw) >= HMAC_MIN_BYTES[a])
    if not algs:
        raise ValueError("the HMAC secret is shorter than the hash size of every allowed HS algorithm")
    native = OctKey.import_key(raw)
    return VerificationKey(kid, "oct", algs, native, native.thumbprint())


def import_pem(pem: bytes | str, kid: str | None = None) -> VerificationKey:
    """A key from a PEM public key (RSA, EC or Ed25519/Ed448)."""
    raw = pem.encode("ascii") if isinstance(pem, str) else pem
    for cls in (RSAKey, ECKey, OKPKey):
        try:
            native: Any = cls.import_key(raw)
        except Exception:  # noqa: S112 - try the next key type
            continue
        data = native.as_dict(private=False)
        if native.is_private:
            raise ValueError("a private key was given where a public key is expected")
        if kid is not None:
            data["kid"] = kid
        return import_jwk(data)
    raise ValueError("not a PEM public key (RSA, EC or OKP)")


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """A key left out of a key set, with the reason (for logs and ``Verifier.status()``)."""

    kid: str | None
    reason: str


class KeySet:
    """An immutable set of verification keys indexed by ``kid``."""

    __slots__ = ("_by_kid", "keys", "skipped")

    def __init__(self, keys: Iterable[VerificationKey] = (), skipped: Iterable[SkippedKey] = ()) -> None:
        self.keys: tuple[VerificationKey, ...] = tuple(keys)
        self.skipped: tuple[SkippedKey, ...] = tuple(skipped)
        by_kid: dict[str | None, list[VerificationKey]] = {}
        for key in self.keys:
            by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = by_kid

    def __len__(self) -> int:
        return len(self.keys)

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may verify a token with this ``kid`` header (or none) and ``alg``.

        With a ``kid`` only keys of that id are tried; without one every key that fits.
        """
        pool = self.keys if kid is None else self._by_kid.get(kid, ())
        return [key for key in pool if key.fits(alg)]

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid


def parse_jwks(document: object) -> KeySet:
    """Import a JWKS document key by key. Raises ``ValueError`` only if it is not a JWKS at all.

    Two different keys under one ``kid`` are ambiguous: both are skipped. An exact duplicate
    (same thumbprint) is kept once.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a 'keys' array")
    imported: list[VerificationKey] = []
    skipped: list[SkippedKey] = []
    for entry in document["keys"]:
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        try:
            imported.append(import_jwk(entry))
        except KeyImportError as exc:
            skipped.append(SkippedKey(kid if isinstance(kid, str) else None, str(exc)))
    unique: dict[tuple[str | None, str], VerificationKey] = {}
    for key in imported:
        unique.setdefault((key.kid, key.fingerprint), key)
    per_kid: dict[str | None, int] = {}
    for kid, _ in unique:
        per_kid[kid] = per_kid.get(kid, 0) + 1
    keys = []
    for (kid, _), key in unique.items():
        if kid is not None and per_kid[kid] > 1:
            skipped.append(SkippedKey(kid, "several different keys share this kid"))
        else:
            keys.append(key)
    return KeySet(keys, skipped)


def load_jwks_json(text: str | bytes) -> KeySet:
    """Parse JWKS JSON text; ``ValueError`` if it is not JSON or not a JWK Set."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError("JWKS is not valid JSON") from exc
    return parse_jwks(document)
