"""scim2-server's storage interface over our database: one project's SCIM users in `scim_users`.

Each write also writes the user's mapped custom attributes (source `scim`, through
`AttributeStore.write`) and an integration-log entry, in the same transaction as the SCIM row,
so the provisioned resource, the end user's attributes and the log never disagree.

One storage object serves one request: `operation()` opens the transaction the handler's calls
share (a write transaction for writes, so a PATCH reads and replaces the user under one lock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import sqlalchemy as sa
from scim2_models import (
    InvalidValueException,
    Meta,
    NotFoundException,
    Path,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    SearchRequest,
    UniquenessException,
)
from scim2_models.path import CompareOperator, Comparison, LogicalExpr, LogicalOperator
from scim2_server.storage import ScimStorage, SearchPage

from usertrail.integrations import IntegrationLog
from usertrail.integrations.scim.mapping import ScimMapping
from usertrail.integrations.scim.protocol import USER_MODEL, USER_SCHEMA
from usertrail.integrations.user_keys import UserKey, plain_key
from usertrail.store.attributes import AttributeStore, WriteReport
from usertrail.store.database import write_transaction
from usertrail.store.schema import scim_users

SOURCE = "scim"  # the attribute source and the integration's name in the log

_USER_NAME = Path[USER_MODEL]("userName").resolve()  # type: ignore[valid-type]
_EXTERNAL_ID = Path[USER_MODEL]("externalId").resolve()  # type: ignore[valid-type]
# Filters whose `eq` terms on these attributes are answered from an index before the full filter runs.
_INDEXED = {
    f"{USER_SCHEMA}:userName": scim_users.c.user_name_key,
    f"{USER_SCHEMA}:externalId": scim_users.c.external_id,
    f"{USER_SCHEMA}:id": scim_users.c.scim_id,
}


def _etag(version: int) -> str:
    return f'W/"{version}"'


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _comparable(binding, value: str | None) -> str | None:
    return None if value is None else binding.comparable(value)


class SqlScimStorage(ScimStorage):
    """The SCIM users of one project, in `scim_users`."""

    supports_cursors = False

    def __init__(
        self,
        engine: sa.Engine,
        project_id: int,
        mapping: ScimMapping,
        attributes: AttributeStore,
        log: IntegrationLog,
        *,
        write: bool,
        kind: str,
        clock: Callable[[], int],
        user_key: UserKey = plain_key,
    ) -> None:
        self.engine = engine
        self.project_id = project_id
        self.mapping = mapping
        self.attributes = attributes
        self.log = log
        self.write = write
        self.kind = kind  # the log entry's kind: user.create, user.replace, user.patch or user.delete
        self.clock = clock
        self.user_key = user_key  # the end-user id → key, hashed as collection hashes it (integrations.user_keys)
        self.wrote = False  # whether the request changed a stored user (a no-op PATCH or PUT does not)
        self._conn: sa.Connection | None = None

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        opened = write_transaction(self.engine) if self.write else self.engine.connect()
        with opened as conn:
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None

    @property
    def conn(self) -> sa.Connection:
        if self._conn is None:
            raise RuntimeError("SqlScimStorage is used outside of operation()")
        return self._conn

    # reads

    def _row(self, scim_id: str | None):
        query = sa.select(scim_users).where(scim_users.c.project_id == self.project_id, scim_users.c.scim_id == scim_id)
        row = self.conn.execute(query.with_for_update() if self.write else query).first()
        if row is None:
            raise NotFoundException(detail=f"User {scim_id!r} not found")
        return row

    @staticmethod
    def _resource(row) -> Resource[Any]:
        resource = USER_MODEL.model_validate(msgspec.json.decode(row.resource))
        resource.id = row.scim_id
        resource.meta = Meta(
            resource_type="User",
            created=_time(row.created_at),
            last_modified=_time(row.updated_at),
            version=_etag(row.version),
        )
        return resource

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        return self._resource(self._row(resource_id))

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        """Page through the project's users in creation order (or by `sortBy`).

        Without a filter or a sort, counting and paging happen in SQL. A filter is matched by
        scim2-models on the candidate users; its `eq` terms on userName, externalId or id narrow
        the candidates through an index first.
        """
        t = scim_users
        start = search_request.start_index_0 or 0
        count = search_request.count
        order = (t.c.created_at, t.c.scim_id)
        where = [t.c.project_id == self.project_id]
        scim_filter = search_request.filter
        if scim_filter is None and search_request.sort_by is None:
            total = self.conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar_one()
            if count == 0:
                return SearchPage(total, [])
            query = sa.select(t).where(*where).order_by(*order).offset(start)
            if count is not None:
                query = query.limit(count)
            return SearchPage(total, [self._resource(r) for r in self.conn.execute(query)])
        if scim_filter is not None:
            if not scim_filter.models:
                scim_filter = ScimFilter[USER_MODEL](str(scim_filter))  # type: ignore[valid-type]
            where += _narrowing(scim_filter)
        candidates = [self._resource(r) for r in self.conn.execute(sa.select(t).where(*where).order_by(*order))]
        found = [r for r in candidates if scim_filter is None or scim_filter.match(r)]
        if search_request.sort_by is not None:
            descending = search_request.sort_order == SearchRequest.SortOrder.descending

            def key(resource: Resource[Any]) -> tuple:
                value = search_request.sort_value(resource)
                return value is None, value if value is not None else "", resource.id

            found.sort(key=key, reverse=descending)
        stop = None if count is None else start + count
        return SearchPage(len(found), found[start:stop])

    # writes

    def _identity(self, resource: Resource[Any]) -> tuple[str, str, str | None, str]:
        """(userName, its comparison key, externalId's, the end-user key); refuses a user without an id."""
        user_name = getattr(resource, "user_name", None) or ""
        try:
            user_key = self.user_key(self.mapping.user_id(resource))
        except ValueError as exc:
            raise InvalidValueException(detail=str(exc)) from None
        return (
            user_name,
            _comparable(_USER_NAME, user_name) or "",
            _comparable(_EXTERNAL_ID, getattr(resource, "external_id", None)),
            user_key,
        )

    def _check_unique(self, scim_id: str, user_name: str, user_name_key: str, user_key: str) -> None:
        t = scim_users
        others = (t.c.project_id == self.project_id, t.c.scim_id != scim_id)
        if self.conn.execute(sa.select(t.c.scim_id).where(*others, t.c.user_name_key == user_name_key)).first():
            raise UniquenessException(detail=f"the userName {user_name!r} is already provisioned in this project")
        if self.conn.execute(sa.select(t.c.scim_id).where(*others, t.c.user_key == user_key)).first():
            raise UniquenessException(
                detail=f"another SCIM user already maps to the end user {user_key!r} "
                f"({self.mapping.user_id_attribute} is this project's end-user id)"
            )

    @staticmethod
    def _document(resource: Resource[Any]) -> str:
        # Passwords are never stored; id and meta live in their own columns.
        data = resource.model_dump(mode="json")
        for key in ("password", "id", "meta"):
            data.pop(key, None)
        return msgspec.json.encode(data).decode()

    def _unique_violation(self) -> UniquenessException:
        # Another request took the same userName or end user between our check and our write.
        return UniquenessException(detail="a concurrent request provisioned the same userName or end user")

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        resource = resource.model_copy(deep=True)
        resource.id = uuid.uuid4().hex
        user_name, user_name_key, external_id, user_key = self._identity(resource)
        self._check_unique(resource.id, user_name, user_name_key, user_key)
        now = self.clock()
        try:
            self.conn.execute(
                scim_users.insert().values(
                    project_id=self.project_id,
                    scim_id=resource.id,
                    user_name=user_name,
                    user_name_key=user_name_key,
                    external_id=external_id,
                    user_key=user_key,
                    active=getattr(resource, "active", None),
                    resource=self._document(resource),
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
        except sa.exc.IntegrityError:
            raise self._unique_violation() from None
        values = {k: v for k, v in self.mapping.values(resource).items() if v is not None}
        self._record(resource.id, user_name, user_key, values, now)
        resource.meta = Meta(resource_type="User", created=_time(now), last_modified=_time(now), version=_etag(1))
        return self._strip_password(resource)

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        row = self._row(resource.id)
        if expected_version is not None and _etag(row.version) != expected_version:
            raise PreconditionFailedException(detail=f"the user is at version {_etag(row.version)}")
        resource = resource.model_copy(deep=True)
        user_name, user_name_key, external_id, user_key = self._identity(resource)
        self._check_unique(row.scim_id, user_name, user_name_key, user_key)
        now = self.clock()
        try:
            self.conn.execute(
                scim_users.update()
                .where(scim_users.c.project_id == self.project_id, scim_users.c.scim_id == row.scim_id)
                .values(
                    user_name=user_name,
                    user_name_key=user_name_key,
                    external_id=external_id,
                    user_key=user_key,
                    active=getattr(resource, "active", None),
                    resource=self._document(resource),
                    version=row.version + 1,
                    updated_at=now,
                )
            )
        except sa.exc.IntegrityError:
            raise self._unique_violation() from None
        new = self.mapping.values(resource)
        if user_key == row.user_key:
            old = self.mapping.values(self._resource(row))
            values = {name: value for name, value in new.items() if value != old.get(name)}
        else:  # a new end-user id: the new end user gets every value; the old one keeps its own
            values = {name: value for name, value in new.items() if value is not None}
        self._record(row.scim_id, user_name, user_key, values, now, previous_key=row.user_key)
        resource.meta = Meta(
            resource_type="User",
            created=_time(row.created_at),
            last_modified=_time(now),
            version=_etag(row.version + 1),
        )
        return self._strip_password(resource)

    def delete(self, resource_type: ResourceType, resource_id: str, *, expected_version: str | None = None) -> None:
        """Forget the SCIM user; the end user keeps their attributes, with `active` (if mapped) set to false."""
        row = self._row(resource_id)
        if expected_version is not None and _etag(row.version) != expected_version:
            raise PreconditionFailedException(detail=f"the user is at version {_etag(row.version)}")
        self.conn.execute(
            scim_users.delete().where(scim_users.c.project_id == self.project_id, scim_users.c.scim_id == resource_id)
        )
        self._record(row.scim_id, row.user_name, row.user_key, dict.fromkeys(self.mapping.active_names(), False))

    @staticmethod
    def _strip_password(resource: Resource[Any]) -> Resource[Any]:
        if getattr(resource, "password", None) is not None:
            resource.password = None
        return resource

    def _record(
        self,
        scim_id: str,
        user_name: str,
        user_key: str,
        values: dict[str, object],
        now: int | None = None,
        previous_key: str | None = None,
    ) -> None:
        """Write the changed attribute values and the log entry, in the request's transaction."""
        now = self.clock() if now is None else now
        report = (
            self.attributes.write(self.project_id, SOURCE, [(user_key, values)], self.mapping.types, conn=self.conn)
            if values
            else WriteReport(records=1)
        )
        details: dict[str, object] = {
            "scim_id": scim_id,
            "user_name": user_name,
            "user_key": user_key,
            "changed": sorted(values),
            "registered": report.registered,
        }
        if previous_key is not None and previous_key != user_key:
            details["previous_user_key"] = previous_key
        self.log.append(
            self.project_id,
            SOURCE,
            self.kind,
            records=1,
            applied=1 if report.applied else 0,
            errors=[e.as_json() for e in report.errors],
            integration_id=scim_id,
            details=details,
            ts=now,
            conn=self.conn,
        )
        self.wrote = True


def _narrowing(scim_filter: ScimFilter) -> list:
    """SQL conditions implied by a filter's top-level `eq` terms on indexed attributes (maybe none)."""
    node = scim_filter.ast
    terms = node.terms if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_ else (node,)
    conditions = []
    for term in terms:
        if not (isinstance(term, Comparison) and term.op == CompareOperator.eq and isinstance(term.value, str)):
            continue
        binding = scim_filter.resolve_comparison(term.attr_path, strict=False)
        column = _INDEXED.get(binding.urn) if binding is not None else None
        if column is None:
            continue
        try:
            conditions.append(column == binding.comparable(term.value))
        except ValueError:  # a string the comparison policy refuses equals nothing
            conditions.append(sa.false())
    return conditions
