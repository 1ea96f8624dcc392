"""The browser snippet: the tag customers paste, and the route that serves the script."""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SNIPPET_JS = Path(__file__).parent / "static" / "usertrail.js"
# Session Playback's recorder (rrweb), loaded by the snippet only when a session is recorded.
RECORDER_JS = Path(__file__).parent / "static" / "vendor" / "rrweb" / "record.min.js"


def snippet_tag(base_url: str, write_key: str, environment: str = "production") -> str:
    """The one-line tag that installs usertrail in a page."""
    return (
        f'<script async src="{escape(base_url)}/snippet.js" '
        f'data-key="{escape(write_key)}" data-env="{escape(environment)}"></script>'
    )


async def snippet_js(request: Request) -> Response:
    return Response(
        SNIPPET_JS.read_bytes(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


async def recorder_js(request: Request) -> Response:
    return Response(
        RECORDER_JS.read_bytes(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400", "Access-Control-Allow-Origin": "*"},
    )


routes = [
    Route("/snippet.js", snippet_js, methods=["GET"]),
    Route("/vendor/rrweb/record.min.js", recorder_js, methods=["GET"]),
]
