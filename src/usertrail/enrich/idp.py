"""End users identified by the company's identity provider (UUID provider `idp`, docs/collection.md).

The app signs its users in with its IdP (OpenID Connect) and hands the snippet the ID token it got; the
snippet sends it with each message (`context.idToken`). The end-user id is the token's configured claim
(`uuid.claim`, default `sub`), believed only once the token's signature verifies against the keys the
IdP publishes (discovery document, then JWKS) and its issuer and audience are the environment's
`uuid.issuer` and `uuid.audience`; the event must also have happened while the token was valid
(`iat` … `exp`, with a minute's leeway), which identification checks per event. So unlike the
`variable` provider, a page cannot claim to be somebody else.

Fetching keys and checking signatures happen here, awaited by collection before the request's events
run through the pipeline's steps (collect/pipeline.py, `identify_user`), which only look the outcome up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from cachetools import LRUCache
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from usertrail.access.oidc import ALGORITHMS, https_or_loopback
from usertrail.project_settings import UuidSettings

log = logging.getLogger(__name__)

KEYS_TTL_S = 3600  # keys are fetched again after this, or at once for a token signed by an unknown key
RETRY_S = 30  # after a failed fetch, or a refresh that found no new key, wait this long before another
LEEWAY_S = 60
_VERIFIED_CACHE = 4096  # tokens: a session's events carry the same one


class IdpSettingsError(ValueError):
    """UUID settings for the `idp` provider that cannot work; `path` names the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def check_settings(uuid: UuidSettings) -> None:
    """Refuse `idp` settings whose issuer is not https (or http on a loopback address), or that name an
    issuer without the audience or the claim. Without an issuer only WalkMe events are identified: WalkMe's
    recorder resolved the IDP id itself (`wm.euId`), and native events have nothing to verify against."""
    if uuid.provider != "idp" or not uuid.issuer:
        return
    if not https_or_loopback(uuid.issuer):
        raise IdpSettingsError("$.uuid.issuer", "the issuer must use https (plain http only on a loopback address)")
    if not uuid.audience:
        raise IdpSettingsError("$.uuid.audience", "the idp provider needs the client id the ID tokens are issued to")
    if not uuid.claim:
        raise IdpSettingsError("$.uuid.claim", "the idp provider needs the claim that holds the end-user id")


@dataclass(frozen=True)
class Verified:
    """A token whose signature, issuer and audience checked out: the end-user id and its validity (ms)."""

    user_id: str | None  # None: the token lacks the claim, or it is not a string or number
    issued_ms: int
    expires_ms: int

    def valid_at(self, ms: int) -> bool:
        return self.issued_ms - LEEWAY_S * 1000 <= ms <= self.expires_ms + LEEWAY_S * 1000


class IdTokens:
    """Verifies end users' ID tokens for every configured IdP: each IdP's keys (fetched, cached for an hour,
    fetched again when a token names a key they lack) and the outcome per token (cached)."""

    def __init__(self, http: httpx.AsyncClient | None = None, clock: Callable[[], float] = time.time) -> None:
        self.http = http or httpx.AsyncClient(timeout=5)
        self.clock = clock
        self._keys: dict[str, tuple[float, KeySet | None]] = {}  # issuer -> (fetched at, keys; None: failed)
        self._refreshed: dict[str, float] = {}  # issuer -> when a token that did not verify last fetched keys
        self._verified: LRUCache[tuple[str, str, str, str], Verified | None] = LRUCache(_VERIFIED_CACHE)

    async def close(self) -> None:
        await self.http.aclose()

    async def verify_all(self, tokens: Iterable[str], settings: Iterable[UuidSettings]) -> dict:
        """Outcomes for `lookup`: each token against each distinct `idp` setting among `settings`."""
        configs = {(u.issuer.rstrip("/"), u.audience, u.claim) for u in settings if u.provider == "idp" and u.issuer}
        found: dict[tuple[str, str, str, str], Verified | None] = {}
        for token in set(tokens):
            for issuer, audience, claim in configs:
                key = (token, issuer, audience, claim)
                if key in self._verified:
                    found[key] = self._verified[key]
                    continue
                outcome = await self._verify(token, issuer, audience, claim)
                if outcome is _UNAVAILABLE:
                    found[key] = None  # not cached: the next request tries the keys again
                    continue
                found[key] = self._verified[key] = outcome  # type: ignore[assignment]
        return found

    async def _verify(self, token: str, issuer: str, audience: str, claim: str) -> Verified | object | None:
        keys = await self._key_set(issuer)
        if keys is None:
            return _UNAVAILABLE
        try:
            decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
        except ValueError:  # not a JWT at all
            return None
        except JoseError:
            # Signed by a key we lack (the IdP rotated its keys)? Fetch them again, at most every RETRY_S.
            fresh = await self._key_set(issuer, refresh=True)
            if fresh is None or fresh is keys:
                return None
            try:
                decoded = jwt.decode(token, fresh, algorithms=list(ALGORITHMS))
            except (JoseError, ValueError):
                return None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
        )
        try:
            # Times are checked against each event's own time (`Verified.valid_at`), not against now: a
            # queued batch arrives after its token expired.
            registry.check_value("iss", claims.get("iss"))
            registry.check_value("aud", claims.get("aud"))
        except JoseError:
            return None
        exp, iat = claims.get("exp"), claims.get("iat")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
            return None
        value = claims.get(claim)
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            user_id = None
        else:
            user_id = str(value)  # as WalkMe does: the user identifier is always text
        return Verified(user_id, int(iat * 1000), int(exp * 1000))

    async def _key_set(self, issuer: str, refresh: bool = False) -> KeySet | None:
        """The issuer's keys; with `refresh` (a token did not verify) fetched again, at most every RETRY_S,
        so that tokens signed by no key of the issuer cannot make every request fetch."""
        now = self.clock()
        cached = self._keys.get(issuer)
        if cached is not None:
            fetched_at, keys = cached
            if refresh:
                if now - self._refreshed.get(issuer, -RETRY_S) < RETRY_S:
                    return keys
                self._refreshed[issuer] = now
            elif now - fetched_at < (RETRY_S if keys is None else KEYS_TTL_S):
                return keys
        try:
            keys = await self._fetch(issuer)
        except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
            log.warning("cannot fetch the signing keys of identity provider %s: %s", issuer, exc)
            keys = None
            if cached is not None and cached[1] is not None and now - cached[0] < 2 * KEYS_TTL_S:
                keys = cached[1]  # keep verifying with the keys we had while the IdP is unreachable
        self._keys[issuer] = (now, keys)
        return keys

    async def _fetch(self, issuer: str) -> KeySet:
        discovery = await self.http.get(issuer + "/.well-known/openid-configuration")
        discovery.raise_for_status()
        document = discovery.json()
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            raise ValueError("the discovery document names another issuer")
        jwks = await self.http.get(document["jwks_uri"])
        jwks.raise_for_status()
        return KeySet.import_key_set(jwks.json())


_UNAVAILABLE = object()


def lookup(verified: dict, token: str, uuid: UuidSettings, at_ms: int) -> str | None:
    """The end-user id `token` proves under `uuid` for an event at `at_ms`, or None."""
    outcome = verified.get((token, uuid.issuer.rstrip("/"), uuid.audience, uuid.claim))
    if outcome is None or not outcome.valid_at(at_ms):
        return None
    return outcome.user_id
