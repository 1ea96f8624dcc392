"""OpenID Connect single sign-on: the authorization code flow with PKCE, and ID token validation.

One provider per installation (settings `oidc_*`). `begin` stores a random state, nonce and PKCE
verifier in the database (so any server process can finish the round trip) and gives the
provider's authorization URL; `finish` takes the state back exactly once, exchanges the code at the
token endpoint and accepts the ID token only if its signature verifies against the provider's JWKS
and its issuer, audience, expiry and nonce are the expected ones. The account is then found by
(issuer, subject), else linked by verified e-mail address, else created with the default role.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import httpx
import sqlalchemy as sa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from usertrail.access.accounts import Account, AccountStore, InvalidAccount, SignedIn, UnknownAccount
from usertrail.access.permissions import ROLES
from usertrail.config import Settings
from usertrail.store.database import write_transaction
from usertrail.store.projects import hash_token
from usertrail.store.schema import oidc_states

STATE_TTL_S = 600
METADATA_TTL_S = 3600
LEEWAY_S = 60
# Asymmetric algorithms only: with HS256 the client secret would be the verification key.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class OidcError(Exception):
    """The sign-in through the provider failed; the reason is safe to show."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    allowed_domains: tuple[str, ...] = ()
    default_role: str = ""
    default_project: int = 0
    redirect_url: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """The configuration, or None while no issuer is set; refuses incomplete or unsafe settings."""
        if not settings.oidc_issuer:
            return None
        config = cls(
            issuer=settings.oidc_issuer.rstrip("/"),
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            allowed_domains=tuple(d.lower() for d in settings.oidc_allowed_domains),
            default_role=settings.oidc_default_role,
            default_project=settings.oidc_default_project,
            redirect_url=settings.oidc_redirect_url,
        )
        if not config.client_id or not config.client_secret:
            raise ValueError("USERTRAIL_OIDC_CLIENT_ID and USERTRAIL_OIDC_CLIENT_SECRET are required with an issuer")
        if config.default_role and config.default_role not in ROLES:
            raise ValueError(f"USERTRAIL_OIDC_DEFAULT_ROLE must be one of {', '.join(ROLES)}")
        if config.default_role and not config.default_project:
            raise ValueError("USERTRAIL_OIDC_DEFAULT_ROLE needs USERTRAIL_OIDC_DEFAULT_PROJECT")
        if not https_or_loopback(config.issuer):
            raise ValueError("the OIDC issuer must use https (plain http only on a loopback address)")
        return config


def https_or_loopback(url: str) -> bool:
    """Whether `url` is https, or plain http on a loopback address (a provider on this machine)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def safe_next(path: str | None, default: str) -> str:
    """Where to land after sign-in: a path on this server only (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return default
    return path


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class OidcClient:
    """The relying party: one provider, its cached discovery document and keys."""

    def __init__(
        self,
        config: OidcConfig,
        accounts: AccountStore,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.http = http or httpx.AsyncClient(timeout=10)
        self.clock = clock or time.time  # seconds
        self._metadata: tuple[float, dict] | None = None
        self._keys: KeySet | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def metadata(self) -> dict:
        """The provider's discovery document (cached for an hour); its issuer must be ours exactly."""
        if self._metadata is None or self.clock() - self._metadata[0] > METADATA_TTL_S:
            document = await self._get_json(self.config.issuer + "/.well-known/openid-configuration")
            if document.get("issuer", "").rstrip("/") != self.config.issuer:
                raise OidcError("the provider's discovery document names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(document.get(name), str):
                    raise OidcError(f"the provider's discovery document has no {name}")
            self._metadata = (self.clock(), document)
            self._keys = None
        return self._metadata[1]

    async def _get_json(self, url: str) -> dict:
        try:
            response = await self.http.get(url)
        except httpx.HTTPError as exc:
            raise OidcError(f"cannot reach the sign-in provider: {exc}") from None
        if response.status_code != 200:
            raise OidcError(f"the sign-in provider answered {response.status_code} for {url}")
        try:
            body = response.json()
        except ValueError:
            raise OidcError(f"the sign-in provider sent no JSON from {url}") from None
        if not isinstance(body, dict):
            raise OidcError(f"the sign-in provider sent no JSON object from {url}")
        return body

    async def _key_set(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            document = await self._get_json((await self.metadata())["jwks_uri"])
            try:
                self._keys = KeySet.import_key_set(document)
            except (JoseError, ValueError, KeyError, TypeError):
                raise OidcError("the provider's JWKS is not a valid key set") from None
        return self._keys

    async def begin(self, redirect_uri: str, next_path: str) -> tuple[str, str]:
        """The provider's authorization URL and the state that must come back with the code."""
        metadata = await self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        now_ms = int(self.clock() * 1000)
        with write_transaction(self.accounts.engine) as conn:
            conn.execute(oidc_states.delete().where(oidc_states.c.expires_at <= now_ms))
            conn.execute(
                oidc_states.insert().values(
                    state_hash=hash_token(state),
                    nonce=nonce,
                    code_verifier=verifier,
                    next_path=next_path,
                    expires_at=now_ms + STATE_TTL_S * 1000,
                )
            )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", state

    def _take_state(self, state: str) -> tuple[str, str, str]:
        with write_transaction(self.accounts.engine) as conn:
            row = conn.execute(sa.select(oidc_states).where(oidc_states.c.state_hash == hash_token(state))).first()
            if row is not None:
                conn.execute(oidc_states.delete().where(oidc_states.c.state_hash == row.state_hash))
        if row is None or row.expires_at <= int(self.clock() * 1000):
            raise OidcError("this sign-in link is unknown, used or expired; start again")
        return row.nonce, row.code_verifier, row.next_path

    async def finish(self, state: str, code: str, redirect_uri: str) -> tuple[SignedIn, str]:
        """Complete the round trip: the new sign-in session and where to go next."""
        nonce, verifier, next_path = self._take_state(state)
        metadata = await self.metadata()
        try:
            response = await self.http.post(
                metadata["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
                auth=(self.config.client_id, self.config.client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise OidcError(f"cannot reach the sign-in provider: {exc}") from None
        if response.status_code != 200:
            raise OidcError(f"the sign-in provider refused the code ({response.status_code})")
        try:
            id_token = response.json().get("id_token")
        except (ValueError, AttributeError):
            id_token = None
        if not isinstance(id_token, str):
            raise OidcError("the sign-in provider sent no ID token")
        claims = await self.validate_id_token(id_token, nonce)
        account = self._account_for(claims)
        signed = self.accounts.start_session(account.id, "oidc")
        return signed, next_path

    async def validate_id_token(self, id_token: str, nonce: str) -> dict:
        """The ID token's claims, once its signature, issuer, audience, times and nonce check out."""
        try:
            token = jwt.decode(id_token, await self._key_set(), algorithms=list(ALGORITHMS))
        except (JoseError, ValueError):
            # The provider may have rotated its keys since they were cached: fetch them once more.
            try:
                token = jwt.decode(id_token, await self._key_set(refresh=True), algorithms=list(ALGORITHMS))
            except JoseError as exc:
                raise OidcError(f"the ID token does not verify: {exc.error}") from None
            except ValueError:
                raise OidcError("the ID token is malformed") from None
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=LEEWAY_S,
            iss={"essential": True, "value": self.config.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": self.config.client_id},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        claims = token.claims
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OidcError(f"the ID token is not for this sign-in: {exc.description or exc.error}") from None
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError("the ID token names several audiences but is not authorized for this client")
        return claims

    def _account_for(self, claims: dict) -> Account:
        issuer, subject = self.config.issuer, claims["sub"]
        email = claims.get("email")
        account = self.accounts.by_oidc(issuer, subject)
        if account is None:
            if not isinstance(email, str) or not email:
                raise OidcError("the provider sent no e-mail address (ask for the `email` scope)")
            if claims.get("email_verified") is False:
                raise OidcError("the provider has not verified this e-mail address")
            domain = email.rpartition("@")[2].lower()
            if self.config.allowed_domains and domain not in self.config.allowed_domains:
                raise OidcError(f"accounts of {domain} may not sign in here")
            try:
                account = self.accounts.by_email(email)
            except InvalidAccount as exc:
                raise OidcError(f"the provider sent an unusable e-mail address: {exc}") from None
            except UnknownAccount:
                name = claims.get("name") if isinstance(claims.get("name"), str) else None
                account = self.accounts.create(email, (name or "")[:200], oidc=(issuer, subject))
                if self.config.default_role:
                    self.accounts.set_role(account.id, self.config.default_project, self.config.default_role)
            else:
                if account.oidc_linked:
                    raise OidcError("this e-mail address belongs to an account linked to another identity")
                self.accounts.link_oidc(account.id, issuer, subject)
        if account.disabled:
            raise OidcError("this account is disabled")
        return account
