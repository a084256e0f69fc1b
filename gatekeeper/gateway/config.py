"""The gateway's configuration: one TOML file -> typed settings, every mistake caught up front.

:func:`load_config` reads the file with :mod:`tomllib` and builds the core's own objects
(:class:`~gatekeeper.policy.Issuer`, :class:`~gatekeeper.rules.RuleSet`, an error profile, a
:class:`~gatekeeper.bearer.BearerSource`) and the front doors' settings dataclasses, so the
gateway runs on exactly what the library can express. A mistake raises one
:class:`~gatekeeper.gateway.schema.ConfigError` naming the file, the key path and the problem.

Tables whose keys mirror a settings dataclass (``[issuers.fetch]`` -> ``FetchPolicy``,
``[forward_auth]``, ``[upstreams.NAME]``, ``[proxy]``) are read field by field from the
dataclass's own type hints and defaults (:func:`read_fields`), so a field added to one of them is
configurable without touching this module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from ..bearer import BearerSource
from ..errors import ERROR_KINDS
from ..keystore import FetchPolicy
from ..policy import Issuer
from ..responses import BUILTIN_PROFILES, ErrorProfile, get_profile, profile_from_dict
from ..rules import Rule, RuleSet
from .forward_auth import ForwardAuthSettings
from .identity import IdentityHeaders
from .proxy import ProxySettings, UpstreamRoute, UpstreamSettings
from .revocation_config import RevocationSettings
from .revocation_config import read as read_revocation
from .schema import REQUIRED, ConfigError, Secret, Table, default_of, load
from .upstream_tls import TLS_FILE_KEYS, TLSFileError, UpstreamTLS

#: Methods a rule may name; anything else is a typo that would make the rule never match.
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
DEFAULT_LISTEN: Final = "127.0.0.1:8080"
DEFAULT_OPS_LISTEN: Final = "127.0.0.1:9180"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address: ``host:port`` (``[::1]:8080`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listeners and processes: ``workers`` processes each with their own caches;
    ``shutdown_timeout`` bounds how long SIGTERM waits for in-flight requests; ``loop`` and
    ``http`` choose uvicorn's implementations (``auto``: uvloop and httptools when installed)."""

    listen: Address = Address("127.0.0.1", 8080)
    ops_listen: Address = Address("127.0.0.1", 9180)
    workers: int = 1
    shutdown_timeout: float = 30.0
    cache_size: int = 10_000
    rejection_ttl: float = 30.0
    loop: str = "auto"
    http: str = "auto"


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``access_log``: ``stdout``, ``stderr``, a file path, or ``off``; ``level`` for the
    ``gatekeeper`` loggers."""

    access_log: str = "stdout"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``enabled``: serve ``/metrics`` on the ops listener and count."""

    enabled: bool = True


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``gatekeeper serve`` runs on, resolved and checked."""

    file: str
    issuers: tuple[Issuer, ...]
    rules: RuleSet
    source: BearerSource
    profile: ErrorProfile
    identity: IdentityHeaders
    server: ServerSettings = ServerSettings()
    proxy: ProxySettings | None = None
    forward_auth: ForwardAuthSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    revocation: RevocationSettings | None = None  # when a [revocation] table is given
    #: What was read, defaults filled in and secrets shown only as their references.
    resolved: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


# -- generic dataclass reading ------------------------------------------------------------------


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def read_field(table: Table, key: str, hint: Any, default: Any) -> Any:
    """Read ``key`` as the type ``hint`` says (bool, int, float, str, Literal, tuple[str, ...],
    and ``X | None``, where ``false`` means None); a ``url`` or ``*_url`` string must be an http(s)
    URL."""
    inner, optional = _unwrap_optional(hint)
    if optional and inner is not bool and table.data.get(key) is False:
        # TOML has no null: ``false`` turns an optional setting off (``max_request_body = false``).
        table.boolean(key)
        table.resolved[key] = None
        return None
    if inner is bool:
        return table.boolean(key, default)
    if inner is int:
        return table.integer(key, default)
    if inner is float:
        return table.number(key, default)
    if inner is str:
        if key == "url" or key.endswith("_url"):
            return table.url(key, default)
        return table.string(key, default)
    if typing.get_origin(inner) is Literal:
        return table.enum(key, [str(a) for a in typing.get_args(inner)], default)
    if typing.get_origin(inner) is tuple and typing.get_args(inner)[:1] == (str,):
        return table.strings(key, default)
    raise TypeError(f"cannot read {key!r} of type {hint!r} from TOML")  # a bug here, not the user's


def read_fields(table: Table, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``table``: every field not in ``skip`` (and
    not private), typed by the dataclass's hints, defaulting to its defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name in skip or item.name.startswith("_") or not item.init:
            continue
        kwargs[item.name] = read_field(table, item.name, hints[item.name], default_of(cls, item.name))
    return kwargs


# -- sections -------------------------------------------------------------------------------------


def _address(table: Table, key: str, default: str) -> Address:
    text = table.string(key, default)
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise table.error(key, f"{text!r} is not host:port (e.g. {default!r})")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise table.error(key, f"port {port} is out of range 1-65535")
    return Address(host, port)


def _server(root: Table) -> ServerSettings:
    table = root.table("server")
    listen = _address(table, "listen", DEFAULT_LISTEN)
    ops = _address(table, "ops_listen", DEFAULT_OPS_LISTEN)
    if ops.port == listen.port and (ops.host == listen.host or "0.0.0.0" in (ops.host, listen.host)):  # noqa: S104
        raise table.error(
            "ops_listen", f"the ops listener needs its own port, not the main listener's {listen}"
        )
    settings = ServerSettings(
        listen,
        ops,
        table.integer("workers", 1, minimum=1, maximum=256),
        table.number("shutdown_timeout", 30.0, minimum=0.0),
        table.integer("cache_size", 10_000, minimum=0),
        table.number("rejection_ttl", 30.0, positive=True),
        table.enum("loop", ("auto", "asyncio", "uvloop"), "auto"),
        table.enum("http", ("auto", "h11", "httptools"), "auto"),
    )
    table.finish()
    return settings


def _source(root: Table) -> BearerSource:
    table = root.table("tokens")
    header = table.boolean("header", True)
    params = table.strings("query_params", (), split=True)
    access_token = table.boolean("access_token", False)
    table.finish()
    if not header and not params and not access_token:
        raise table.error(None, "no token source: enable header, query_params or access_token")
    return BearerSource.of(params, header=header, access_token=access_token)


_PROFILE_KEYS: Final = ("name", "status", "statuses", "body", "headers", "realm")


def _profile(root: Table) -> ErrorProfile:
    names = sorted(BUILTIN_PROFILES)
    if not root.has("error_profile") or isinstance(root.data["error_profile"], str):
        name = root.enum("error_profile", names, "rfc6750")
        return get_profile(name)
    table = root.table("error_profile")
    if table.has("builtin"):
        name = table.enum("builtin", names)
        realm = table.string("realm", "api")
        table.finish()
        return get_profile(name, realm)
    spec: dict[str, Any] = {"name": table.string("name", "custom")}
    spec["status"] = table.integer("status", 401, minimum=400, maximum=599)
    statuses = table.table("statuses")
    spec["statuses"] = {kind: statuses.integer(kind, minimum=400, maximum=599) for kind in statuses.data}
    for kind in spec["statuses"]:
        if kind not in ERROR_KINDS:
            raise statuses.error(kind, f"not an error kind; kinds: {', '.join(ERROR_KINDS)}")
    if table.has("body"):
        spec["body"] = table.value("body")
    headers = table.table("headers")
    spec["headers"] = {name: headers.string(name, empty=True) for name in headers.data}
    spec["realm"] = table.string("realm", "api")
    table.finish()
    profile = table.build(None, lambda: profile_from_dict(spec))
    return profile


def _fetch_policy(table: Table) -> FetchPolicy:
    sub = table.table("fetch")
    kwargs = read_fields(sub, FetchPolicy)
    sub.finish()
    policy: FetchPolicy = sub.build(None, lambda: FetchPolicy(**kwargs), fields=kwargs)
    return policy


def _issuer(table: Table, base: Path) -> Issuer:
    kwargs: dict[str, Any] = {"issuer": table.url("issuer")}
    audience = table.value("audience", None)
    if audience is not None:
        audience = table.strings("audience") if isinstance(audience, list) else table.string("audience")
    kwargs["audience"] = audience
    kwargs["jwks_url"] = table.url("jwks_url", None)
    kwargs["discovery"] = table.boolean("discovery", False)
    jwks = table.value("jwks", None)
    if isinstance(jwks, str):
        path = Path(jwks) if Path(jwks).is_absolute() else base / jwks
        if not path.is_file():
            raise table.error("jwks", f"no JWKS file at {path}")
        jwks = path
    elif jwks is not None and not isinstance(jwks, dict):
        raise table.error("jwks", "must be a file path or an inline JWKS table")
    kwargs["jwks"] = jwks
    public_key = table.string("public_key", None)
    if public_key is not None and public_key.startswith("file:"):
        ref = Path(public_key[5:])
        try:
            public_key = (ref if ref.is_absolute() else base / ref).read_text(encoding="utf-8")
        except OSError as exc:
            raise table.error("public_key", f"cannot read {ref}: {exc.strerror or exc}") from None
    kwargs["public_key"] = public_key
    secret: Secret | None = table.secret("hmac_secret")
    kwargs["hmac_secret"] = secret.value if secret is not None else None
    hints = typing.get_type_hints(Issuer)
    for name in ("leeway", "max_token_bytes", "verify_audience", "max_lifetime", "typ"):
        if name in hints:
            kwargs[name] = read_field(table, name, hints[name], default_of(Issuer, name))
    for name in ("algorithms", "required_claims", "scope_claims"):
        value = table.strings(name, default_of(Issuer, name))
        kwargs[name] = None if value is None else tuple(value)
    kwargs["fetch"] = _fetch_policy(table)
    table.finish()
    issuer: Issuer = table.build(None, lambda: Issuer(**kwargs), fields=kwargs)
    if not issuer.jwks_url and not issuer.discovery:
        table.build(None, issuer.key_store)  # a static key source that cannot load fails now
    return issuer


def _issuers(root: Table, base: Path) -> tuple[Issuer, ...]:
    tables = root.tables("issuers")
    if not tables:
        raise root.error("issuers", "configure at least one [[issuers]] table")
    issuers: list[Issuer] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        issuer = _issuer(table, base)
        if issuer.issuer in seen:
            raise table.error(
                "issuer", f"{issuer.issuer!r} is already configured by issuers[{seen[issuer.issuer]}]"
            )
        seen[issuer.issuer] = index
        issuers.append(issuer)
    return tuple(issuers)


def _rule(table: Table) -> tuple[Rule, str | None]:
    path = table.string("path")
    methods = table.strings("methods", None, split=True)
    if methods is not None:
        if not methods:
            raise table.error("methods", "an empty list matches no request (leave it out for every method)")
        methods = tuple(m.upper() for m in methods)
        unknown = sorted(set(methods) - HTTP_METHODS)
        if unknown:
            raise table.error("methods", f"unknown HTTP method {unknown[0]!r}: the rule could never match it")
    access = table.enum("access", ("required", "optional", "exempt"), "required")
    scopes = table.strings("scopes", (), split=True)
    mode = table.enum("mode", ("all", "any"), "all")
    upstream = table.string("upstream", None)
    table.finish()
    if access == "exempt" and scopes:
        raise table.error("scopes", "an exempt route is never checked: its scopes would be ignored")
    rule: Rule = table.build(
        "path", lambda: Rule(path, scopes=scopes, mode=mode, methods=methods, access=access)
    )
    return rule, upstream


def _methods(names: Sequence[str]) -> set[str]:
    # As Rule matches them: a rule for GET also covers HEAD.
    found = {name.upper() for name in names}
    return found | {"HEAD"} if "GET" in found else found


def covers(earlier: Rule, later: Rule) -> bool:
    """Whether ``earlier`` matches every request ``later`` could match (so ``later``, listed
    after it, never applies). Conservative: True only when it is certain."""
    if earlier.methods is not None and (
        later.methods is None or not _methods(later.methods) <= _methods(earlier.methods)
    ):
        return False
    if earlier.path == later.path or earlier.path == "/**":
        return True
    if "{" not in later.path and "*" not in later.path:
        return earlier.matches(next(iter(later.methods or ("GET",))).upper(), later.path)
    if earlier.path.endswith("/**"):
        prefix = earlier.path[:-3]
        literal = "{" not in prefix and "*" not in prefix
        return literal and (later.path == prefix or later.path.startswith(prefix + "/"))
    return False


def _routes(root: Table) -> tuple[list[Rule], list[tuple[int, str]]]:
    rules: list[Rule] = []
    upstreams: list[tuple[int, str]] = []
    for index, table in enumerate(root.tables("routes")):
        rule, upstream = _rule(table)
        for earlier_index, earlier in enumerate(rules):
            if covers(earlier, rule):
                raise table.error(
                    "path",
                    f"this route can never match: routes[{earlier_index}] ({earlier.path!r}"
                    f"{'' if earlier.methods is None else ' ' + '/'.join(earlier.methods)}) matches first",
                )
        rules.append(rule)
        if upstream is not None:
            upstreams.append((index, upstream))
    return rules, upstreams


def _default_rule(root: Table) -> Rule:
    table = root.table("default")
    access = table.enum("access", ("required", "optional", "exempt"), "required")
    scopes = table.strings("scopes", (), split=True)
    mode = table.enum("mode", ("all", "any"), "all")
    table.finish()
    return Rule("/**", scopes=scopes, mode=mode, access=access)


def _identity(root: Table) -> IdentityHeaders:
    table = root.table("identity")
    prefix = table.string("prefix", "X-Auth-", empty=True)
    if not table.has("headers"):
        table.resolved["headers"] = {spec.name: list(spec.claims) for spec in IdentityHeaders().headers}
        table.finish()
        return IdentityHeaders(prefix=prefix or None)
    headers = table.table("headers")
    mapping: dict[str, str | tuple[str, ...]] = {}
    for name, value in headers.data.items():
        mapping[name] = headers.strings(name) if isinstance(value, list) else headers.string(name)
    headers.finish()
    table.finish()
    identity: IdentityHeaders = table.build(
        "headers", lambda: IdentityHeaders.from_mapping(mapping, prefix or None)
    )
    return identity


def _upstreams(root: Table) -> dict[str, UpstreamSettings]:
    found: dict[str, UpstreamSettings] = {}
    for name, table in root.named_tables("upstreams").items():
        kwargs = read_fields(table, UpstreamSettings, skip=("tls",))
        kwargs["tls"] = _upstream_tls(table, kwargs["url"])
        table.finish()
        found[name] = table.build(None, lambda kwargs=kwargs: UpstreamSettings(**kwargs))  # type: ignore[misc]
    return found


def _upstream_tls(table: Table, url: str) -> UpstreamTLS | None:
    """An upstream's ``ca_file``, ``client_cert`` and ``client_key`` (paths relative to the
    config file), read and checked now; None when none is set."""
    base = Path(table.file).resolve().parent
    files: dict[str, str] = {}
    for key in TLS_FILE_KEYS:
        value = table.string(key, None)
        if value is not None:
            files[key] = str(base / value)  # an absolute value stays as it is
    if not files:
        return None
    if not url.startswith("https:"):
        raise table.error(next(iter(files)), "TLS files are for an https:// upstream")
    try:
        return UpstreamTLS(**files)
    except TLSFileError as exc:
        raise table.error(exc.key, str(exc)) from None


def _proxy(
    root: Table, upstreams: dict[str, UpstreamSettings], routed: list[tuple[int, str]], rules: list[Rule]
) -> ProxySettings | None:
    table = root.table("proxy")
    default_name = table.string("upstream", None)
    kwargs = read_fields(table, ProxySettings, skip=("upstream", "routes"))
    table.finish()
    if default_name is not None and default_name not in upstreams:
        raise table.error("upstream", f"no upstream named {default_name!r} in [upstreams]")
    routes = []
    for index, name in routed:
        if name not in upstreams:
            raise ConfigError(
                root.file, f"routes[{index}].upstream", f"no upstream named {name!r} in [upstreams]"
            )
        routes.append(UpstreamRoute(rules[index].path, upstreams[name]))
    if default_name is None and not routes:
        if table.data:
            raise table.error(
                None, "proxy settings without an upstream: set upstream = NAME or a route's upstream"
            )
        return None
    default = upstreams[default_name] if default_name is not None else None
    settings: ProxySettings = table.build(
        None, lambda: ProxySettings(upstream=default, routes=tuple(routes), **kwargs), fields=kwargs
    )
    return settings


def _forward_auth(root: Table, proxied: bool) -> ForwardAuthSettings | None:
    """The decision endpoint's settings, or None when it is off: it is on when the file has a
    ``[forward_auth]`` table, or has no upstream (then it is all the gateway does). ``enabled =
    false`` turns it off explicitly."""
    given = root.has("forward_auth")
    table = root.table("forward_auth")
    enabled = table.boolean("enabled", given or not proxied)
    kwargs = read_fields(table, ForwardAuthSettings)
    table.finish()
    settings: ForwardAuthSettings = table.build(None, lambda: ForwardAuthSettings(**kwargs), fields=kwargs)
    return settings if enabled else None


def _revocation(root: Table) -> RevocationSettings | None:
    if not root.has("revocation"):
        root.value("revocation", None)
        return None
    return read_revocation(root.table("revocation"))


def _metrics(root: Table) -> MetricsSettings:
    table = root.table("metrics")
    settings = MetricsSettings(table.boolean("enabled", True))
    table.finish()
    return settings


def _logging(root: Table) -> LoggingSettings:
    table = root.table("logging")
    settings = LoggingSettings(table.string("access_log", "stdout"), table.enum("level", LOG_LEVELS, "info"))
    table.finish()
    return settings


def read_config(root: Table) -> GatewayConfig:
    """Build the configuration from a root :class:`Table` (see :func:`load_config`)."""
    base = Path(root.file).resolve().parent
    server = _server(root)
    source = _source(root)
    profile = _profile(root)
    issuers = _issuers(root, base)
    rules, routed = _routes(root)
    default = _default_rule(root)
    identity = _identity(root)
    upstreams = _upstreams(root)
    proxy = _proxy(root, upstreams, routed, rules)
    forward_auth = _forward_auth(root, proxy is not None)
    metrics = _metrics(root)
    logging_settings = _logging(root)
    revocation = _revocation(root)
    root.finish()
    return GatewayConfig(
        file=root.file,
        issuers=issuers,
        rules=RuleSet(tuple(rules), default),
        source=source,
        profile=profile,
        identity=identity,
        server=server,
        proxy=proxy,
        forward_auth=forward_auth,
        metrics=metrics,
        logging=logging_settings,
        revocation=revocation,
        resolved=root.resolved,
    )


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check the TOML file at ``path``; raise :class:`ConfigError` on any mistake."""
    return read_config(load(path))


__all__ = [
    "REQUIRED",
    "Address",
    "ConfigError",
    "GatewayConfig",
    "LoggingSettings",
    "MetricsSettings",
    "ServerSettings",
    "covers",
    "load_config",
    "read_config",
    "read_field",
    "read_fields",
]
