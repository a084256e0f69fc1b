"""Verification keys: import a JWKS one key at a time, and pick the keys that fit a token.

One key, one algorithm (RFC 8725 3.1): a key is used only for an ``alg`` its type, curve and
declared ``alg``/``use``/``key_ops`` all allow. A key that cannot be trusted (private material,
RSA under 2048 bits or with the ROCA fingerprint, an unknown type or curve, a point off its
curve) is skipped and reported; the rest of the set still works.

Symmetric (``oct``) keys never come from a JWKS: an HMAC secret is only ever configured
explicitly, as raw bytes (:func:`hmac_key`) or as a JWK / JWK Set of secrets
(:func:`import_secret_jwk`, :func:`parse_secret_jwks`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from .jws import SUPPORTED_ALGORITHMS, b64url_decode
from .roca import is_roca_vulnerable

_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALG_CURVE: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
#: Minimum HMAC secret length in bytes for each algorithm: the hash size (RFC 7518 3.2).
HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS: Final = 2048
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
# The members an RFC 7638 thumbprint is computed from, per key type.
_THUMBPRINT_MEMBERS: Final[dict[str, tuple[str, ...]]] = {
    "RSA": ("kty", "e", "n"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
    "oct": ("kty", "k"),
}


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
        if not isinstance(declared, str) or declared not in algs or declared not in SUPPORTED_ALGORITHMS:
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
    if kty not in ("RSA", "EC", "OKP"):
        raise KeyImportError(f"unsupported key type {kty[:20]!r}")
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
    if kty == "RSA":
        if native.public_key.key_size < MIN_RSA_BITS:
            raise KeyImportError(f"RSA key is shorter than {MIN_RSA_BITS} bits")
        # A ROCA modulus can be factored (CVE-2017-15361): whoever did so can sign as the issuer.
        if is_roca_vulnerable(native.public_key.public_numbers().n):
            raise KeyImportError("RSA key has the ROCA fingerprint (CVE-2017-15361); it can be factored")
    return VerificationKey(kid, kty, algs, native, native.thumbprint())


def hmac_key(secret: bytes | str, algorithms: Iterable[str], kid: str | None = None) -> VerificationKey:
    """A key for an HMAC secret given explicitly; only algorithms the secret is long enough for."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    algs = frozenset(a for a in algorithms if a in HMAC_MIN_BYTES and len(raw) >= HMAC_MIN_BYTES[a])
    if not algs:
        raise ValueError("the HMAC secret is shorter than the hash size of every allowed HS algorithm")
    native = OctKey.import_key(raw)
    return VerificationKey(kid, "oct", algs, native, native.thumbprint())


def import_secret_jwk(data: object) -> VerificationKey:
    """Import an explicitly configured HMAC secret given as an ``oct`` JWK.

    The JWK is held to the rules of the JWKS path: ``use`` must be ``sig``, ``key_ops`` must
    allow ``verify``, a declared ``alg`` must be an HS algorithm and is then the only one the key
    verifies, ``kid`` (a string) is kept for key selection, and ``k`` must be canonical unpadded
    base64url. The secret must be at least the hash size of each algorithm it is used for
    (RFC 7518 3.2). Raises :class:`KeyImportError`.
    """
    if not isinstance(data, Mapping):
        raise KeyImportError("key is not a JSON object")
    if data.get("kty") != "oct":
        raise KeyImportError("not a symmetric (oct) key")
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyImportError("kid is not a string")
    algs = _allowed_algorithms(data, "oct", None)
    encoded = data.get("k")
    # b64url_decode trusts its caller to have checked the alphabet (parse_compact does, by regex).
    if not isinstance(encoded, str) or _B64URL_RE.fullmatch(encoded) is None:
        raise KeyImportError("key value (k) is not base64url")
    try:
        secret = b64url_decode(encoded)
    except ValueError:
        raise KeyImportError("key value (k) is not canonical base64url") from None
    try:
        return hmac_key(secret, algs, kid)
    except ValueError as exc:
        raise KeyImportError(str(exc)) from None


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

        With a ``kid`` only keys of that id are tried, or, when no key has that id, the keys
        that have no id at all (a PEM key, an HMAC secret, a JWKS without ids: the ``kid`` names
        nothing here, and those keys are still this issuer's). Without a ``kid``, every key.
        """
        pool: Sequence[VerificationKey] = self.keys
        if kid is not None:
            pool = self._by_kid.get(kid) or self._by_kid.get(None) or ()
        return [key for key in pool if key.fits(alg)]

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid


def _entries(document: object) -> list[Any]:
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a 'keys' array")
    entries: list[Any] = document["keys"]
    return entries


def _material(entry: object) -> str | None:
    """The RFC 7638 thumbprint of an entry's key material, if it can be read at all."""
    if not isinstance(entry, Mapping):
        return None
    kty = entry.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        return None
    required = {name: entry[name] for name in members if name in entry}
    try:
        native: Any = OctKey.import_key(required) if kty == "oct" else _import_native(required)
        thumbprint: str = native.thumbprint()
    except Exception:  # unreadable material, whatever joserfc/cryptography raise for it
        return None
    return thumbprint


def _import_each(entries: Iterable[Any], importer: Callable[[object], VerificationKey]) -> KeySet:
    """Import entries one by one, then drop what the set as a whole makes untrustworthy.

    A ``kid`` that names different key material in several entries is ambiguous, and every key
    under it is skipped, even when some of those entries could not be imported (the set still
    says the kid means more than one key). A key whose private half the set also publishes is
    compromised: it is skipped under every ``kid``. An exact duplicate is kept once.
    """
    imported: list[VerificationKey] = []
    skipped: list[SkippedKey] = []
    named: dict[str, set[str]] = {}  # kid -> the key materials entries give under it
    compromised: set[str] = set()
    for index, entry in enumerate(entries):
        raw_kid = entry.get("kid") if isinstance(entry, Mapping) else None
        kid = raw_kid if isinstance(raw_kid, str) else None
        try:
            key = importer(entry)
        except KeyImportError as exc:
            skipped.append(SkippedKey(kid, str(exc)))
            material = _material(entry)
            if (
                material is not None
                and isinstance(entry, Mapping)
                and entry.get("kty") != "oct"
                and not _PRIVATE_MEMBERS.isdisjoint(entry)
            ):
                compromised.add(material)
            if kid is not None:
                # Unreadable material can only be told apart by position: it counts as different.
                named.setdefault(kid, set()).add(material or f"unreadable entry {index}")
            continue
        imported.append(key)
        if key.kid is not None:
            named.setdefault(key.kid, set()).add(key.fingerprint)
    keys: list[VerificationKey] = []
    seen: set[tuple[str | None, str]] = set()
    for key in imported:
        if (key.kid, key.fingerprint) in seen:
            continue
        seen.add((key.kid, key.fingerprint))
        if key.fingerprint in compromised:
            skipped.append(SkippedKey(key.kid, "the key set also publishes this key's private key"))
        elif key.kid is not None and len(named[key.kid]) > 1:
            skipped.append(SkippedKey(key.kid, "several different keys share this kid"))
        else:
            keys.append(key)
    return KeySet(keys, skipped)


def parse_jwks(document: object) -> KeySet:
    """Import a JWKS document key by key. Raises ``ValueError`` only if it is not a JWKS at all.

    Two different keys under one ``kid`` are ambiguous: both are skipped, also when one of the
    entries is refused (a kid that names an unusable key beside a usable one is still two keys).
    An exact duplicate (same thumbprint) is kept once. A key whose private members the set also
    publishes is skipped too, under whatever ``kid``: anyone who read the set can sign with it.
    """
    return _import_each(_entries(document), import_jwk)


def parse_secret_jwks(document: object) -> KeySet:
    """Import explicitly configured HMAC secrets given as a JWK Set of ``oct`` keys.

    Each key goes through :func:`import_secret_jwk`; keys it refuses are skipped and reported,
    and ``kid`` ambiguity is handled as in :func:`parse_jwks`. A set that also holds a
    non-secret key is refused whole with ``ValueError``: secrets and published keys do not share
    a document, so such a set is the wrong file (and a public one would leak the secrets).
    """
    entries = _entries(document)
    if not all(isinstance(entry, Mapping) and entry.get("kty") == "oct" for entry in entries):
        raise ValueError("a set of HMAC secrets may only contain oct keys")
    return _import_each(entries, import_secret_jwk)
