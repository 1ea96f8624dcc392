"""This description of the API, as OpenAPI 3.1 JSON and as a readable page."""

from __future__ import annotations

from usertrail.web.openapi.model import PUBLIC, JSONObject, Op

TAG = "API description"

OPERATIONS = [
    Op("GET", "/api/openapi.json", "This OpenAPI 3.1 document", auth=PUBLIC, response=JSONObject),
    Op(
        "GET",
        "/api/docs",
        "The API reference as an HTML page (rendered on the server, no script)",
        auth=PUBLIC,
        response=str,
        response_media="text/html",
    ),
]
