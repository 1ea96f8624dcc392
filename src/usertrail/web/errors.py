"""JSON error answers: every 4xx names the field path and the reason."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse


class ApiError(Exception):
    """Raised by handlers; turned into a JSON answer by the app's exception handler."""

    def __init__(self, status: int, error: str, reason: str, path: str | None = None, **extra) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.path, self.extra = status, error, reason, path, extra


def error_response(status: int, error: str, reason: str, path: str | None = None, **extra) -> JSONResponse:
    body = {"error": error, "reason": reason}
    if path is not None:
        body["path"] = path
    body.update(extra)
    return JSONResponse(body, status_code=status)


async def json_object(request: Request) -> dict:
    """The request body as a JSON object, or a 400 naming what is wrong with it."""
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}", "$") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "expected a JSON object", "$")
    return body
