"""The activity section (`audit.view`): the playback activity log with its hash-chain check, and the admin
audit log. Both are filtered by the query string, paged newest first, and exported through the API's CSV
routes with the same filters."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.access import activity_log
from usertrail.store.users import AuditQuery
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import context, page_principal, render
from usertrail.web.pages.recordings import _form_time

PAGE_SIZE = 50
# The audit log's actions so far (offered as suggestions; the filter takes any action).
AUDIT_ACTIONS = ("end_user.export", "end_user.erase", "account.role_set", "account.role_removed")


def _form(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in names}


def _dates(form: dict[str, str]) -> tuple[int | None, int | None]:
    """The form's `from`/`to` days (UTC, `to` included) as the API's `since`/`until` in ms."""
    return _form_time(form["from"], "from", end_of_day=False), _form_time(form["to"], "to", end_of_day=True)


def _api_query(values: dict[str, object]) -> str:
    """The filters as the API's query string (empty values left out)."""
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _older(request: Request, form: dict[str, str], before: object) -> str:
    kept = {k: v for k, v in form.items() if v}
    return f"{request.url.path}?{urlencode({**kept, 'before': before})}"


PLAYBACK_FIELDS = ("actor", "action", "recording", "from", "to")


async def playback_activity(request: Request) -> Response:
    """Recording views, deletions and exports, newest first, with the chain's verification (fetched by the page)."""
    principal = page_principal(request, "audit.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    form = _form(request, PLAYBACK_FIELDS)
    error, entries, older, export = None, [], None, None
    try:
        if form["action"] and form["action"] not in activity_log.ACTIONS:
            raise ApiError(400, "invalid_request", f"action must be one of {', '.join(activity_log.ACTIONS)}", "action")
        before = request.query_params.get("before", "")
        if before and not before.isdigit():
            raise ApiError(400, "invalid_request", "`before` must be an entry's seq", "before")
        since, until = _dates(form)
        query = activity_log.Query(
            actor=form["actor"] or None,
            action=form["action"] or None,
            recording_id=form["recording"] or None,
            since=since,
            until=until,
        )
        entries = await asyncio.to_thread(
            activity_log.list_entries,
            request.app.state.collector.events.engine,
            project_id,
            query,
            PAGE_SIZE,
            int(before) if before else None,
        )
        filters = {"actor": query.actor, "action": query.action, "recording": query.recording_id}
        export = f"/api/projects/{project_id}/activity-log.csv?" + _api_query(
            {**filters, "since": since, "until": until}
        )
    except ApiError as exc:
        error = exc
    if len(entries) == PAGE_SIZE:
        older = _older(request, form, entries[-1]["seq"])
    return render(
        request,
        "activity.html",
        context(request, project_id, "activity"),
        status=400 if error else 200,
        tab="playback",
        form=form,
        actions=activity_log.ACTIONS,
        entries=entries,
        older=older,
        export=export,
        error=error,
    )


AUDIT_FIELDS = ("actor", "action", "target", "from", "to")


async def audit_activity(request: Request) -> Response:
    """The admin audit log (exports, erasures, role changes), newest first."""
    principal = page_principal(request, "audit.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    form = _form(request, AUDIT_FIELDS)
    error, entries, older, export = None, [], None, None
    try:
        since, until = _dates(form)
        query = AuditQuery(
            actor=form["actor"] or None,
            action=form["action"] or None,
            target=form["target"] or None,
            since=since,
            until=until,
        )
        before = request.query_params.get("before") or None
        entries = await asyncio.to_thread(request.app.state.audit.list, project_id, query, PAGE_SIZE, before)
        filters = {"actor": query.actor, "action": query.action, "target": query.target}
        export = f"/api/projects/{project_id}/audit-log.csv?" + _api_query({**filters, "since": since, "until": until})
    except ApiError as exc:
        error = exc
    if len(entries) == PAGE_SIZE:
        older = _older(request, form, entries[-1]["id"])
    return render(
        request,
        "activity_audit.html",
        context(request, project_id, "activity"),
        status=400 if error else 200,
        tab="audit",
        form=form,
        actions=AUDIT_ACTIONS,
        entries=entries,
        older=older,
        export=export,
        error=error,
    )


routes = [
    Route("/app/projects/{project_id}/activity", playback_activity, methods=["GET"]),
    Route("/app/projects/{project_id}/activity/audit", audit_activity, methods=["GET"]),
]
