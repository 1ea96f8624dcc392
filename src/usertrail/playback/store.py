"""Recordings: metadata in the database, chunks compressed and encrypted in the blob store."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
import zstandard

from usertrail.playback import quota
from usertrail.playback.blobs import BlobStore
from usertrail.playback.chunks import Chunk, ChunkError
from usertrail.playback.crypto import (
    BadToken,
    CryptoError,
    KeySource,
    UploadGrant,
    new_data_key,
    open_chunk,
    seal_chunk,
)
from usertrail.store.database import insert_ignore, write_transaction
from usertrail.store.schema import (
    events,
    identity_links,
    playback_chunks,
    playback_projects,
    playback_recording_assets,
    playback_recordings,
    segment_members,
)

MAX_URLS = 100


class RecordingGone(LookupError):
    """The recording does not exist (never started, deleted, or expired by retention)."""


@dataclass(frozen=True)
class NewRecording:
    recording_id: str
    token: str
    counted: bool


@dataclass
class Filters:
    """Filters of the recording list; None means no filter."""

    user_key: str | None = None
    since: int | None = None  # started_at ≥, ms
    until: int | None = None  # started_at <, ms
    url: str | None = None  # substring of any recorded URL
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None
    before: int | None = None  # paging: started_at < this
    segment_id: str | None = None  # the end user is (now) a member of this saved segment
    walkme_type: str | None = None  # the end user had a WalkMe event of this type during the recording
    walkme_item: str | None = None  # … about an item with this name
    limit: int = 100


def recording_json(row) -> dict:
    """A recording's metadata as the API shows it."""
    duration = row.last_ts - row.first_ts if row.first_ts is not None and row.last_ts is not None else 0
    return {
        "recording_id": row.recording_id,
        "user_key": row.user_key,
        "env": row.env,
        "session_id": row.session_hint,
        "started_at": row.started_at,
        "last_chunk_at": row.last_chunk_at,
        "first_event_at": row.first_ts,
        "last_event_at": row.last_ts,
        "duration_ms": duration,
        "chunks": row.chunk_count,
        "events": row.event_count,
        "raw_bytes": row.raw_bytes,
        "stored_bytes": row.stored_bytes,
        "urls": msgspec.json.decode(row.urls),
        "browser": row.browser,
        "counted_in_quota": bool(row.counted),
        "created_at": row.created_at,
    }


def _in_segment(project_id: int, segment_id: str) -> sa.ColumnElement[bool]:
    """The recording's end user is a current member of the saved segment, or an anonymous key its member owns.

    Members are End User Object owners (identified keys once stitched); a recording keeps the key its
    page had when it started, which may be an anonymous key linked to that owner since.
    """
    t, m, links = playback_recordings, segment_members, identity_links
    members = sa.select(m.c.user_key).where(m.c.project_id == project_id, m.c.segment_id == segment_id)
    linked = sa.select(links.c.user_key).where(links.c.project_id == project_id, links.c.person_key.in_(members))
    return sa.or_(t.c.user_key.in_(members), t.c.user_key.in_(linked))


def _had_walkme_event(project_id: int, event_type: str | None, item: str | None) -> sa.ColumnElement[bool]:
    """The recording's end-user key sent a WalkMe event (of this type, about this item) while it was recorded.

    Times are compared on the client's clock (`client_ts`, the clock rrweb stamps events with; the
    server's corrected `ts` when the client sent none); the scan is the (project, user, ts) index.
    """
    t, e = playback_recordings, events
    when = sa.func.coalesce(e.c.client_ts, e.c.ts)
    where = [
        e.c.project_id == project_id,
        e.c.user_key == t.c.user_key,
        e.c.source == "walkme",
        when >= t.c.first_ts,
        when <= t.c.last_ts,
    ]
    if event_type is not None:
        where.append(e.c.type == event_type)
    if item is not None:
        where.append(e.c.object_name == item)
    return sa.exists(sa.select(e.c.event_id).where(*where))


def _prefix(project_id: int, recording_id: str) -> str:
    return f"recordings/{project_id}/{recording_id}/"


class RecordingStore:
    """Creates recordings, takes their chunks, reads them back decrypted, deletes them."""

    def __init__(self, engine: sa.Engine, blobs: BlobStore, keys: KeySource, zstd_level: int = 9) -> None:
        self.engine, self.blobs, self.keys, self.zstd_level = engine, blobs, keys, zstd_level
        self._local = threading.local()  # zstd contexts are not thread-safe

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "compressor", None)
        if c is None:
            c = self._local.compressor = zstandard.ZstdCompressor(level=self.zstd_level)
        return c

    # --- creation -------------------------------------------------------------------------------

    def existing_in_session(self, conn: sa.Connection, project_id: int, user_key: str, session_hint: str) -> bool:
        """Another tab of the same session already counts against the quota."""
        t = playback_recordings
        return (
            conn.execute(
                sa.select(t.c.recording_id)
                .where(
                    t.c.project_id == project_id,
                    t.c.user_key == user_key,
                    t.c.session_hint == session_hint,
                    t.c.counted.is_(True),
                )
                .limit(1)
            ).first()
            is not None
        )

    def create(
        self,
        conn: sa.Connection,
        project_id: int,
        user_key: str,
        env: str,
        session_hint: str | None,
        browser: str | None,
        counted: bool,
        now_ms: int,
    ) -> NewRecording:
        """A new recording with its own data key, in the caller's write transaction."""
        quota.ensure_project(conn, project_id, now_ms)
        version = conn.execute(
            sa.select(playback_projects.c.key_version).where(playback_projects.c.project_id == project_id)
        ).scalar_one()
        recording_id = "rec_" + secrets.token_hex(16)
        ring = self.keys.ring()
        conn.execute(
            playback_recordings.insert().values(
                project_id=project_id,
                user_key=user_key,
                recording_id=recording_id,
                env=env,
                session_hint=session_hint,
                started_at=now_ms,
                last_chunk_at=None,
                first_ts=None,
                last_ts=None,
                chunk_count=0,
                event_count=0,
                raw_bytes=0,
                stored_bytes=0,
                urls="[]",
                browser=browser,
                counted=counted,
                key_version=version,
                wrapped_key=ring.wrap(project_id, version, recording_id, new_data_key()),
                created_at=now_ms,
            )
        )
        token = ring.sign_upload(UploadGrant(project_id, user_key, recording_id))
        return NewRecording(recording_id, token, counted)

    def get_row(self, project_id: int, user_key: str, recording_id: str):
        t = playback_recordings
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(
                    t.c.project_id == project_id, t.c.user_key == user_key, t.c.recording_id == recording_id
                )
            ).first()
        if row is None:
            raise RecordingGone(recording_id)
        return row

    def data_key(self, row) -> bytes:
        """The recording's data key; a master key added since this process read the key file is picked up."""
        args = (row.project_id, row.key_version, row.recording_id, row.wrapped_key)
        try:
            return self.keys.ring().unwrap(*args)
        except CryptoError:
            return self.keys.ring(refresh=True).unwrap(*args)

    def verify_upload(self, token: str) -> UploadGrant:
        """The grant an upload token carries (BadToken if no configured master key signed it)."""
        try:
            return self.keys.ring().verify_upload(token)
        except BadToken:
            return self.keys.ring(refresh=True).verify_upload(token)

    # --- chunks ---------------------------------------------------------------------------------

    def add_chunk(self, grant: UploadGrant, seq: int, chunk: Chunk, max_recording_bytes: int, now_ms: int) -> bool:
        """Store a chunk once; False when this (recording, seq) was stored before.

        The blob is written (durably) before its row is committed; a lost race or a failure leaves
        no row pointing at a missing blob, and the loser's blob is removed.
        """
        pid, user, rid = grant.project_id, grant.user_key, grant.recording_id
        rec = self.get_row(pid, user, rid)
        c = playback_chunks
        with self.engine.connect() as conn:
            seen = conn.execute(
                sa.select(c.c.seq).where(
                    c.c.project_id == pid, c.c.user_key == user, c.c.recording_id == rid, c.c.seq == seq
                )
            ).first()
        if seen is not None:
            return False
        if rec.raw_bytes + len(chunk.raw) > max_recording_bytes:
            raise ChunkError(413, "$", f"the recording would exceed {max_recording_bytes} bytes")
        data_key = self.data_key(rec)
        blob = seal_chunk(data_key, pid, rid, seq, self._compressor().compress(chunk.raw))
        blob_key = f"{_prefix(pid, rid)}{seq:08d}-{secrets.token_hex(3)}"
        self.blobs.put(blob_key, blob)
        try:
            with write_transaction(self.engine) as conn:
                new = conn.execute(
                    insert_ignore(c, conn.dialect.name).values(
                        project_id=pid,
                        user_key=user,
                        recording_id=rid,
                        seq=seq,
                        blob_key=blob_key,
                        event_count=len(chunk.events),
                        raw_bytes=len(chunk.raw),
                        stored_bytes=len(blob),
                        first_ts=chunk.first_ts,
                        last_ts=chunk.last_ts,
                        received_at=now_ms,
                    )
                ).rowcount
                if new:
                    self._count_chunk(conn, grant, chunk, len(blob), now_ms)
        except BaseException:
            self.blobs.delete(blob_key)
            raise
        if not new:
            self.blobs.delete(blob_key)
        return bool(new)

    def _count_chunk(self, conn: sa.Connection, grant: UploadGrant, chunk: Chunk, stored: int, now_ms: int) -> None:
        t = playback_recordings
        where = (
            t.c.project_id == grant.project_id,
            t.c.user_key == grant.user_key,
            t.c.recording_id == grant.recording_id,
        )
        row = conn.execute(sa.select(t.c.urls, t.c.first_ts, t.c.last_ts).where(*where)).first()
        if row is None:  # deleted while the chunk was on its way: its blob goes too
            raise RecordingGone(grant.recording_id)
        urls = msgspec.json.decode(row.urls)
        urls += [u for u in chunk.urls() if u not in urls][: max(0, MAX_URLS - len(urls))]
        first = min(x for x in (row.first_ts, chunk.first_ts) if x is not None)
        last = max(x for x in (row.last_ts, chunk.last_ts) if x is not None)
        conn.execute(
            t.update()
            .where(*where)
            .values(
                chunk_count=t.c.chunk_count + 1,
                event_count=t.c.event_count + len(chunk.events),
                raw_bytes=t.c.raw_bytes + len(chunk.raw),
                stored_bytes=t.c.stored_bytes + stored,
                first_ts=first,
                last_ts=last,
                last_chunk_at=now_ms,
                urls=msgspec.json.encode(urls).decode(),
            )
        )

    # --- reads ----------------------------------------------------------------------------------

    def find(self, project_id: int, recording_id: str):
        """A recording by id alone (admin reads; the id is unique and random)."""
        t = playback_recordings
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.project_id == project_id, t.c.recording_id == recording_id)
            ).first()
        if row is None:
            raise RecordingGone(recording_id)
        return row

    def list(self, project_id: int, f: Filters) -> list:
        t = playback_recordings
        query = sa.select(t).where(t.c.project_id == project_id)
        duration = sa.func.coalesce(t.c.last_ts - t.c.first_ts, 0)
        if f.user_key is not None:
            query = query.where(t.c.user_key == f.user_key)
        if f.since is not None:
            query = query.where(t.c.started_at >= f.since)
        if f.until is not None:
            query = query.where(t.c.started_at < f.until)
        if f.before is not None:
            query = query.where(t.c.started_at < f.before)
        if f.url:
            escaped = f.url.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(t.c.urls.like(f"%{escaped}%", escape="\\"))
        if f.min_duration_ms is not None:
            query = query.where(duration >= f.min_duration_ms)
        if f.max_duration_ms is not None:
            query = query.where(duration <= f.max_duration_ms)
        if f.segment_id is not None:
            query = query.where(_in_segment(project_id, f.segment_id))
        if f.walkme_type is not None or f.walkme_item is not None:
            query = query.where(_had_walkme_event(project_id, f.walkme_type, f.walkme_item))
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(t.c.started_at.desc(), t.c.recording_id).limit(f.limit)).all()

    def chunks(self, row) -> Iterator[bytes]:
        """The recording's chunks, decrypted, in sequence order: each a JSON array of rrweb events."""
        c = playback_chunks
        with self.engine.connect() as conn:
            chunk_rows = conn.execute(
                sa.select(c.c.seq, c.c.blob_key)
                .where(
                    c.c.project_id == row.project_id, c.c.user_key == row.user_key, c.c.recording_id == row.recording_id
                )
                .order_by(c.c.seq)
            ).all()
        data_key = self.data_key(row)
        decompressor = zstandard.ZstdDecompressor()
        for seq, blob_key in chunk_rows:
            sealed = self.blobs.get(blob_key)
            yield decompressor.decompress(open_chunk(data_key, row.project_id, row.recording_id, seq, sealed))

    # --- deletion and key rotation --------------------------------------------------------------

    def delete(
        self,
        project_id: int,
        user_key: str,
        recording_id: str,
        audit: Callable[[sa.Connection], None] | None = None,
    ) -> bool:
        """Delete the metadata and the wrapped key (the blobs become unreadable at once), then the blobs.

        `audit` runs first in the same transaction (the activity log's entry): the recording is deleted
        only with its entry, and with `audit` a recording that is already gone raises RecordingGone,
        rolling the entry back.
        """
        t, c = playback_recordings, playback_chunks
        with write_transaction(self.engine) as conn:
            if audit is not None:
                audit(conn)
            c_where = (c.c.project_id == project_id, c.c.user_key == user_key, c.c.recording_id == recording_id)
            conn.execute(c.delete().where(*c_where))
            a = playback_recording_assets
            conn.execute(
                a.delete().where(
                    a.c.project_id == project_id, a.c.user_key == user_key, a.c.recording_id == recording_id
                )
            )
            gone = conn.execute(
                t.delete().where(
                    t.c.project_id == project_id, t.c.user_key == user_key, t.c.recording_id == recording_id
                )
            ).rowcount
            if audit is not None and not gone:
                raise RecordingGone(recording_id)
        self.blobs.delete_prefix(_prefix(project_id, recording_id))
        return bool(gone)

    def delete_started_before(self, project_id: int, cutoff_ms: int) -> list[str]:
        """Retention: delete every recording of the project started before `cutoff_ms`; returns their ids."""
        t = playback_recordings
        with self.engine.connect() as conn:
            old = conn.execute(
                sa.select(t.c.user_key, t.c.recording_id).where(
                    t.c.project_id == project_id, t.c.started_at < cutoff_ms
                )
            ).all()
        for user_key, recording_id in old:
            self.delete(project_id, user_key, recording_id)
        return [r for _, r in old]

    def rotate_keys(self, project_id: int, now_ms: int) -> int:
        """Move the project to a new key version and re-wrap every data key under it (current master key).

        Safe to re-run after an interruption: rows still on another version or master are re-wrapped.
        """
        t = playback_recordings
        with write_transaction(self.engine) as conn:
            quota.ensure_project(conn, project_id, now_ms)
            conn.execute(
                playback_projects.update()
                .where(playback_projects.c.project_id == project_id)
                .values(key_version=playback_projects.c.key_version + 1, updated_at=now_ms)
            )
            version = conn.execute(
                sa.select(playback_projects.c.key_version).where(playback_projects.c.project_id == project_id)
            ).scalar_one()
        ring = self.keys.ring()
        rewrapped = 0
        while True:
            with write_transaction(self.engine) as conn:
                rows = conn.execute(
                    sa.select(t.c.user_key, t.c.recording_id, t.c.key_version, t.c.wrapped_key)
                    .where(t.c.project_id == project_id, t.c.key_version != version)
                    .limit(500)
                ).all()
                for user_key, recording_id, old_version, wrapped in rows:
                    data_key = ring.unwrap(project_id, old_version, recording_id, wrapped)
                    conn.execute(
                        t.update()
                        .where(t.c.project_id == project_id, t.c.user_key == user_key, t.c.recording_id == recording_id)
                        .values(key_version=version, wrapped_key=ring.wrap(project_id, version, recording_id, data_key))
                    )
            rewrapped += len(rows)
            if not rows:
                return rewrapped

    def not_under_current_master(self) -> int:
        """How many recordings' data keys are still wrapped under a master key other than the current one."""
        ring = self.keys.ring()
        with self.engine.connect() as conn:
            wrapped = conn.execute(sa.select(playback_recordings.c.wrapped_key)).scalars()
            return sum(1 for w in wrapped if not ring.is_current(w))

    def delete_for_users(self, project_id: int, user_keys: list[str]) -> int:
        """Delete every recording of these end-user keys (an erasure); returns how many."""
        t = playback_recordings
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.user_key, t.c.recording_id).where(
                    t.c.project_id == project_id, t.c.user_key.in_(user_keys)
                )
            ).all()
        return sum(self.delete(project_id, user_key, recording_id) for user_key, recording_id in found)
