"""The API's own description: `GET /api/openapi.json` (OpenAPI 3.1) and `GET /api/docs`, the same document
as a readable page rendered on the server (no script, no third-party request; docs/api.md)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from usertrail.web.openapi import build_document
from usertrail.web.pages.layout import headers, templates

DOCS_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; " \
    "frame-ancestors 'none'"  # fmt: skip
METHOD_ORDER = ("get", "post", "put", "patch", "delete", "options")


def document(request: Request) -> dict:
    """The document of this app's routes, built once per process (routes do not change while it runs)."""
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = build_document(request.app.routes)
    return state.openapi


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document(request), headers={"Cache-Control": "no-cache"})


def _schema_text(schema: dict | None) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) if schema else ""


def _sections(doc: dict) -> list[dict]:
    """The operations grouped by tag, in the document's tag order, each ready for the template."""
    by_tag: dict[str, list[dict]] = {t["name"]: [] for t in doc["tags"]}
    for path, methods in doc["paths"].items():
        for method in sorted(methods, key=METHOD_ORDER.index):
            op = methods[method]
            body = next(iter(op.get("requestBody", {}).get("content", {}).items()), None)
            by_tag[op["tags"][0]].append(
                {
                    "anchor": op["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "op": op,
                    "security": [" + ".join(s) or "none" for s in op["security"]] or ["none (public)"],
                    "body": (body[0], _schema_text(body[1]["schema"])) if body else None,
                    "responses": [
                        (status, answer["description"], *next(iter(answer.get("content", {}).items()), ("", {})))
                        for status, answer in op["responses"].items()
                    ],
                }
            )
    return [{"name": t["name"], "description": t["description"], "operations": by_tag[t["name"]]} for t in doc["tags"]]


async def docs_page(request: Request) -> Response:
    doc = document(request)
    html = templates.get_template("api_docs.html").render(
        info=doc["info"],
        sections=_sections(doc),
        schemes=doc["components"]["securitySchemes"],
        schemas={name: _schema_text(s) for name, s in sorted(doc["components"]["schemas"].items())},
        json=_schema_text,
    )
    return HTMLResponse(html, headers=headers(DOCS_CSP))


routes = [
    Route("/api/openapi.json", openapi_json, methods=["GET"]),
    Route("/api/docs", docs_page, methods=["GET"]),
]
