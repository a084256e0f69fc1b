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
verification instead of verifying again.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.params import Depends as DependsParam
from fastapi.params import Security as SecurityParam
from fastapi.security import HTTPBearer, OAuth2, SecurityScopes
from starlette.responses import Response

from .bearer import BearerSource
from .claims import Claims, ScopeMode
from .errors import AuthError
from .middleware import SCOPE_KEY, GatekeeperState, PrincipalHook, to_starlette
from .responses import ErrorResponse, ProfileSpec, get_profile
from .verifier import Verifier


class GatekeeperHTTPException(HTTPException):
    """An auth failure already rendered by the error profile.

    With :meth:`GatekeeperSecurity.install` the response is exactly the profile's; without it
    FastAPI's default handler still answers with the right status and headers, the profile's
    body under ``detail``.
    """

    def __init__(self, rendered: ErrorResponse, error: AuthError) -> None:
        headers = {name: value for name, value in rendered.headers if name != "content-type"}
        super().__init__(rendered.status, detail=error.description, headers=headers)
        self.rendered = rendered
        self.error = error


async def _render_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatekeeperHTTPException)
    return to_starlette(exc.rendered)


class GatekeeperSecurity:
    """A FastAPI dependency verifying the request's bearer token; use with ``Security(...)``
    (``SecurityScopes`` carries the required scopes) or ``Depends(...)`` (no scopes).

    ``mode="any"`` accepts a token carrying any one of the required scopes. ``principal``
    works as in the middleware: claims to principal, None means ``unknown_principal``.
    """

    def __init__(
        self,
        verifier: Verifier | None = None,
        *,
        errors: ProfileSpec = "rfc6750",
        realm: str = "api",
        query_param: str | Sequence[str] | None = None,
        token_url: str | None = None,
        scopes: Mapping[str, str] | None = None,
        mode: ScopeMode = "all",
        scheme_name: str = "gatekeeper",
        principal: PrincipalHook | None = None,
    ) -> None:
        self.verifier = verifier
        self.profile = get_profile(errors, realm)
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
        try:
            claims = await self._claims(request)
            if security_scopes.scopes:
                claims.require(*security_scopes.scopes, mode=self.mode)
            if self.principal is not None:
                principal = self.principal(claims)
                if inspect.isawaitable(principal):
                    principal = await principal
                if principal is None:
                    raise AuthError("unknown_principal", issuer=claims.issuer, kid=claims.kid)
                request.state.principal = principal
        except AuthError as error:
            raise GatekeeperHTTPException(self.profile.render(error), error) from None
        return claims

    async def _claims(self, request: Request) -> Claims:
        state = request.scope.get(SCOPE_KEY)
        if isinstance(state, GatekeeperState) and state.claims is not None:
            return state.claims  # the middleware verified this request already
        if self.verifier is None:
            raise RuntimeError("GatekeeperSecurity needs a verifier, or GatekeeperMiddleware in front")
        token = self.source.extract(request.scope)
        return await self.verifier.verify_async(token)
