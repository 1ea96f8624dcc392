"""Single sign-on routes: `GET /api/auth/oidc/login` (to the provider) and `GET /api/auth/oidc/callback`."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from usertrail.access.oidc import OidcClient, OidcError, safe_next
from usertrail.web.auth import set_session_cookies
from usertrail.web.errors import ApiError

CALLBACK_PATH = "/api/auth/oidc/callback"
STATE_COOKIE = "usertrail_oidc_state"
DEFAULT_NEXT = "/api/auth/me"


def _client(request: Request) -> OidcClient:
    client = request.app.state.oidc
    if client is None:
        raise ApiError(404, "sso_not_configured", "single sign-on is not configured on this server (USERTRAIL_OIDC_*)")
    return client


def _redirect_uri(request: Request, client: OidcClient) -> str:
    return client.config.redirect_url or str(request.base_url).rstrip("/") + CALLBACK_PATH


def _secure(request: Request) -> bool:
    return request.app.state.settings.secure_cookies or request.url.scheme == "https"


async def oidc_login(request: Request) -> Response:
    """Send the browser to the provider; `?next=/path` is where it lands once signed in."""
    client = _client(request)
    try:
        url, state = await client.begin(
            _redirect_uri(request, client), safe_next(request.query_params.get("next"), DEFAULT_NEXT)
        )
    except OidcError as exc:
        raise ApiError(502, "sso_unavailable", str(exc)) from None
    response = RedirectResponse(url, status_code=302)
    # Ties the round trip to this browser: a callback carrying someone else's state is refused.
    response.set_cookie(
        STATE_COOKIE, state, max_age=600, path="/api/auth/oidc", httponly=True, samesite="lax", secure=_secure(request)
    )
    return response


async def oidc_callback(request: Request) -> Response:
    """Finish the round trip: check state and ID token, open a session, go to `next`."""
    client = _client(request)
    params = request.query_params
    if params.get("error"):
        reason = params.get("error_description") or params["error"]
        raise ApiError(401, "sso_failed", f"the sign-in provider refused: {reason}", "error")
    state, code = params.get("state", ""), params.get("code", "")
    if not state or not code:
        raise ApiError(
            400, "invalid_request", "the provider's answer has no code or state", "state" if code else "code"
        )
    cookie = request.cookies.get(STATE_COOKIE, "")
    if not hmac.compare_digest(cookie.encode(), state.encode()):
        raise ApiError(400, "sso_failed", "this sign-in was not started in this browser; start again", "state")
    try:
        signed, next_path = await client.finish(state, code, _redirect_uri(request, client))
    except OidcError as exc:
        raise ApiError(401, "sso_failed", str(exc)) from None
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookies(request, response, signed)
    response.delete_cookie(STATE_COOKIE, path="/api/auth/oidc", secure=_secure(request), samesite="lax")
    return response


routes = [
    Route("/api/auth/oidc/login", oidc_login, methods=["GET"]),
    Route(CALLBACK_PATH, oidc_callback, methods=["GET"]),
]
