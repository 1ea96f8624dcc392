"""A small but real OpenID Connect provider for tests, served on 127.0.0.1.

Discovery document, JWKS, an authorization endpoint that signs in `user` at once (no login page),
and a token endpoint that checks the client secret, the code (once), the redirect URI and the PKCE
verifier before it returns an RS256-signed ID token. `tamper` changes what it signs, so tests can
check that the relying party refuses bad tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import time
from urllib.parse import parse_qs, urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from usertrail.testing.postgres import free_port

from conftest import ThreadedServer


@functools.cache
def _signing_keys() -> tuple[RSAKey, RSAKey]:
    """The provider's signing key and a rogue key with the same key id, never published: a token signed
    with it must fail verification. Made once per run (each 2048-bit key takes ~0.1 s to generate)."""
    return tuple(RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"}, private=True) for _ in range(2))


class Provider:
    def __init__(self, client_id: str = "usertrail", client_secret: str = "provider-secret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.key, self.rogue_key = _signing_keys()
        self.user = {"sub": "user-1", "email": "sso.user@example.com", "email_verified": True, "name": "Sso User"}
        self.tamper: dict = {}  # claim overrides, plus "sign_with_rogue_key": True
        self.codes: dict[str, dict] = {}
        self.authorize_requests: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
            ]
        )
        self.server = ThreadedServer(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))

    def start(self) -> Provider:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def id_token(self, audience: str | None = None, key: RSAKey | None = None, **claims) -> str:
        """An ID token as the provider would issue it to `audience` (default: its client) for its user,
        valid for five minutes from now; `claims` override or add claims (None removes one)."""
        now = int(time.time())
        body = {"iss": self.url, "aud": audience or self.client_id, "iat": now, "exp": now + 300, **self.user}
        body.update(claims)
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, {k: v for k, v in body.items() if v is not None}, signer)

    def rotate_keys(self) -> None:
        """Sign with a new key (new key id), the only one the JWKS lists from now on."""
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4), "use": "sig"}, private=True)

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.authorize_requests.append(params)
        if params.get("client_id") != self.client_id or params.get("response_type") != "code":
            return JSONResponse({"error": "invalid_request"}, 400)
        if "openid" not in params.get("scope", "").split() or params.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": params["redirect_uri"],
            "nonce": params.get("nonce"),
            "challenge": params["code_challenge"],
        }
        query = urlencode({"code": code, "state": params["state"]})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, 401)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        grant = self.codes.pop(str(form.get("code")), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return JSONResponse({"error": "invalid_grant"}, 400)
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "redirect_uri"}, 400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **self.user,
        }
        tamper = dict(self.tamper)
        key = self.rogue_key if tamper.pop("sign_with_rogue_key", False) else self.key
        claims.update(tamper)
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "id_token": id_token})
