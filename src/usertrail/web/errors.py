"""JSON error answers: every 4xx names the field path and the reason."""

from __future__ import annotations

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
