"""The ASGI application: wiring of stores, collector and routes, plus the maintenance loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cachetools import TTLCache
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from usertrail.collect.service import Collector
from usertrail.collect.writer import GroupCommitWriter
from usertrail.config import Settings
from usertrail.enrich.geo import GeoLocator
from usertrail.integrations import IntegrationLog
from usertrail.integrations.update_api import UpdateApi
from usertrail.segments.membership import refresh_all
from usertrail.sessions.processor import SessionProcessor
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import create_engine, migrate
from usertrail.store.events import EventStore
from usertrail.store.projects import ProjectStore
from usertrail.store.segments import SegmentStore
from usertrail.store.users import AuditLog, UserStore, delete_inactive
from usertrail.web import admin_api, collect_routes, reports_api, segments_api, snippet, update_api_routes, users_api
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
    """Hourly: purge security-log entries (full IPs) and recompute saved segments (relative dates
    move with time); daily: delete end users inactive past retention."""
    last_retention = 0.0
    while True:
        settings = collector.settings
        try:
            await asyncio.to_thread(
                collector.events.purge_security_log, _now() - settings.security_log_retention_days * DAY_MS
            )
            await asyncio.to_thread(refresh_all, collector.events.engine, _now())
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
            *segments_api.routes,
            *reports_api.routes,
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
    app.state.segments = SegmentStore(collector.events.engine)
    app.state.client_segments = TTLCache(maxsize=100_000, ttl=segments_api.CLIENT_CACHE_SECONDS)
    app.state.settings = settings
    return app
