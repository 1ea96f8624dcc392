"""The recording decision at session start, and the intake of chunks (called by web/playback_routes.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from usertrail.collect.service import Collector, _TtlCache
from usertrail.config import Settings
from usertrail.enrich.ip import client_ip
from usertrail.enrich.useragent import parse_agent
from usertrail.playback import chunks, quota
from usertrail.playback.assets import AssetStore, asset_urls
from usertrail.playback.chunks import BLOCK_CLASS
from usertrail.playback.crypto import BadToken, UploadGrant
from usertrail.playback.eligibility import NotRecorded, Visit, chosen, excluded, user_key_for
from usertrail.playback.store import RecordingGone, RecordingStore
from usertrail.project_settings import EnvironmentSettings
from usertrail.store.database import write_transaction
from usertrail.store.projects import ADMIN, WRITE

# A recording lasts at most one session (12 hours, docs/sessions.md); chunks may trail by a while.
RECORDING_MAX_MS = 12 * 3_600_000
CHUNK_GRACE_MS = 30 * 60_000

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class StartRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the snippet sends when a page of a session starts (docs/playback.md)."""

    environment: Id = "production"
    url: Text
    anonymousId: Id
    userId: Id | None = None
    sessionId: Id | None = None
    # The upload token of the recording this tab is continuing (kept in sessionStorage).
    resume: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    # "manual": the page called usertrail.startPlaybackRecording().
    trigger: Literal["auto", "manual"] = "auto"


class PlaybackError(Exception):
    """A refused playback request: HTTP status, error code, JSON path and reason."""

    def __init__(self, status: int, error: str, path: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.path, self.reason = status, error, path, reason


@dataclass(frozen=True)
class Caller:
    """The request facts playback needs."""

    key: str | None
    peer: str | None
    forwarded_for: str | None
    user_agent: str
    origin: str | None


def _now() -> int:
    return int(time.time() * 1000)


def _decode_error(exc: msgspec.MsgspecError) -> PlaybackError:
    reason, _, path = str(exc).partition(" - at `")
    return PlaybackError(400, "invalid_request", path.rstrip("`") or "$", reason)


class PlaybackService:
    """Decides who is recorded and stores what they send."""

    def __init__(self, settings: Settings, collector: Collector, store: RecordingStore, assets: AssetStore) -> None:
        self.settings, self.collector, self.store, self.assets = settings, collector, store, assets
        self._grants = _TtlCache(10.0)

    def project_for(self, key: str | None) -> int:
        """The project of a write key (or admin token)."""
        grant = self._grants.get(key, lambda: self.collector.projects.authenticate(key)) if key else None
        if grant is None or grant.kind not in (WRITE, ADMIN):
            raise PlaybackError(401, "unknown_key", "key", "a valid write key is required (query `key`)")
        return grant.project_id

    def _visit(self, caller: Caller, url: str | None) -> Visit:
        ip = client_ip(caller.peer, caller.forwarded_for, self.settings.trusted_proxies)
        return Visit(ip=ip, agent=parse_agent(caller.user_agent), user_agent=caller.user_agent, url=url)

    def _environment(self, project_id: int, name: str, path: str) -> EnvironmentSettings:
        environments = self.collector.environments(project_id)
        if name not in environments:
            raise PlaybackError(404, "unknown_environment", path, f"no environment {name!r}")
        return environments[name]

    # --- session start --------------------------------------------------------------------------

    def start(self, project_id: int, body: bytes, caller: Caller) -> dict:
        """Record this page? Continue the tab's recording, start a new one, or say why not."""
        try:
            request = msgspec.json.decode(body, type=StartRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _decode_error(exc) from None
        settings = self._environment(project_id, request.environment, "$.environment")
        visit = self._visit(caller, request.url)
        now = _now()
        refused = excluded(settings, visit)
        if refused is not None:
            return self._no(refused, settings)
        resumed = self._resumable(project_id, request, now)
        if resumed is not None:
            return self._yes(resumed, settings, resumed=True)
        uuid = settings.uuid
        allows_user = uuid.provider not in ("none", "walkme_id")
        user_key = user_key_for(uuid, request.anonymousId, request.userId if allows_user else None)
        with write_transaction(self.store.engine) as conn:
            refused = chosen(conn, project_id, settings, user_key, request.trigger == "manual")
            if refused is not None:
                return self._no(refused, settings)
            same_session = request.sessionId is not None and self.store.existing_in_session(
                conn, project_id, user_key, request.sessionId
            )
            if not same_session and not quota.take(conn, project_id, now):
                return self._no(NotRecorded.QUOTA_REACHED, settings)
            new = self.store.create(
                conn,
                project_id,
                user_key,
                request.environment,
                request.sessionId,
                visit.agent.browser,
                counted=not same_session,
                now_ms=now,
            )
        return self._yes(UploadGrant(project_id, user_key, new.recording_id), settings, resumed=False, token=new.token)

    def _resumable(self, project_id: int, request: StartRequest, now: int) -> UploadGrant | None:
        """The tab's recording, if its token is good and it is still within one session."""
        if not request.resume:
            return None
        try:
            grant = self.store.verify_upload(request.resume)
            row = self.store.get_row(grant.project_id, grant.user_key, grant.recording_id)
        except (BadToken, RecordingGone):
            return None
        if grant.project_id != project_id or row.env != request.environment or now - row.started_at > RECORDING_MAX_MS:
            return None
        return grant

    def _no(self, reason: NotRecorded, settings: EnvironmentSettings) -> dict:
        return {"record": False, "reason": reason.value, "method": settings.playback.method}

    def _yes(self, grant: UploadGrant, settings: EnvironmentSettings, resumed: bool, token: str | None = None) -> dict:
        playback = settings.playback
        return {
            "record": True,
            "recording_id": grant.recording_id,
            "token": token or self.store.keys.ring().sign_upload(grant),
            "resumed": resumed,
            "method": playback.method,
            "options": {
                "chunk_interval_ms": self.settings.playback_chunk_interval_ms,
                "max_chunk_bytes": self.settings.playback_max_chunk_bytes,
                "block_class": BLOCK_CLASS,
                "blocked_selectors": playback.blocked_selectors,
                "allowed_input_selectors": playback.allowed_input_selectors,
            },
        }

    # --- chunks ---------------------------------------------------------------------------------

    def ingest(self, project_id: int, token: str, seq_text: str, encoding: str, body: bytes, caller: Caller) -> dict:
        """Check and store one chunk; the same (recording, seq) twice is stored once."""
        try:
            grant = self.store.verify_upload(token)
        except BadToken as exc:
            raise PlaybackError(401, "bad_token", "token", str(exc)) from None
        if grant.project_id != project_id:
            raise PlaybackError(403, "forbidden", "token", "the token belongs to another project")
        if not seq_text.isdigit() or int(seq_text) > 10_000_000:
            raise PlaybackError(400, "invalid_request", "seq", "seq must be a whole number from 0 to 10000000")
        seq = int(seq_text)
        limit = self.settings.playback_max_chunk_bytes
        if len(body) > limit:
            raise PlaybackError(413, "too_large", "$", f"chunk of {len(body)} bytes exceeds {limit}")
        try:
            row = self.store.get_row(grant.project_id, grant.user_key, grant.recording_id)
        except RecordingGone:
            raise PlaybackError(404, "recording_not_found", "token", "no such recording (deleted or expired)") from None
        now = _now()
        if now - row.started_at > RECORDING_MAX_MS + CHUNK_GRACE_MS:
            raise PlaybackError(409, "recording_closed", "token", "the recording's session is over; start a new one")
        settings = self._environment(project_id, row.env, "token")
        try:
            chunk = chunks.parse(
                chunks.decompress(body, encoding, self.settings.playback_max_chunk_raw_bytes),
                inputs_allowed=bool(settings.playback.allowed_input_selectors),
                blocked_selectors=settings.playback.blocked_selectors,
            )
        except chunks.ChunkError as exc:
            raise PlaybackError(exc.status, "invalid_chunk", exc.path, exc.reason) from None
        # Settings may have changed since the start: exclusions are checked again for every chunk.
        pages: list[str | None] = [*chunk.urls()] or [caller.origin]
        for url in pages:
            refused = excluded(settings, self._visit(caller, url))
            if refused is not None:
                raise PlaybackError(403, refused.value, "$", f"no longer recorded: {refused.value}")
        try:
            new = self.store.add_chunk(grant, seq, chunk, self.settings.playback_max_recording_bytes, now)
        except chunks.ChunkError as exc:
            raise PlaybackError(exc.status, "invalid_chunk", exc.path, exc.reason) from None
        except RecordingGone:
            raise PlaybackError(404, "recording_not_found", "token", "no such recording (deleted or expired)") from None
        # Also for a re-sent chunk: if noting failed the first time, the snippet's retry notes them now.
        self.assets.note(grant.project_id, grant.user_key, grant.recording_id, row.env, asset_urls(chunk))
        return {"ok": True, "recording_id": grant.recording_id, "seq": seq, "stored": new, "duplicate": not new}
