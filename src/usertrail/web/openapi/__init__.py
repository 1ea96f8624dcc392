"""The OpenAPI 3.1 description of the HTTP API, built from the app's routes and the operations the area
modules of this package declare (docs/api.md).

- Paths, methods and path parameters (with their types) come from the routes themselves.
- What each operation takes and answers is declared next to nothing else: one module per route module
  (`web/openapi/reports_api.py` documents `web/reports_api.py`), each with `OPERATIONS: list[Op]` and the
  msgspec Structs of its bodies; `msgspec.json.schema_components` turns those into the schemas.
- `missing_operations(app.routes)` names every API route and method without an `Op`, and where to add it;
  the tests fail on any (tests/test_openapi.py), so a new route cannot go undocumented.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

import msgspec
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Route

from usertrail.access.permissions import PERMISSIONS
from usertrail.web.openapi.model import (
    PATH_PARAMS,
    PROJECT,
    PUBLIC,
    SCIM,
    SIGNED_IN,
    UPDATE_API,
    UPDATE_API_CLIENT,
    WALKME,
    WRITE_KEY,
    Error,
    Op,
    Param,
)

OPENAPI_VERSION = "3.1.0"
NOT_API = ("/app", "/static")  # the web app's pages and their static files: HTML, not API
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HERE = "src/usertrail/web/openapi"

SECURITY_SCHEMES: dict[str, dict] = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A project admin token (`adm_…`): acts with the role `admin` on its own project. "
        "Create one with `usertrail projects create`; rotate with POST /api/projects/{project_id}/keys/rotate.",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "usertrail_session",
        "description": "The sign-in cookie set by POST /api/auth/login (or single sign-on): acts with the "
        "account's role on the project (docs/accounts.md).",
    },
    "csrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "With the session cookie, every POST/PUT/PATCH/DELETE must send the session's CSRF token "
        "(`csrf_token` of the sign-in answer or GET /api/auth/me, also in the `usertrail_csrf` cookie).",
    },
    "writeKey": {
        "type": "apiKey",
        "in": "query",
        "name": "key",
        "description": "A project's write key (`wk_…`): public, it only sends data (docs/collection.md).",
    },
    "writeKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Usertrail-Key",
        "description": "The write key as a header instead of `key` in the query.",
    },
    "updateApiClient": {
        "type": "oauth2",
        "description": "End User Update API clients (docs/integrations.md): exchange the client id and secret "
        "for an access token at POST /accounts/connect/token, then send `Authorization: Bearer <token>`.",
        "flows": {"clientCredentials": {"tokenUrl": "/accounts/connect/token", "scopes": {}}},
    },
    "clientCredentials": {
        "type": "http",
        "scheme": "basic",
        "description": "An Update API client's id and secret (or `client_id`/`client_secret` form fields).",
    },
    "scimToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The project's SCIM token (POST /api/projects/{project_id}/integrations/scim/token).",
    },
}


def _security(op: Op) -> list[dict]:
    if op.auth in (PROJECT, SIGNED_IN):
        session = {"session": [], "csrfToken": []} if op.method in UNSAFE else {"session": []}
        return [{"adminToken": []}, session]
    return {
        PUBLIC: [],
        WRITE_KEY: [{"writeKey": []}, {"writeKeyHeader": []}],
        WALKME: [{"writeKey": []}, {"writeKeyHeader": []}, {}],
        UPDATE_API: [{"updateApiClient": []}],
        UPDATE_API_CLIENT: [{"clientCredentials": []}, {}],
        SCIM: [{"scimToken": []}],
    }[op.auth]


# --- which routes, which operations -----------------------------------------------------------------


def openapi_path(path: str) -> str:
    """A Starlette route path as OpenAPI writes it: `{start_ts:int}` → `{start_ts}`."""
    out, rest = [], path
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        out += [head, "{", name.split(":")[0], "}"]
    return "".join(out) + rest


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[tuple[str, str, Route]]:
    """(method, OpenAPI path, route) of every API route: all routes but the web app's pages and static
    files. HEAD, which Starlette adds to every GET, is left out."""
    for route in routes:
        if not isinstance(route, Route) or route.path.startswith(NOT_API):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            yield method, openapi_path(route.path), route


def _areas() -> list[ModuleType]:
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if info.name != "model"
    ]


def operations() -> dict[tuple[str, str], Op]:
    """Every declared operation by (method, path); an area's TAG names the operations that name none."""
    found: dict[tuple[str, str], Op] = {}
    for area in _areas():
        for op in area.OPERATIONS:
            key = (op.method, op.path)
            if key in found:
                raise ValueError(f"{op.method} {op.path} is declared twice (again in {area.__name__})")
            if op.permission is not None and op.permission not in PERMISSIONS:
                raise ValueError(f"{op.method} {op.path}: unknown permission {op.permission!r}")
            found[key] = op if op.tag else replace(op, tag=area.TAG)
    return found


def missing_operations(routes: Iterable[BaseRoute]) -> list[str]:
    """What keeps the document from covering the API: each route method without an `Op` (and where to
    declare it), and each `Op` without a route."""
    declared = operations()
    problems, served = [], set()
    for method, path, route in api_routes(routes):
        served.add((method, path))
        if (method, path) in declared:
            continue
        module = route.endpoint.__module__
        area = module.rsplit(".", 1)[-1]
        problems.append(
            f"{method} {path} (handler {module}.{route.endpoint.__name__}) is not documented: add\n"
            f'    Op("{method}", "{path}", "<one-line summary>", permission="<permission the handler checks>", '
            f"query=(...), body=<request Struct>, response=<answer Struct>)\n"
            f'  to OPERATIONS in {HERE}/{area}.py (a new module there needs TAG = "<section>" and '
            f'OPERATIONS = [...]; it is found by itself). See docs/api.md, "Documenting a new route".'
        )
    for method, path in sorted(set(declared) - served):
        problems.append(f"{method} {path} is declared in {HERE} but no route serves it: remove or fix its Op")
    return problems


# --- the document --------------------------------------------------------------------------------------


def _param_schema(param: Param, schema: dict) -> dict:
    if param.enum:
        schema = {**schema, "enum": list(param.enum)}
    if param.default is not None:
        schema = {**schema, "default": param.default}
    return {"type": "array", "items": schema} if param.repeated else schema


def _path_parameters(route: Route) -> list[dict]:
    out = []
    for name, convertor in route.param_convertors.items():
        kind = (
            "integer"
            if isinstance(convertor, IntegerConvertor)
            else "number"
            if isinstance(convertor, FloatConvertor)
            else "string"
        )
        out.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": PATH_PARAMS.get(name, name),
                "schema": {"type": kind},
            }
        )
    return out


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _ref("Error")}}}}


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def _errors(op: Op, route: Route) -> dict[str, dict]:
    errors: dict[int, str] = {}
    if op.query or op.body is not None:
        errors[400] = "invalid_request (or a more specific error): `path` names the parameter or body field"
    if op.auth in (PROJECT, SIGNED_IN):
        errors[401] = "unauthorized: no admin token or sign-in session, or an unknown or expired one"
    if op.auth == PROJECT:
        errors[403] = (
            "permission_denied (the role lacks `x-permission`, named in `permission`), csrf_failed (a signed-in "
            "change without X-CSRF-Token), forbidden (a write key, or another project's token)"
        )
    if route.param_convertors:
        errors[404] = "not_found: a path parameter names nothing (`path` says which)"
    errors.update(op.errors)
    return {str(status): _error(text) for status, text in sorted(errors.items())}


def _operation(op: Op, route: Route, schema_of: dict[int, dict]) -> dict:
    description = op.description
    if op.permission:
        description = f"Permission: `{op.permission}`. {description}".strip()
    out: dict[str, Any] = {
        "operationId": _operation_id(op.method, op.path),
        "summary": op.summary,
        "description": description,
        "tags": [op.tag],
        "security": _security(op),
    }
    if op.permission:
        out["x-permission"] = op.permission
    params = _path_parameters(route)
    for p in op.query:
        type_schema = schema_of[id(p.type)]
        params.append(
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "description": p.description,
                "schema": _param_schema(p, type_schema),
                **({"style": "form", "explode": True} if p.repeated else {}),
            }
        )
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {op.body_media: {"schema": schema_of[id(op.body)]}},
        }
    success: dict[str, Any] = {"description": op.summary}
    if op.response is not None:
        success["content"] = {op.response_media: {"schema": schema_of[id(op.response)]}}
    out["responses"] = {str(op.status): success, **_errors(op, route)}
    return out


def _operation_id(method: str, path: str) -> str:
    """`get-api-projects-project_id-users`: unique per method and path, usable as an HTML id."""
    words = "".join(c if c.isalnum() or c == "_" else " " for c in path).split()
    return "-".join([method.lower(), *words])


def _info() -> dict:
    try:
        current = version("usertrail")
    except PackageNotFoundError:  # running from a source tree that was not installed
        current = "0"
    return {
        "title": "usertrail API",
        "version": current,
        "description": "The HTTP API of usertrail: event intake (`/event/tell`, `/v1/…`), the admin API "
        "(`/api/…`), the End User Update API and SCIM 2.0. The admin web app uses this same API. Errors are "
        "JSON `{error, reason, path}` (schema `Error`); each protected operation names the permission it "
        "needs in `x-permission` (docs/accounts.md). Reference: docs/api.md.",
        "license": {"name": "see the LICENSE file of usertrail"},
    }


def build_document(routes: Iterable[BaseRoute]) -> dict:
    """The OpenAPI 3.1 document of the API routes among `routes` that have a declared `Op`."""
    declared = operations()
    served = [(m, p, r) for m, p, r in api_routes(routes) if (m, p) in declared]
    types: list[Any] = [Error]
    for method, path, _ in served:
        op = declared[(method, path)]
        types += [t for t in (op.body, op.response) if t is not None] + [p.type for p in op.query]
    unique = list({id(t): t for t in types}.values())
    schemas, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    schema_of = {id(t): s for t, s in zip(unique, schemas, strict=True)}
    paths: dict[str, dict] = {}
    for method, path, route in served:
        paths.setdefault(path, {})[method.lower()] = _operation(declared[(method, path)], route, schema_of)
    tags = sorted({op.tag for op in declared.values()})
    descriptions = {area.TAG: (area.__doc__ or "").strip().split("\n\n")[0] for area in _areas()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(),
        "servers": [{"url": "/"}],
        "tags": [{"name": t, "description": descriptions.get(t, "")} for t in tags],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }
