"""Compact JWS, strictly: parse a token without trusting it, then check one signature.

This is the JOSE layer under the JWT verifier. It knows nothing of issuers or claims, so the
Wycheproof JWS vectors run against exactly the code that verifies production tokens. The
cryptography itself is joserfc's algorithm models; what is here is the strictness around them:
canonical base64url, no duplicate header names, no ``crit`` extensions, ``alg`` never ``none``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from .errors import AuthError

#: Algorithms gatekeeper knows how to verify (joserfc's models); anything else is refused.
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
        "HS256", "HS384", "HS512",
    }
)  # fmt: skip

_SEGMENT = r"[A-Za-z0-9_-]"
# The header is non-empty. An empty payload is a valid JWS (RFC 7515), though never a JWT: the
# verifier's JSON check refuses it. An empty signature is only well-formed, never valid.
_COMPACT_RE: Final = re.compile(rf"({_SEGMENT}+)\.({_SEGMENT}*)\.({_SEGMENT}*)")
_BASE64URL: Final = re.compile(rf"{_SEGMENT}*")
_B64_INDEX: Final[dict[str, int]] = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# Header parameters that would change how the signature is computed or which key is used, and
# which gatekeeper does not implement: refused rather than ignored (RFC 7515 4.1.11, RFC 7797).
_UNSUPPORTED_HEADERS: Final[frozenset[str]] = frozenset({"crit", "b64", "zip", "enc"})


def _invalid(description: str) -> AuthError:
    return AuthError("invalid_token", description)


def b64url_decode(segment: str) -> bytes:
    """Decode canonical unpadded base64url: no padding, no stray characters, zero unused bits."""
    if not _BASE64URL.fullmatch(segment):
        raise ValueError("not base64url")
    rem = len(segment) % 4
    if rem == 1:
        raise ValueError("impossible base64url length")
    if rem:
        # The last character's unused low bits must be zero, or two strings decode the same.
        mask = 0x0F if rem == 2 else 0x03
        if _B64_INDEX[segment[-1]] & mask:
            raise ValueError("non-canonical base64url")
        segment += "=" * (4 - rem)
    return base64.urlsafe_b64decode(segment)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON: Final = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def loads_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse strict JSON (UTF-8, no duplicate names, no NaN) that must be an object."""
    try:
        value = _STRICT_JSON.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid(f"The token {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _invalid(f"The token {what} must be a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A compact JWS split and decoded, its signature not yet checked."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        alg: str = self.header["alg"]
        return alg

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def parse_compact(token: str, max_size: int = 16384) -> CompactJWS:
    """Split and decode a compact JWS without trusting any of it.

    Raises ``invalid_token`` for anything but three canonical base64url segments with a JSON
    object header naming a supported ``alg`` and no extension the verifier does not implement.
    """
    if not isinstance(token, str):
        raise _invalid("The token is not a string")
    if len(token) > max_size:
        raise _invalid("The token is too large")
    match = _COMPACT_RE.fullmatch(token)
    if match is None:
        raise _invalid("The token is not a compact JWS")
    header_b64, payload_b64, signature_b64 = match.groups()
    try:
        header_bytes = b64url_decode(header_b64)
        payload = b64url_decode(payload_b64)
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error):
        raise _invalid("The token is not valid base64url") from None
    header = loads_object(header_bytes, "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _invalid("The token header has no algorithm")
    if alg not in SUPPORTED_ALGORITHMS:
        # Covers "none" in every casing and every name we do not implement.
        raise _invalid("The token algorithm is not allowed")
    if not _UNSUPPORTED_HEADERS.isdisjoint(header):
        raise _invalid("The token uses a header extension that is not supported")
    if "kid" in header and not isinstance(header["kid"], str):
        raise _invalid("The token key id must be a string")
    return CompactJWS(header, payload, (header_b64 + "." + payload_b64).encode("ascii"), signature)


def check_signature(jws: CompactJWS, key: Any) -> bool:
    """Check the signature with a joserfc key already known to fit ``jws.alg``."""
    if not jws.signature:
        return False
    model = JWSRegistry.algorithms[jws.alg]
    try:
        return bool(model.verify(jws.signing_input, jws.signature, key))
    except (ValueError, TypeError, AttributeError, JoseError):
        # A signature of the wrong shape for the key (e.g. ECDSA integers out of range), or a
        # key joserfc will not use for this operation: a failed check, never joserfc's error.
        return False
