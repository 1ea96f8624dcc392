"""Amazon S3 (and S3-compatible) sources of CSV files, imported on an interval (docs/integrations.md).

A source names a bucket, a key prefix and a glob pattern, credentials (or boto3's default chain),
an optional endpoint URL, the CSV mapping and an interval. A run lists the matching objects and
imports only those whose ETag differs from the one imported last time, each through the CSV
importer (the object body is streamed to a temporary file, then read in chunks). Every run is kept
with its counts and errors, and written to the integration log as integration "s3".

Runs are claimed in the database (`running_since`), so several server processes never run the
same source at once; the server's loop calls `run_due` with an injectable clock.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import msgspec
import sqlalchemy as sa

from usertrail.integrations import IntegrationLog
from usertrail.integrations.csv_import import (
    CsvFileError,
    CsvImporter,
    FileScan,
    MappingError,
    MappingSpec,
    mapping_from_json,
)
from usertrail.store.database import write_transaction
from usertrail.store.schema import s3_objects, s3_runs, s3_sources

INTEGRATION = "s3"
DEFAULT_INTERVAL_S = 3600
MIN_INTERVAL_S = 60
DEFAULT_PATTERN = "*.csv"
DEFAULT_REGION = "us-east-1"
CLAIM_LEASE_MS = 6 * 3600_000  # a claim older than this belonged to a process that died
MAX_RUN_ERRORS = 100  # kept with a run; the count is always complete
MAX_NAME = 100
SOURCE_FIELDS = (
    "name",
    "bucket",
    "prefix",
    "pattern",
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "id_column",
    "columns",
    "interval_seconds",
    "enabled",
)


def _now() -> int:
    return int(time.time() * 1000)


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


class InvalidSource(ValueError):
    """A source definition that cannot be used; `path` names the field."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path


class SourceNameTaken(ValueError):
    """Another source of the project has this name."""


class RunInProgress(Exception):
    """The source is being run by another request or process."""


@dataclass(frozen=True)
class S3Source:
    project_id: int
    id: str
    name: str
    bucket: str
    prefix: str
    pattern: str
    endpoint_url: str | None
    region: str
    access_key_id: str | None
    secret_access_key: str | None
    mapping: MappingSpec
    interval_s: int
    enabled: bool
    created_at: int
    updated_at: int
    next_run_at: int
    running_since: int | None

    def as_json(self) -> dict:
        """The source as listed: credentials are masked, the secret is never shown."""
        return {
            "id": self.id,
            "name": self.name,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "pattern": self.pattern,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "credentials": "access_key" if self.access_key_id else "default_chain",
            "access_key_id": mask(self.access_key_id),
            "secret_access_key": "********" if self.secret_access_key else None,
            **self.mapping.as_json(),
            "interval_seconds": self.interval_s,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_run_at": self.next_run_at,
            "running": self.running_since is not None,
        }


def mask(value: str | None) -> str | None:
    """`AKIA…WXYZ` → `****WXYZ`: enough to recognise a key, not to use it."""
    if not value:
        return None
    return "****" + value[-4:] if len(value) > 8 else "****"


def _source_from_row(row) -> S3Source:
    mapping = mapping_from_json(msgspec.json.decode(row.mapping))
    return S3Source(
        row.project_id,
        row.id,
        row.name,
        row.bucket,
        row.prefix,
        row.pattern,
        row.endpoint_url,
        row.region,
        row.access_key_id,
        row.secret_access_key,
        mapping,
        row.interval_s,
        row.enabled,
        row.created_at,
        row.updated_at,
        row.next_run_at,
        row.running_since,
    )


def _text(body: dict, key: str, required: bool = False, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is None:
        if required:
            raise InvalidSource(f"{key} is required", f"$.{key}")
        return None
    if not isinstance(value, str):
        raise InvalidSource(f"{key} must be a string", f"$.{key}")
    return value


def parse_source(body: object, current: dict | None = None) -> dict:
    """Validate a source definition (a whole one, or a PATCH over `current`); returns the column values."""
    if not isinstance(body, dict):
        raise InvalidSource("expected a JSON object", "$")
    for key in body:
        if key not in SOURCE_FIELDS:
            raise InvalidSource(f"unknown field {key!r}: expected {', '.join(SOURCE_FIELDS)}", f"$.{key}")
    merged = {**(current or {}), **body}
    name = (_text(merged, "name", required=True) or "").strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidSource(f"name must be 1 to {MAX_NAME} characters", "$.name")
    bucket = (_text(merged, "bucket", required=True) or "").strip()
    if not 3 <= len(bucket) <= 63 or "/" in bucket or bucket != bucket.strip():
        raise InvalidSource("bucket must be a bucket name (3 to 63 characters, no `/`)", "$.bucket")
    prefix = _text(merged, "prefix", default="") or ""
    pattern = _text(merged, "pattern", default=DEFAULT_PATTERN) or DEFAULT_PATTERN
    endpoint_url = _text(merged, "endpoint_url")
    if endpoint_url is not None:
        parsed = urlparse(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidSource("endpoint_url must be an http:// or https:// URL", "$.endpoint_url")
    region = _text(merged, "region", default=DEFAULT_REGION) or DEFAULT_REGION
    access_key_id = _text(merged, "access_key_id")
    secret = _text(merged, "secret_access_key")
    if bool(access_key_id) != bool(secret):
        missing = "secret_access_key" if access_key_id else "access_key_id"
        raise InvalidSource(
            "give both access_key_id and secret_access_key, or neither (boto3's default credentials)", f"$.{missing}"
        )
    interval = merged.get("interval_seconds", DEFAULT_INTERVAL_S)
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < MIN_INTERVAL_S:
        raise InvalidSource(f"interval_seconds must be a whole number ≥ {MIN_INTERVAL_S}", "$.interval_seconds")
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidSource("enabled must be true or false", "$.enabled")
    try:
        mapping = mapping_from_json({"id_column": merged.get("id_column"), "columns": merged.get("columns")})
    except MappingError as exc:
        raise InvalidSource(exc.reason, exc.path) from None
    return {
        "name": name,
        "bucket": bucket,
        "prefix": prefix,
        "pattern": pattern,
        "endpoint_url": endpoint_url,
        "region": region,
        "access_key_id": access_key_id or None,
        "secret_access_key": secret or None,
        "mapping": _encode(mapping.as_json()),
        "interval_s": interval,
        "enabled": enabled,
    }


def _editable(source: S3Source) -> dict:
    """A source as the body that would create it (the base a PATCH applies to)."""
    return {
        "name": source.name,
        "bucket": source.bucket,
        "prefix": source.prefix,
        "pattern": source.pattern,
        "endpoint_url": source.endpoint_url,
        "region": source.region,
        "access_key_id": source.access_key_id,
        "secret_access_key": source.secret_access_key,
        **source.mapping.as_json(),
        "interval_seconds": source.interval_s,
        "enabled": source.enabled,
    }


def run_json(row) -> dict:
    return {
        "id": row.id,
        "source_id": row.source_id,
        "trigger": row.trigger,
        "status": row.status,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "objects_listed": row.objects_listed,
        "objects_imported": row.objects_imported,
        "objects_skipped": row.objects_skipped,
        "objects_failed": row.objects_failed,
        "rows": row.rows,
        "rows_applied": row.rows_applied,
        "rows_failed": row.rows_failed,
        "error_count": row.error_count,
        "errors": msgspec.json.decode(row.errors),
        "message": row.message,
    }


def make_client(source: S3Source):
    """A boto3 S3 client for the source: its keys (or the default chain), region and endpoint."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        # S3-compatible stores (MinIO, Ceph, moto) are usually addressed by path.
        s3={"addressing_style": "path" if source.endpoint_url else "auto"},
    )
    session = boto3.session.Session(
        aws_access_key_id=source.access_key_id,
        aws_secret_access_key=source.secret_access_key,
        region_name=source.region,
    )
    return session.client("s3", endpoint_url=source.endpoint_url, config=config)


@dataclass
class _RunCounts:
    listed: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    rows: int = 0
    rows_applied: int = 0
    rows_failed: int = 0
    error_count: int = 0

    def columns(self) -> dict:
        return {
            "objects_listed": self.listed,
            "objects_imported": self.imported,
            "objects_skipped": self.skipped,
            "objects_failed": self.failed,
            "rows": self.rows,
            "rows_applied": self.rows_applied,
            "rows_failed": self.rows_failed,
            "error_count": self.error_count,
        }


class S3Imports:
    """S3 sources of a project: definitions, scheduled and manual runs, run history."""

    def __init__(
        self,
        engine: sa.Engine,
        importer: CsvImporter,
        log: IntegrationLog,
        clock: Callable[[], int] | None = None,
        client_factory: Callable[[S3Source], object] = make_client,
    ) -> None:
        self.engine = engine
        self.importer = importer
        self.log = log
        self.clock = clock or _now  # ms; tests move it to make sources due
        self.client_factory = client_factory
        self.stop = threading.Event()  # set at server shutdown: runs stop between objects and chunks

    # definitions

    def create(self, project_id: int, body: object) -> S3Source:
        values = parse_source(body)
        now = self.clock()
        source_id = "s3_" + secrets.token_hex(8)
        with write_transaction(self.engine) as conn:
            self._check_name(conn, project_id, values["name"], None)
            conn.execute(
                s3_sources.insert().values(
                    project_id=project_id,
                    id=source_id,
                    **values,
                    created_at=now,
                    updated_at=now,
                    next_run_at=now,  # due at once
                    running_since=None,
                )
            )
            self.log.append(project_id, INTEGRATION, "source.create", integration_id=source_id, ts=now, conn=conn)
        return self.get(project_id, source_id)

    def update(self, project_id: int, source_id: str, body: object) -> S3Source | None:
        """Change some fields; an interval change reschedules the next run from the last one."""
        current = self.get(project_id, source_id)
        if current is None:
            return None
        values = parse_source(body, _editable(current))
        now = self.clock()
        next_run = current.next_run_at + (values["interval_s"] - current.interval_s) * 1000
        with write_transaction(self.engine) as conn:
            self._check_name(conn, project_id, values["name"], source_id)
            conn.execute(
                s3_sources.update()
                .where(s3_sources.c.project_id == project_id, s3_sources.c.id == source_id)
                .values(**values, updated_at=now, next_run_at=next_run)
            )
            changed = sorted(body) if isinstance(body, dict) else []
            self.log.append(
                project_id,
                INTEGRATION,
                "source.update",
                integration_id=source_id,
                details={"fields": changed},
                ts=now,
                conn=conn,
            )
        return self.get(project_id, source_id)

    def delete(self, project_id: int, source_id: str) -> bool:
        """Remove the source and its list of imported objects; its runs and jobs stay as history."""
        with write_transaction(self.engine) as conn:
            deleted = conn.execute(
                s3_sources.delete().where(s3_sources.c.project_id == project_id, s3_sources.c.id == source_id)
            ).rowcount
            if deleted:
                conn.execute(
                    s3_objects.delete().where(
                        s3_objects.c.project_id == project_id, s3_objects.c.source_id == source_id
                    )
                )
                self.log.append(project_id, INTEGRATION, "source.delete", integration_id=source_id, conn=conn)
        return bool(deleted)

    @staticmethod
    def _check_name(conn: sa.Connection, project_id: int, name: str, source_id: str | None) -> None:
        other = conn.execute(
            sa.select(s3_sources.c.id).where(s3_sources.c.project_id == project_id, s3_sources.c.name == name)
        ).scalar()
        if other is not None and other != source_id:
            raise SourceNameTaken(f"the project already has an S3 source named {name!r} ({other})")

    def get(self, project_id: int, source_id: str) -> S3Source | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(s3_sources).where(s3_sources.c.project_id == project_id, s3_sources.c.id == source_id)
            ).first()
        return None if row is None else _source_from_row(row)

    def list(self, project_id: int | None = None) -> list[S3Source]:
        query = sa.select(s3_sources).order_by(s3_sources.c.project_id, s3_sources.c.id)
        if project_id is not None:
            query = query.where(s3_sources.c.project_id == project_id)
        with self.engine.connect() as conn:
            return [_source_from_row(r) for r in conn.execute(query).all()]

    # runs

    def runs(self, project_id: int, source_id: str, limit: int = 50, before: str | None = None) -> list[dict]:
        """Newest first."""
        query = sa.select(s3_runs).where(s3_runs.c.project_id == project_id, s3_runs.c.source_id == source_id)
        if before:
            query = query.where(s3_runs.c.id < before)
        with self.engine.connect() as conn:
            return [run_json(r) for r in conn.execute(query.order_by(s3_runs.c.id.desc()).limit(limit)).all()]

    def get_run(self, project_id: int, run_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(s3_runs).where(s3_runs.c.project_id == project_id, s3_runs.c.id == run_id)
            ).first()
        return None if row is None else run_json(row)

    def start(self, project_id: int, source_id: str, trigger: str, scheduled_at: int | None = None) -> str:
        """Claim the source and record a running run; raises RunInProgress, or KeyError for no such source.

        `scheduled_at` (the `next_run_at` the caller saw) makes the claim conditional on it, so of
        several processes finding the same due source only one runs it, and the next run is scheduled.
        """
        now = self.clock()
        run_id = f"{now:013d}-{secrets.token_hex(6)}"
        s = s3_sources
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(s.c.interval_s).where(s.c.project_id == project_id, s.c.id == source_id)
            ).first()
            if row is None:
                raise KeyError(source_id)
            claim = (
                s.update()
                .where(
                    s.c.project_id == project_id,
                    s.c.id == source_id,
                    sa.or_(s.c.running_since.is_(None), s.c.running_since < now - CLAIM_LEASE_MS),
                )
                .values(running_since=now)
            )
            if scheduled_at is not None:
                claim = claim.where(s.c.next_run_at == scheduled_at).values(next_run_at=now + row.interval_s * 1000)
            if conn.execute(claim).rowcount != 1:
                raise RunInProgress(f"source {source_id} is already running")
            conn.execute(
                s3_runs.insert().values(
                    project_id=project_id,
                    id=run_id,
                    source_id=source_id,
                    trigger=trigger,
                    status="running",
                    started_at=now,
                    finished_at=None,
                    **_RunCounts().columns(),
                    errors="[]",
                    message=None,
                )
            )
        return run_id

    def execute(self, project_id: int, source_id: str, run_id: str) -> dict:
        """Do a started run: list, import new or changed objects, record everything, release the claim."""
        source = self.get(project_id, source_id)
        counts = _RunCounts()
        errors: list[dict] = []
        status, message = "done", None
        try:
            if source is None:
                raise LookupError("the source was deleted")
            client = self.client_factory(source)
            objects = self._list(client, source)
            counts.listed = len(objects)
            imported = self._imported(project_id, source_id)
            for obj in objects:
                if self.stop.is_set():
                    status, message = "failed", "the server stopped during the run; the next run continues"
                    break
                if imported.get(obj["Key"]) == obj["ETag"]:
                    counts.skipped += 1
                    continue
                self._import_object(client, source, run_id, obj, counts, errors)
        except Exception as exc:  # listing failed (credentials, bucket, network): the run fails as a whole
            status, message = "failed", describe_error(exc)
        now = self.clock()
        with write_transaction(self.engine) as conn:
            conn.execute(
                s3_runs.update()
                .where(s3_runs.c.project_id == project_id, s3_runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=now,
                    **counts.columns(),
                    errors=_encode(errors[:MAX_RUN_ERRORS]),
                    message=message,
                )
            )
            conn.execute(
                s3_sources.update()
                .where(s3_sources.c.project_id == project_id, s3_sources.c.id == source_id)
                .values(running_since=None)
            )
            self.log.append(
                project_id,
                INTEGRATION,
                "run",
                records=counts.rows,
                applied=counts.rows_applied,
                errors=([{"reason": message}] if message else []) + errors,
                error_count=counts.error_count + (1 if message else 0),
                integration_id=source_id,
                request_id=run_id,
                details={"status": status, **counts.columns()},
                ts=now,
                conn=conn,
            )
        return self.get_run(project_id, run_id)

    def run(self, project_id: int, source_id: str, trigger: str = "api") -> dict:
        """Start and execute one run now."""
        return self.execute(project_id, source_id, self.start(project_id, source_id, trigger))

    def run_due(self, now: int | None = None, trigger: str = "schedule") -> list[dict]:
        """Run every enabled source whose next run is due (each claimed by one process only)."""
        now = self.clock() if now is None else now
        s = s3_sources
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(s.c.project_id, s.c.id, s.c.next_run_at).where(s.c.enabled.is_(True), s.c.next_run_at <= now)
            ).all()
        done = []
        for project_id, source_id, next_run_at in due:
            if self.stop.is_set():
                break
            try:
                run_id = self.start(project_id, source_id, trigger, scheduled_at=next_run_at)
            except (RunInProgress, KeyError):
                continue
            done.append(self.execute(project_id, source_id, run_id))
        return done

    # the objects

    @staticmethod
    def _list(client, source: S3Source) -> list[dict]:
        """Objects under the prefix whose rest of key matches the pattern, oldest first (later files win)."""
        found = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=source.bucket, Prefix=source.prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(source.prefix) :]
                if fnmatch.fnmatchcase(rest, source.pattern):
                    found.append(obj)
        found.sort(key=lambda o: (o["LastModified"], o["Key"]))
        return found

    def _imported(self, project_id: int, source_id: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s3_objects.c.key, s3_objects.c.etag).where(
                    s3_objects.c.project_id == project_id, s3_objects.c.source_id == source_id
                )
            ).all()
        return {r.key: r.etag for r in rows}

    def _import_object(
        self, client, source: S3Source, run_id: str, obj: dict, counts: _RunCounts, errors: list[dict]
    ) -> None:
        """Stream one object to a temporary file, import it, and remember its ETag.

        A download failure leaves the object to the next run; a file that cannot be imported (not
        UTF-8, a header without the mapped columns) is remembered with its ETag like an imported one,
        so it is retried only once it changes.
        """
        key, etag = obj["Key"], obj["ETag"]
        fd, name = tempfile.mkstemp(prefix="usertrail-s3-", suffix=".csv")
        path = Path(name)
        try:
            scan = FileScan()
            try:
                body = client.get_object(Bucket=source.bucket, Key=key, IfMatch=etag)["Body"]
                with os.fdopen(fd, "wb") as out:
                    for block in body.iter_chunks(1 << 20):
                        scan.update(block)
                        out.write(block)
                sha256 = scan.finish()
            except CsvFileError as exc:
                self._refused(source, run_id, obj, f"line {exc.line}: {exc.reason}", counts, errors)
                return
            except Exception as exc:
                counts.failed += 1
                counts.error_count += 1
                errors.append({"object": key, "reason": f"download failed: {describe_error(exc)}"})
                return
            try:
                job = self.importer.create_job(
                    source.project_id,
                    path,
                    source.mapping,
                    file_name=key,
                    sha256=sha256,
                    size=scan.size,
                    integration=INTEGRATION,
                    force=True,  # the ETag decides what is new
                    source_id=source.id,
                    run_id=run_id,
                    etag=etag,
                    log=False,
                )
            except CsvFileError as exc:
                self._refused(source, run_id, obj, f"line {exc.line}: {exc.reason}", counts, errors)
                return
            except MappingError as exc:
                self._refused(source, run_id, obj, f"mapping ({exc.path}): {exc.reason}", counts, errors)
                return
            result = self.importer.run(job, path, stop=self.stop)
            if result["status"] == "interrupted":
                return  # not remembered: the next run imports it again
            counts.imported += result["status"] == "done"
            counts.failed += result["status"] == "failed"
            counts.rows += result["rows"]
            counts.rows_applied += result["rows_applied"]
            counts.rows_failed += result["rows_failed"]
            counts.error_count += result["error_count"] + (result["status"] == "failed")
            if result["status"] == "failed":
                errors.append({"object": key, "job_id": job.id, "reason": result["message"]})
            for e in self._first_errors(source.project_id, job.id, result["error_count"]):
                errors.append({"object": key, "job_id": job.id, **e})
            self._remember(source, key, etag, job.id)
        finally:
            path.unlink(missing_ok=True)

    def _first_errors(self, project_id: int, job_id: str, count: int) -> list[dict]:
        found = []
        if count:
            for line, column, reason in self.importer.error_rows(project_id, job_id, page=10):
                found.append({"line": line, "column": column, "reason": reason})
                if len(found) >= 10:
                    break
        return found

    def _refused(self, source: S3Source, run_id: str, obj: dict, reason: str, counts: _RunCounts, errors) -> None:
        counts.failed += 1
        counts.error_count += 1
        errors.append({"object": obj["Key"], "reason": reason})
        self._remember(source, obj["Key"], obj["ETag"], None)

    def _remember(self, source: S3Source, key: str, etag: str, job_id: str | None) -> None:
        o = s3_objects
        where = (o.c.project_id == source.project_id, o.c.source_id == source.id, o.c.key == key)
        with write_transaction(self.engine) as conn:
            conn.execute(o.delete().where(*where))
            conn.execute(
                o.insert().values(
                    project_id=source.project_id,
                    source_id=source.id,
                    key=key,
                    etag=etag,
                    job_id=job_id or "",
                    imported_at=self.clock(),
                )
            )


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a boto3/botocore failure (`InvalidAccessKeyId: …`)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
