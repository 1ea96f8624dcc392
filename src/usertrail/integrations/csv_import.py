"""CSV imports of custom attributes: the file format, the column mapping, and streaming import jobs.

A CSV file has a header row and at least two columns: the end-user id and one or more attributes.
It is UTF-8 with or without a byte-order mark, separated by commas, semicolons or tabs (detected).
An import picks the id column and the columns to import, renames and types them, and then reads
the file once, in chunks of rows: each chunk is converted, written through
`AttributeStore.write_columns` (the same registry, cap, types and history as every integration)
and committed with its errors and the job's progress. Memory stays bounded whatever the size.

Used by the upload endpoint (`web/import_routes.py`), `usertrail import csv` and the S3 source
(`integrations/s3_import.py`). Documented in docs/integrations.md.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import pickle
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import sqlalchemy as sa

from usertrail.integrations import IntegrationLog
from usertrail.integrations.user_keys import integration_uuid
from usertrail.profiles import csv_reader
from usertrail.profiles.csv_rows import (
    CHUNK_DECODER,
    DELIMITER_NAMES,
    Chunk,
    CsvFileError,
    ImportPlan,
    ResolvedColumn,
    read_chunks,
)
from usertrail.profiles.custom import ATTRIBUTE_TYPES, check_name, infer_column_type
from usertrail.project_settings import UuidSettings
from usertrail.store.attributes import AttributeStore, plan_columns, registry_of
from usertrail.store.changes import WHOLE_PROJECT_KEYS
from usertrail.store.database import insert_rows, unmapped, write_transaction
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import attribute_registry, import_errors, import_jobs

DELIMITERS = (",", ";", "\t")
SAMPLE_BYTES = 64 * 1024  # read to detect the delimiter
SAMPLE_ROWS = 1_000  # read to infer column types
CHUNK_ROWS = 20_000  # rows per transaction
# Files at least this large (about 150,000 rows of ten columns) are read and converted by a separate
# process (`ReaderProcess`); smaller ones by a thread of the importing process. Set when the reader took
# 0.6-0.9 s to start (it cost more than it saved at 100,000 rows, less at 200,000); it now starts in
# 0.15-0.2 s (no SQLAlchemy), so a lower threshold may pay off: not measured yet.
READER_PROCESS_MIN_BYTES = 12 << 20
MAX_COLUMNS = 1_000
MAX_STORED_ERRORS = 100_000  # rows of the error report kept per job; the count is always complete
FIRST_ERRORS = 10  # kept in the job and the integration log entry
STALE_MS = 10 * 60_000  # a running job without a heartbeat for this long is reported as interrupted
FINISHED = ("done", "failed", "skipped", "interrupted")


def _now() -> int:
    return int(time.time() * 1000)


def _encode(value) -> str:
    return msgspec.json.encode(value).decode()


# --- errors ----------------------------------------------------------------------------------


class MappingError(ValueError):
    """A mapping that does not fit the file or the registry; `path` names the option or field."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, path


# --- the file: encoding, hash, delimiter, header ----------------------------------------------


class FileScan:
    """Hashes a file's bytes as they stream by and checks that they are UTF-8 (line of the first bad byte)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.size = 0
        self._line = 1

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)
        try:
            self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            line = self._line + data[: max(0, exc.start)].count(b"\n")
            raise CsvFileError(f"the file is not UTF-8 text (invalid byte at line {line})", line) from None
        self._line += data.count(b"\n")

    def finish(self) -> str:
        """The SHA-256 of everything seen; raises CsvFileError if the file ends inside a character."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CsvFileError("the file is not UTF-8 text (it ends inside a character)", self._line) from None
        return self._sha.hexdigest()

    @classmethod
    def of_file(cls, path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
        """(sha256, size) of a file on disk, read in 1 MiB blocks."""
        scan = cls()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                scan.update(block)
                if on_bytes:
                    on_bytes(len(block))
        return scan.finish(), scan.size


def detect_delimiter(sample: str, complete: bool = True) -> str:
    """Comma, semicolon or tab: the one that splits the header into ≥ 2 columns and the rows most consistently.

    Each candidate parses the sample with the csv module (so quoted delimiters and line breaks are
    understood); the score is the share of rows with as many fields as the header, then the number of
    columns. `complete=False` drops the sample's last row, which may be cut.
    """
    best: tuple[float, int, str] | None = None
    for delimiter in DELIMITERS:
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if not complete and len(rows) > 1:
            rows = rows[:-1]
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        body = rows[1:]
        consistency = sum(len(r) == width for r in body) / len(body) if body else 1.0
        score = (consistency, width, delimiter)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is None:
        raise CsvFileError(
            "the header has fewer than two columns: a CSV import needs the end-user id column and at least one "
            "attribute column, separated by commas, semicolons or tabs",
            1,
        )
    return best[2]


@dataclass(frozen=True)
class FileInfo:
    """What the start of a file says: delimiter, byte-order mark, header and a sample of rows."""

    delimiter: str
    bom: bool
    header: list[str]
    sample: list[list[str]]


def _sniff(head: bytes, complete: bool) -> tuple[bool, str, str]:
    """(byte-order mark?, text, delimiter) of a file's first bytes; `complete` when they are the whole file."""
    if not head.strip():
        raise CsvFileError("the file is empty: a CSV import needs a header row", 1)
    bom = head.startswith(codecs.BOM_UTF8)
    text = head.decode("utf-8-sig", errors="ignore")  # a cut multi-byte character at the end is dropped
    return bom, text, detect_delimiter(text, complete)


def _checked_header(header: list[str]) -> list[str]:
    header = [h.strip() for h in header]
    if len(header) > MAX_COLUMNS:
        raise CsvFileError(f"the header has {len(header)} columns; at most {MAX_COLUMNS}", 1)
    return header


def read_file_info(path: Path) -> FileInfo:
    """Detect the delimiter, read the header and up to SAMPLE_ROWS rows (for type inference)."""
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
        complete = len(head) < SAMPLE_BYTES or not f.read(1)
    bom, _, delimiter = _sniff(head, complete)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
            sample = []
            for row in reader:
                if row:
                    sample.append(row)
                if len(sample) >= SAMPLE_ROWS:
                    break
        except csv.Error as exc:
            raise CsvFileError(f"the CSV cannot be read: {exc}", reader.line_num) from None
    return FileInfo(delimiter, bom, _checked_header(header), sample)


def head_info(head: bytes, complete: bool) -> FileInfo:
    """What a file's first bytes say, before it is uploaded (the upload page's mapping step).

    `complete` says whether `head` is the whole file; if not, its last row may be cut and is dropped.
    The same checks as an upload: UTF-8, a header of at least two columns, a readable start.
    """
    scan = FileScan()
    scan.update(head)
    if complete:
        scan.finish()
    _, text, delimiter = _sniff(head, complete)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [r for r in reader if r]
    except csv.Error as exc:
        raise CsvFileError(f"the CSV cannot be read: {exc}", reader.line_num) from None
    if not complete and len(rows) > 1:
        rows = rows[:-1]
    return FileInfo(delimiter, head.startswith(codecs.BOM_UTF8), _checked_header(rows[0]), rows[1 : SAMPLE_ROWS + 1])


def preview_json(info: FileInfo, registered: dict[str, str], shown_rows: int = 5) -> dict:
    """The mapping step's view of a file: delimiter, header, a few rows, and each column's suggested type.

    A column's suggestion is the registered type of the attribute of the same name, else the type its
    sampled cells suggest (what an import would infer for it, unrenamed and untyped).
    """
    width = len(info.header)
    columns = []
    for i, column in enumerate(info.header):
        cells = [row[i] for row in info.sample if len(row) == width]
        registered_type = registered.get(column)
        columns.append(
            {
                "column": column,
                "suggested_type": registered_type or infer_column_type(cells),
                "registered_type": registered_type,
            }
        )
    return {
        "delimiter": DELIMITER_NAMES[info.delimiter],
        "bom": info.bom,
        "header": info.header,
        "rows_sampled": len(info.sample),
        "sample": info.sample[:shown_rows],
        "columns": columns,
        "registered": registered,
    }


# --- the mapping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """One column to import, as asked: its header name, an optional rename and an optional type."""

    column: str
    name: str | None = None
    type: str | None = None
    path: str = "columns"  # where errors about it point (an option name or a JSON path)


@dataclass(frozen=True)
class MappingSpec:
    """The mapping as asked; `columns=None` imports every column except the id column."""

    id_column: str
    columns: tuple[ColumnSpec, ...] | None = None
    # With columns=None: renames and types of some of the columns, by column.
    renames: tuple[tuple[str, str], ...] = ()
    types: tuple[tuple[str, str], ...] = ()
    id_path: str = "id_column"

    def as_json(self) -> dict:
        columns = None
        if self.columns is not None:
            columns = [{"column": c.column, "name": c.name or c.column, "type": c.type} for c in self.columns]
        return {"id_column": self.id_column, "columns": columns}


def _split_pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        left, sep, right = item.partition("=") if option == "rename" else item.rpartition("=")
        if not sep or not left.strip() or not right.strip():
            raise MappingError(f"expected COLUMN=VALUE, got {item!r}", option)
        pairs.append((left.strip(), right.strip()))
    return pairs


def mapping_from_options(
    id_column: str | None, columns: list[str], renames: list[str], types: list[str]
) -> MappingSpec:
    """The mapping from CLI options or query parameters (`columns=a,b`, `rename=a=Plan`, `type=b=number`)."""
    if not id_column or not id_column.strip():
        raise MappingError("name the column that holds the end-user id", "id_column")
    id_column = id_column.strip()
    chosen = [c.strip() for item in columns for c in item.split(",") if c.strip()]
    rename = dict(_split_pairs(renames, "rename"))
    typed = dict(_split_pairs(types, "type"))
    for column, type_ in typed.items():
        if type_ not in ATTRIBUTE_TYPES:
            raise MappingError(f"type of {column!r} must be one of {', '.join(ATTRIBUTE_TYPES)}", "type")
    for option, given in (("rename", rename), ("type", typed)):
        if id_column in given:
            raise MappingError(f"{id_column!r} is the id column; it is not imported as an attribute", option)
        if chosen:
            for column in given:
                if column not in chosen:
                    raise MappingError(f"{column!r} is not among the chosen columns", option)
    if not chosen:  # renames or types without a selection adjust the default (every column)
        return MappingSpec(id_column, None, tuple(rename.items()), tuple(typed.items()))
    if len(set(chosen)) != len(chosen):
        raise MappingError("a column is chosen twice", "columns")
    if id_column in chosen:
        raise MappingError(f"{id_column!r} is the id column; it is not imported as an attribute", "columns")
    return MappingSpec(id_column, tuple(ColumnSpec(c, rename.get(c), typed.get(c)) for c in chosen))


def mapping_from_json(body: object, path: str = "$") -> MappingSpec:
    """The mapping from JSON: `{"id_column": …, "columns": [{"column", "name", "type"}, …]}` (columns optional)."""
    if not isinstance(body, dict):
        raise MappingError("expected an object with id_column and columns", path)
    id_column = body.get("id_column")
    if not isinstance(id_column, str) or not id_column.strip():
        raise MappingError("name the column that holds the end-user id", f"{path}.id_column")
    raw = body.get("columns")
    if raw is None:
        return MappingSpec(id_column.strip(), None, id_path=f"{path}.id_column")
    if not isinstance(raw, list) or not raw:
        raise MappingError("columns must be a non-empty list of {column, name, type}, or left out", f"{path}.columns")
    columns = []
    for i, item in enumerate(raw):
        where = f"{path}.columns[{i}]"
        if isinstance(item, str):
            item = {"column": item}
        if not isinstance(item, dict):
            raise MappingError("expected a column name or an object {column, name, type}", where)
        for key in item:
            if key not in ("column", "name", "type"):
                raise MappingError(f"unknown field {key!r}: expected column, name and type", f"{where}.{key}")
        column = item.get("column")
        if not isinstance(column, str) or not column.strip():
            raise MappingError("expected the column's name in the header", f"{where}.column")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise MappingError("expected an attribute name", f"{where}.name")
        problem = check_name(column.strip() if name is None else name)
        if problem:
            raise MappingError(problem, f"{where}.name")
        type_ = item.get("type")
        if type_ is not None and type_ not in ATTRIBUTE_TYPES:
            raise MappingError(f"type must be one of {', '.join(ATTRIBUTE_TYPES)}", f"{where}.type")
        columns.append(ColumnSpec(column.strip(), name, type_, where))
    return MappingSpec(id_column.strip(), tuple(columns), id_path=f"{path}.id_column")


def resolve(spec: MappingSpec, info: FileInfo, registered: dict[str, str]) -> ImportPlan:
    """Check the mapping against the header, give every column its name and type.

    A column's type is the mapping's; else the registered type of its name; else the one its
    sample suggests (`infer_column_type`). An explicit type that clashes with the registry is refused.
    """
    renames, types = dict(spec.renames), dict(spec.types)
    header = info.header
    positions: dict[str, list[int]] = {}
    for i, h in enumerate(header):
        positions.setdefault(h, []).append(i)

    def index_of(column: str, path: str) -> int:
        found = positions.get(column)
        if not found:
            shown = ", ".join(repr(h) for h in header[:20]) + (", …" if len(header) > 20 else "")
            raise MappingError(f"the header has no column {column!r} (it has {shown})", path)
        if len(found) > 1:
            raise MappingError(f"the header has {column!r} {len(found)} times (columns {found[0] + 1} and "
                               f"{found[1] + 1}); rename one in the file", path)  # fmt: skip
        return found[0]

    id_index = index_of(spec.id_column, spec.id_path)
    if spec.columns is None:
        for column in (*renames, *types):
            if column not in positions or column == spec.id_column:
                option = "rename" if column in renames else "type"
                raise MappingError(f"the header has no attribute column {column!r}", option)
        chosen = []
        for i, h in enumerate(header):
            if i == id_index:
                continue
            if not h:
                raise MappingError(f"column {i + 1} of the header has no name; choose the columns to import", "columns")
            chosen.append(ColumnSpec(h, renames.get(h), types.get(h)))
    else:
        chosen = list(spec.columns)
    resolved: list[ResolvedColumn] = []
    names: set[str] = set()
    for c in chosen:
        index = index_of(c.column, c.path)
        if index == id_index:
            raise MappingError(f"{c.column!r} is the id column; it is not imported as an attribute", c.path)
        name = c.name if c.name is not None else c.column
        name_path = c.path + ".name" if c.path.startswith("$") else "rename"
        problem = check_name(name)
        if problem:
            raise MappingError(f"{c.column!r}: {problem}", name_path)
        if name in names:
            raise MappingError(f"the attribute name {name!r} is mapped twice", name_path)
        names.add(name)
        type_path = c.path + ".type" if c.path.startswith("$") else "type"
        if c.type is not None:
            if name in registered and registered[name] != c.type:
                raise MappingError(
                    f"{name!r} is mapped as {c.type} but registered as {registered[name]}; use {registered[name]} "
                    "or another name",
                    type_path,
                )
            resolved.append(ResolvedColumn(index, c.column, name, c.type, False))
        elif name in registered:
            resolved.append(ResolvedColumn(index, c.column, name, registered[name], True))
        else:
            cells = [row[index] for row in info.sample if len(row) == len(header)]
            resolved.append(ResolvedColumn(index, c.column, name, infer_column_type(cells), True))
    if not resolved:
        raise MappingError("no column to import besides the id column", "columns")
    return ImportPlan(info.delimiter, info.bom, tuple(header), id_index, spec.id_column, tuple(resolved))


# --- jobs ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """An import job ready to run: its row is in `import_jobs`."""

    project_id: int
    id: str
    integration: str
    plan: ImportPlan
    dry_run: bool
    status: str
    size: int
    file_name: str
    source_id: str | None = None
    log: bool = True  # write the run to the integration log (S3 objects are logged with their run instead)


@dataclass
class Progress:
    """Counts of a running job, as they grow."""

    rows: int = 0
    rows_applied: int = 0
    rows_failed: int = 0
    values_applied: int = 0
    values_changed: int = 0
    error_count: int = 0
    bytes_read: int = 0
    registered: list[str] = field(default_factory=list)
    first_errors: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        return {
            "rows": self.rows,
            "rows_applied": self.rows_applied,
            "rows_failed": self.rows_failed,
            "values_applied": self.values_applied,
            "values_changed": self.values_changed,
            "error_count": self.error_count,
            "bytes_read": self.bytes_read,
            "registered": _encode(self.registered),
        }


@dataclass
class _Run:
    """What one run of a job carries from chunk to chunk."""

    job: Job
    progress: Progress
    refused_columns: set[str] = field(default_factory=set)
    next_line: int = 2  # the first line of the file not written yet


def job_json(row) -> dict:
    """An `import_jobs` row as the API shows it."""
    status = row.status
    message = row.message
    now = _now()
    if status in ("queued", "running") and now - row.updated_at > STALE_MS:
        status = "interrupted"
        message = "no progress for 10 minutes: the process running it stopped"
    return {
        "id": row.id,
        "integration": row.integration,
        "source_id": row.source_id,
        "run_id": row.run_id,
        "file_name": row.file_name,
        "etag": row.etag,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "dry_run": row.dry_run,
        "status": status,
        "mapping": msgspec.json.decode(row.mapping),
        "rows": row.rows,
        "rows_applied": row.rows_applied,
        "rows_failed": row.rows_failed,
        "values_applied": row.values_applied,
        "values_changed": row.values_changed,
        "error_count": row.error_count,
        "bytes_read": row.bytes_read,
        "progress": round(row.bytes_read / row.size_bytes, 4) if row.size_bytes else 1.0,
        "registered": msgspec.json.decode(row.registered),
        "message": message,
        "duplicate_of": row.duplicate_of,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "updated_at": row.updated_at,
    }


class CsvImporter:
    """Creates, runs and reads import jobs."""

    def __init__(
        self,
        engine: sa.Engine,
        attributes: AttributeStore,
        log: IntegrationLog,
        clock: Callable[[], int] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        reader_process_min_bytes: int = READER_PROCESS_MIN_BYTES,
    ) -> None:
        self.engine = engine
        self.attributes = attributes
        self.log = log
        self.clock = clock or _now  # ms
        self.chunk_rows = chunk_rows
        self.reader_process_min_bytes = reader_process_min_bytes  # 0: always a separate reader process

    def registered_types(self, project_id: int) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(attribute_registry.c.name, attribute_registry.c.type).where(
                    attribute_registry.c.project_id == project_id
                )
            ).all()
        return {r.name: r.type for r in rows}

    def plan(self, project_id: int, path: Path, spec: MappingSpec) -> ImportPlan:
        """Read the file's start and resolve the mapping; raises CsvFileError or MappingError."""
        return resolve(spec, read_file_info(path), self.registered_types(project_id))

    def create_job(
        self,
        project_id: int,
        path: Path,
        spec: MappingSpec,
        *,
        file_name: str,
        sha256: str,
        size: int,
        integration: str = "csv",
        dry_run: bool = False,
        force: bool = False,
        source_id: str | None = None,
        run_id: str | None = None,
        etag: str | None = None,
        log: bool = True,
    ) -> Job:
        """Plan the import and record the job (queued); a file already imported with the same mapping is skipped.

        The same bytes (SHA-256) with the same resolved mapping as an earlier finished, real import of
        this integration would change nothing, so the job is recorded as `skipped` with `duplicate_of`,
        unless `force`. Raises CsvFileError or MappingError before anything is recorded.
        """
        plan = self.plan(project_id, path, spec)
        now = self.clock()
        job_id = f"{now:013d}-{secrets.token_hex(6)}"
        status, message, duplicate_of = "queued", None, None
        if not dry_run and not force:
            with self.engine.connect() as conn:
                duplicate_of = conn.execute(
                    sa.select(import_jobs.c.id)
                    .where(
                        import_jobs.c.project_id == project_id,
                        import_jobs.c.sha256 == sha256,
                        import_jobs.c.mapping_hash == plan.hash(),
                        import_jobs.c.integration == integration,
                        import_jobs.c.status == "done",
                        import_jobs.c.dry_run.is_(False),
                    )
                    .order_by(import_jobs.c.id.desc())
                    .limit(1)
                ).scalar()
            if duplicate_of is not None:
                status = "skipped"
                message = f"this file was already imported with the same mapping (job {duplicate_of}): nothing to do"
        job = Job(project_id, job_id, integration, plan, dry_run, status, size, file_name, source_id, log)
        with write_transaction(self.engine) as conn:
            conn.execute(
                import_jobs.insert().values(
                    project_id=project_id,
                    id=job_id,
                    integration=integration,
                    source_id=source_id,
                    run_id=run_id,
                    file_name=file_name,
                    etag=etag,
                    sha256=sha256,
                    size_bytes=size,
                    mapping=_encode(plan.as_json()),
                    mapping_hash=plan.hash(),
                    dry_run=dry_run,
                    status=status,
                    **Progress(bytes_read=size if status == "skipped" else 0).counts(),
                    message=message,
                    duplicate_of=duplicate_of,
                    created_at=now,
                    started_at=None,
                    finished_at=now if status == "skipped" else None,
                    updated_at=now,
                )
            )
            if status == "skipped" and log:
                self.log.append(
                    project_id,
                    integration,
                    "import.skipped",
                    integration_id=source_id,
                    request_id=job_id,
                    details={"file_name": file_name, "sha256": sha256, "duplicate_of": duplicate_of},
                    ts=now,
                    conn=conn,
                )
        return job

    def run(
        self,
        job: Job,
        path: Path,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
        reader: ReaderProcess | None = None,
    ) -> dict:
        """Import the file chunk by chunk and return the finished job.

        Problems in the file end up in the job (row errors in its report; an unreadable file, or a
        reader process that died, as status `failed`); only a database failure is raised, after the
        job records it. `reader` is one of `start_reader`, which this takes over (and ends).
        """
        if job.status != "queued":
            if reader is not None:
                reader.close()
            return self.get(job.project_id, job.id)
        state = _Run(job, Progress())
        self._update(job, status="running", started_at=self.clock(), updated_at=self.clock())
        status, message = "done", None
        # Ids become keys as collection makes them, under the project's settings read once per import.
        uuid = integration_uuid(ProjectStore(self.engine).environments(job.project_id))
        try:
            with self._reader(job, path, uuid, reader) as chunks:
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        status = "interrupted"
                        message = f"the server stopped: rows before line {chunk.first_line} were imported"
                        break
                    self._write_chunk(state, chunk)
                    del chunk  # written: not kept while the next one arrives
                    if on_progress:
                        on_progress(state.progress)
        except CsvFileError as exc:
            status, message = "failed", f"line {exc.line}: {exc.reason}" if exc.line else exc.reason
        except ReaderError as exc:
            status = "failed"
            message = f"{exc}: rows before line {state.next_line} were imported"
        except Exception as exc:
            self._finish(state, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self._finish(state, status, message)
        return self.get(job.project_id, job.id)

    def start_reader(self, size: int) -> ReaderProcess | None:
        """A reader process started ahead for a file of `size` bytes, or None if a file that small is
        read in process; `run` takes it over. It starts while the caller hashes and checks the file,
        so that its start-up is not waited for; one that `run` never gets must be closed."""
        return ReaderProcess() if size >= self.reader_process_min_bytes else None

    def _reader(self, job: Job, path: Path, uuid: UuidSettings | None, started: ReaderProcess | None) -> _Prefetch:
        """The file's converted chunks, read while the previous chunk is written.

        Reading, checking, keying and converting are Python work that holds the GIL, so for large
        files another process does them on the other core and this one only writes; a small file
        is read by a thread, as starting a Python process would take longer than its whole import.
        """
        slots = None if job.dry_run else self._expected_slots(job)
        if job.size >= self.reader_process_min_bytes:
            reader = started if started is not None else ReaderProcess()
            # Frames are received and decoded by a thread while this one waits for the database.
            return _Prefetch(iter(reader.begin(path, job.plan, uuid, self.chunk_rows, slots, job.size)), owner=reader)
        if started is not None:
            started.close()
        return _Prefetch(read_chunks(path, job.plan, uuid, self.chunk_rows, slots, job.size))

    def _expected_slots(self, job: Job) -> tuple[str, ...] | None:
        """The slots the plan's columns will be stored in as the registry stands (the writer checks it
        again under its lock), or None if a column would be refused."""
        with self.engine.connect() as conn:
            planned = registry_of(conn, job.project_id)
        found = plan_columns(planned, [(c.name, c.type) for c in job.plan.columns])
        if any(entry is None for entry, _ in found):
            return None
        return tuple(entry.slot for entry, _ in found)  # type: ignore[union-attr]

    def _write_chunk(self, state: _Run, chunk: Chunk) -> None:
        """Write a converted chunk's values with its errors and the job's progress in one transaction."""
        job, progress = state.job, state.progress
        errors = chunk.errors
        now = self.clock()
        with write_transaction(self.engine) as conn, unmapped(conn):
            report = self.attributes.write_columns(
                conn,
                job.project_id,
                job.integration,
                chunk.keys,
                chunk.columns,
                now,
                job.dry_run,
                chunk.history,
                # Past this many users the segment columns re-read the whole project anyway: one
                # counter bump per chunk instead of a change-log row per user.
                whole_project=progress.rows + len(chunk.keys) > WHOLE_PROJECT_KEYS,
            )
            column_of = {c.name: c.column for c in job.plan.columns}
            for name, reason in report.column_errors:
                if name not in state.refused_columns:  # once per job, at the header
                    state.refused_columns.add(name)
                    errors.append((1, column_of[name], reason))
            errors.sort(key=_line)
            progress.rows += len(chunk.keys) + chunk.failed_rows
            progress.bytes_read = chunk.bytes_read
            state.next_line = chunk.next_line
            progress.rows_applied += sum(report.rows_applied)
            progress.rows_failed += chunk.failed_rows + sum(chunk.bad_values)
            progress.values_applied += report.applied
            progress.values_changed += report.changed
            progress.registered.extend(report.registered)
            room = max(0, MAX_STORED_ERRORS - progress.error_count)
            insert_rows(
                conn,
                import_errors,
                ("project_id", "job_id", "seq", "line", "column_name", "reason"),
                [
                    (job.project_id, job.id, progress.error_count + n, line, column, reason)
                    for n, (line, column, reason) in enumerate(errors[:room])
                ],
            )
            progress.error_count += len(errors)
            for line, column, reason in errors[: max(0, FIRST_ERRORS - len(progress.first_errors))]:
                progress.first_errors.append({"line": line, "column": column, "reason": reason})
            self._update(job, conn=conn, **progress.counts(), updated_at=now)

    def _finish(self, state: _Run, status: str, message: str | None) -> None:
        job, progress = state.job, state.progress
        now = self.clock()
        if status == "done":
            progress.bytes_read = job.size  # the last chunk's count may stop short of the file's end
        with write_transaction(self.engine) as conn:
            self._update(
                job, conn=conn, **progress.counts(), status=status, message=message, finished_at=now, updated_at=now
            )
            if job.log:
                self.log.append(
                    job.project_id,
                    job.integration,
                    "import.dry_run" if job.dry_run else "import",
                    records=progress.rows,
                    applied=progress.rows_applied,
                    errors=progress.first_errors,
                    error_count=progress.error_count,
                    integration_id=job.source_id,
                    request_id=job.id,
                    details={
                        "file_name": job.file_name,
                        "status": status,
                        "message": message,
                        "rows_failed": progress.rows_failed,
                        "values_applied": progress.values_applied,
                        "values_changed": progress.values_changed,
                        "registered": progress.registered,
                    },
                    ts=now,
                    conn=conn,
                )

    def _update(self, job: Job, conn: sa.Connection | None = None, **values) -> None:
        stmt = (
            import_jobs.update()
            .where(import_jobs.c.project_id == job.project_id, import_jobs.c.id == job.id)
            .values(**values)
        )
        if conn is not None:
            conn.execute(stmt)
            return
        with write_transaction(self.engine) as own:
            own.execute(stmt)

    # reading jobs

    def get(self, project_id: int, job_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(import_jobs).where(import_jobs.c.project_id == project_id, import_jobs.c.id == job_id)
            ).first()
        return None if row is None else job_json(row)

    def list(
        self,
        project_id: int,
        integration: str | None = None,
        limit: int = 50,
        before: str | None = None,
        run_id: str | None = None,
    ) -> list[dict]:
        """Newest first."""
        query = sa.select(import_jobs).where(import_jobs.c.project_id == project_id)
        if integration:
            query = query.where(import_jobs.c.integration == integration)
        if run_id:
            query = query.where(import_jobs.c.run_id == run_id)
        if before:
            query = query.where(import_jobs.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(import_jobs.c.id.desc()).limit(limit)).all()
        return [job_json(r) for r in rows]

    def error_rows(self, project_id: int, job_id: str, page: int = 5_000) -> Iterator[tuple[int, str | None, str]]:
        """The job's error report in order, `(line, column, reason)`, read a page at a time."""
        e = import_errors
        after = -1
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(e.c.seq, e.c.line, e.c.column_name, e.c.reason)
                    .where(e.c.project_id == project_id, e.c.job_id == job_id, e.c.seq > after)
                    .order_by(e.c.seq)
                    .limit(page)
                ).all()
            for r in rows:
                yield r.line, r.column_name, r.reason
            if len(rows) < page:
                return
            after = rows[-1].seq


class _Prefetch:
    """Runs an iterator in a thread, one item ahead of its consumer; errors are raised to the consumer.

    One ahead, not more: the thread takes its next item only once the consumer has taken the last one,
    so at most two items (the consumer's and the one ready) are held at a time.

    Leaving the `with` block early (a stop, a database error) tells the thread to end after the
    item it is working on, and waits for it, so the file is closed when the block is left.
    """

    _END = object()

    def __init__(self, items: Iterator, owner: ReaderProcess | None = None) -> None:
        self._owner = owner  # the process the items come from: stopped and reaped when the block is left
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._cancel = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._fill, args=(items,), name="csv-import-read", daemon=True)
        self._thread.start()

    def _fill(self, items: Iterator) -> None:
        error: BaseException | None = None
        try:
            for item in items:
                if self._cancel.is_set():
                    break
                self._queue.put(item)
                del item
                self._queue.join()  # until the consumer has taken it
        except BaseException as exc:  # handed to the consumer, which raises it
            error = exc
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            self._queue.put((self._END, error))

    def __iter__(self) -> Iterator:
        while not self._ended:
            item = self._queue.get()
            self._queue.task_done()
            if type(item) is tuple and item and item[0] is self._END:
                self._ended = True
                if item[1] is not None:
                    raise item[1]
                return
            yield item

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc_info) -> None:
        self._cancel.set()
        if self._owner is not None and not self._ended:
            self._owner.kill()  # left early: a thread waiting for the reader's next frame gets its end
        while not self._ended:  # unblock the thread's put until it has said it ended
            item = self._queue.get()
            self._queue.task_done()
            self._ended = type(item) is tuple and bool(item) and item[0] is self._END
        self._thread.join()
        if self._owner is not None:
            self._owner.close()


class ReaderError(RuntimeError):
    """The reader process of an import ended without finishing the file (killed, out of memory, a bug)."""


_READER_STOP_S = 10.0  # how long a reader told to stop may take to end before it is killed


class ReaderProcess:
    """Runs `read_chunks` in a separate process (`profiles/csv_reader.py`) and hands its chunks
    to the importer as they come.

    The process starts when this is made and waits for its work (`begin`), so it can be started
    ahead. It is a fresh interpreter running only that module (no fork of a server with threads,
    no re-import of the caller's main module as multiprocessing's spawn does) and imports no
    SQLAlchemy. The chunks travel pickled through a pipe; the reader blocks while the importer has
    not taken what the pipe holds, so it is at most a chunk and a pipe buffer ahead and memory
    stays bounded. A reader that dies is reported as `ReaderError` once the pipe runs dry; `close`
    (also leaving the `with` block: the end, a stop, an error) closes the pipes, which ends the
    reader, and reaps it (killed if it does not end).
    """

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "usertrail.profiles.csv_reader"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._work, self._out = self._process.stdin, self._process.stdout

    def begin(
        self,
        path: Path,
        plan: ImportPlan,
        uuid: UuidSettings | None,
        chunk_rows: int,
        slots: tuple[str, ...] | None,
        size: int | None,
    ) -> ReaderProcess:
        """Hand the reader its file; returns self, to be iterated in a `with` block."""
        try:
            with self._work:
                pickle.dump((path, plan, uuid, chunk_rows, slots, size), self._work)
        except BrokenPipeError:
            pass  # the reader ended at once: reported by the first read
        return self

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            kind, payload = self._frame()
            if kind == csv_reader.CHUNK:
                chunk = CHUNK_DECODER.decode(payload)
                del payload
                yield chunk
                del chunk  # not kept while the next one is read
                continue
            reason, line = msgspec.msgpack.decode(payload)
            if kind == csv_reader.FILE_ERROR:
                raise CsvFileError(reason, line)
            if kind == csv_reader.FAILED:
                raise ReaderError(f"the process reading the file failed: {reason}")
            return

    def _frame(self) -> tuple[bytes, bytes]:
        """The next frame's kind and payload; ReaderError if the pipe closed before its end."""
        try:
            header = self._out.read(csv_reader.FRAME_HEADER)
            payload = b""
            if len(header) == csv_reader.FRAME_HEADER:
                size = int.from_bytes(header[1:], "little")
                payload = self._out.read(size)
                if len(payload) == size:
                    return header[:1], payload
        except OSError:
            pass
        raise ReaderError(f"the process reading the file ended unexpectedly ({self._end()})")

    def _end(self) -> str:
        """How the reader ended, once its output closed (if it runs on, leaving the block kills it)."""
        try:
            code = self._process.wait(_READER_STOP_S)
        except subprocess.TimeoutExpired:
            return "its output closed, still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def kill(self) -> None:
        """Stop the reader at once (its import is abandoned); `close` still reaps it."""
        if self._process.poll() is None:
            self._process.kill()

    def close(self) -> None:
        """End the reader (a reader without work ends at once; one still writing gets a broken pipe)
        and reap it. Safe to call again."""
        if not self._work.closed:
            self._work.close()
        self._out.close()
        try:
            self._process.wait(_READER_STOP_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> ReaderProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _line(error: tuple) -> int:
    return error[0]


def error_report_csv(rows: Iterator[tuple[int, str | None, str]]) -> Iterator[str]:
    """The error report as CSV text, a block at a time: `line,column,reason`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("line", "column", "reason"))
    for n, (line, column, reason) in enumerate(rows, 1):
        writer.writerow((line, column or "", reason))
        if n % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
