"""Real nginx and Caddy for gateway tests: each started from the shipped example configuration
(examples/gateway/nginx.conf, Caddyfile) with its placeholders filled in, on a free loopback
port, from a temporary directory, and stopped after the test.

A test that needs one calls :func:`require` first: without the binary it is skipped with a
reason saying how to install it (``scripts/test.sh`` installs both when run as root).

The scenarios both proxies must pass (``check_*`` at the end) live here once; test_nginx.py and
test_caddy.py run each against their proxy and add what only that proxy does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from conftest import Clock
from upstream import ServerThread, Upstream, free_port

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.errors import AuthError, ErrorKind
from gatekeeper.gateway.forward_auth import ForwardAuth, ForwardAuthSettings
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.issuer import DevIssuer
from gatekeeper.policy import Issuer
from gatekeeper.responses import ErrorProfile, ErrorResponse, get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "gateway"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def find(name: str) -> str | None:
    """The binary's path (``/usr/sbin`` is not on every user's PATH)."""
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def require(name: str) -> str:
    """The binary, or skip the test saying how to install it."""
    path = find(name)
    if path is None:
        pytest.skip(f"{name} is not installed: apt-get install {name} (scripts/test.sh does it as root)")
    return path


def wait_for_port(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise RuntimeError(f"{what} exited with {process.returncode}: {err!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def fill(template: str, values: dict[str, str]) -> str:
    """envsubst with a list of names: only ``${NAME}`` for the given names is replaced (nginx's
    own ``$variables`` stay); every ``${...}`` left over is an error."""
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"unfilled placeholders: {sorted(set(left))}")
    return text


class _Process:
    process: subprocess.Popen[bytes]
    port: int
    directory: tempfile.TemporaryDirectory[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.directory.cleanup()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Nginx(_Process):
    """``examples/gateway/nginx.conf`` in front of ``upstream`` asking ``gatekeeper``
    (``host:port`` each), listening on a free loopback port."""

    def __init__(self, gatekeeper: str, upstream: str, conf: Path = EXAMPLES / "nginx.conf") -> None:
        binary = require("nginx")
        self.port = free_port()
        self.directory = tempfile.TemporaryDirectory(prefix="gk-nginx-")
        # nginx's workers run as nobody when the master is root: let them read and write here.
        os.chmod(self.directory.name, 0o755)
        values = {
            "NGINX_LISTEN": f"127.0.0.1:{self.port}",
            "GATEKEEPER_ADDR": gatekeeper,
            "UPSTREAM_ADDR": upstream,
        }
        path = Path(self.directory.name) / "nginx.conf"
        path.write_text(fill(conf.read_text(), values))
        self.process = subprocess.Popen(
            [binary, "-p", self.directory.name, "-c", str(path), "-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, self.process, "nginx")


class Caddy(_Process):
    """``examples/gateway/Caddyfile`` in front of ``upstream`` asking ``gatekeeper``, on a free
    loopback port; Caddy's state (HOME, XDG dirs) lives in the temp directory."""

    def __init__(self, gatekeeper: str, upstream: str, conf: Path = EXAMPLES / "Caddyfile") -> None:
        binary = require("caddy")
        self.port = free_port()
        self.directory = tempfile.TemporaryDirectory(prefix="gk-caddy-")
        home = self.directory.name
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "XDG_CONFIG_HOME": home,
            "XDG_DATA_HOME": home,
            "CADDY_PORT": str(self.port),
            "CADDY_BIND": "127.0.0.1",
            "GATEKEEPER_ADDR": gatekeeper,
            "UPSTREAM_ADDR": upstream,
        }
        self.process = subprocess.Popen(
            [binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=home,
        )
        wait_for_port(self.port, self.process, "caddy")


# -- a raw HTTP/1.1 client: sends the request target byte for byte ------------------------------


class RawResponse:
    """A parsed response: ``status``, ``headers`` (lower-case names, in order), ``body``."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.headers!r}, {self.body[:300]!r})"


def raw_request(
    port: int,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
    body: bytes = b"",
    keep_alive: bool = False,
) -> RawResponse:
    """One request with ``target`` exactly as given (no client-side normalisation), over a
    fresh connection. With ``keep_alive`` the request does not ask for the connection to be
    closed (as browsers do) and the response is read by its framing."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if not keep_alive:
        lines.append(b"Connection: close")
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers or ()]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while (chunk := sock.recv(65536)) and not _complete(data + chunk, method):
            data += chunk
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    if any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in parsed):
        body = _dechunk(body)
    return RawResponse(int(status_line.split(" ")[1]), parsed, body)


def token_request(
    port: int,
    target: str | bytes,
    token: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> RawResponse:
    """:func:`raw_request` with ``Authorization: Bearer <token>`` after ``headers`` (when given)."""
    sent = list(headers or ())
    if token is not None:
        sent.append(("Authorization", f"Bearer {token}"))
    return raw_request(port, target, sent, **kw)


def _complete(data: bytes, method: str) -> bool:
    """Whether ``data`` holds a whole response (by Content-Length or the last chunk)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lowered = head.lower()
    if method == "HEAD" or b" 204 " in head.split(b"\r\n", 1)[0] or b" 304 " in head.split(b"\r\n", 1)[0]:
        return True
    for line in lowered.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return len(body) >= int(value.strip())
    if b"transfer-encoding: chunked" in lowered:
        return body.endswith(b"0\r\n\r\n")
    return False  # read until the server closes


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


# -- the forward-auth stack: upstream, gatekeeper, proxy ------------------------------------------


RULES = RuleSet.build(
    [Rule("/admin/**", scopes="admin"), Rule("/open/**", access="optional")],
    exempt=["/public/**"],
)
DOWN = "https://down.example"


class Stack:
    """The upstream, gatekeeper's ForwardAuth (in-process uvicorn) and a proxy in front."""

    def __init__(
        self,
        verifier: Verifier,
        profile: str,
        proxy_kind: str,
        proxy_cls: Any,
        query_param: str | None = "bearer_token",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.profile = get_profile(profile)
        self.records: list[RequestRecord] = []

        def principal(claims: Any) -> Any:
            return None if claims.subject == "nobody" else claims.subject

        gate = Gate(verifier, rules=RULES, source=BearerSource.of(query_param), principal=principal)
        app = ForwardAuth(
            gate,
            self.profile,
            ForwardAuthSettings(proxy=proxy_kind),  # type: ignore[arg-type]
            IdentityHeaders(),
            self.records.append,
            clock=clock or verifier._clock,
        )
        self.upstream = Upstream()
        self.upstream.start()
        self.gatekeeper = ServerThread(app).start()
        try:
            self.proxy = proxy_cls(f"127.0.0.1:{self.gatekeeper.port}", f"127.0.0.1:{self.upstream.port}")
        except BaseException:
            self.close_servers()
            raise

    def get(self, target: str | bytes, token: str | None = None, **kw: Any) -> RawResponse:
        return token_request(self.proxy.port, target, token, **kw)

    def close_servers(self) -> None:
        self.gatekeeper.stop()
        self.upstream.stop()

    def close(self) -> None:
        self.proxy.stop()
        self.close_servers()


MakeStack = Callable[..., Stack]


def verifier_for(dev_issuer: DevIssuer, clock: Clock) -> Verifier:
    """The dev issuer's keys in memory, plus an issuer whose JWKS URL refuses connections
    (its tokens get ``keys_unavailable``)."""
    return Verifier(
        issuers=[
            Issuer(dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api"),
            Issuer(DOWN, jwks_url=f"http://127.0.0.1:{free_port()}/jwks", audience="api"),
        ],
        clock=clock,
    )


def seen_headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def request_for(kind: ErrorKind, dev_issuer: DevIssuer, clock: Clock) -> tuple[str, str | None]:
    down = DevIssuer(DOWN, audience="api", algorithms=("ES256",), clock=clock)
    return {
        "missing_token": ("/items", None),
        "invalid_request": (f"/items?bearer_token={dev_issuer.mint()}", dev_issuer.mint()),
        "invalid_token": ("/items", "not-a.valid.token"),
        "expired_token": ("/items", dev_issuer.mint(expires_in=-3600)),
        "insufficient_scope": ("/admin/x", dev_issuer.mint(scope="read")),
        "revoked_token": ("/items", dev_issuer.mint(subject="revoked-user")),
        "unknown_principal": ("/items", dev_issuer.mint(subject="nobody")),
        "keys_unavailable": ("/items", down.mint()),
    }[kind]


#: Every kind there is: request_for must know a request for each (a new kind fails until it does).
KINDS: list[ErrorKind] = list(get_args(ErrorKind))


def expected(profile: ErrorProfile, kind: ErrorKind, response: RawResponse) -> ErrorResponse:
    """The profile's own rendering of this kind (with the description the response carries,
    which the rfc6750 body shows and the others do not)."""
    body = response.json()
    description = body.get("error_description") if isinstance(body, dict) else None
    scopes = ("admin",) if kind == "insufficient_scope" else ()
    retry = 1 if kind == "keys_unavailable" else None
    return profile.render(AuthError(kind, description, required_scopes=scopes, retry_after=retry))


# -- path confusion shapes ----------------------------------------------------------------------

REFUSED = [
    "/admin%2Fx",
    "/public/..%2Fadmin",
    "/public/..%2fadmin/x",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/..%5Cadmin",
    "/public\\..\\admin",
    "/admin%00",
    "/public/x%00/../../admin",
    "/admin;x",
    "/public;/../admin",
    "/public/%252e%252e/admin",
    "/../admin",
    "/public/../../admin",
    "/admin%ff",
]
LANDS_ON_ADMIN = [
    ("/admin/../admin/x", "/admin/x"),
    ("//admin/x", "/admin/x"),
    ("/%61dmin/x", "/admin/x"),
    ("/admin/./x", "/admin/x"),
    ("/public/../admin/x", "/admin/x"),
    ("/adm%69n//x/", "/admin/x/"),
]


# -- `gatekeeper serve` with a shipped config behind a real proxy ----------------------------------

_TOML_VALUE = r'("[^"]*"|\[[^\]]*\]|[0-9]+)'


def shipped_config(path: Path, **values: str) -> str:
    """A shipped example toml with some of its ``key = value`` lines replaced (each key must
    occur exactly once), braces escaped for :class:`GatewayProcess`'s ``str.format``, and
    ``listen``/``ops_listen``/``access_log`` pointed at its ``{listen}``/``{ops}``/``{access_log}``.
    ``values`` are TOML literals (``'"https://..."'``)."""
    text = path.read_text().replace("{", "{{").replace("}", "}}")
    values = {"listen": '"{listen}"', "ops_listen": '"{ops}"', "access_log": '"{access_log}"', **values}
    for key, value in values.items():
        pattern = re.compile(rf"^({re.escape(key)}\s*=\s*){_TOML_VALUE}", re.MULTILINE)
        text, count = pattern.subn(lambda m, v=value: m.group(1) + v, text)  # type: ignore[misc]
        if count != 1:
            raise ValueError(f"{path.name}: {key} occurs {count} times")
    return text


class ServeStack:
    """A real JWKS server (wall-clock issuer), ``gatekeeper serve`` running a shipped example
    config pointed at it, the echo upstream, and nginx or Caddy from their shipped configs.

    A second issuer, whose JWKS URL refuses connections, is appended to the config: its tokens
    get ``keys_unavailable``.
    """

    def __init__(self, toml: str, proxy_cls: Any, tmp_path: Path, **values: str) -> None:
        from gateway_process import GatewayProcess

        from gatekeeper.devserver import IssuerServer

        self.issuer_server = IssuerServer()
        self.issuer_server.issuer = DevIssuer(self.issuer_server.url, algorithms=("ES256",), audience="api")
        self.issuer_server.start()
        self.issuer = self.issuer_server.issuer
        self.down = DevIssuer(DOWN, algorithms=("ES256",), audience="api")
        text = shipped_config(
            EXAMPLES / toml,
            issuer=f'"{self.issuer_server.url}"',
            audience='"api"',
            jwks_url=f'"{self.issuer_server.jwks_url}"',
            algorithms='["ES256"]',
            **values,
        )
        text += (
            f'\n[[issuers]]\nissuer = "{DOWN}"\naudience = "api"\n'
            f'jwks_url = "http://127.0.0.1:{free_port()}/jwks"\nalgorithms = ["ES256"]\n'
        )
        self.upstream = Upstream()
        self.upstream.start()
        self.gatekeeper: Any = None
        self.proxy: Any = None
        try:
            self.gatekeeper = GatewayProcess(text, tmp_path)
            if proxy_cls is not None:  # None: the test plays the proxy (Traefik, Envoy)
                self.proxy = proxy_cls(f"127.0.0.1:{self.gatekeeper.port}", f"127.0.0.1:{self.upstream.port}")
        except BaseException:
            self.close()
            raise

    def get(self, target: str | bytes, token: str | None = None, **kw: Any) -> RawResponse:
        port = self.proxy.port if self.proxy is not None else self.gatekeeper.port
        return token_request(port, target, token, **kw)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.upstream.stop()
        self.issuer_server.stop()


#: The kinds a shipped config can produce (no principal hook or revocation in it).
SERVE_KINDS: list[ErrorKind] = [
    "missing_token",
    "invalid_request",
    "invalid_token",
    "expired_token",
    "insufficient_scope",
    "keys_unavailable",
]


def serve_request_for(kind: ErrorKind, stack: ServeStack) -> tuple[str, str | None]:
    """A request through ``stack`` that gatekeeper refuses with ``kind``: (target, token)."""
    return {
        "missing_token": ("/items", None),
        "invalid_request": ("/items", "two words"),  # not a b64token: a malformed header
        "invalid_token": ("/items", "not-a.valid.token"),
        "expired_token": ("/items", stack.issuer.mint(expires_in=-3600)),
        "insufficient_scope": ("/admin/x", stack.issuer.mint(scope="read")),
        "keys_unavailable": ("/items", stack.down.mint()),
    }[kind]


class ServeStacks:
    """:class:`ServeStack` objects for one shipped config and proxy, each made on first use for its
    config values (``stacks()``, ``stacks("placewise")``, ``stacks(query_params='["x"]')``) and
    closed together by :meth:`close`: a module-scoped fixture shares them among its tests."""

    def __init__(self, toml: str, proxy_cls: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.toml = toml
        self.proxy_cls = proxy_cls
        self._tmp_path_factory = tmp_path_factory
        self._made: dict[tuple[tuple[str, str], ...], ServeStack] = {}

    def __call__(self, profile: str = "rfc6750", **values: str) -> ServeStack:
        """The stack whose config has ``error_profile = profile`` and the other ``values``."""
        values = {"error_profile": f'"{profile}"', **values}
        key = tuple(sorted(values.items()))
        if key not in self._made:
            directory = self._tmp_path_factory.mktemp(profile)
            self._made[key] = ServeStack(self.toml, self.proxy_cls, directory, **values)
        return self._made[key]

    def close(self) -> None:
        for stack in self._made.values():
            stack.close()


def proxy_fixtures(proxy: str, proxy_cls: Any, toml: str) -> tuple[Any, Any]:
    """The fixtures of a real proxy's test module, which assigns them to their names:
    ``stacks, make_stack = proxy_fixtures("nginx", Nginx, "nginx-forward-auth.toml")``.

    ``stacks``: module-scoped :class:`ServeStacks` (``gatekeeper serve`` with the shipped
    ``toml`` behind the proxy); ``make_stack(profile)``: a :class:`Stack` (ForwardAuth in process,
    with a principal hook and a revocable verifier) behind the proxy, closed after the test. Both
    skip when the proxy is not installed."""

    @pytest.fixture(scope="module")
    def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeStacks]:
        require(proxy)
        made = ServeStacks(toml, proxy_cls, tmp_path_factory)
        yield made
        made.close()

    @pytest.fixture
    def make_stack(dev_issuer: DevIssuer, clock: Clock) -> Iterator[MakeStack]:
        require(proxy)
        made: list[Stack] = []

        def make(profile: str = "rfc6750") -> Stack:
            stack = Stack(verifier_for(dev_issuer, clock), profile, proxy, proxy_cls)
            made.append(stack)
            return stack

        yield make
        for stack in made:
            stack.close()

    return stacks, make_stack


# -- scenarios every real proxy must pass (each returns what a proxy's own test adds to) ----------


def check_a_valid_token_reaches_the_upstream(stack: ServeStack) -> dict[str, list[str]]:
    """The upstream gets the path the rules saw, the query, the identity headers and not the
    token; returns the headers it saw."""
    token = stack.issuer.mint(subject="alice", scope="read admin", claims={"client_id": "app-1"})
    response = stack.get("/admin//items/./1?a=1&b=%20x", token)
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/admin/items/1"  # the path the rules saw
    assert echo["query"] == "a=1&b=%20x"
    headers = seen_headers(echo)
    assert headers["x-auth-subject"] == ["alice"]
    assert headers["x-auth-client-id"] == ["app-1"]
    assert headers["x-auth-scopes"] == ["admin read"]
    assert headers["x-auth-issuer"] == [stack.issuer.issuer]
    assert "authorization" not in headers  # the token goes no further
    assert "x-gatekeeper-path" not in headers
    return headers


def check_the_upstreams_own_401_passes(stack: ServeStack) -> RawResponse:
    """An allowed request whose upstream answers 401 reaches the client as the upstream's."""
    response = stack.get("/items/status?code=401", stack.issuer.mint())
    assert response.status == 401
    assert response.json() == {"upstream": 401}
    return response


def check_every_serve_kind_in_the_profiles_shape(stack: ServeStack, profile: str) -> None:
    """Each kind ``gatekeeper serve`` can refuse with reaches the client exactly as ``profile``
    renders it (status, body, WWW-Authenticate, Content-Type, no-store), and none the upstream."""
    seen_before = len(stack.upstream.seen)
    for kind in SERVE_KINDS:
        target, token = serve_request_for(kind, stack)
        response = stack.get(target, token)
        want = expected(get_profile(profile), kind, response)
        assert response.status == want.status, (kind, response)
        assert response.json() == json.loads(want.body), kind
        for name in ("www-authenticate", "content-type"):
            assert response.header(name) == want.header(name), (kind, name, response)
        if kind == "keys_unavailable":
            assert response.header("retry-after") is not None
        assert response.header("cache-control") == "no-store"
        assert "x-gatekeeper-status" not in dict(response.headers)
    assert len(stack.upstream.seen) == seen_before  # no refusal reached the upstream


def check_principal_and_revocation_kinds(stack: Stack, dev_issuer: DevIssuer, clock: Clock) -> None:
    """Every kind, those a config file cannot produce included (an unknown principal, a revoked
    token), in the profile's shape, with the ForwardAuth app in process behind the proxy."""
    stack.gatekeeper.app.gate.verifier.revoke(sub="revoked-user", before=clock.now + 1)
    for kind in KINDS:
        target, token = request_for(kind, dev_issuer, clock)
        response = stack.get(target, token)
        want = expected(stack.profile, kind, response)
        assert response.status == want.status, (kind, response)
        assert response.json() == json.loads(want.body), kind
        assert response.header("www-authenticate") == want.header("www-authenticate"), kind
    assert stack.upstream.seen == []
    assert [r.error_kind for r in stack.records] == KINDS


def check_an_ambiguous_path_is_refused(stack: ServeStack, target: str) -> None:
    """400 (from the proxy or from gatekeeper), and nothing reaches the upstream."""
    seen_before = len(stack.upstream.seen)
    response = stack.get(target, stack.issuer.mint(scope="read admin"))
    assert response.status == 400, response
    assert len(stack.upstream.seen) == seen_before


def check_a_normalisable_path_lands_on_its_rule(stack: ServeStack, target: str) -> str:
    """``target`` is an /admin path in disguise: refused without the admin scope, allowed with
    it; returns the path the upstream saw."""
    refused = stack.get(target, stack.issuer.mint(scope="read"))
    assert refused.status == 403, refused
    assert refused.json()["scope"] == "admin"
    allowed = stack.get(target, stack.issuer.mint(scope="admin"))
    assert allowed.status == 200, allowed
    path: str = allowed.json()["path"]
    return path


def check_the_client_cannot_choose_the_original_uri(stack: ServeStack, forged: list[tuple[str, str]]) -> None:
    """The proxy's own original-method/URI headers replace the client's ``forged`` copies."""
    response = stack.get("/admin/x", stack.issuer.mint(scope="read"), headers=forged)
    assert response.status == 403, response
    assert response.json()["scope"] == "admin"


def check_a_body_is_forwarded_and_a_denial_rendered(stack: ServeStack, **denied_request: Any) -> None:
    """A 100 kB POST body reaches the upstream when allowed (the auth call did not eat it), and
    a denial still arrives in the profile's shape (``stack`` is a placewise one)."""
    body = b"x" * 100_000
    allowed = stack.get("/items", stack.issuer.mint(), method="POST", body=body)
    assert allowed.status == 200, allowed
    assert allowed.json()["body_bytes"] == len(body)
    denied = stack.get(
        "/items", stack.issuer.mint(expires_in=-3600), method="POST", body=body, **denied_request
    )
    assert denied.status == 460, denied
    assert denied.json() == {"error": "Member not authorized"}
