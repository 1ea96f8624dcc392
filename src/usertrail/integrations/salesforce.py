"""The Salesforce import: configured sources, incremental runs by SystemModstamp, run history.

A source names a Salesforce org (login URL, API version, credentials), an object (Contact, Lead,
User, Account or a custom `__c` object), the field holding the end-user id as usertrail knows it
(values go to the user key `u:<id>`, hashed as events are when the UUID settings hash ids), and
field mappings onto custom attributes. A run:

1. claims the source (a lease in the database, so two processes never run one source at once);
2. logs in with `simple-salesforce` (SOAP username-password, the OAuth username-password flow, or the
   OAuth JWT bearer flow), or
   reuses this process's session from an earlier run; an expired session (401) logs in again;
3. sends one SOQL query — the mapped fields of records with
   `watermark < SystemModstamp <= now - SETTLE_S`, in SystemModstamp order — and follows
   `nextRecordsUrl` page by page;
4. writes each page through `update_api.apply_records`, the End User Update API's mapping and
   `AttributeStore.write`: the same types, cap of 100 and history, per-record errors;
5. moves the watermark forward after every page, so a failed run resumes where it stopped.

Every run is kept (counts, errors, the query sent) and written to the integration log as
integration `salesforce`. `web/salesforce_routes.py` is the HTTP shell; the server runs due
sources from its lifespan loop (`run_due`), the CLI with `usertrail import salesforce run`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import msgspec
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError, SalesforceExpiredSession
from simple_salesforce.login import token_login

from usertrail.integrations import IntegrationLog
from usertrail.integrations.secretbox import SecretBox, SecretsUnavailable
from usertrail.integrations.update_api import (
    FieldMapping,
    InvalidRequest,
    apply_records,
    check_against_registry,
    parse_fields,
)
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import write_transaction
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import salesforce_runs, salesforce_sources

log = logging.getLogger(__name__)

SOURCE = "salesforce"  # the attribute source of every value written, and the integration in the log
ID_PREFIX = "sf_"
STANDARD_OBJECTS = ("Contact", "Lead", "User", "Account")
DEFAULT_LOGIN_URL = "https://login.salesforce.com"
DEFAULT_API_VERSION = "59.0"
DEFAULT_INTERVAL_MINUTES = 60
MIN_INTERVAL_MINUTES = 5
MAX_INTERVAL_MINUTES = 7 * 24 * 60
SETTLE_S = 60  # records modified in the last minute wait for the next run (transactions still committing)
LEASE_S = 600  # a run renews its lease on every page; a dead process's lease lapses after this
HTTP_TIMEOUT_S = 60
MAX_STORED_ERRORS = 1_000  # per run; error_count is always complete
RUNS_KEPT = 500  # per source
DUE_BATCH = 20  # sources started per scheduler check
MASK = "********"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 180
MAX_TEXT = 255

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_CUSTOM_OBJECT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,76}__c")
_API_VERSION = re.compile(r"[1-9][0-9]\.0")
_SF_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _now() -> int:
    return int(time.time() * 1000)


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


# --- errors ----------------------------------------------------------------------------------


class SourceNotFound(LookupError):
    """The project has no Salesforce source with this id."""


class RunInProgress(Exception):
    """Another run of the source holds its lease."""


class RunFailed(Exception):
    """A run that stopped as a whole: where (`stage`), Salesforce's error code, and why."""

    def __init__(self, stage: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.code, self.reason = stage, code, reason

    def as_json(self) -> dict:
        return {"stage": self.stage, "code": self.code, "reason": self.reason}


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    flow: str  # "password" (SOAP login), "oauth_password" (OAuth 2.0 password grant) or "jwt" (JWT bearer)
    username: str
    # password [+ security_token] (+ consumer_secret for oauth_password), or private_key: sealed at rest
    secrets: dict[str, str]
    consumer_key: str | None = None  # jwt, oauth_password: the connected app's consumer key (not a secret)
    audience: str | None = None  # jwt: the assertion's `aud`; the login URL when None


@dataclass(frozen=True)
class SourceSpec:
    name: str
    login_url: str
    api_version: str
    auth: Auth
    object: str
    match_field: str
    fields: tuple[FieldMapping, ...]
    interval_s: int
    enabled: bool

    @property
    def user_id_property(self) -> str:
        """The match field: where a record holds the end-user id (update_api.RecordMapping)."""
        return self.match_field


@dataclass(frozen=True)
class Source:
    project_id: int
    source_id: str
    spec: SourceSpec
    watermark: str | None
    next_run_at: int
    lease_until: int | None
    last_run_id: str | None
    created_at: int
    updated_at: int
    sealed: str  # the credentials as stored (SecretBox)

    def as_json(self, now: int, last_run: dict | None = None) -> dict:
        """The source as the API shows it: credentials masked, never in plain text."""
        spec = self.spec
        auth: dict = {"flow": spec.auth.flow, "username": spec.auth.username}
        if spec.auth.flow in ("password", "oauth_password"):
            auth["password"] = MASK
            auth["security_token"] = MASK if spec.auth.secrets.get("security_token") else None
            if spec.auth.flow == "oauth_password":
                auth.update(consumer_key=spec.auth.consumer_key, consumer_secret=MASK)
        else:
            auth.update(consumer_key=spec.auth.consumer_key, private_key=MASK, audience=spec.auth.audience)
        return {
            "source_id": self.source_id,
            "name": spec.name,
            "login_url": spec.login_url,
            "api_version": spec.api_version,
            "auth": auth,
            "object": spec.object,
            "match_field": spec.match_field,
            "fields": [{"field": f.payload, "name": f.name, "type": f.type} for f in spec.fields],
            "interval_minutes": spec.interval_s // 60,
            "enabled": spec.enabled,
            "watermark": self.watermark,
            "next_run_at": self.next_run_at,
            "running": self.lease_until is not None and self.lease_until > now,
            "last_run": last_run,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _check_text(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{what} must be a non-empty string", where)
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"{what} is at most {MAX_TEXT} characters", where)
    return value.strip()


def check_field_path(value: object, where: str) -> str:
    """A Salesforce field API name, or a relationship path such as `Account.Type` (at most 5 levels).

    Only identifiers pass, so nothing but field names ever reaches the SOQL text.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRequest("expected a Salesforce field name such as `Email` or `Account.Type`", where)
    parts = value.split(".")
    if len(parts) > 5 or not all(_NAME.fullmatch(p) for p in parts):
        raise InvalidRequest(
            f"{value!r} is not a Salesforce field name: letters, digits and underscores, starting with a "
            "letter; relationship fields as `Account.Type` (at most 5 levels)",
            where,
        )
    return value


def _check_object(value: object) -> str:
    if isinstance(value, str) and (value in STANDARD_OBJECTS or _CUSTOM_OBJECT.fullmatch(value)):
        return value
    raise InvalidRequest(
        f"object must be one of {', '.join(STANDARD_OBJECTS)} or a custom object ending in __c, got {value!r}",
        "$.object",
    )


def _check_https_url(value: object, where: str) -> str:
    parts = urlsplit(value.strip()) if isinstance(value, str) else None
    if (
        parts is None
        or parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise InvalidRequest(
            "expected an https URL without a path, such as https://login.salesforce.com "
            "(sandboxes: https://test.salesforce.com, or your My Domain URL)",
            where,
        )
    return f"https://{parts.netloc}"


def _check_private_key(value: object) -> str:
    where = "$.auth.private_key"
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("expected the connected app's RSA private key in PEM format", where)
    try:
        key = serialization.load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidRequest(
            "expected an unencrypted RSA private key in PEM format (-----BEGIN PRIVATE KEY-----)", where
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidRequest("the JWT bearer flow signs with RS256: the key must be an RSA key", where)
    return value


_AUTH_KEYS = {
    "password": ("flow", "username", "password", "security_token"),
    "oauth_password": ("flow", "username", "password", "security_token", "consumer_key", "consumer_secret"),
    "jwt": ("flow", "username", "consumer_key", "private_key", "audience"),
}


def _parse_auth(raw: object, current: Auth | None) -> Auth:
    """Credentials; on update, a secret left out (or sent back as the mask) keeps its stored value."""
    if not isinstance(raw, dict):
        raise InvalidRequest(
            'expected an object {"flow": "password", "oauth_password" or "jwt", "username": …, …}', "$.auth"
        )
    flow = raw.get("flow", current.flow if current else None)
    if flow not in _AUTH_KEYS:
        raise InvalidRequest(
            "flow must be `password` (SOAP login), `oauth_password` (OAuth username-password with a connected "
            "app's consumer key and secret) or `jwt` (JWT bearer with a private key)",
            "$.auth.flow",
        )
    for key in raw:
        if key not in _AUTH_KEYS[flow]:
            raise InvalidRequest(f"unknown field {key!r}: expected {', '.join(_AUTH_KEYS[flow])}", f"$.auth.{key}")
    same = current if current is not None and current.flow == flow else None

    def given(name: str) -> tuple[bool, object]:
        value = raw.get(name)
        if value is None or value == MASK:
            return False, same.secrets.get(name) if same else None
        return True, value

    username = _check_text(raw.get("username", same.username if same else None), "$.auth.username", "username")
    sealed: dict[str, str] = {}
    if flow in ("password", "oauth_password"):
        _, password = given("password")
        if not isinstance(password, str) or not password:
            raise InvalidRequest("the Salesforce user's password is required", "$.auth.password")
        sealed["password"] = password
        _, token = given("security_token")
        if token not in (None, ""):
            if not isinstance(token, str):
                raise InvalidRequest("the security token must be a string", "$.auth.security_token")
            sealed["security_token"] = token
        if flow == "password":
            return Auth("password", username, sealed)
        consumer_key = _check_text(
            raw.get("consumer_key", same.consumer_key if same else None), "$.auth.consumer_key", "consumer_key"
        )
        _, consumer_secret = given("consumer_secret")
        if not isinstance(consumer_secret, str) or not consumer_secret:
            raise InvalidRequest("the connected app's consumer secret is required", "$.auth.consumer_secret")
        sealed["consumer_secret"] = consumer_secret
        return Auth("oauth_password", username, sealed, consumer_key)
    consumer_key = _check_text(
        raw.get("consumer_key", same.consumer_key if same else None), "$.auth.consumer_key", "consumer_key"
    )
    fresh, private_key = given("private_key")
    if private_key is None:
        raise InvalidRequest("the JWT bearer flow needs the connected app's private key (PEM)", "$.auth.private_key")
    sealed["private_key"] = _check_private_key(private_key) if fresh else str(private_key)
    audience = raw.get("audience", same.audience if same else None)
    if audience is not None:
        audience = _check_https_url(audience, "$.auth.audience")
    return Auth("jwt", username, sealed, consumer_key, audience)


_SOURCE_KEYS = (
    "name",
    "login_url",
    "api_version",
    "auth",
    "object",
    "match_field",
    "fields",
    "interval_minutes",
    "enabled",
)


def parse_source(body: dict, current: SourceSpec | None = None) -> SourceSpec:
    """Validate a source definition (create), or a partial change of `current` (update).

    Every refusal is an InvalidRequest naming the field path (`$.fields[2].field`).
    """
    allowed = (*_SOURCE_KEYS, "watermark") if current is not None else _SOURCE_KEYS
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"unknown field {key!r}: expected {', '.join(allowed)}", f"$.{key}")
    if current is None:
        for key in ("auth", "object", "match_field", "fields"):
            if key not in body:
                raise InvalidRequest(f"{key} is required", f"$.{key}")
    object_ = _check_object(body["object"]) if "object" in body else current.object
    name = body.get("name", current.name if current else object_)
    name = _check_text(name, "$.name", "name")
    login_url = (
        _check_https_url(body["login_url"], "$.login_url")
        if "login_url" in body
        else (current.login_url if current else DEFAULT_LOGIN_URL)
    )
    api_version = body.get("api_version", current.api_version if current else DEFAULT_API_VERSION)
    if not isinstance(api_version, str) or not _API_VERSION.fullmatch(api_version):
        raise InvalidRequest("api_version is a REST API version such as `59.0` (no leading v)", "$.api_version")
    auth = _parse_auth(body["auth"], current.auth if current else None) if "auth" in body else current.auth
    match_field = (
        check_field_path(body["match_field"], "$.match_field") if "match_field" in body else current.match_field
    )
    fields = parse_fields(body["fields"], "field", check_field_path) if "fields" in body else current.fields
    interval = body.get("interval_minutes", current.interval_s // 60 if current else DEFAULT_INTERVAL_MINUTES)
    if (
        not isinstance(interval, int)
        or isinstance(interval, bool)
        or not MIN_INTERVAL_MINUTES <= interval <= MAX_INTERVAL_MINUTES
    ):
        raise InvalidRequest(
            f"interval_minutes is a whole number from {MIN_INTERVAL_MINUTES} to {MAX_INTERVAL_MINUTES}",
            "$.interval_minutes",
        )
    enabled = body.get("enabled", current.enabled if current else True)
    if not isinstance(enabled, bool):
        raise InvalidRequest("enabled must be true or false", "$.enabled")
    if "watermark" in body and body["watermark"] is not None:
        raise InvalidRequest("only null is accepted: it makes the next run import every record", "$.watermark")
    return SourceSpec(name, login_url, api_version, auth, object_, match_field, fields, interval * 60, enabled)


def select_fields(spec: SourceSpec) -> list[str]:
    """The SELECT list: Id, SystemModstamp, the match field and the mapped fields, each once."""
    out: list[str] = []
    seen: set[str] = set()
    for name in ("Id", "SystemModstamp", spec.match_field, *(f.payload for f in spec.fields)):
        if name.lower() not in seen:  # SOQL names are case-insensitive, and a repeat is an error
            seen.add(name.lower())
            out.append(name)
    return out


def build_query(spec: SourceSpec, watermark: str | None, upper: str) -> str:
    """The SOQL of one run: records modified after the watermark, up to `upper`, oldest first."""
    where = ([f"SystemModstamp > {watermark}"] if watermark else []) + [f"SystemModstamp <= {upper}"]
    return (
        f"SELECT {', '.join(select_fields(spec))} FROM {spec.object} "
        f"WHERE {' AND '.join(where)} ORDER BY SystemModstamp, Id"
    )


def soql_datetime(ms: int) -> str:
    """A SOQL dateTime literal (UTC, whole seconds)."""
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_soql_datetime(text: str) -> int:
    return int(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp() * 1000)


def parse_sf_datetime(value: object) -> int | None:
    """Milliseconds of a REST dateTime (`2026-11-20T10:00:00.000+0000`), or None."""
    if not isinstance(value, str):
        return None
    try:
        return int(dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)
    except ValueError:
        return None


def _later(current: int | None, candidate: int) -> int:
    return candidate if current is None else max(current, candidate)


def _find_key(node: dict, name: str) -> str | None:
    if name in node:
        return name
    lower = name.lower()
    return next((k for k in node if k.lower() == lower), None)


def flatten_record(record: dict, paths: Iterable[str], date_paths: frozenset[str]) -> dict:
    """The record's values at the configured paths, keyed by those paths as written in the mapping.

    Salesforce names are case-insensitive (`email` selects `Email`); a null relationship makes its
    fields empty; a dateTime mapped as a date keeps its (UTC) day.
    """
    out: dict[str, object] = {}
    for path in paths:
        node: object = record
        found = True
        for part in path.split("."):
            if node is None:
                break
            key = _find_key(node, part) if isinstance(node, dict) else None
            if key is None:
                found = False
                break
            node = node[key]
        if not found:
            continue
        if path in date_paths and isinstance(node, str) and _SF_DATETIME.match(node):
            node = node[:10]
        out[path] = node
    return out


# --- runs ------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """What a run has done so far."""

    watermark_ms: int | None
    stage: str = "start"
    query: str | None = None
    pages: int = 0
    records: int = 0
    records_applied: int = 0
    values_applied: int = 0
    values_changed: int = 0
    logins: int = 0
    max_seen_ms: int | None = None
    errors: list[dict] = field(default_factory=list)
    error_count: int = 0

    @property
    def watermark(self) -> str | None:
        return None if self.watermark_ms is None else soql_datetime(self.watermark_ms)


class _Http(requests.Session):
    """requests with a timeout on every call (simple-salesforce sets none), so a hung org cannot stall runs.

    `verify` (a CA bundle path, or False) is passed with each request: requests lets
    REQUESTS_CA_BUNDLE override a session's own setting, but not a per-request one.
    """

    def __init__(self, verify: bool | str) -> None:
        super().__init__()
        self.ca_verify = verify

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
        if self.ca_verify is not True:
            kwargs.setdefault("verify", self.ca_verify)
        return super().request(method, url, *args, **kwargs)


def _salesforce_error(stage: str, exc: Exception) -> RunFailed:
    """A RunFailed carrying Salesforce's own error code and message where it sent them."""
    if isinstance(exc, SalesforceAuthenticationFailed):
        return RunFailed("login", str(exc.code or "authentication_failed"), exc.auth_message or str(exc))
    if isinstance(exc, SalesforceError):
        content = exc.content
        if isinstance(content, list) and content and isinstance(content[0], dict):
            first = content[0]
            return RunFailed(stage, str(first.get("errorCode", exc.status)), str(first.get("message", "")))
        return RunFailed(stage, f"http_{exc.status}", str(content)[:500])
    if isinstance(exc, requests.RequestException):
        return RunFailed(stage, "connection_failed", str(exc)[:500])
    raise exc


class _Connection:
    """One run's link to the org: a cached or new session, logging in again once when it has expired."""

    def __init__(self, importer: SalesforceImporter, source: Source, secret: dict[str, str], progress: _Progress):
        self.importer, self.source, self.secret, self.progress = importer, source, secret, progress
        self.http = _Http(importer.verify)
        self.client: Salesforce | None = None

    def close(self) -> None:
        self.http.close()

    def _connect(self, reuse: bool) -> Salesforce:
        key = (self.source.project_id, self.source.source_id)
        cached = self.importer.sessions.get(key) if reuse else None
        if cached is None or cached[0] != self.source.updated_at:
            self.progress.stage = "login"
            try:
                session_id, instance = self._login()
            except Exception as exc:
                raise _salesforce_error("login", exc) from None
            self.progress.logins += 1
            cached = (self.source.updated_at, instance, session_id)
            self.importer.sessions[key] = cached
        _, instance, session_id = cached
        return Salesforce(
            session_id=session_id, instance=instance, version=self.source.spec.api_version, session=self.http
        )

    def _login(self) -> tuple[str, str]:
        spec = self.source.spec
        if spec.auth.flow == "password":
            return SalesforceLogin(
                username=spec.auth.username,
                password=self.secret["password"],
                security_token=self.secret.get("security_token") or None,
                sf_version=spec.api_version,
                session=self.http,
                scratch_url=spec.login_url,  # the SOAP endpoint is <login URL>/services/Soap/u/<version>
            )
        if spec.auth.flow == "oauth_password":
            # The OAuth username-password flow: the security token, if any, is appended to the password.
            return token_login(
                f"{spec.login_url}/services/oauth2/token",
                {
                    "grant_type": "password",
                    "client_id": spec.auth.consumer_key,
                    "client_secret": self.secret["consumer_secret"],
                    "username": spec.auth.username,
                    "password": self.secret["password"] + self.secret.get("security_token", ""),
                },
                "login",
                spec.auth.consumer_key,
                None,
                None,
                self.http,
            )
        now_s = int(time.time())  # a protocol timestamp, checked against Salesforce's clock: not the run clock
        assertion = jwt.encode(
            {
                "iss": spec.auth.consumer_key,
                "sub": spec.auth.username,
                "aud": spec.auth.audience or spec.login_url,
                "exp": now_s + JWT_LIFETIME_S,
            },
            self.secret["private_key"],
            algorithm="RS256",
        )
        return token_login(
            f"{spec.login_url}/services/oauth2/token",
            {"grant_type": JWT_GRANT, "assertion": assertion},
            "login",
            spec.auth.consumer_key,
            None,
            None,
            self.http,
        )

    def call(self, request: Callable[[Salesforce], dict]) -> dict:
        """One REST call; a 401 (expired or revoked session) logs in once more and repeats it."""
        if self.client is None:
            self.client = self._connect(reuse=True)
        stage = self.progress.stage = "query"
        try:
            return request(self.client)
        except SalesforceExpiredSession:
            self.client = self._connect(reuse=False)
        except Exception as exc:
            raise _salesforce_error(stage, exc) from None
        self.progress.stage = stage
        try:
            return request(self.client)
        except Exception as exc:
            raise _salesforce_error(stage, exc) from None


def _source_from_row(row, secret: dict[str, str]) -> Source:
    fields = tuple(FieldMapping(f["field"], f["name"], f["type"]) for f in msgspec.json.decode(row.fields))
    auth = Auth(row.auth_flow, row.username, secret, row.consumer_key, row.audience)
    spec = SourceSpec(
        row.name,
        row.login_url,
        row.api_version,
        auth,
        row.object,
        row.match_field,
        fields,
        row.interval_s,
        bool(row.enabled),
    )
    return Source(
        row.project_id,
        row.source_id,
        spec,
        row.watermark,
        row.next_run_at,
        row.lease_until,
        row.last_run_id,
        row.created_at,
        row.updated_at,
        row.secrets,
    )


def _run_json(row, with_errors: bool) -> dict:
    out = {
        "run_id": row.run_id,
        "source_id": row.source_id,
        "trigger": row.trigger,
        "status": row.status,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "query": row.query,
        "pages": row.pages,
        "records": row.records,
        "records_applied": row.records_applied,
        "values_applied": row.values_applied,
        "values_changed": row.values_changed,
        "error_count": row.error_count,
        "error": None if row.error is None else msgspec.json.decode(row.error),
        "watermark_before": row.watermark_before,
        "watermark_after": row.watermark_after,
    }
    if with_errors:
        out["errors"] = msgspec.json.decode(row.errors)
    return out


class SalesforceImporter:
    """Salesforce sources of every project: configuration, runs now or on schedule, run history."""

    def __init__(
        self,
        engine: sa.Engine,
        attributes: AttributeStore,
        log: IntegrationLog,
        box: SecretBox,
        projects: ProjectStore,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.attributes = attributes
        self.log = log
        self.box = box
        self.projects = projects
        self.clock = clock or _now  # ms; tests move it to make sources due without waiting
        # TLS verification for Salesforce calls: True (system CAs, or REQUESTS_CA_BUNDLE), or a CA bundle path.
        self.verify: bool | str = True
        # This process's Salesforce sessions by source: (source updated_at, instance, session id).
        self.sessions: dict[tuple[int, str], tuple[int, str, str]] = {}
        self.checks = 0  # scheduler checks made (run_due calls)

    # configuration

    def _load(self, conn: sa.Connection, project_id: int, source_id: str) -> Source | None:
        row = conn.execute(
            sa.select(salesforce_sources).where(
                salesforce_sources.c.project_id == project_id, salesforce_sources.c.source_id == source_id
            )
        ).first()
        return None if row is None else _source_from_row(row, self._open(row.secrets))

    def _open(self, sealed: str) -> dict[str, str]:
        try:
            return self.box.open(sealed)
        except SecretsUnavailable:
            return {}  # shown as masked; a run reports the problem

    def _warnings(self, project_id: int, spec: SourceSpec) -> list[str]:
        registry = {a["name"]: a["type"] for a in self.attributes.registry(project_id)}
        return check_against_registry(registry, spec.fields)

    def _columns(self, spec: SourceSpec) -> dict:
        return {
            "name": spec.name,
            "login_url": spec.login_url,
            "api_version": spec.api_version,
            "auth_flow": spec.auth.flow,
            "username": spec.auth.username,
            "consumer_key": spec.auth.consumer_key,
            "audience": spec.auth.audience,
            "secrets": self.box.seal(spec.auth.secrets),
            "object": spec.object,
            "match_field": spec.match_field,
            "fields": _encode([{"field": f.payload, "name": f.name, "type": f.type} for f in spec.fields]),
            "interval_s": spec.interval_s,
            "enabled": spec.enabled,
        }

    def create(self, project_id: int, spec: SourceSpec, actor: str | None = None) -> tuple[Source, list[str]]:
        """Store a source (its first run is due at once); raises InvalidRequest for a type clash."""
        warnings = self._warnings(project_id, spec)
        now = self.clock()
        source_id = f"{ID_PREFIX}{project_id}_{secrets.token_hex(6)}"
        columns = self._columns(spec)
        with write_transaction(self.engine) as conn:
            conn.execute(
                salesforce_sources.insert().values(
                    project_id=project_id,
                    source_id=source_id,
                    **columns,
                    watermark=None,
                    next_run_at=now,
                    lease_until=None,
                    lease_owner=None,
                    last_run_id=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._log_change(conn, project_id, source_id, "source.create", spec, actor, warnings, now)
        return Source(project_id, source_id, spec, None, now, None, None, now, now, columns["secrets"]), warnings

    def _log_change(self, conn, project_id, source_id, kind, spec, actor, warnings, now, **extra) -> None:
        self.log.append(
            project_id,
            SOURCE,
            kind,
            integration_id=source_id,
            details={
                "by": actor,
                "name": spec.name,
                "object": spec.object,
                "fields": len(spec.fields),
                "warnings": warnings,
                **extra,
            },
            ts=now,
            conn=conn,
        )

    def get(self, project_id: int, source_id: str) -> Source | None:
        with self.engine.connect() as conn:
            return self._load(conn, project_id, source_id)

    def sources(self, project_id: int | None = None) -> list[Source]:
        """The sources of a project (or of every project), oldest first."""
        query = sa.select(salesforce_sources).order_by(
            salesforce_sources.c.project_id, salesforce_sources.c.created_at, salesforce_sources.c.source_id
        )
        if project_id is not None:
            query = query.where(salesforce_sources.c.project_id == project_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_source_from_row(r, self._open(r.secrets)) for r in rows]

    def update(self, project_id: int, source_id: str, body: dict, actor: str | None = None) -> tuple[Source, list[str]]:
        """Change part of a source; raises SourceNotFound, InvalidRequest.

        A new object, match field or mapping (or `"watermark": null`) resets the watermark, so the
        next run reads every record again with the new mapping.
        """
        current = self.get(project_id, source_id)
        if current is None:
            raise SourceNotFound(source_id)
        spec = parse_source(body, current.spec)
        warnings = self._warnings(project_id, spec)
        remap = (spec.object, spec.match_field, spec.fields) != (
            current.spec.object,
            current.spec.match_field,
            current.spec.fields,
        )
        reset = remap or ("watermark" in body)
        now = max(self.clock(), current.updated_at + 1)  # updated_at versions the cached session
        values = {**self._columns(spec), "updated_at": now}
        if not spec.auth.secrets:  # sealed with a key this server lacks: keep them as they are
            values["secrets"] = current.sealed
        if reset:
            values["watermark"] = None
        if spec.interval_s != current.spec.interval_s or (spec.enabled and not current.spec.enabled):
            values["next_run_at"] = min(current.next_run_at, now + spec.interval_s * 1000)
        with write_transaction(self.engine) as conn:
            result = conn.execute(
                salesforce_sources.update()
                .where(salesforce_sources.c.project_id == project_id, salesforce_sources.c.source_id == source_id)
                .values(**values)
            )
            if result.rowcount != 1:
                raise SourceNotFound(source_id)
            self._log_change(
                conn, project_id, source_id, "source.update", spec, actor, warnings, now, watermark_reset=reset
            )
            updated = self._load(conn, project_id, source_id)
        assert updated is not None
        self.sessions.pop((project_id, source_id), None)
        return updated, warnings

    def delete(self, project_id: int, source_id: str, actor: str | None = None) -> Source:
        """Delete a source and its run history; raises SourceNotFound, RunInProgress."""
        now = self.clock()
        with write_transaction(self.engine) as conn:
            source = self._load(conn, project_id, source_id)
            if source is None:
                raise SourceNotFound(source_id)
            if source.lease_until is not None and source.lease_until > now:
                raise RunInProgress(source_id)
            where = (salesforce_runs.c.project_id == project_id, salesforce_runs.c.source_id == source_id)
            conn.execute(salesforce_runs.delete().where(*where))
            conn.execute(
                salesforce_sources.delete().where(
                    salesforce_sources.c.project_id == project_id, salesforce_sources.c.source_id == source_id
                )
            )
            self._log_change(conn, project_id, source_id, "source.delete", source.spec, actor, [], now)
        self.sessions.pop((project_id, source_id), None)
        return source

    # run history

    def runs(self, project_id: int, source_id: str, limit: int = 100, before: str | None = None) -> list[dict]:
        """Runs of a source, newest first (without their per-record errors)."""
        r = salesforce_runs
        query = sa.select(r).where(r.c.project_id == project_id, r.c.source_id == source_id)
        if before:
            query = query.where(r.c.run_id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(r.c.run_id.desc()).limit(limit)).all()
        return [_run_json(row, with_errors=False) for row in rows]

    def run_result(self, project_id: int, source_id: str, run_id: str) -> dict | None:
        """One run with its per-record errors (the first 1,000)."""
        r = salesforce_runs
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(r).where(r.c.project_id == project_id, r.c.source_id == source_id, r.c.run_id == run_id)
            ).first()
        return None if row is None else _run_json(row, with_errors=True)

    def last_runs(self, sources: list[Source]) -> dict[str, dict]:
        """The last run of each source, by source id."""
        ids = [s.last_run_id for s in sources if s.last_run_id]
        if not ids:
            return {}
        r = salesforce_runs
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(r).where(r.c.project_id.in_({s.project_id for s in sources}), r.c.run_id.in_(ids))
            ).all()
        return {row.source_id: _run_json(row, with_errors=False) for row in rows}

    # running

    def run(self, project_id: int, source_id: str, trigger: str = "api") -> dict:
        """Run one source now, whatever its schedule; raises SourceNotFound, RunInProgress."""
        source, run_id = self._claim(project_id, source_id, self.clock(), trigger, due_only=False)
        return self._execute(source, run_id)

    def run_due(self) -> list[dict]:
        """Run every enabled source whose time has come (the server's loop calls this)."""
        self.checks += 1
        now = self.clock()
        s = salesforce_sources
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(s.c.project_id, s.c.source_id)
                .where(
                    s.c.enabled.is_(True),
                    s.c.next_run_at <= now,
                    sa.or_(s.c.lease_until.is_(None), s.c.lease_until < now),
                )
                .order_by(s.c.next_run_at)
                .limit(DUE_BATCH)
            ).all()
        results = []
        for project_id, source_id in due:
            try:
                source, run_id = self._claim(project_id, source_id, now, "schedule", due_only=True)
            except (RunInProgress, SourceNotFound):  # another process took it, or it was just deleted
                continue
            results.append(self._execute(source, run_id))
        return results

    def _claim(self, project_id: int, source_id: str, now: int, trigger: str, due_only: bool) -> tuple[Source, str]:
        """Take the source's lease and open a run; the next scheduled run is one interval away."""
        s, r = salesforce_sources, salesforce_runs
        with write_transaction(self.engine) as conn:
            source = self._load(conn, project_id, source_id)
            if source is None:
                raise SourceNotFound(source_id)
            # Run ids sort in run order even when the clock stands still or steps back.
            last = int(source.last_run_id[:13]) if source.last_run_id else 0
            run_id = f"{max(now, last + 1):013d}-{secrets.token_hex(6)}"
            conditions = [
                s.c.project_id == project_id,
                s.c.source_id == source_id,
                sa.or_(s.c.lease_until.is_(None), s.c.lease_until < now),
            ]
            if due_only:
                conditions += [s.c.enabled.is_(True), s.c.next_run_at <= now]
            claimed = conn.execute(
                s.update()
                .where(*conditions)
                .values(
                    lease_until=now + LEASE_S * 1000,
                    lease_owner=run_id,
                    next_run_at=now + source.spec.interval_s * 1000,
                )
            )
            if claimed.rowcount != 1:
                raise RunInProgress(source_id)
            # A run still "running" lost its process: its lease lapsed, or we could not have claimed.
            conn.execute(
                r.update()
                .where(r.c.project_id == project_id, r.c.source_id == source_id, r.c.status == "running")
                .values(
                    status="failed",
                    finished_at=now,
                    error=_encode(RunFailed("run", "interrupted", "the process running it stopped").as_json()),
                )
            )
            conn.execute(
                r.insert().values(
                    project_id=project_id,
                    run_id=run_id,
                    source_id=source_id,
                    trigger=trigger,
                    status="running",
                    started_at=now,
                    finished_at=None,
                    query=None,
                    pages=0,
                    records=0,
                    records_applied=0,
                    values_applied=0,
                    values_changed=0,
                    error_count=0,
                    errors="[]",
                    error=None,
                    watermark_before=source.watermark,
                    watermark_after=None,
                )
            )
        return source, run_id

    def _execute(self, source: Source, run_id: str) -> dict:
        progress = _Progress(None if source.watermark is None else parse_soql_datetime(source.watermark))
        error: RunFailed | None = None
        try:
            self._import(source, run_id, progress)
        except RunFailed as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected answer: the run fails, the scheduler goes on
            log.exception("salesforce run %s of %s failed", run_id, source.source_id)
            error = RunFailed(progress.stage, "internal_error", f"{type(exc).__name__}: {exc}"[:500])
        return self._finish(source, run_id, progress, error)

    def _import(self, source: Source, run_id: str, progress: _Progress) -> None:
        spec = source.spec
        progress.stage = "settings"
        environments = self.projects.environments(source.project_id)
        if all(e.uuid.provider == "none" for e in environments.values()):
            raise RunFailed(
                "settings",
                "uuid_settings_required",
                "end users and their attributes exist only with UUID settings: set an identification provider",
            )
        progress.stage = "credentials"
        try:
            secret = self.box.open(source.sealed)
        except SecretsUnavailable as exc:
            raise RunFailed("credentials", "secrets_unavailable", str(exc)) from None
        upper = soql_datetime(self.clock() - SETTLE_S * 1000)
        progress.query = build_query(spec, source.watermark, upper)
        paths = list(dict.fromkeys([spec.match_field, *(f.payload for f in spec.fields)]))  # as spelled
        date_paths = frozenset(f.payload for f in spec.fields if f.type == "date")
        connection = _Connection(self, source, secret, progress)
        try:
            page = connection.call(lambda sf: sf.query(progress.query))
            while True:
                self._apply_page(source, run_id, page.get("records") or [], paths, date_paths, progress)
                next_url = page.get("nextRecordsUrl")
                if page.get("done", True) or not next_url:
                    break
                page = connection.call(lambda sf, url=next_url: sf.query_more(url, identifier_is_url=True))
        finally:
            connection.close()
        if progress.max_seen_ms is not None:  # every record up to the newest one seen has been read
            progress.watermark_ms = _later(progress.watermark_ms, progress.max_seen_ms - progress.max_seen_ms % 1000)

    def _apply_page(
        self,
        source: Source,
        run_id: str,
        records: list[dict],
        paths: list[str],
        date_paths: frozenset[str],
        progress: _Progress,
    ) -> None:
        progress.stage = "write"
        flat = [flatten_record(r, paths, date_paths) for r in records]
        applied = apply_records(self.attributes, source.project_id, SOURCE, flat, source.spec)
        for e in applied.errors:
            if len(progress.errors) < MAX_STORED_ERRORS:
                record = records[e["record"]]
                progress.errors.append(
                    {
                        "record": progress.records + e["record"],
                        "id": record.get("Id") if isinstance(record, dict) else None,
                        "field": e["field"],
                        "attribute": e["attribute"],
                        "reason": e["reason"],
                    }
                )
        progress.error_count += len(applied.errors)
        progress.pages += 1
        progress.records += len(records)
        progress.records_applied += applied.records_applied
        progress.values_applied += applied.report.applied
        progress.values_changed += applied.report.changed
        stamps = [ms for ms in (parse_sf_datetime(r.get("SystemModstamp")) for r in records) if ms is not None]
        if stamps:
            newest = max(stamps)
            progress.max_seen_ms = _later(progress.max_seen_ms, newest)
            # Records come oldest first, but the next page may hold more of this same second: a run
            # that stops here resumes from just before it (re-writing a value is harmless).
            progress.watermark_ms = _later(progress.watermark_ms, newest - newest % 1000 - 1000)
        now = self.clock()
        s, r = salesforce_sources, salesforce_runs
        with write_transaction(self.engine) as conn:
            conn.execute(
                r.update()
                .where(r.c.project_id == source.project_id, r.c.run_id == run_id)
                .values(
                    query=progress.query,
                    pages=progress.pages,
                    records=progress.records,
                    records_applied=progress.records_applied,
                    values_applied=progress.values_applied,
                    values_changed=progress.values_changed,
                    error_count=progress.error_count,
                )
            )
            conn.execute(
                s.update()
                .where(
                    s.c.project_id == source.project_id, s.c.source_id == source.source_id, s.c.lease_owner == run_id
                )
                .values(lease_until=now + LEASE_S * 1000)
            )
            self._save_watermark(conn, source, progress)

    @staticmethod
    def _save_watermark(conn: sa.Connection, source: Source, progress: _Progress) -> None:
        """Move the watermark, unless the source was changed meanwhile (a new mapping starts over)."""
        s = salesforce_sources
        conn.execute(
            s.update()
            .where(
                s.c.project_id == source.project_id,
                s.c.source_id == source.source_id,
                s.c.updated_at == source.updated_at,
            )
            .values(watermark=progress.watermark)
        )

    def _finish(self, source: Source, run_id: str, progress: _Progress, error: RunFailed | None) -> dict:
        now = self.clock()
        status = "failed" if error else "done"
        s, r = salesforce_sources, salesforce_runs
        pid, sid = source.project_id, source.source_id
        with write_transaction(self.engine) as conn:
            conn.execute(
                r.update()
                .where(r.c.project_id == pid, r.c.run_id == run_id)
                .values(
                    status=status,
                    finished_at=now,
                    query=progress.query,
                    pages=progress.pages,
                    records=progress.records,
                    records_applied=progress.records_applied,
                    values_applied=progress.values_applied,
                    values_changed=progress.values_changed,
                    error_count=progress.error_count,
                    errors=_encode(progress.errors),
                    error=None if error is None else _encode(error.as_json()),
                    watermark_after=progress.watermark,
                )
            )
            self._save_watermark(conn, source, progress)
            conn.execute(
                s.update()
                .where(s.c.project_id == pid, s.c.source_id == sid, s.c.lease_owner == run_id)
                .values(lease_until=None, lease_owner=None, last_run_id=run_id)
            )
            oldest_kept = conn.execute(
                sa.select(r.c.run_id)
                .where(r.c.project_id == pid, r.c.source_id == sid)
                .order_by(r.c.run_id.desc())
                .offset(RUNS_KEPT - 1)
                .limit(1)
            ).scalar()
            if oldest_kept is not None:
                conn.execute(r.delete().where(r.c.project_id == pid, r.c.source_id == sid, r.c.run_id < oldest_kept))
            self.log.append(
                pid,
                SOURCE,
                "import.failed" if error else "import",
                records=progress.records,
                applied=progress.records_applied,
                errors=([error.as_json()] if error else []) + progress.errors,
                error_count=progress.error_count + (1 if error else 0),
                integration_id=sid,
                request_id=run_id,
                details={
                    "name": source.spec.name,
                    "object": source.spec.object,
                    "status": status,
                    "pages": progress.pages,
                    "values_applied": progress.values_applied,
                    "values_changed": progress.values_changed,
                    "watermark_before": source.watermark,
                    "watermark_after": progress.watermark,
                    "logins": progress.logins,
                },
                ts=now,
                conn=conn,
            )
            row = conn.execute(sa.select(r).where(r.c.project_id == pid, r.c.run_id == run_id)).first()
        if row is None:  # the source was deleted while it ran
            return {"run_id": run_id, "source_id": sid, "status": status, "error": error and error.as_json()}
        return _run_json(row, with_errors=True)


def build_importer(engine: sa.Engine, data_dir: Path, projects: ProjectStore | None = None) -> SalesforceImporter:
    """The importer with the usual stores and the server's secrets key (`USERTRAIL_SECRETS_KEY` or data dir)."""
    return SalesforceImporter(
        engine,
        AttributeStore(engine),
        IntegrationLog(engine),
        SecretBox.from_environment(data_dir),
        projects or ProjectStore(engine),
    )
