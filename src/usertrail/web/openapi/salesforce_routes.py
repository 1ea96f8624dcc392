"""Salesforce imports: sources that copy fields of Salesforce records into custom attributes on a schedule,
and their runs (docs/integrations.md)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import BEFORE, JSONObject, Op, limit

TAG = "Salesforce"


class SalesforceSources(msgspec.Struct):
    """Each source as listed: its settings (credentials sealed, never shown), schedule and last run."""

    sources: list[JSONObject]


class SalesforceRuns(msgspec.Struct):
    runs: list[JSONObject]
    next_before: str | None


_UUID = {409: "uuid_settings_required: every environment's identification provider is `none`"}
_BUSY = {409: "run_in_progress: a run of this source is in progress (`source_id`)"}
_BASE = "/api/projects/{project_id}/integrations/salesforce"
_SPEC = JSONObject  # name, login (password or JWT), SOQL object, user id field, field mapping, interval

OPERATIONS = [
    Op(
        "POST",
        _BASE,
        "Add a Salesforce source (answers with `warnings`)",
        permission="integrations.manage",
        body=_SPEC,
        response=JSONObject,
        status=201,
        errors=_UUID,
    ),
    Op("GET", _BASE, "The Salesforce sources", permission="integrations.manage", response=SalesforceSources),
    Op("GET", _BASE + "/{source_id}", "One Salesforce source", permission="integrations.manage", response=JSONObject),
    Op(
        "PATCH",
        _BASE + "/{source_id}",
        "Change a Salesforce source",
        permission="integrations.manage",
        body=_SPEC,
        response=JSONObject,
        errors={**_UUID, **_BUSY},
    ),
    Op(
        "DELETE",
        _BASE + "/{source_id}",
        "Remove a Salesforce source (answers with it, `deleted: true`)",
        permission="integrations.manage",
        response=JSONObject,
        errors=_BUSY,
    ),
    Op(
        "POST",
        _BASE + "/{source_id}/run",
        "Run now; answers with the finished run (a failed run is still 200)",
        permission="integrations.manage",
        response=JSONObject,
        errors={**_UUID, **_BUSY},
    ),
    Op(
        "GET",
        _BASE + "/{source_id}/runs",
        "The source's runs, newest first",
        permission="integrations.manage",
        query=(limit(), BEFORE),
        response=SalesforceRuns,
    ),
    Op(
        "GET",
        _BASE + "/{source_id}/runs/{run_id}",
        "One run with its counts and errors",
        permission="integrations.manage",
        response=JSONObject,
    ),
]
