"""What one documented operation says, and the pieces many operations share.

An area module beside this one (named after the route module it documents, e.g. `reports_api.py` for
`web/reports_api.py`) lists its operations as `OPERATIONS: list[Op]`. Request and response bodies are
typed: msgspec Structs (or any type msgspec can describe), turned into JSON Schema 2020-12 components by
`msgspec.json.schema_components`, which is the schema dialect of OpenAPI 3.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

# Who may call an operation: the keys of SECURITY in __init__.py.
PROJECT = "project"  # an admin token, or a signed-in account holding the operation's permission
SIGNED_IN = "signed_in"  # an admin token or a signed-in account, no permission needed
PUBLIC = "public"  # anyone
WRITE_KEY = "write_key"  # a project's write key (`key` in the query or the X-Usertrail-Key header)
WALKME = "walkme"  # a write key, or none: WalkMe's recorder names the project by its account id (`wm.uId`)
UPDATE_API = "update_api"  # an Update API access token (from POST /accounts/connect/token)
UPDATE_API_CLIENT = "update_api_client"  # Update API client credentials (HTTP Basic or form fields)
SCIM = "scim"  # the project's SCIM bearer token


class Error(msgspec.Struct, omit_defaults=True):
    """Every 4xx/5xx answer of the JSON API (web/errors.py); some errors add fields, e.g. `permission`
    (403 `permission_denied`), `suggestions` (400 `invalid_segment`), `retry_after` (429), `line` (CSV)."""

    error: str
    reason: str
    path: str | None = None


@dataclass(frozen=True)
class Param:
    """A query (or header) parameter."""

    name: str
    description: str
    type: Any = str
    required: bool = False
    repeated: bool = False
    where: str = "query"
    enum: tuple[str, ...] = ()
    default: Any = None


@dataclass(frozen=True)
class Op:
    """One method on one path, as the OpenAPI document describes it.

    `path` is the route's path without converters (`{start_ts}`, not `{start_ts:int}`). `permission` is the
    permission of access/permissions.py the route checks (`x-permission`); `auth` who may call it at all.
    `body`/`response` are types (None: no body); `*_media` their content types. `errors` maps extra
    statuses to when they happen; 400/401/403/404 are added from the operation's shape.
    """

    method: str
    path: str
    summary: str
    permission: str | None = None
    auth: str = PROJECT
    query: tuple[Param, ...] = ()
    body: Any = None
    body_media: str = "application/json"
    body_required: bool = True
    response: Any = None
    response_media: str = "application/json"
    status: int = 200
    errors: dict[int, str] = field(default_factory=dict)
    description: str = ""
    tag: str = ""


# --- parameters many routes share ------------------------------------------------------------------


def limit(default: int = 100, ceiling: int = 1000) -> Param:
    return Param("limit", f"how many to return, 1–{ceiling}", int, default=default)


OFFSET = Param("offset", "how many to skip", int, default=0)
BEFORE = Param("before", "continue after this entry (the previous page's `next_before`)")

# Path parameters: their meaning, by name (types come from the route's converters).
PATH_PARAMS: dict[str, str] = {
    "project_id": "the project's id",
    "env": "an environment's name (e.g. `production`)",
    "user_key": "an end user's key (`u:<id>` identified, `a:<id>` anonymous), URL-encoded",
    "start_ts": "the session's start (ms since 1970)",
    "segment_id": "a saved segment's id",
    "recording_id": "a recording's id",
    "client_id": "an Update API client's id",
    "request_id": "the id of an accepted update call",
    "source_id": "an import source's id",
    "run_id": "a run's id",
    "job_id": "an import job's id",
    "email": "an account's e-mail address",
    "app_type": "the flow's app type: `wt` (Walk-Thru) or `bizFlow` (Smart Walk-Thru)",
    "object_id": "the flow's WalkMe object id",
    "path": "the SCIM resource path (RFC 7644), e.g. `Users`, `Users/{id}`, `Schemas`",
}


class Acknowledged(msgspec.Struct):
    """A plain acknowledgement."""

    ok: bool


JSONObject = dict[str, Any]
