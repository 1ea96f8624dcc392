"""End-user keys in URL paths: a hashed id is base64, so `/` is one of its letters.

Starlette matches routes against the percent-decoded path, where a client's `%2F` has become a separator
and `…/users/u:ab%2Fcd/events` would find no route. `EncodedSlashes` hands the router the path with each
encoded slash of the segment after `users` as `SLASH` instead, and the `user_key` convertor
(`{user_key:user_key}` in a route) turns it back into `/`. Every other segment is decoded as before.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

SLASH = "\ue000"  # a private-use character, in place of an encoded slash while routing
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)


class UserKeyConvertor(Convertor[str]):
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return value.replace(SLASH, "/")

    def to_string(self, value: str) -> str:
        return value.replace("/", "%2F")


register_url_convertor("user_key", UserKeyConvertor())
USERS = "/api/projects/{project_id}/users/{user_key:user_key}"  # the prefix of every end user's API route
USER_PAGE = "/app/projects/{project_id}/users/{user_key:user_key}"


class EncodedSlashes:
    """ASGI middleware: route on a path whose user-key segment keeps its encoded slashes apart."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and _ENCODED_SLASH.search(raw):
            segments = raw.split(b"?", 1)[0].split(b"/")
            decoded = [
                SLASH.join(unquote(part.decode("latin-1")) for part in _ENCODED_SLASH.split(segment))
                if previous == b"users"
                else unquote(segment.decode("latin-1"))
                for previous, segment in zip([b"", *segments], segments, strict=False)
            ]
            scope = {**scope, "path": "/".join(decoded)}
        await self.app(scope, receive, send)
