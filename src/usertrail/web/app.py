"""The ASGI application: wiring of stores, collector and routes, plus the maintenance loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from usertrail.access.accounts import AccountStore
from usertrail.access.oidc import OidcClient, OidcConfig
from usertrail.collect.service import Collector
from usertrail.collect.writer import GroupCommitWriter
from usertrail.config import Settings
from usertrail.enrich.geo import GeoLocator
from usertrail.integrations import IntegrationLog
from usertrail.integrations.update_api import UpdateApi
from usertrail.sessions.processor import SessionProcessor
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import create_engine, migrate
from usertrail.store.events import EventStore
from usertrail.store.projects import ProjectStore
from usertrail.store.users import AuditLog, UserStore, delete_inactive
from usertrail.web import (
    access_api,
    admin_api,
    auth,
    collect_routes,
    oidc_routes,
    snippet,
    update_api_routes,
    users_api,
)
from usertrail.web.errors import ApiError, error_response

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600
SESSIONS_INTERVAL_S = 10
DAY_MS = 86_400_000


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.reason, exc.path, **exc.extra)


def build_collector(settings: Settings) -> Collector:
    """Open the database (migrating it) and assemble the collector with its stores."""
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    events = EventStore(engine)
    return Collector(
        settings,
        ProjectStore(engine),
        events,
        GeoLocator(settings.geoip_db),
        GroupCommitWriter(events, settings.commit_delay_ms),
    )


def _now() -> int:
    return int(time.time() * 1000)


async def _maintenance(collector: Collector) -> None:
    """Hourly: purge security-log entries (full IPs); daily: delete end users inactive past retention."""
    last_retention = 0.0
    while True:
        settings = collector.settings
        try:
            await asyncio.to_thread(
                collector.events.purge_security_log, _now() - settings.security_log_retention_days * DAY_MS
            )
            if time.monotonic() - last_retention >= 86_400 or not last_retention:
                cutoff = _now() - settings.user_retention_days * DAY_MS
                for project in await asyncio.to_thread(collector.projects.list):
                    deleted = await asyncio.to_thread(delete_inactive, collector.events.engine, project.id, cutoff)
                    if deleted:
                        log.info("retention: deleted %d inactive end users of project %d", len(deleted), project.id)
                last_retention = time.monotonic()
        except Exception:  # a failed run must not stop the loop; the next one retries
            log.exception("maintenance failed")
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)


async def _sessions_loop(processor: SessionProcessor) -> None:
    """Every few seconds: sessionize new events, close idle sessions, update End User Objects.

    Every server process runs this loop; claims on pending users keep them from doing the same
    user twice, and a session is closed by a conditional update, so it closes exactly once.
    """
    while True:
        try:
            stats = await asyncio.to_thread(processor.run, _now())
            busy = stats.users > 0
        except Exception:  # e.g. a deadlock victim on PostgreSQL: its work is retried next round
            log.exception("session processing failed")
            busy = False
        await asyncio.sleep(0.5 if busy else SESSIONS_INTERVAL_S)


def create_app(settings: Settings | None = None) -> Starlette:
    """The usertrail server. Without arguments it reads USERTRAIL_* variables (uvicorn workers)."""
    settings = settings or Settings.from_env()
    collector = build_collector(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        tasks = [asyncio.create_task(_maintenance(collector))]
        if settings.process_sessions:
            tasks.append(asyncio.create_task(_sessions_loop(app.state.sessions)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            collector.writer.close()
            if app.state.oidc is not None:
                await app.state.oidc.close()
            collector.events.engine.dispose()
            app.state.sessions.engine.dispose()

    app = Starlette(
        routes=[
            Route("/health", health),
            *collect_routes.routes,
            *snippet.routes,
            *admin_api.routes,
            *users_api.routes,
            *update_api_routes.routes,
            *auth.routes,
            *oidc_routes.routes,
            *access_api.routes,
        ],
        exception_handlers={ApiError: _api_error},
        lifespan=lifespan,
    )
    app.state.collector = collector
    app.state.users = UserStore(collector.events.engine)
    app.state.audit = AuditLog(collector.events.engine)
    app.state.attributes = AttributeStore(collector.events.engine)
    app.state.integration_log = IntegrationLog(collector.events.engine)
    app.state.update_api = UpdateApi(collector.events.engine, app.state.attributes, app.state.integration_log)
    app.state.sessions = SessionProcessor(create_engine(settings.resolved_database_url, durable=False))
    app.state.settings = settings
    app.state.accounts = AccountStore(collector.events.engine, session_ttl_s=int(settings.session_ttl_hours * 3600))
    oidc_config = OidcConfig.from_settings(settings)
    app.state.oidc = None if oidc_config is None else OidcClient(oidc_config, app.state.accounts)
    return app
