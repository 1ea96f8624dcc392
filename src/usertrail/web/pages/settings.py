"""The settings page: one environment's settings (collection, identification, traffic rules, Session
Playback), the playback quota, the retention periods, and the project's members and roles.

Everyone with project.view reads it; the forms are editable only with settings.manage (members with
accounts.manage), and every change is a call to the public API from static/app/settings.js.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usertrail.access.permissions import ROLES
from usertrail.playback import quota
from usertrail.project_settings import TrackingLevel
from usertrail.store.retention import RetentionStore
from usertrail.store.segments import SegmentStore
from usertrail.web.errors import ApiError
from usertrail.web.pages.layout import context, page_principal, refused, render

TRACKING_LEVELS = [
    (TrackingLevel.ENGAGEMENT.value, "WalkMe events (engagement)"),
    (TrackingLevel.DXA.value, "Digital experience analytics (clicks, inputs, pages)"),
    (TrackingLevel.PLAYBACK.value, "Session Playback (recordings)"),
]
UUID_PROVIDERS = [
    ("walkme_id", "WalkMe ID (a random id kept in the browser)"),
    ("cookie", "Cookie"),
    ("variable", "Window variable"),
    ("selector", "Text of a page element (CSS selector)"),
    ("idp", "Identity provider (IDP)"),
    ("none", "None (no unique users)"),
]
RECORDING_METHODS = [("automatic", "Automatic"), ("manual", "Manual (the page starts each recording)")]
# tests/test_settings_browser.py checks that these choices cover project_settings' types exactly.


async def settings_page(request: Request) -> Response:
    """`?env=<name>` (default: the environment with the lowest wm.env)."""
    principal = page_principal(request, "project.view")
    if isinstance(principal, Response):
        return principal
    project_id = principal.project_id
    state = request.app.state
    engine = state.collector.events.engine
    environments = await asyncio.to_thread(state.collector.projects.environments, project_id)
    names = [name for name, _ in sorted(environments.items(), key=lambda item: item[1].walkme_env)]
    env = request.query_params.get("env") or (names[0] if names else "")
    if env not in environments:
        return refused(request, ApiError(404, "unknown_environment", f"no environment {env!r}", "env"))
    segments = await asyncio.to_thread(SegmentStore(engine).list, project_id)

    def read_usage() -> quota.Usage:
        with engine.connect() as conn:
            return quota.usage(conn, project_id, int(time.time() * 1000))

    usage = await asyncio.to_thread(read_usage)
    members = []
    if principal.can("accounts.manage"):
        members = [
            {**account.as_json(), "role": role}
            for account, role in await asyncio.to_thread(state.accounts.members, project_id)
        ]
    own = await asyncio.to_thread(RetentionStore(engine).get, project_id)
    process = state.settings
    retention = {
        "user_days": own.user_days,
        "playback_days": own.playback_days,
        "default_user_days": process.user_retention_days,
        "default_playback_days": process.playback_retention_days,
        "security_log_days": process.security_log_retention_days,
    }
    settings = environments[env]
    known_segments = {s.id for s in segments}
    return render(
        request,
        "settings.html",
        context(request, project_id, "settings"),
        env=env,
        env_names=names,
        settings=settings,
        editable=principal.can("settings.manage"),
        tracking_levels=TRACKING_LEVELS,
        uuid_providers=UUID_PROVIDERS,
        recording_methods=RECORDING_METHODS,
        segments=segments,
        missing_segments=[i for i in settings.playback.segment_ids if i not in known_segments],
        usage=usage.as_json(),
        members=members,
        roles=list(ROLES),
        self_id=str(principal.actor_id) if principal.kind == "account" else None,
        retention=retention,
    )


routes = [Route("/app/projects/{project_id}/settings", settings_page, methods=["GET"])]
