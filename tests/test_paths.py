"""Routing end-user keys that contain a slash (web/paths.py): sent as `%2F`, matched as one segment."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from usertrail.web.paths import USERS, EncodedSlashes


def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"route": request.scope["route"].path, **request.path_params})


APP = Starlette(
    routes=[Route(USERS, _echo), Route(USERS + "/events", _echo), Route("/plain/{name}", _echo)],
    middleware=[Middleware(EncodedSlashes)],
)


def test_an_encoded_slash_stays_inside_the_user_key():
    with TestClient(APP) as client:
        events = client.get("/api/projects/3/users/u:ab%2Fc%2fd%2Bx/events?limit=1").json()
        assert events == {"route": USERS + "/events", "project_id": "3", "user_key": "u:ab/c/d+x"}
        assert client.get("/api/projects/3/users/a:%2F").json()["user_key"] == "a:/"
        # An unencoded slash is a separator, as anywhere else.
        assert client.get("/api/projects/3/users/u:ab/c/events").status_code == 404
        # Other segments and routes see the path as before: there `%2F` is a separator.
        assert client.get("/plain/x%20y").json() == {"route": "/plain/{name}", "name": "x y"}
        assert client.get("/plain/x%2Fy").status_code == 404
        assert client.get("/api/projects/3%2F/users/u:a%2Fb").status_code == 404
