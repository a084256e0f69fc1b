"""Configuration: the reading toolkit (one-line errors with file and key path) and the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatekeeper.gateway.schema import ConfigError, Secret, Table, load


def _table(data: dict[str, object], file: str = "gk.toml") -> Table:
    return Table(data, file=file)


def _error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# -- the toolkit ---------------------------------------------------------------------------------


def test_error_names_file_key_path_and_problem_in_one_line() -> None:
    root = _table({"issuers": [{"leeway": 10}, {"leeway": "soon"}]})
    second = root.tables("issuers")[1]
    with pytest.raises(ConfigError) as excinfo:
        second.number("leeway")
    assert _error(excinfo) == "gk.toml: issuers[1].leeway: must be a number, not a string"


def test_message_with_newlines_is_folded() -> None:
    assert str(ConfigError("f.toml", "a.b", "one\ntwo")) == "f.toml: a.b: one two"


def test_unknown_key_suggests_the_close_match() -> None:
    table = _table({"server": {"listen": "127.0.0.1:1", "worekrs": 2}})
    server = table.table("server")
    server.string("listen")
    server.integer("workers", 1)
    with pytest.raises(ConfigError) as excinfo:
        server.finish()
    assert _error(excinfo) == "gk.toml: server.worekrs: unknown key (did you mean 'workers'?)"


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    table = _table({"zzz": 1})
    table.integer("workers", 1)
    with pytest.raises(ConfigError, match=r"zzz: unknown key; known keys here: workers"):
        table.finish()


def test_booleans_are_not_numbers_and_numbers_are_bounded() -> None:
    with pytest.raises(ConfigError, match="must be an integer, not a boolean"):
        _table({"n": True}).integer("n")
    with pytest.raises(ConfigError, match="must be at least 1, not 0"):
        _table({"n": 0}).integer("n", minimum=1)
    with pytest.raises(ConfigError, match="must be greater than 0"):
        _table({"n": 0}).number("n", positive=True)
    with pytest.raises(ConfigError, match="finite"):
        _table({"n": float("inf")}).number("n")
    assert _table({"n": 3}).number("n") == 3.0


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"gk.toml: issuer: missing \(required\)"):
        _table({}).string("issuer")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.com/keys", "is not a URL starting with http://, https://"),
        ("https:///keys", "has no host"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://exa mple.com/", "spaces"),
        ("example.com/keys", "is not a URL starting with"),
    ],
)
def test_bad_urls(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _table({"jwks_url": value}).url("jwks_url")


def test_enum_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'requird' is not one of .* \(did you mean 'required'\?\)"):
        _table({"access": "requird"}).enum("access", ("required", "optional", "exempt"))


def test_strings_accepts_space_separated_when_asked() -> None:
    assert _table({"s": "a b"}).strings("s", split=True) == ("a", "b")
    with pytest.raises(ConfigError, match="item 1 must be a non-empty string, not an integer"):
        _table({"s": ["a", 2]}).strings("s")


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GK_TEST_SECRET", "s3cret-from-env")
    table = _table({"a": "env:GK_TEST_SECRET"})
    secret = table.secret("a")
    assert secret == Secret("env:GK_TEST_SECRET", "s3cret-from-env")
    assert "s3cret" not in repr(secret)
    assert "s3cret" not in str(table.resolved)
    (tmp_path / "secret.txt").write_text("s3cret-from-file\n")
    file_table = Table({"b": "file:secret.txt"}, file=str(tmp_path / "gk.toml"))
    found = file_table.secret("b")
    assert found is not None
    assert found.value == "s3cret-from-file"


def test_inline_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as excinfo:
        _table({"hmac_secret": "hunter2-hunter2"}).secret("hmac_secret")
    text = _error(excinfo)
    assert "inline secret is refused" in text
    assert "hunter2" not in text


def test_secret_references_that_resolve_to_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GK_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="environment variable GK_TEST_UNSET is not set"):
        _table({"a": "env:GK_TEST_UNSET"}).secret("a")
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        _table({"a": "file:/nonexistent/secret"}).secret("a")


def test_load_reports_toml_syntax_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load(bad)
    assert _error(excinfo).startswith(f"{bad}: not valid TOML:")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "missing.toml")


def test_resolved_tree_has_defaults() -> None:
    root = _table({"issuers": [{"issuer": "https://a"}]})
    server = root.table("server")
    server.integer("workers", 1)
    root.tables("issuers")[0].string("issuer")
    assert root.resolved == {"server": {"workers": 1}, "issuers": [{"issuer": "https://a"}]}


# -- the gateway schema ----------------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from gatekeeper.gateway.config import GatewayConfig, load_config  # noqa: E402
from gatekeeper.responses import ErrorResponse  # noqa: E402

ISSUER = """
[[issuers]]
issuer = "https://issuer.example"
audience = "api"
jwks_url = "https://issuer.example/jwks"
"""


def _write(tmp_path: Path, text: str, name: str = "gatekeeper.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str) -> GatewayConfig:
    return load_config(_write(tmp_path, text))


def _mistake(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = _error(excinfo)
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: ") :]


def test_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, ISSUER)
    assert config.server.listen.port == 8080
    assert str(config.server.ops_listen) == "127.0.0.1:9180"
    assert config.server.workers == 1
    assert config.rules.default.access == "required"
    assert config.proxy is None
    assert config.source.header
    assert config.source.query_params == ()
    issuer = config.issuers[0]
    assert issuer.leeway == 30.0
    assert issuer.fetch.default_ttl == 300.0
    assert config.profile.render(_missing()).status == 401


def _missing() -> Any:
    from gatekeeper.errors import AuthError

    return AuthError("missing_token")


def test_every_issuer_and_fetch_field_is_configurable(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
[[issuers]]
issuer = "https://issuer.example"
audience = ["api", "other"]
jwks_url = "https://issuer.example/jwks"
algorithms = ["ES256"]
leeway = 5
required_claims = ["client_id"]
typ = "at+jwt"
max_token_bytes = 4096
scope_claims = ["scp"]
max_lifetime = 3600
[issuers.fetch]
default_ttl = 60
min_ttl = 10
max_ttl = 600
refresh_ahead = 5
unknown_kid_cooldown = 2
retry_interval = 1
stale_grace = 120
timeout = 3
max_bytes = 65536

[[issuers]]
issuer = "https://second.example"
discovery = true
verify_audience = false
""",
    )
    first, second = config.issuers
    assert first.audiences == {"api", "other"}
    assert first.allowed_algorithms == {"ES256"}
    assert (first.leeway, first.typ, first.max_token_bytes, first.max_lifetime) == (
        5.0,
        "at+jwt",
        4096,
        3600.0,
    )
    assert tuple(first.required_claims) == ("client_id",)
    assert tuple(first.scope_claims) == ("scp",)
    fetch = first.fetch
    assert (fetch.default_ttl, fetch.min_ttl, fetch.max_ttl, fetch.refresh_ahead) == (60, 10, 600, 5)
    assert (fetch.unknown_kid_cooldown, fetch.retry_interval, fetch.stale_grace) == (2, 1, 120)
    assert (fetch.timeout, fetch.max_bytes) == (3, 65536)
    assert second.discovery
    assert not second.verify_audience


def test_hmac_issuer_secret_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GK_HMAC", "x" * 32)
    config = _load(
        tmp_path,
        """
[[issuers]]
issuer = "https://hmac.example"
audience = "api"
hmac_secret = "env:GK_HMAC"
""",
    )
    assert config.issuers[0].allowed_algorithms == {"HS256"}
    assert config.resolved["issuers"][0]["hmac_secret"] == "env:GK_HMAC (redacted)"


def test_static_jwks_file_relative_to_the_config(tmp_path: Path, dev_issuer: Any) -> None:
    (tmp_path / "keys.json").write_text(json.dumps(dev_issuer.jwks()))
    config = _load(
        tmp_path,
        """
[[issuers]]
issuer = "https://issuer.example"
audience = "api"
jwks = "keys.json"
""",
    )
    assert config.issuers[0].key_store().keys is not None


def test_routes_rules_and_upstreams(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        ISSUER
        + """
[[routes]]
path = "/health"
access = "exempt"
[[routes]]
path = "/admin/**"
methods = "get post"
scopes = "admin write"
mode = "any"
upstream = "admin"
[[routes]]
path = "/public/**"
access = "optional"
[default]
scopes = ["read"]
[upstreams.main]
url = "http://127.0.0.1:9000"
[upstreams.admin]
url = "http://127.0.0.1:9001/base"
read_timeout = 5
forward_authorization = true
[proxy]
upstream = "main"
max_request_body = 1024
""",
    )
    rules = config.rules
    assert rules.match("GET", "/health").access == "exempt"
    admin = rules.match("POST", "/admin/users")
    assert tuple(admin.scopes) == ("admin", "write")
    assert admin.mode == "any"
    assert rules.match("DELETE", "/admin/users") is rules.default
    assert tuple(rules.default.scopes) == ("read",)
    assert rules.match("GET", "/public/x").access == "optional"
    assert config.proxy is not None
    assert config.proxy.upstream is not None
    assert config.proxy.upstream.url == "http://127.0.0.1:9000"
    assert config.proxy.max_request_body == 1024
    (route,) = config.proxy.routes
    assert route.path == "/admin/**"
    assert route.upstream.url == "http://127.0.0.1:9001/base"
    assert route.upstream.read_timeout == 5.0
    assert route.upstream.forward_authorization


def test_error_profile_builtin_and_custom(tmp_path: Path) -> None:
    af = _load(tmp_path, 'error_profile = "addressfinder"\n' + ISSUER)
    assert af.profile.render(_missing()).status == 400
    custom = _load(
        tmp_path,
        """
[error_profile]
name = "mine"
status = 418
body = { code = "{kind}", detail = "{description}" }
[error_profile.statuses]
insufficient_scope = 403
[error_profile.headers]
x-auth = "denied"
"""
        + ISSUER,
    )
    rendered: ErrorResponse = custom.profile.render(_missing())
    assert rendered.status == 418
    assert json.loads(rendered.body) == {"code": "missing_token", "detail": "A bearer token is required"}
    assert rendered.header("x-auth") == "denied"


def test_token_query_parameters(tmp_path: Path) -> None:
    config = _load(tmp_path, '[tokens]\nquery_params = ["bearer_token"]\naccess_token = true\n' + ISSUER)
    assert config.source.query_params == ("bearer_token", "access_token")


def test_identity_headers(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[identity]\nprefix = "X-User-"\n[identity.headers]\n"X-User-Id" = "sub"\n'
        '"X-User-Org" = ["org.id", "tenant"]\n' + ISSUER,
    )
    assert config.identity.names == ("X-User-Id", "X-User-Org")
    assert config.identity.prefix == "X-User-"


# Every class of mistake: one line naming the file, the key path and what is wrong.
MISTAKES = [
    pytest.param(
        ISSUER + "[server]\nworekrs = 2\n", "server.worekrs: unknown key (did you mean 'workers'?)", id="typo"
    ),
    pytest.param(ISSUER + "lisen = 1\n", "issuers[0].lisen: unknown key", id="typo-in-array-table"),
    pytest.param(
        ISSUER + 'leeway = "30"\n', "issuers[0].leeway: must be a number, not a string", id="wrong-type"
    ),
    pytest.param(
        ISSUER + "leeway = 900\n",
        "issuers[0].leeway: leeway must be between 0 and 300 seconds",
        id="bad-value",
    ),
    pytest.param(
        ISSUER.replace("https://issuer.example/jwks", "htps://issuer.example/jwks"),
        "issuers[0].jwks_url: 'htps://issuer.example/jwks' is not a URL starting with http://, https://",
        id="bad-url",
    ),
    pytest.param(
        ISSUER + ISSUER.replace("/jwks", "/other"),
        "issuers[1].issuer: 'https://issuer.example' is already configured by issuers[0]",
        id="duplicate-iss",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "/api/**"\n[[routes]]\npath = "/api/items"\nscopes = ["x"]\n',
        "routes[1].path: this route can never match: routes[0] ('/api/**') matches first",
        id="shadowed-rule",
    ),
    pytest.param(
        ISSUER
        + '[[routes]]\npath = "/a/**"\nmethods = ["GET", "POST"]\n'
        + '[[routes]]\npath = "/a/{id}"\nmethods = ["POST"]\n',
        "routes[1].path: this route can never match: routes[0] ('/a/**' GET/POST) matches first",
        id="shadowed-by-methods",
    ),
    pytest.param(
        ISSUER
        + '[[routes]]\npath = "/a/**"\nmethods = ["GET"]\n[[routes]]\npath = "/a/b"\nmethods = ["HEAD"]\n',
        "routes[1].path: this route can never match: routes[0] ('/a/**' GET) matches first",
        id="head-shadowed-by-get",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "/a"\nmethods = []\n',
        "routes[0].methods: an empty list matches no request",
        id="no-methods",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "/a"\nmethods = ["GTE"]\n',
        "routes[0].methods: unknown HTTP method 'GTE': the rule could never match it",
        id="unknown-method",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "a/b"\n',
        "routes[0].path: path pattern must start with '/'",
        id="bad-pattern",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "/a"\naccess = "requird"\n',
        "routes[0].access: 'requird' is not one of 'required', 'optional', 'exempt' "
        "(did you mean 'required'?)",
        id="bad-enum",
    ),
    pytest.param(
        ISSUER + '[[routes]]\npath = "/a"\nupstream = "nope"\n',
        "routes[0].upstream: no upstream named 'nope' in [upstreams]",
        id="unknown-upstream",
    ),
    pytest.param(
        'error_profile = "rfc675"\n' + ISSUER,
        "error_profile: 'rfc675' is not one of 'addressfinder', 'placepoint', 'placewise', 'rfc6750' "
        "(did you mean 'rfc6750'?)",
        id="unknown-profile",
    ),
    pytest.param(
        "[error_profile.statuses]\nexpired = 401\n" + ISSUER,
        "error_profile.statuses.expired: not an error kind",
        id="bad-kind",
    ),
    pytest.param(
        ISSUER.replace(
            'jwks_url = "https://issuer.example/jwks"', 'hmac_secret = "supersecretsupersecretsupersecret!"'
        ),
        "issuers[0].hmac_secret: an inline secret is refused",
        id="inline-secret",
    ),
    pytest.param("", "issuers: configure at least one [[issuers]] table", id="no-issuer"),
    pytest.param(
        ISSUER + "[issuers.fetch]\nmin_ttl = 900\n",
        "issuers[0].fetch.min_ttl: need 0 < min_ttl <= default_ttl <= max_ttl",
        id="fetch-policy",
    ),
    pytest.param(
        ISSUER + '[server]\nlisten = "127.0.0.1:8080"\nops_listen = "127.0.0.1:8080"\n',
        "server.ops_listen: the ops listener needs its own port",
        id="ops-same-port",
    ),
    pytest.param(
        ISSUER + '[server]\nlisten = "localhost"\n',
        "server.listen: 'localhost' is not host:port",
        id="bad-address",
    ),
    pytest.param(
        "issuers = 3\n", "issuers: must be an array of tables ([[issuers]]), not an integer", id="not-a-table"
    ),
    pytest.param(ISSUER + "[server\n", "not valid TOML", id="toml-syntax"),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_each_mistake_is_one_line_with_key_path(tmp_path: Path, text: str, expected: str) -> None:
    message = _mistake(tmp_path, text)
    assert expected in message


def test_check_config_prints_resolved_config_with_secrets_redacted(tmp_path: Path) -> None:
    secret = "a-very-secret-hmac-key-of-32-bytes!!"
    (tmp_path / "hmac.txt").write_text(secret + "\n")
    path = _write(
        tmp_path,
        """
[[issuers]]
issuer = "https://hmac.example"
audience = "api"
hmac_secret = "file:hmac.txt"
""",
    )
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert resolved["issuers"][0]["hmac_secret"] == "file:hmac.txt (redacted)"
    assert resolved["issuers"][0]["leeway"] == 30.0  # a default, filled in
    assert resolved["server"]["ops_listen"] == "127.0.0.1:9180"
    assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_mistake_exits_2_with_one_line_and_no_traceback(tmp_path: Path, command: str) -> None:
    path = _write(tmp_path, ISSUER + 'leeway = "soon"\n')
    args = [str(path)] if command == "check-config" else ["--config", str(path)]
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"gatekeeper {command}: {path}: issuers[0].leeway: must be a number, not a string\n"


UPSTREAM = '[upstreams.app]\nurl = "http://127.0.0.1:9000"\n[proxy]\nupstream = "app"\n'


def test_forward_auth_is_on_unless_only_a_proxy_is_configured(tmp_path: Path) -> None:
    alone = _load(tmp_path, ISSUER)
    assert alone.forward_auth is not None
    assert alone.forward_auth.path == "/auth"
    assert _load(tmp_path, ISSUER + UPSTREAM).forward_auth is None
    both = _load(tmp_path, ISSUER + UPSTREAM + '[forward_auth]\npath = "/check"\nproxy = "traefik"\n')
    assert both.forward_auth is not None
    assert (both.forward_auth.path, both.forward_auth.proxy) == ("/check", "traefik")
    assert _load(tmp_path, ISSUER + "[forward_auth]\nenabled = false\n").forward_auth is None


def test_forward_auth_mistakes(tmp_path: Path) -> None:
    assert "forward_auth.proxy: 'haproxy' is not one of" in _mistake(
        tmp_path, ISSUER + '[forward_auth]\nproxy = "haproxy"\n'
    )
    assert "forward_auth.path: forward-auth path must be a normal absolute path" in _mistake(
        tmp_path, ISSUER + '[forward_auth]\npath = "/a/../b"\n'
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('path = "/a/**"\nmethods = ["GET"]', 'path = "/a/b"\nmethods = ["POST"]'),  # other method
        ('path = "/a/**"\nmethods = ["GET"]', 'path = "/a/b"'),  # any method: POST still reaches it
        ('path = "/a/b"', 'path = "/a/**"'),  # narrower first
        ('path = "/a/*/c"', 'path = "/a/{id}/d"'),  # different shapes
        ('path = "/ab/**"', 'path = "/a/{id}"'),  # a prefix of the string, not of the path
    ],
)
def test_routes_that_can_still_match_are_accepted(tmp_path: Path, first: str, second: str) -> None:
    config = _load(tmp_path, ISSUER + f"[[routes]]\n{first}\n[[routes]]\n{second}\n")
    assert len(config.rules.rules) == 2


def test_false_turns_an_optional_setting_off(tmp_path: Path) -> None:
    config = _load(tmp_path, ISSUER + UPSTREAM + "max_request_body = false\n")
    assert config.proxy is not None
    assert config.proxy.max_request_body is None
    assert config.resolved["proxy"]["max_request_body"] is None
    assert "proxy.max_request_body: must be an integer, not a boolean" in _mistake(
        tmp_path, ISSUER + UPSTREAM + "max_request_body = true\n"
    )


@pytest.mark.parametrize("name", ["max_websockets", "max_in_flight", "pool_size"])
def test_proxy_limits_below_one_name_their_key(tmp_path: Path, name: str) -> None:
    assert f"proxy.{name}: {name} must be at least 1" in _mistake(
        tmp_path, ISSUER + UPSTREAM + f"{name} = 0\n"
    )
    config = _load(tmp_path, ISSUER + UPSTREAM + f"{name} = 3\n")
    assert config.proxy is not None
    assert getattr(config.proxy, name) == 3
