"""Error profiles: the only place an :class:`AuthError` becomes HTTP (status, headers, body).

A provider's shape is a small table of statuses plus a body renderer. Built in: ``rfc6750``
(the default), ``placepoint``, ``addressfinder`` and ``placewise``; a user's own profile can be
given as data (:func:`profile_from_dict`) or as a callable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from .errors import ERROR_KINDS, AuthError, ErrorKind


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A rendered failure: status, headers (lower-case names) and a body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@runtime_checkable
class ErrorProfile(Protocol):
    """Anything that renders an :class:`AuthError`."""

    def render(self, error: AuthError) -> ErrorResponse: ...


# RFC 6750 3: error, error_description and scope values use %x20-21 / %x23-5B / %x5D-7E
# (no quote, no backslash, no control characters); scope tokens also exclude the space.
_UNSAFE_DESCRIPTION: Final = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_UNSAFE_SCOPE: Final = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]")
_RFC6750_CODE: Final[dict[ErrorKind, str | None]] = {
    "missing_token": None,
    "invalid_request": "invalid_request",
    "invalid_token": "invalid_token",
    "expired_token": "invalid_token",
    "insufficient_scope": "insufficient_scope",
    "revoked_token": "invalid_token",
    "unknown_principal": "invalid_token",
    "keys_unavailable": None,
}


def header_safe(text: str) -> str:
    """Make text fit RFC 6750's character set for auth-param values."""
    return _UNSAFE_DESCRIPTION.sub("?", text)


def _scope_value(error: AuthError) -> str:
    return " ".join(_UNSAFE_SCOPE.sub("?", s) for s in error.required_scopes)


def bearer_challenge(error: AuthError, realm: str) -> str:
    """The ``WWW-Authenticate`` value for an error (RFC 6750 3)."""
    params = [f'realm="{header_safe(realm)}"']
    code = _RFC6750_CODE[error.kind]
    if code is not None:
        params.append(f'error="{code}"')
        params.append(f'error_description="{header_safe(error.description)}"')
        if error.kind == "insufficient_scope" and error.required_scopes:
            params.append(f'scope="{_scope_value(error)}"')
    return "Bearer " + ", ".join(params)


def _json(body: Any) -> bytes:
    # "replace": a lone surrogate in a description must not turn a 401 into a 500.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


BodyRenderer = Callable[[AuthError, int], Any]


@dataclass(frozen=True)
class TableProfile:
    """A profile as a status table and a JSON body renderer.

    A response whose status is in ``challenge_statuses`` (401 and 403 by default; HTTP requires
    a challenge on 401) carries the RFC 6750 ``WWW-Authenticate`` challenge;
    ``keys_unavailable`` carries ``Retry-After``.
    """

    name: str
    statuses: Mapping[ErrorKind, int]
    body: BodyRenderer
    realm: str = "api"
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    challenge_statuses: frozenset[int] = frozenset({401, 403})

    def __post_init__(self) -> None:
        missing = set(ERROR_KINDS) - set(self.statuses)
        if missing:
            raise ValueError(f"profile {self.name!r} has no status for {sorted(missing)}")

    def render(self, error: AuthError) -> ErrorResponse:
        status = self.statuses[error.kind]
        headers: list[tuple[str, str]] = [("content-type", "application/json")]
        if status in self.challenge_statuses:
            headers.append(("www-authenticate", bearer_challenge(error, self.realm)))
        if error.kind == "keys_unavailable":
            headers.append(("retry-after", str(error.retry_after or 1)))
        headers.extend((name.lower(), value) for name, value in self.extra_headers.items())
        headers.append(("cache-control", "no-store"))
        return ErrorResponse(status, tuple(headers), _json(self.body(error, status)))


def _statuses(default: int, **overrides: int) -> dict[ErrorKind, int]:
    return {kind: overrides.get(kind, default) for kind in ERROR_KINDS}


def _rfc6750_body(error: AuthError, status: int) -> dict[str, Any]:
    code = _RFC6750_CODE[error.kind]
    body: dict[str, Any] = {"error": code} if code else {}
    if error.kind == "keys_unavailable":
        body["error"] = "temporarily_unavailable"
    body["error_description"] = error.description
    if error.kind == "insufficient_scope":
        body["scope"] = " ".join(error.required_scopes)
    return body


def rfc6750(realm: str = "api") -> TableProfile:
    """RFC 6750: 401 (no error code when the token is missing), 400, 403 with ``scope``, 503.

    The 400 carries the challenge too: RFC 6750 3.1 defines ``invalid_request`` as a value of
    the challenge's ``error`` attribute.
    """
    return TableProfile(
        "rfc6750",
        _statuses(401, invalid_request=400, insufficient_scope=403, keys_unavailable=503),
        _rfc6750_body,
        realm,
        challenge_statuses=frozenset({400, 401, 403}),
    )


def _placepoint_body(error: AuthError, status: int) -> dict[str, Any]:
    return {"error": {"code": status, "message": error.description}}


def placepoint(realm: str = "api") -> TableProfile:
    """Placepoint: ``{"error": {"code": <status>, "message": ...}}``; their documents list only
    400, 401 and 500, so a missing scope is a 401 and unavailable keys a 500."""
    return TableProfile(
        "placepoint", _statuses(401, invalid_request=400, keys_unavailable=500), _placepoint_body, realm
    )


_AF_INVALID: Final = "Invalid or expired bearer token"
_AF_NO_PROJECT: Final = "Project not found for bearer token"


def _addressfinder_body(error: AuthError, status: int) -> dict[str, Any]:
    if error.kind == "keys_unavailable":
        return {
            "completions": [],
            "message": "Token verification is temporarily unavailable",
            "success": False,
        }
    if error.kind == "unknown_principal":
        return {"completions": [], "message": _AF_NO_PROJECT, "error_code": "1025", "success": False}
    message = _AF_INVALID
    if error.kind == "insufficient_scope":
        message = "Bearer token lacks the required scope: " + " ".join(error.required_scopes)
    return {"completions": [], "message": message, "error_code": "1024", "success": False}


def addressfinder(realm: str = "api") -> TableProfile:
    """Addressfinder: HTTP 400 with ``error_code`` 1024 (bad token) or 1025 (no project);
    a missing scope keeps 1024 with a message naming the scope; unavailable keys are a 503."""
    return TableProfile("addressfinder", _statuses(400, keys_unavailable=503), _addressfinder_body, realm)


def _placewise_body(error: AuthError, status: int) -> dict[str, Any]:
    if error.kind == "keys_unavailable":
        return {"error": "Service unavailable"}
    if error.kind == "invalid_request":
        return {"error": "Invalid request"}
    return {"error": "Member not authorized"}


def placewise(realm: str = "api") -> TableProfile:
    """Placewise: 460 ``{"error": "Member not authorized"}`` for every token failure; a
    malformed request is a 400 and unavailable keys a 503."""
    return TableProfile(
        "placewise", _statuses(460, invalid_request=400, keys_unavailable=503), _placewise_body, realm
    )


BUILTIN_PROFILES: Final[dict[str, Callable[[str], TableProfile]]] = {
    "rfc6750": rfc6750,
    "placepoint": placepoint,
    "addressfinder": addressfinder,
    "placewise": placewise,
}

_PLACEHOLDER: Final = re.compile(r"\{(kind|description|status|scope)\}")


def _fill(template: Any, error: AuthError, status: int) -> Any:
    values: dict[str, Any] = {
        "kind": error.kind,
        "description": error.description,
        "status": status,
        "scope": " ".join(error.required_scopes),
    }
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:  # "{status}" alone keeps its type (a number stays a number)
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
    if isinstance(template, Mapping):
        return {key: _fill(value, error, status) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(value, error, status) for value in template]
    return template


def profile_from_dict(spec: Mapping[str, Any]) -> TableProfile:
    """A profile defined as data::

        {"name": "mine", "status": 401, "statuses": {"insufficient_scope": 403},
         "body": {"code": "{kind}", "detail": "{description}", "http": "{status}"},
         "headers": {"x-auth": "denied"}}

    Placeholders ``{kind}``, ``{description}``, ``{status}`` and ``{scope}`` are filled in.
    """
    unknown = set(spec) - {"name", "status", "statuses", "body", "headers", "realm"}
    if unknown:
        raise ValueError(f"unknown profile keys: {sorted(unknown)}")
    overrides = dict(spec.get("statuses", {}))
    bad = set(overrides) - set(ERROR_KINDS)
    if bad:
        raise ValueError(f"unknown error kinds in profile: {sorted(bad)}")
    statuses = _statuses(int(spec.get("status", 401)), **{k: int(v) for k, v in overrides.items()})
    template = spec.get("body", {"error": "{kind}", "error_description": "{description}"})
    return TableProfile(
        str(spec.get("name", "custom")),
        statuses,
        lambda error, status: _fill(template, error, status),
        str(spec.get("realm", "api")),
        dict(spec.get("headers", {})),
    )


@dataclass(frozen=True)
class CallableProfile:
    """A profile from a function returning an :class:`ErrorResponse` or ``(status, headers,
    body)``, where a body that is not bytes or str is sent as JSON."""

    func: Callable[[AuthError], Any]

    def render(self, error: AuthError) -> ErrorResponse:
        result = self.func(error)
        if isinstance(result, ErrorResponse):
            return result
        status, headers, body = result
        pairs = [(str(k).lower(), str(v)) for k, v in dict(headers).items()]
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            body = _json(body)
            if not any(k == "content-type" for k, _ in pairs):
                pairs.insert(0, ("content-type", "application/json"))
        return ErrorResponse(int(status), tuple(pairs), body)


ProfileSpec = str | ErrorProfile | Mapping[str, Any] | Callable[[AuthError], Any]


def get_profile(spec: ProfileSpec, realm: str = "api") -> ErrorProfile:
    """Resolve a profile name, dict, callable or profile object into an :class:`ErrorProfile`."""
    if isinstance(spec, str):
        try:
            return BUILTIN_PROFILES[spec](realm)
        except KeyError:
            raise ValueError(
                f"unknown error profile {spec!r}; built in: {sorted(BUILTIN_PROFILES)}"
            ) from None
    if isinstance(spec, ErrorProfile):
        return spec
    if isinstance(spec, Mapping):
        return profile_from_dict({"realm": realm, **spec})
    if callable(spec):
        return CallableProfile(spec)
    raise TypeError("an error profile is a name, a dict, a callable or an object with render()")
