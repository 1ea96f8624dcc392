"""The End User Update API, shaped like WalkMe's: API clients, OAuth2 client-credentials tokens, and
the update call that maps records onto custom attributes (docs/integrations.md).

This module holds the rules and the storage; `web/update_api_routes.py` is the HTTP shell.

- An API client is one integration: a name (the `source` of what it writes), the dotted path of
  the end-user id in each record, and the allow-listed fields with their rename and type.
- Credentials embed their project id (`uc_<project>_…`, `uat_<project>_…`): every lookup is by
  `(project_id, …)`, and a client of one project can never reach another project's rows.
- Secrets and access tokens are stored as SHA-256 only.
- Rate-limit counters, idempotency keys and request results live in the database, so they hold
  across every server process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import msgspec
import sqlalchemy as sa

from usertrail.integrations import IntegrationLog
from usertrail.integrations.user_keys import UserKey, plain_key, user_key_function
from usertrail.profiles.custom import ATTRIBUTE_TYPES, CAP, check_name, user_id_text
from usertrail.store.attributes import AttributeStore, WriteReport
from usertrail.store.database import insert_ignore, lock_key, upsert_add, write_transaction
from usertrail.store.schema import (
    integration_clients,
    integration_rate_limits,
    integration_requests,
    integration_tokens,
)

SCOPE_WRITE = "endUserUpdate:write"
SCOPES = (SCOPE_WRITE,)
TOKEN_TTL_S = 86_400  # 24 h, as WalkMe
MAX_RECORDS = 100  # per update call, as WalkMe
RATE_LIMIT = 50  # update calls per client per window (UserGuiding's 50 per 10 s)
RATE_WINDOW_S = 10
IDEMPOTENCY_LEASE_S = 60  # a claimed key whose request never finished can be taken over after this
REQUEST_RETENTION_DAYS = 7  # request results (and so idempotency keys) are kept this long
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_STORED_ERRORS = 1_000  # per request result; the count is always complete
MAX_IGNORED_REPORTED = 100
MAX_IDEMPOTENCY_KEY = 255
MAX_PATH = 256
MAX_INTEGRATION_NAME = 100
RESERVED_NAMES = ("admin_api", "salesforce", "csv", "s3")  # sources the server itself writes
CLIENT_PREFIX = "uc_"
TOKEN_PREFIX = "uat_"
KIND = "api"  # the integration kind in the log's details

DAY_MS = 86_400_000


def _now() -> int:
    return int(time.time() * 1000)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


# --- errors ----------------------------------------------------------------------------------


class InvalidRequest(ValueError):
    """A body that cannot be used; `path` names the offending field (`$.fields[2].type`)."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path


class NameTaken(ValueError):
    """Another active client of the project already has this integration name."""


class OAuthError(Exception):
    """An RFC 6749 §5.2 error of the token endpoint."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class AuthError(Exception):
    """A bearer token that does not allow the call: 401 (missing, unknown, expired) or 403."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used with another body, or its first request is still running."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error, self.reason = error, reason


# --- clients and their mapping ---------------------------------------------------------------


@dataclass(frozen=True)
class FieldMapping:
    payload: str  # dotted path in the record
    name: str  # the attribute name it is stored as
    type: str

    def as_json(self) -> dict:
        return {"payload": self.payload, "name": self.name, "type": self.type}


@dataclass(frozen=True)
class ClientSpec:
    name: str
    user_id_property: str
    fields: tuple[FieldMapping, ...]


@dataclass(frozen=True)
class ApiClient:
    project_id: int
    client_id: str
    name: str
    user_id_property: str
    fields: tuple[FieldMapping, ...]
    created_at: int
    revoked_at: int | None

    def as_json(self) -> dict:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "user_id_property": self.user_id_property,
            "fields": [f.as_json() for f in self.fields],
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "status": "revoked" if self.revoked_at is not None else "active",
        }


@dataclass(frozen=True)
class NewClient:
    client: ApiClient
    secret: str  # shown once
    warnings: list[str]


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str

    def as_json(self) -> dict:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


@dataclass(frozen=True)
class TokenGrant:
    """What a valid access token allows: one client of one project."""

    client: ApiClient
    scopes: frozenset[str]
    expires_at: int

    @property
    def project_id(self) -> int:
        return self.client.project_id


def _check_path(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("expected a non-empty dotted path such as `properties.ID`", where)
    if len(value) > MAX_PATH:
        raise InvalidRequest(f"paths are at most {MAX_PATH} characters", where)
    if any(not part for part in value.split(".")):
        raise InvalidRequest(f"{value!r} has an empty segment; write a dotted path such as `properties.ID`", where)
    return value


def parse_client_spec(body: dict) -> ClientSpec:
    """Validate an API-client definition; every refusal names the field path."""
    for key in body:
        if key not in ("name", "user_id_property", "fields"):
            raise InvalidRequest(f"unknown field {key!r}: expected name, user_id_property and fields", f"$.{key}")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("the integration needs a name (a non-empty string)", "$.name")
    name = name.strip()
    if len(name) > MAX_INTEGRATION_NAME:
        raise InvalidRequest(f"names are at most {MAX_INTEGRATION_NAME} characters", "$.name")
    if name in RESERVED_NAMES:
        raise InvalidRequest(f"{name!r} is reserved for the server's own writes", "$.name")
    user_id_property = _check_path(body.get("user_id_property"), "$.user_id_property")
    return ClientSpec(name, user_id_property, parse_fields(body.get("fields")))


def parse_fields(
    raw_fields: object, source_key: str = "payload", check_source: Callable[[object, str], str] = _check_path
) -> tuple[FieldMapping, ...]:
    """Validate a list of `{<source_key>, name, type}` mappings (at `$.fields`); names default to the source.

    Shared by every integration that maps records onto attributes; `check_source` validates the
    source path in the integration's own syntax.
    """
    shape = f"{{{source_key}, name, type}}"
    if not isinstance(raw_fields, list) or not raw_fields:
        raise InvalidRequest(f"fields must be a non-empty list of {shape}", "$.fields")
    if len(raw_fields) > CAP:
        raise InvalidRequest(f"at most {CAP} fields (the project's attribute cap)", "$.fields")
    fields: list[FieldMapping] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_fields):
        where = f"$.fields[{i}]"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"expected an object {shape}", where)
        for key in raw:
            if key not in (source_key, "name", "type"):
                raise InvalidRequest(f"unknown field {key!r}: expected {source_key}, name and type", f"{where}.{key}")
        payload = check_source(raw.get(source_key), f"{where}.{source_key}")
        attr = raw.get("name", payload)
        problem = check_name(attr)
        if problem:
            raise InvalidRequest(problem, f"{where}.name")
        if attr in names:
            raise InvalidRequest(f"the attribute name {attr!r} is mapped twice", f"{where}.name")
        names.add(attr)
        type_ = raw.get("type")
        if type_ not in ATTRIBUTE_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(ATTRIBUTE_TYPES)}", f"{where}.type")
        fields.append(FieldMapping(payload, attr, type_))
    return tuple(fields)


def check_against_registry(registry: dict[str, str], fields: tuple[FieldMapping, ...]) -> list[str]:
    """Refuse a mapping whose type clashes with the registry (at `$.fields[i].type`); warn past the cap."""
    for i, mapping in enumerate(fields):
        registered = registry.get(mapping.name)
        if registered is not None and registered != mapping.type:
            raise InvalidRequest(
                f"{mapping.name!r} is already registered as {registered}; map it as {registered}",
                f"$.fields[{i}].type",
            )
    new_names = [f.name for f in fields if f.name not in registry]
    warnings = []
    if len(registry) + len(new_names) > CAP:
        room = max(0, CAP - len(registry))
        warnings.append(
            f"the project has {len(registry)} of {CAP} custom attributes; only {room} of the "
            f"{len(new_names)} new names can be registered: values of the others will be refused"
        )
    return warnings


def _client_from_row(row) -> ApiClient:
    fields = tuple(FieldMapping(f["payload"], f["name"], f["type"]) for f in msgspec.json.decode(row.fields))
    return ApiClient(
        row.project_id, row.client_id, row.name, row.user_id_property, fields, row.created_at, row.revoked_at
    )


def project_of(credential: str, prefix: str) -> int | None:
    """The project id a client id or access token was issued for, or None if it is malformed."""
    if not credential.startswith(prefix):
        return None
    number, sep, rest = credential[len(prefix) :].partition("_")
    if not sep or not rest or not number.isdigit() or len(number) > 12:
        return None
    return int(number)


# --- records → attribute values --------------------------------------------------------------


def lookup(record: dict, path: str) -> tuple[bool, object]:
    """The value at a dotted path (`properties.ID`); a flat key that itself holds dots also matches."""
    node: object = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            break
    else:
        return True, node
    if path in record:
        return True, record[path]
    return False, None


def _leaf_paths(node: dict, known: set[str], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in known:
            continue
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, known, path + ".")
        else:
            yield path


class RecordMapping(Protocol):
    """Where a record holds the end-user id, and its allow-listed fields (an API client, an import source)."""

    @property
    def user_id_property(self) -> str: ...

    @property
    def fields(self) -> tuple[FieldMapping, ...]: ...


@dataclass
class MappedRecords:
    """Records ready for `AttributeStore.write`, and what mapping already refused or ignored."""

    records: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index in `data` of each mapped record
    errors: list[dict] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)


def record_error(index: int, reason: str, field_path: str | None = None, attribute: str | None = None) -> dict:
    path = f"$.data[{index}]" + (f".{field_path}" if field_path else "")
    return {"record": index, "field": field_path, "attribute": attribute, "path": path, "reason": reason}


def map_records(data: list, client: RecordMapping, user_key: UserKey = plain_key) -> MappedRecords:
    """Take each record's id and allow-listed fields (renamed); refuse records without a usable id.

    `user_key` turns the id into the end-user key (hashed when the UUID settings hash ids).
    """
    out = MappedRecords()
    known = {client.user_id_property, *(f.payload for f in client.fields)}
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            out.errors.append(record_error(index, "expected a JSON object"))
            continue
        found, raw_id = lookup(record, client.user_id_property)
        if not found:
            out.errors.append(
                record_error(index, "the record has no end-user id at this path", client.user_id_property)
            )
            continue
        try:
            user_id = user_id_text(raw_id)
        except ValueError as exc:
            out.errors.append(record_error(index, str(exc), client.user_id_property))
            continue
        values: dict[str, object] = {}
        for mapping in client.fields:
            present, value = lookup(record, mapping.payload)
            if present:
                values[mapping.name] = value
        out.ignored.update(_leaf_paths(record, known))
        if not values:
            payloads = ", ".join(f.payload for f in client.fields)
            out.errors.append(record_error(index, f"the record holds none of the mapped fields ({payloads})"))
            continue
        out.records.append((user_key(user_id), values))
        out.positions.append(index)
    return out


@dataclass(frozen=True)
class AppliedRecords:
    """What writing mapped records did: the store's report, every error by record, records applied."""

    report: WriteReport
    errors: list[dict]
    records_applied: int  # records with at least one value stored
    ignored: set[str]


def apply_records(
    attributes: AttributeStore, project_id: int, source: str, data: list, mapping: RecordMapping
) -> AppliedRecords:
    """Map records (`map_records`, ids keyed as collection keys them) and write them as `source` in one
    `AttributeStore.write`.

    Mapping errors and the store's per-field errors (types, the cap) come back together, in
    record order, each naming the record's index in `data` and the mapped source path.
    """
    mapped = map_records(data, mapping, user_key_function(attributes.engine, project_id))
    types = {f.name: f.type for f in mapping.fields}
    payload_of = {f.name: f.payload for f in mapping.fields}
    report = attributes.write(project_id, source, mapped.records, types)
    errors = list(mapped.errors)
    failed_values = [0] * len(mapped.records)
    for e in report.errors:
        failed_values[e.record] += 1
        errors.append(record_error(mapped.positions[e.record], e.reason, payload_of.get(e.field, e.field), e.field))
    errors.sort(key=lambda e: e["record"])
    applied = sum(1 for (_, values), failed in zip(mapped.records, failed_values, strict=True) if failed < len(values))
    return AppliedRecords(report, errors, applied, mapped.ignored)


def validate_update_body(body: object) -> list:
    """The `data` list of an update call's body (`{"data": [...]}`, WalkMe's `token` tolerated)."""
    if not isinstance(body, dict):
        raise InvalidRequest('expected a JSON object {"data": [...]}', "$")
    for key in body:
        if key not in ("data", "token"):
            raise InvalidRequest(f"unknown field {key!r}: expected data", f"$.{key}")
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidRequest("data must be a list of records", "$.data")
    if not data:
        raise InvalidRequest(f"data must hold 1 to {MAX_RECORDS} records", "$.data")
    if len(data) > MAX_RECORDS:
        raise InvalidRequest(f"at most {MAX_RECORDS} records per call, got {len(data)}", "$.data")
    return data


def body_hash(body: object) -> str:
    """The same JSON value gives the same hash, whatever its key order or whitespace."""
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


@dataclass(frozen=True)
class UpdateOutcome:
    request_id: str
    result: dict
    replayed: bool = False


# --- the service -----------------------------------------------------------------------------


class UpdateApi:
    """API clients, tokens, the update call, its rate limit, idempotency and results."""

    def __init__(
        self,
        engine: sa.Engine,
        attributes: AttributeStore,
        log: IntegrationLog,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.attributes = attributes
        self.log = log
        self.clock = clock or _now  # ms; tests move it to expire tokens or pin a rate window
        self.rate_limit = RATE_LIMIT
        self.rate_window_ms = RATE_WINDOW_S * 1000
        # SQLite runs one write at a time anyway; queueing this process's writes here instead of in
        # the database keeps waiting threads from polling for the lock and taking the GIL from the writer.
        self._write_gate = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    # clients

    def create_client(self, project_id: int, spec: ClientSpec, actor: str | None = None) -> NewClient:
        """Register a client; raises InvalidRequest (a type clashing with the registry) or NameTaken."""
        registry = {a["name"]: a["type"] for a in self.attributes.registry(project_id)}
        warnings = check_against_registry(registry, spec.fields)
        now = self.clock()
        client_id = f"{CLIENT_PREFIX}{project_id}_{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        with write_transaction(self.engine) as conn:
            lock_key(conn, "integration-clients", project_id)
            taken = conn.execute(
                sa.select(integration_clients.c.client_id).where(
                    integration_clients.c.project_id == project_id,
                    integration_clients.c.name == spec.name,
                    integration_clients.c.revoked_at.is_(None),
                )
            ).first()
            if taken is not None:
                raise NameTaken(f"the active client {taken.client_id} already uses the name {spec.name!r}")
            conn.execute(
                integration_clients.insert().values(
                    project_id=project_id,
                    client_id=client_id,
                    name=spec.name,
                    secret_hash=_sha256(secret),
                    user_id_property=spec.user_id_property,
                    fields=_encode([f.as_json() for f in spec.fields]),
                    created_at=now,
                    revoked_at=None,
                )
            )
            self.log.append(
                project_id,
                spec.name,
                "client.create",
                integration_id=client_id,
                details={"kind": KIND, "by": actor, "fields": len(spec.fields), "warnings": warnings},
                ts=now,
                conn=conn,
            )
        client = ApiClient(project_id, client_id, spec.name, spec.user_id_property, spec.fields, now, None)
        return NewClient(client, secret, warnings)

    def clients(self, project_id: int) -> list[ApiClient]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(integration_clients)
                .where(integration_clients.c.project_id == project_id)
                .order_by(integration_clients.c.created_at, integration_clients.c.client_id)
            ).all()
        return [_client_from_row(r) for r in rows]

    def revoke_client(self, project_id: int, client_id: str, actor: str | None = None) -> ApiClient | None:
        """Revoke a client (its tokens then answer 403); None if the project has no such client."""
        now = self.clock()
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(integration_clients).where(
                    integration_clients.c.project_id == project_id, integration_clients.c.client_id == client_id
                )
            ).first()
            if row is None:
                return None
            if row.revoked_at is None:
                conn.execute(
                    integration_clients.update()
                    .where(integration_clients.c.project_id == project_id, integration_clients.c.client_id == client_id)
                    .values(revoked_at=now)
                )
                self.log.append(
                    project_id,
                    row.name,
                    "client.revoke",
                    integration_id=client_id,
                    details={"kind": KIND, "by": actor},
                    ts=now,
                    conn=conn,
                )
                return replace(_client_from_row(row), revoked_at=now)
        return _client_from_row(row)

    # tokens

    def authenticate_client(self, client_id: str, secret: str) -> ApiClient:
        """The client these credentials belong to; raises OAuthError 401 `invalid_client`."""
        refused = OAuthError(401, "invalid_client", "unknown client, wrong secret, or revoked client")
        project_id = project_of(client_id, CLIENT_PREFIX)
        if project_id is None:
            raise refused
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(integration_clients).where(
                    integration_clients.c.project_id == project_id, integration_clients.c.client_id == client_id
                )
            ).first()
        if row is None:
            raise refused
        good_secret = hmac.compare_digest(row.secret_hash, _sha256(secret))
        if not good_secret or row.revoked_at is not None:
            self.log.append(
                project_id,
                row.name,
                "token.refuse",
                integration_id=client_id,
                errors=[{"reason": "wrong client secret" if not good_secret else "the client is revoked"}],
                details={"kind": KIND},
                ts=self.clock(),
            )
            raise refused
        return _client_from_row(row)

    def issue_token(self, client: ApiClient, scope: str | None) -> IssuedToken:
        """A 24-hour access token; raises OAuthError 400 `invalid_scope`. Also purges the client's stale rows."""
        requested = (scope or SCOPE_WRITE).split()
        unknown = [s for s in requested if s not in SCOPES]
        if unknown or not requested:
            raise OAuthError(400, "invalid_scope", f"unknown scope {' '.join(unknown)!r}; use {SCOPE_WRITE}")
        granted = " ".join(s for s in SCOPES if s in requested)
        now = self.clock()
        token = f"{TOKEN_PREFIX}{client.project_id}_{secrets.token_urlsafe(32)}"
        pid, cid = client.project_id, client.client_id
        with write_transaction(self.engine) as conn:
            conn.execute(
                integration_tokens.insert().values(
                    project_id=pid,
                    token_hash=_sha256(token),
                    client_id=cid,
                    scope=granted,
                    issued_at=now,
                    expires_at=now + TOKEN_TTL_S * 1000,
                )
            )
            # Housekeeping on a rare, per-client call: expired tokens, old results and counters.
            conn.execute(
                integration_tokens.delete().where(
                    integration_tokens.c.project_id == pid,
                    integration_tokens.c.client_id == cid,
                    integration_tokens.c.expires_at <= now,
                )
            )
            conn.execute(
                integration_requests.delete().where(
                    integration_requests.c.project_id == pid,
                    integration_requests.c.client_id == cid,
                    integration_requests.c.received_at < now - REQUEST_RETENTION_DAYS * DAY_MS,
                )
            )
            conn.execute(
                integration_rate_limits.delete().where(
                    integration_rate_limits.c.project_id == pid,
                    integration_rate_limits.c.client_id == cid,
                    integration_rate_limits.c.window_start < now - self.rate_window_ms,
                )
            )
            self.log.append(
                pid,
                client.name,
                "token.issue",
                integration_id=cid,
                details={"kind": KIND, "scope": granted, "expires_at": now + TOKEN_TTL_S * 1000},
                ts=now,
                conn=conn,
            )
        return IssuedToken(token, TOKEN_TTL_S, granted)

    def authenticate(self, token: str, scope: str = SCOPE_WRITE) -> TokenGrant:
        """The grant of a bearer token; raises AuthError 401 (unknown, expired) or 403 (scope, revoked)."""
        project_id = project_of(token, TOKEN_PREFIX)
        if project_id is None:
            raise AuthError(401, "invalid_token", "unknown access token")
        t, c = integration_tokens, integration_clients
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.scope, t.c.expires_at, c)
                .join(c, sa.and_(c.c.project_id == t.c.project_id, c.c.client_id == t.c.client_id))
                .where(t.c.project_id == project_id, t.c.token_hash == _sha256(token))
            ).first()
        if row is None:
            raise AuthError(401, "invalid_token", "unknown access token")
        if row.expires_at <= self.clock():
            raise AuthError(401, "invalid_token", "the access token has expired; get a new one")
        if row.revoked_at is not None:
            raise AuthError(403, "client_revoked", "the API client of this token was revoked")
        scopes = frozenset(row.scope.split())
        if scope not in scopes:
            raise AuthError(403, "insufficient_scope", f"the token lacks the scope {scope}")
        return TokenGrant(_client_from_row(row), scopes, row.expires_at)

    # rate limit

    def count_request(self, grant: TokenGrant) -> int | None:
        """Count one call in the client's fixed window; the seconds to wait if it is over the limit."""
        now = self.clock()
        window = now - now % self.rate_window_ms
        pid, cid = grant.project_id, grant.client.client_id
        table = integration_rate_limits
        with write_transaction(self.engine) as conn:
            stmt = upsert_add(table, conn.dialect.name, ("project_id", "client_id", "window_start"), "count")
            count = conn.execute(
                stmt.values(project_id=pid, client_id=cid, window_start=window, count=1).returning(table.c.count)
            ).scalar_one()
            if count == 1:
                conn.execute(
                    table.delete().where(
                        table.c.project_id == pid, table.c.client_id == cid, table.c.window_start < window
                    )
                )
            elif count == self.rate_limit + 1:  # one log entry per limited window, not one per refused call
                self.log.append(
                    pid,
                    grant.client.name,
                    "update.rate_limited",
                    integration_id=cid,
                    errors=[{"reason": f"more than {self.rate_limit} calls in {self.rate_window_ms // 1000} s"}],
                    details={"kind": KIND, "window_start": window},
                    ts=now,
                    conn=conn,
                )
        if count <= self.rate_limit:
            return None
        return max(1, math.ceil((window + self.rate_window_ms - now) / 1000))

    # the update call

    def submit(
        self, grant: TokenGrant, data: list, idempotency_key: str | None = None, hashed_body: str = ""
    ) -> UpdateOutcome:
        """Apply one update call synchronously and keep its result; raises IdempotencyConflict."""
        now = self.clock()
        request_id = f"{now:013d}-{secrets.token_hex(8)}"
        if idempotency_key is not None:
            request_id, stored = self._claim(grant, idempotency_key, hashed_body, request_id, now)
            if stored is not None:
                self.log.append(
                    grant.project_id,
                    grant.client.name,
                    "update.replay",
                    records=stored["records"],
                    integration_id=grant.client.client_id,
                    request_id=request_id,
                    details={"kind": KIND, "idempotency_key": idempotency_key},
                )
                return UpdateOutcome(request_id, stored, replayed=True)
        try:
            with self._write_gate:
                result = self._apply(grant, data, request_id, now)
        except BaseException:
            if idempotency_key is not None:  # let a retry run it
                with write_transaction(self.engine) as conn:
                    conn.execute(
                        integration_requests.delete().where(
                            integration_requests.c.project_id == grant.project_id,
                            integration_requests.c.request_id == request_id,
                        )
                    )
            raise
        with write_transaction(self.engine) as conn:
            if idempotency_key is None:
                conn.execute(
                    integration_requests.insert().values(
                        project_id=grant.project_id,
                        request_id=request_id,
                        client_id=grant.client.client_id,
                        idempotency_key=None,
                        body_hash=hashed_body,
                        status="done",
                        received_at=now,
                        result=_encode(result),
                    )
                )
            else:
                conn.execute(
                    integration_requests.update()
                    .where(
                        integration_requests.c.project_id == grant.project_id,
                        integration_requests.c.request_id == request_id,
                    )
                    .values(status="done", result=_encode(result))
                )
            self.log.append(
                grant.project_id,
                grant.client.name,
                "update",
                records=result["records"],
                applied=result["records_applied"],
                errors=result["errors"],
                error_count=result["error_count"],
                integration_id=grant.client.client_id,
                request_id=request_id,
                details={
                    "kind": KIND,
                    "values_applied": result["values_applied"],
                    "values_changed": result["values_changed"],
                    "ignored_fields": len(result["ignored_fields"]),
                    "idempotency_key": idempotency_key,
                },
                ts=now,
                conn=conn,
            )
        return UpdateOutcome(request_id, result)

    def _apply(self, grant: TokenGrant, data: list, request_id: str, now: int) -> dict:
        client = grant.client
        applied = apply_records(self.attributes, grant.project_id, client.name, data, client)
        return {
            "request_id": request_id,
            "status": "done",
            "received_at": now,
            "integration": client.name,
            "client_id": client.client_id,
            "records": len(data),
            "records_applied": applied.records_applied,
            "values_applied": applied.report.applied,
            "values_changed": applied.report.changed,
            "registered": applied.report.registered,
            "error_count": len(applied.errors),
            "errors": applied.errors[:MAX_STORED_ERRORS],
            "ignored_fields": sorted(applied.ignored)[:MAX_IGNORED_REPORTED],
        }

    def _claim(
        self, grant: TokenGrant, key: str, hashed_body: str, request_id: str, now: int
    ) -> tuple[str, dict | None]:
        """Claim an idempotency key: (request id, None) to go ahead, or (its request id, stored result)."""
        r = integration_requests
        where_key = (r.c.project_id == grant.project_id, r.c.client_id == grant.client.client_id)
        with write_transaction(self.engine) as conn:
            inserted = conn.execute(
                insert_ignore(r, conn.dialect.name)
                .values(
                    project_id=grant.project_id,
                    request_id=request_id,
                    client_id=grant.client.client_id,
                    idempotency_key=key,
                    body_hash=hashed_body,
                    status="processing",
                    received_at=now,
                    result=None,
                )
                .returning(r.c.request_id)
            ).first()
            if inserted is not None:
                return request_id, None
            row = conn.execute(sa.select(r).where(*where_key, r.c.idempotency_key == key)).first()
            if row is None:  # its first request failed and released the key a moment ago
                raise IdempotencyConflict("idempotency_key_in_progress", "the key was just released; retry")
            if row.body_hash != hashed_body:
                raise IdempotencyConflict(
                    "idempotency_key_reused",
                    f"this Idempotency-Key was already used with a different body (request {row.request_id})",
                )
            if row.status == "done":
                return row.request_id, msgspec.json.decode(row.result)
            if now - row.received_at < IDEMPOTENCY_LEASE_S * 1000:
                raise IdempotencyConflict(
                    "idempotency_key_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry later",
                )
            # Its first request never finished (the process died): take the claim over.
            conn.execute(
                r.update()
                .where(r.c.project_id == grant.project_id, r.c.request_id == row.request_id)
                .values(received_at=now)
            )
            return row.request_id, None

    def request_result(self, grant: TokenGrant, request_id: str) -> dict | None:
        """The stored result of one of this client's update calls, or None."""
        r = integration_requests
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(r.c.request_id, r.c.status, r.c.received_at, r.c.result).where(
                    r.c.project_id == grant.project_id,
                    r.c.client_id == grant.client.client_id,
                    r.c.request_id == request_id,
                )
            ).first()
        if row is None:
            return None
        if row.result is None:
            return {"request_id": row.request_id, "status": row.status, "received_at": row.received_at}
        return msgspec.json.decode(row.result)

    def log_refused(self, grant: TokenGrant, status: int, error: str, reason: str, path: str | None) -> None:
        """An update call refused as a whole after authentication (400, 409, 413)."""
        self.log.append(
            grant.project_id,
            grant.client.name,
            "update.refused",
            integration_id=grant.client.client_id,
            errors=[{"status": status, "error": error, "path": path, "reason": reason}],
            details={"kind": KIND},
            ts=self.clock(),
        )
