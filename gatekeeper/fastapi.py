"""FastAPI integration: a ``Security``-compatible dependency that returns verified claims.

::

    gk = GatekeeperSecurity(verifier, errors="placepoint", token_url="/oauth/token",
                            scopes={"read": "Read plots", "write": "Change plots"})
    gk.install(app)   # failures answer in the profile's exact shape

    @app.get("/plots")
    async def plots(claims: Claims = Security(gk, scopes=["read"])) -> ...

The dependency registers two OpenAPI security schemes, HTTP bearer and (with ``token_url``)
OAuth2 client credentials listing the scopes, so the docs page shows the locks and scopes.
Behind :class:`~gatekeeper.middleware.GatekeeperMiddleware` it reuses the middleware's
verification instead of verifying again (and, unless given ``errors``, its error profile).
Like the middleware it sets ``request.user`` (with ``.principal``) and ``request.auth``, and
logs one record per rejection.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.params import Depends as DependsParam
from fastapi.params import Security as SecurityParam
from fastapi.security import HTTPBearer, OAuth2, SecurityScopes
from starlette.responses import Response

from .accesslog import log_rejection
from .bearer import BearerSource
from .claims import Claims, ScopeMode
from .decision import PrincipalHook, resolve_principal
from .errors import AuthError
from .middleware import (
    GatekeeperState,
    TokenAuth,
    TokenUser,
    middleware_state,
    to_starlette,
    verified_claims,
)
from .responses import ErrorProfile, ErrorResponse, ProfileSpec, get_profile
from .verifier import Verifier


class GatekeeperHTTPException(HTTPException):
    """An auth failure already rendered by the error profile.

    With :meth:`GatekeeperSecurity.install` the response is exactly the profile's; without it
    FastAPI's default handler still answers with the right status and headers, the profile's
    body under ``detail``.
    """

    def __init__(self, rendered: ErrorResponse, error: AuthError) -> None:
        headers = {name: value for name, value in rendered.headers if name != "content-type"}
        super().__init__(rendered.status, detail=_detail(rendered, error), headers=headers)
        self.rendered = rendered
        self.error = error


def _detail(rendered: ErrorResponse, error: AuthError) -> Any:
    """The profile's body as ``detail``: parsed when it is JSON, else its text."""
    content_type = rendered.header("content-type") or ""
    try:
        if content_type.startswith("application/json") or content_type.endswith("+json"):
            return json.loads(rendered.body)
        return rendered.body.decode("utf-8")
    except ValueError:
        return error.description


async def _render_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatekeeperHTTPException)
    return to_starlette(exc.rendered)


class GatekeeperSecurity:
    """A FastAPI dependency verifying the request's bearer token; use with ``Security(...)``
    (``SecurityScopes`` carries the required scopes) or ``Depends(...)`` (no scopes).

    ``mode="any"`` accepts a token carrying any one of the required scopes. ``principal``
    works as in the middleware: claims to principal, None means ``unknown_principal``; it is
    then ``request.user.principal`` (and ``request.state.principal``). ``errors`` defaults to
    the middleware's profile behind the middleware, else ``"rfc6750"``.
    """

    def __init__(
        self,
        verifier: Verifier | None = None,
        *,
        errors: ProfileSpec | None = None,
        realm: str = "api",
        query_param: str | Sequence[str] | None = None,
        token_url: str | None = None,
        scopes: Mapping[str, str] | None = None,
        mode: ScopeMode = "all",
        scheme_name: str = "gatekeeper",
        principal: PrincipalHook | None = None,
    ) -> None:
        if mode not in ("all", "any"):
            raise ValueError("mode must be 'all' or 'any'")
        self.verifier = verifier
        self.profile = get_profile("rfc6750" if errors is None else errors, realm)
        self._own_profile = errors is not None
        self.source = BearerSource.of(query_param)
        self.mode: ScopeMode = mode
        self.principal = principal
        bearer = HTTPBearer(
            auto_error=False, scheme_name=f"{scheme_name}Bearer", description="A JWT access token"
        )
        parameters = [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter(
                "security_scopes", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=SecurityScopes
            ),
            inspect.Parameter("_bearer", inspect.Parameter.KEYWORD_ONLY, default=DependsParam(bearer)),
        ]
        if token_url is not None:
            flows = OAuthFlows(
                clientCredentials=OAuthFlowClientCredentials(tokenUrl=token_url, scopes=dict(scopes or {}))
            )
            oauth = OAuth2(flows=flows, scheme_name=f"{scheme_name}OAuth2", auto_error=False)
            parameters.append(
                inspect.Parameter("_oauth2", inspect.Parameter.KEYWORD_ONLY, default=SecurityParam(oauth))
            )
        # FastAPI reads a dependency's parameters from its signature; these sub-dependencies
        # exist only to put the security schemes into the OpenAPI document.
        self.__signature__ = inspect.Signature(parameters, return_annotation=Claims)

    def install(self, app: FastAPI) -> None:
        """Answer this dependency's failures in the error profile's exact shape."""
        app.add_exception_handler(GatekeeperHTTPException, _render_exception)

    async def __call__(self, request: Request, security_scopes: SecurityScopes, **_schemes: Any) -> Claims:
        scope = request.scope
        state = middleware_state(scope)
        token: str | None = None
        try:
            if state is not None:
                verified = verified_claims(scope)
                if verified is None:  # an optional route, and no token came
                    raise AuthError("missing_token")
                claims = verified  # the middleware verified this request already
            else:
                token = self.source.extract(scope)
                claims = await self._verifier().verify_async(token)
            if security_scopes.scopes:
                claims.require(*security_scopes.scopes, mode=self.mode)
            if self.principal is not None:
                principal = await resolve_principal(self.principal, claims)
                scope["user"] = TokenUser(claims, principal)
                request.state.principal = principal
            elif state is None:
                scope["user"] = TokenUser(claims)
            if state is None:
                scope["auth"] = TokenAuth(claims)
        except AuthError as error:
            raise self._rejection(error, scope, state, token) from None
        return claims

    def _verifier(self) -> Verifier:
        if self.verifier is None:
            raise RuntimeError("GatekeeperSecurity needs a verifier, or GatekeeperMiddleware in front")
        return self.verifier

    def _rejection(
        self, error: AuthError, scope: Any, state: GatekeeperState | None, token: str | None
    ) -> GatekeeperHTTPException:
        if state is not None and token is None:
            with contextlib.suppress(AuthError):
                token = state.source.extract(scope)  # only for its fingerprint in the log
        source = state.source if state is not None else self.source
        log_rejection(error, scope, token, source.query_params)
        profile: ErrorProfile = self.profile
        if state is not None and not self._own_profile:
            profile = state.profile
        return GatekeeperHTTPException(profile.render(error), error)
