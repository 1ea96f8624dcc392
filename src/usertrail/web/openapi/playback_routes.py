"""Session Playback: the snippet's recording calls (write key) and the admin API for quota, recordings,
their events, export and deletion (docs/playback.md)."""

from __future__ import annotations

from typing import Any

import msgspec

from usertrail.playback.service import StartRequest
from usertrail.web.openapi.model import PUBLIC, WRITE_KEY, JSONObject, Op, Param, limit

TAG = "Session Playback"


class StartAnswer(msgspec.Struct):
    """Whether to record this page; with `record: true`, the recording id, upload `token` and options."""

    record: bool
    method: str
    reason: str | None = None
    recording_id: str | None = None
    token: str | None = None
    resumed: bool | None = None
    options: JSONObject | None = None


class ChunkAnswer(msgspec.Struct):
    ok: bool
    recording_id: str
    seq: int
    stored: bool
    duplicate: bool


class Usage(msgspec.Struct):
    """This month's recorded sessions against the quota; `activated_at` is null until the first recording
    decision starts the quota."""

    quota: int
    used: int
    remaining: int
    period_start: int
    next_reset: int
    activated_at: int | None


class Quota(msgspec.Struct):
    quota: int


class Recording(msgspec.Struct):
    recording_id: str
    user_key: str
    env: str
    session_id: str | None
    started_at: int
    last_chunk_at: int | None
    first_event_at: int | None
    last_event_at: int | None
    duration_ms: int
    chunks: int
    events: int
    raw_bytes: int
    stored_bytes: int
    urls: list[str]
    browser: str | None
    counted_in_quota: bool
    created_at: int


class Recordings(msgspec.Struct):
    items: list[Recording]
    next_before: int | None


class Deleted(msgspec.Struct):
    deleted: str


_SNIPPET_ERRORS = {
    401: "unknown_key: no valid write key",
    403: "the page's Origin is not allowed, or the upload token is not valid for this recording",
    413: "the chunk is over the size limit",
}
_CORS = {403: "cors_refused: the Origin is not allowed for the key's project, or `key` is missing"}


class RecordingAsset(msgspec.Struct):
    url: str
    status: str
    sha256: str | None
    reason: str | None


class RecordingAssets(msgspec.Struct):
    items: list[RecordingAsset]


_KEY = Param("key", "the write key", required=True)

OPERATIONS = [
    Op(
        "POST",
        "/v1/playback/start",
        "Session start: record this page or not",
        auth=WRITE_KEY,
        body=StartRequest,
        response=StartAnswer,
        errors=_SNIPPET_ERRORS,
    ),
    Op("OPTIONS", "/v1/playback/start", "CORS preflight", auth=PUBLIC, query=(_KEY,), status=204, errors=_CORS),
    Op(
        "POST",
        "/v1/playback/chunks",
        "One sequence-numbered chunk of rrweb events",
        auth=WRITE_KEY,
        query=(
            Param("token", "the upload token from /v1/playback/start", required=True),
            Param("seq", "the chunk's sequence number (0, 1, …)", int, required=True),
            Param("enc", "the body's encoding", enum=("json", "gzip"), default="json"),
        ),
        body=list[Any],
        response=ChunkAnswer,
        errors=_SNIPPET_ERRORS,
        description="The body is a JSON array of rrweb events, or the same gzip-compressed with `enc=gzip`. "
        "A chunk sent again is answered `duplicate: true` and stored once.",
    ),
    Op("OPTIONS", "/v1/playback/chunks", "CORS preflight", auth=PUBLIC, query=(_KEY,), status=204, errors=_CORS),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/usage",
        "This month's recorded sessions against the quota",
        permission="playback.view",
        response=Usage,
    ),
    Op(
        "PUT",
        "/api/projects/{project_id}/playback/quota",
        "A new monthly quota: the count restarts and today becomes the reset day",
        permission="settings.manage",
        body=Quota,
        response=Usage,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/recordings",
        "Recordings, newest first",
        permission="playback.view",
        query=(
            Param("user", "an end user's key"),
            Param("since", "started at or after (ms or ISO 8601)"),
            Param("until", "started before (ms or ISO 8601)"),
            Param("url", "a visited URL contains this"),
            Param("min_duration_ms", "", int),
            Param("max_duration_ms", "", int),
            Param("before", "continue before this `started_at`", int),
            Param("segment", "a saved segment's id: only its members"),
            Param("walkme_type", "a WalkMe event type seen during the recording"),
            Param("walkme_item", "a WalkMe item id seen during the recording"),
            limit(),
        ),
        response=Recordings,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/recordings/{recording_id}",
        "One recording's metadata",
        permission="playback.view",
        response=Recording,
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/playback/recordings/{recording_id}",
        "Delete a recording (its key, metadata and blobs); logged in the activity log",
        permission="playback.delete",
        response=Deleted,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/recordings/{recording_id}/events",
        "The decrypted rrweb events in order; logged in the activity log",
        permission="playback.view",
        query=(
            Param(
                "format",
                "a JSON array, NDJSON (`application/x-ndjson`), or `chunks`: one stored chunk a line (NDJSON) with "
                "its asset URLs pointing at stored copies, as the player loads it",
                enum=("json", "ndjson", "chunks"),
                default="json",
            ),
        ),
        response=list[Any],
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/recordings/{recording_id}/assets",
        "The recording's stylesheets, fonts and images: stored (`ok`, with the hash), `pending`, `refused` or `failed`",
        permission="playback.view",
        response=RecordingAssets,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/assets/{sha256}",
        "A stored asset by its SHA-256, with the type it was stored as (sandboxed, never sniffed, immutable)",
        permission="playback.view",
        response=bytes,
        response_media="application/octet-stream",
        errors={400: "invalid_request: not a lower-case SHA-256 (`sha256`)"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/playback/recordings/{recording_id}/export",
        "The recording as one self-contained HTML file (an attachment); logged in the activity log",
        permission="playback.export",
        response=str,
        response_media="text/html",
    ),
]
