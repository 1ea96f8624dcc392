"""Event intake: WalkMe's recorder format and the native batch API, and what the snippet reads first
(docs/collection.md). Answers follow durability: a 2xx means the events are committed."""

from __future__ import annotations

import msgspec

from usertrail.collect.wire import NativeMessage
from usertrail.web.openapi.model import PUBLIC, WALKME, WRITE_KEY, JSONObject, Op, Param

TAG = "Collection"


class Batch(msgspec.Struct):
    """A native batch: the events, and optionally when they were sent, the environment and the write key."""

    batch: list[NativeMessage]
    sentAt: str | int | None = None
    environment: str | None = None
    writeKey: str | None = None


class BatchAccepted(msgspec.Struct):
    """What `/v1/batch` did with the events (docs/collection.md): `errors` name each rejected event's path."""

    ok: bool
    received: int
    accepted: int
    dropped: dict[str, int]
    rejected: int
    errors: list[JSONObject]


_CORS_REFUSED = "cors_refused: the Origin is not allowed for the key's project, or `key` is missing"
_COLLECT_ERRORS = {
    401: "request_refused: no write key, or an unknown one (and, for WalkMe, no known `wm.uId`)",
    403: "request_refused: the Origin is not allowed for the project",
    413: "request_refused: the body is over the size limit",
    415: "request_refused: an unsupported Content-Type",
    503: "request_refused: the ingest journal is over USERTRAIL_MAX_BACKLOG_EVENTS; nothing was kept, send it "
    "again after `Retry-After` seconds",
}

OPERATIONS = [
    Op(
        "POST",
        "/event/tell",
        "WalkMe recorder events, unchanged: newline-separated JSON (`text/plain`) or JSON; `200 ok` once durable",
        auth=WALKME,
        query=(Param("key", "the write key (optional: WalkMe events name their account in `wm.uId`)"),),
        body=str,
        body_media="text/plain",
        response=str,
        response_media="text/plain",
        errors=_COLLECT_ERRORS,
        description="Events that fail validation are kept as rejected events (GET …/rejected) and the request "
        "still answers 200 unless nothing could be read; see docs/collection.md.",
    ),
    Op(
        "OPTIONS",
        "/event/tell",
        "CORS preflight for a page's origin",
        auth=PUBLIC,
        query=(Param("key", "the write key", required=True),),
        status=204,
        errors={403: _CORS_REFUSED},
    ),
    Op(
        "POST",
        "/v1/batch",
        "The native batch API: up to the batch limit of typed events for one project",
        auth=WRITE_KEY,
        body=Batch,
        response=BatchAccepted,
        errors=_COLLECT_ERRORS,
    ),
    Op(
        "OPTIONS",
        "/v1/batch",
        "CORS preflight for a page's origin",
        auth=PUBLIC,
        query=(Param("key", "the write key", required=True),),
        status=204,
        errors={403: _CORS_REFUSED},
    ),
    Op(
        "GET",
        "/v1/config",
        "What the browser snippet needs: where to read the user id, what to collect, playback",
        auth=WRITE_KEY,
        query=(Param("env", "the environment", default="production"),),
        response=JSONObject,
        errors={401: "unknown_key: no valid write key", 404: "unknown_environment: no such environment (`env`)"},
    ),
]
