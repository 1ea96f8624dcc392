"""Single sign-on through OpenID Connect (authorization code flow with PKCE): a browser round trip that
ends with the same session cookie as a local sign-in (docs/accounts.md)."""

from __future__ import annotations

from usertrail.web.openapi.model import PUBLIC, Op, Param

TAG = "Sign-in"
_NOT_CONFIGURED = {404: "sso_not_configured: single sign-on is not configured (USERTRAIL_OIDC_*)"}

OPERATIONS = [
    Op(
        "GET",
        "/api/auth/oidc/login",
        "Redirect (302) the browser to the sign-in provider",
        auth=PUBLIC,
        query=(Param("next", "a path on this server to land on once signed in", default="/api/auth/me"),),
        status=302,
        errors={**_NOT_CONFIGURED, 502: "sso_unavailable: the provider cannot be reached"},
    ),
    Op(
        "GET",
        "/api/auth/oidc/callback",
        "The provider's redirect back: checks state and ID token, sets the "
        "session cookie and redirects (303) to `next`",
        auth=PUBLIC,
        query=(
            Param("code", "the authorization code"),
            Param("state", "the round trip's state"),
            Param("error", "the provider's refusal"),
            Param("error_description", ""),
        ),
        status=303,
        errors={**_NOT_CONFIGURED, 401: "sso_failed: the provider refused, or the ID token is not valid"},
    ),
]
