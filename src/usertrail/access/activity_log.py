"""The playback activity log: who viewed, deleted or exported which recording, and when.

Entries are per project, numbered 1, 2, 3, … (`seq`) and chained: each stores the hash of the one
before it (`prev_hash`, 64 zeros for the first) and its own `hash` = SHA-256(canonical(entry) +
prev_hash). Changing, removing or re-ordering any entry therefore breaks the chain at that entry,
which `verify` finds. Only truncating the newest entries leaves a valid (shorter) chain.

Nothing in the application updates or deletes these rows: this module only inserts and reads, and
retention and erasure do not touch the table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields

import msgspec
import sqlalchemy as sa
from starlette.requests import Request

from usertrail.access.principal import Principal
from usertrail.enrich.ip import client_ip, mask_ip
from usertrail.store.database import lock_key
from usertrail.store.schema import activity_log

ACTIONS = ("view", "delete", "export")
GENESIS = "0" * 64
FORMAT_VERSION = 1  # part of every canonical entry, so a later format cannot be mistaken for this one
MAX_USER_AGENT = 512


@dataclass(frozen=True)
class Entry:
    """One activity-log entry, as hashed (without prev_hash and hash)."""

    project_id: int
    seq: int
    ts: int
    actor_kind: str
    actor_id: str
    actor_email: str | None
    action: str
    recording_id: str
    ip_masked: str
    user_agent: str


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


@dataclass(frozen=True)
class RequestFacts:
    """What the log keeps about the request: the masked client IP and the user agent."""

    ip_masked: str
    user_agent: str


@dataclass(frozen=True)
class Verification:
    """The result of walking one project's chain: entries checked and the first broken one."""

    project_id: int
    entries: int
    first_broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_broken_seq is None

    def as_json(self) -> dict:
        return {
            "project_id": self.project_id,
            "ok": self.ok,
            "entries": self.entries,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
        }


def canonical(entry: Entry) -> bytes:
    """The entry's fields in a fixed order as compact JSON, prefixed by the format version."""
    return msgspec.json.encode([FORMAT_VERSION, *astuple(entry)])


def decode_canonical(data: bytes) -> Entry:
    """The inverse of `canonical` (used to check that the encoding loses nothing)."""
    version, *values = msgspec.json.decode(data)
    if version != FORMAT_VERSION or len(values) != len(ENTRY_FIELDS):
        raise ValueError("not a canonical activity-log entry of this format")
    return Entry(*values)


def entry_hash(entry: Entry, prev_hash: str) -> str:
    """SHA-256 over the canonical entry followed by the previous entry's hash (hex)."""
    return hashlib.sha256(canonical(entry) + prev_hash.encode()).hexdigest()


def request_facts(request: Request) -> RequestFacts:
    """The masked client IP (trusting X-Forwarded-For only from the configured proxies) and user agent."""
    settings = request.app.state.settings
    peer = request.client.host if request.client else None
    ip = client_ip(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies)
    return RequestFacts(mask_ip(ip), request.headers.get("user-agent", "")[:MAX_USER_AGENT])


def append(
    conn: sa.Connection,
    project_id: int,
    principal: Principal,
    action: str,
    recording_id: str,
    request: Request | RequestFacts,
    ts: int | None = None,
) -> Entry:
    """Append one entry in the caller's write transaction (so it commits with what it records).

    Appends to a project are serialised (PostgreSQL: an advisory lock per project; SQLite: the
    write transaction's lock), so two writers never both extend the same last entry.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    facts = request if isinstance(request, RequestFacts) else request_facts(request)
    lock_key(conn, "activity_log", project_id)
    last = conn.execute(
        sa.select(activity_log.c.seq, activity_log.c.hash)
        .where(activity_log.c.project_id == project_id)
        .order_by(activity_log.c.seq.desc())
        .limit(1)
    ).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS)
    entry = Entry(
        project_id=project_id,
        seq=seq,
        ts=int(time.time() * 1000) if ts is None else ts,
        actor_kind=principal.kind,
        actor_id=principal.actor_id,
        actor_email=principal.email,
        action=action,
        recording_id=recording_id,
        ip_masked=facts.ip_masked,
        user_agent=facts.user_agent,
    )
    conn.execute(
        activity_log.insert().values(
            **{name: getattr(entry, name) for name in ENTRY_FIELDS},
            prev_hash=prev_hash,
            hash=entry_hash(entry, prev_hash),
        )
    )
    return entry


@dataclass(frozen=True)
class Query:
    """Filters for listing and exporting: every given one must match."""

    actor: str | None = None  # account id, e-mail address or token key id
    action: str | None = None
    recording_id: str | None = None
    since: int | None = None  # ms, inclusive
    until: int | None = None  # ms, exclusive

    def clauses(self, project_id: int) -> list[sa.ColumnElement[bool]]:
        where = [activity_log.c.project_id == project_id]
        if self.actor:
            where.append(
                sa.or_(activity_log.c.actor_id == self.actor, activity_log.c.actor_email == self.actor.lower())
            )
        if self.action:
            where.append(activity_log.c.action == self.action)
        if self.recording_id:
            where.append(activity_log.c.recording_id == self.recording_id)
        if self.since is not None:
            where.append(activity_log.c.ts >= self.since)
        if self.until is not None:
            where.append(activity_log.c.ts < self.until)
        return where


def entry_json(row) -> dict:
    return {name: getattr(row, name) for name in (*ENTRY_FIELDS, "prev_hash", "hash")}


def list_entries(engine: sa.Engine, project_id: int, query: Query, limit: int, before_seq: int | None) -> list[dict]:
    """Matching entries, newest first; page with `before_seq` (the last seq of the previous page)."""
    where = query.clauses(project_id)
    if before_seq is not None:
        where.append(activity_log.c.seq < before_seq)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(activity_log).where(*where).order_by(activity_log.c.seq.desc()).limit(limit))
        return [entry_json(r) for r in rows]


CSV_COLUMNS = ("seq", "time_utc", *ENTRY_FIELDS[2:], "prev_hash", "hash")


def export_csv(engine: sa.Engine, project_id: int, query: Query, batch: int = 1000) -> Iterator[str]:
    """Matching entries, oldest first, as CSV text in chunks (header first)."""
    yield _csv_line(CSV_COLUMNS)
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(activity_log)
                .where(*query.clauses(project_id), activity_log.c.seq > after)
                .order_by(activity_log.c.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        chunk = io.StringIO()
        writer = csv.writer(chunk, lineterminator="\r\n")
        for r in rows:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.ts // 1000)) + f".{r.ts % 1000:03d}Z"
            writer.writerow([r.seq, stamp, *(csv_cell(getattr(r, name)) for name in CSV_COLUMNS[2:])])
        yield chunk.getvalue()
        after = rows[-1].seq


def _csv_line(values) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue()


def csv_cell(value):
    """A CSV cell that a spreadsheet shows as text: never a formula; None as empty."""
    # Cells are often client-controlled (a user agent, an end-user key): keep spreadsheets from running them.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def verify(engine: sa.Engine, project_id: int, batch: int = 5000) -> Verification:
    """Walk the project's chain from the first entry; report the first entry that does not fit."""
    expected_seq, prev_hash, checked = 1, GENESIS, 0
    where = [activity_log.c.project_id == project_id]
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(activity_log).where(*where).order_by(activity_log.c.seq).limit(batch)).all()
        if not rows:
            return Verification(project_id, checked)
        for r in rows:
            if r.seq != expected_seq:
                return Verification(project_id, checked, expected_seq, f"expected entry {expected_seq}, found {r.seq}")
            if r.prev_hash != prev_hash:
                return Verification(project_id, checked, r.seq, "prev_hash does not match the previous entry's hash")
            entry = Entry(**{name: getattr(r, name) for name in ENTRY_FIELDS})
            if entry_hash(entry, prev_hash) != r.hash:
                return Verification(project_id, checked, r.seq, "the entry was changed: its hash does not match")
            checked += 1
            expected_seq, prev_hash = r.seq + 1, r.hash
        where = [activity_log.c.project_id == project_id, activity_log.c.seq >= expected_seq]
