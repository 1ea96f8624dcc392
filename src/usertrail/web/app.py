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

from usertrail.collect.service import Collector
from usertrail.collect.writer import GroupCommitWriter
from usertrail.config import Settings
from usertrail.enrich.geo import GeoLocator
from usertrail.store.database import create_engine, migrate
from usertrail.store.events import EventStore
from usertrail.store.projects import ProjectStore
from usertrail.web import admin_api, collect_routes, snippet
from usertrail.web.errors import ApiError, error_response

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600


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


async def _maintenance(collector: Collector) -> None:
    """Hourly: purge security-log entries (full IPs) older than their retention."""
    while True:
        cutoff = int(time.time() * 1000) - collector.settings.security_log_retention_days * 86_400_000
        try:
            await asyncio.to_thread(collector.events.purge_security_log, cutoff)
        except Exception:  # a failed purge must not stop the loop; the next run retries
            log.exception("security log purge failed")
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)


def create_app(settings: Settings | None = None) -> Starlette:
    """The usertrail server. Without arguments it reads USERTRAIL_* variables (uvicorn workers)."""
    settings = settings or Settings.from_env()
    collector = build_collector(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.create_task(_maintenance(collector))
        try:
            yield
        finally:
            task.cancel()
            collector.writer.close()
            collector.events.engine.dispose()

    app = Starlette(
        routes=[
            Route("/health", health),
            *collect_routes.routes,
            *snippet.routes,
            *admin_api.routes,
        ],
        exception_handlers={ApiError: _api_error},
        lifespan=lifespan,
    )
    app.state.collector = collector
    app.state.settings = settings
    return app
