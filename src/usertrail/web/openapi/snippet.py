"""The browser snippet and the recorder it loads (docs/collection.md, docs/playback.md)."""

from __future__ import annotations

from usertrail.web.openapi.model import PUBLIC, Op

TAG = "Snippet"

OPERATIONS = [
    Op(
        "GET",
        "/snippet.js",
        "The browser snippet (`usertrail.track`, `usertrail.identify`)",
        auth=PUBLIC,
        response=str,
        response_media="text/javascript",
    ),
    Op(
        "GET",
        "/vendor/rrweb/record.min.js",
        "The session recorder (rrweb's recorder, vendored), loaded by the snippet when a page is recorded",
        auth=PUBLIC,
        response=str,
        response_media="text/javascript",
    ),
]
