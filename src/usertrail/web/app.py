"""The ASGI application: wiring of stores, collector and routes, plus the maintenance loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from usertrail.access.accounts import AccountStore
from usertrail.access.oidc import OidcClient, OidcConfig
from usertrail.collect.indexer import Indexer
from usertrail.collect.indexer_process import IndexerProcess, Saturation
from usertrail.collect.service import Collector
from usertrail.collect.writer import GroupCommitWriter
from usertrail.config import Settings
from usertrail.enrich.geo import GeoLocator
from usertrail.gc_tuning import tune_garbage_collection
from usertrail.integrations import IntegrationLog
from usertrail.integrations.csv_import import CsvImporter
from usertrail.integrations.s3_import import S3Imports
from usertrail.integrations.salesforce import SalesforceImporter
from usertrail.integrations.scim import ScimIntegration
from usertrail.integrations.secretbox import SecretBox
from usertrail.integrations.update_api import UpdateApi
from usertrail.playback.assets import AssetStore
from usertrail.playback.blobs import open_blob_store
from usertrail.playback.crypto import KeySource
from usertrail.playback.fetch import SafeFetcher
from usertrail.playback.service import PlaybackService
from usertrail.playback.store import RecordingStore
from usertrail.segments.columns import ColumnStore
from usertrail.segments.membership import refresh_all
from usertrail.sessions.processor import SessionProcessor
from usertrail.store import changes
from usertrail.store.attributes import AttributeStore
from usertrail.store.database import create_engine, migrate, write_transaction
from usertrail.store.events import EventStore
from usertrail.store.projects import ProjectStore
from usertrail.store.retention import RetentionStore, delete_inactive_users
from usertrail.store.segments import SegmentStore
from usertrail.store.users import AuditLog, UserStore
from usertrail.web import (
    access_api,
    admin_api,
    api_docs,
    auth,
    collect_routes,
    import_routes,
    oidc_routes,
    overview_api,
    pages,
    playback_routes,
    reports_api,
    retention_api,
    salesforce_routes,
    scim_routes,
    segments_api,
    snippet,
    update_api_routes,
    users_api,
)
from usertrail.web.errors import ApiError, error_response
from usertrail.web.paths import EncodedSlashes

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600
DAY_MS = 86_400_000


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.reason, exc.path, **exc.extra)


def build_collector(settings: Settings, index: bool = True) -> Collector:
    """Open the database (migrating it) and assemble the collector with its stores. With `index=False`
    its indexer thread only reads the journal's backlog (another process indexes).

    An unusable USERTRAIL_GEOIP_DB raises `GeoDatabaseError` before the database is opened.
    """
    geo = GeoLocator(settings.geoip_db)
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    events = EventStore(engine)
    indexer = Indexer(
        events,
        delay_s=settings.index_delay_s,
        max_backlog=settings.max_backlog_events,
        index=index,
        saturation=None if index else Saturation(settings.data_dir),
    )
    writer = GroupCommitWriter(events, settings.commit_delay_ms, on_commit=indexer.notify)
    return Collector(settings, ProjectStore(engine), events, geo, writer, indexer)


def _now() -> int:
    return int(time.time() * 1000)


def run_hourly(collector: Collector, now: int) -> int:
    """The hourly maintenance at `now`: purge security-log entries (full IPs) past their retention and
    recompute saved segments (relative dates move with time), prune the change log of End User Objects
    and custom attributes. Returns the purged entries."""
    retention_ms = collector.settings.security_log_retention_days * DAY_MS
    purged = collector.events.purge_security_log(now - retention_ms)
    refresh_all(collector.events.engine, now)
    with write_transaction(collector.events.engine) as conn:
        changes.prune(conn)  # the segment counters' change log (store/changes.py)
    return purged


def run_retention(collector: Collector, recordings: RecordingStore, assets: AssetStore, now: int) -> dict[int, dict]:
    """The daily retention job at `now`, for every project under its own periods or the installation's:
    delete end users inactive past retention (audited, store/retention.py), recordings started before
    the playback retention, and assets no recording uses. Returns what went, per project."""
    settings = collector.settings
    periods = RetentionStore(collector.events.engine)
    done: dict[int, dict] = {}
    for project in collector.projects.list():
        user_days, playback_days = periods.get(project.id).effective(
            settings.user_retention_days, settings.playback_retention_days
        )
        deleted = delete_inactive_users(collector.events.engine, project.id, user_days, now)
        if deleted:
            log.info("retention: deleted %d inactive end users of project %d", len(deleted), project.id)
        expired = recordings.delete_started_before(project.id, now - playback_days * DAY_MS)
        if expired:
            log.info("retention: deleted %d recordings of project %d", len(expired), project.id)
        unused = assets.delete_unused(project.id, now - DAY_MS)
        if unused:
            log.info("retention: deleted %d unused assets of project %d", unused, project.id)
        done[project.id] = {"end_users": [key for key, _ in deleted], "recordings": expired, "assets": unused}
    return done


async def _maintenance(collector: Collector, recordings: RecordingStore, assets: AssetStore) -> None:
    """Hourly `run_hourly`, daily `run_retention`."""
    last_retention = 0.0
    while True:
        try:
            await asyncio.to_thread(run_hourly, collector, _now())
            if time.monotonic() - last_retention >= 86_400 or not last_retention:
                await asyncio.to_thread(run_retention, collector, recordings, assets, _now())
                last_retention = time.monotonic()
        except Exception:  # a failed run must not stop the loop; the next one retries
            log.exception("maintenance failed")
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)


async def _assets_loop(assets: AssetStore, interval_s: float) -> None:
    """Fetch and store the assets that recordings named (docs/playback.md#assets).

    Every server process runs this loop. Two processes may fetch the same URL at once; both store
    the same bytes under the same hash, so the only cost is the second fetch.
    """
    while True:
        try:
            done = await asyncio.to_thread(assets.process_pending)
        except Exception:  # e.g. the database was briefly unreachable: the next round retries
            log.exception("asset fetching failed")
            done = 0
        await asyncio.sleep(0 if done else interval_s)


async def _sessions_loop(processor: SessionProcessor, interval_s: float, batch: int) -> None:
    """Every few seconds: sessionize new events, close idle sessions, update End User Objects.

    Every server process runs this loop; claims on pending users keep them from doing the same
    user twice, and a session is closed by a conditional update, so it closes exactly once.
    """
    while True:
        try:
            stats = await asyncio.to_thread(processor.run, _now(), batch)
            busy = stats.users > 0
        except Exception:  # e.g. a deadlock victim on PostgreSQL: its work is retried next round
            log.exception("session processing failed")
            busy = False
        await asyncio.sleep(min(0.5, interval_s) if busy else interval_s)


async def _salesforce_loop(importer: SalesforceImporter, tick_s: float) -> None:
    """Every `tick_s`: run the Salesforce sources that are due (their interval has passed).

    Every server process runs this loop; a source's lease in the database lets only one of them
    run it. The importer's clock decides what is due, so tests move it instead of waiting.
    """
    while True:
        try:
            await asyncio.to_thread(importer.run_due)
        except Exception:  # e.g. the database was briefly unreachable: the next check retries
            log.exception("salesforce imports failed")
        await asyncio.sleep(tick_s)


async def _s3_loop(s3: S3Imports, interval_s: float) -> None:
    """Run the S3 sources that are due (each on its own interval); every process polls, one claims each run."""
    while True:
        try:
            await asyncio.to_thread(s3.run_due)
        except Exception:  # e.g. the database is briefly unavailable: the next round retries
            log.exception("S3 imports failed")
        await asyncio.sleep(interval_s)


def create_app(settings: Settings | None = None) -> Starlette:
    """The usertrail server.

    Without arguments it reads USERTRAIL_* variables: it is then a server process of its own (a uvicorn
    worker), tunes garbage collection for serving once it has started (`tune_garbage_collection`), and
    with `USERTRAIL_INDEXER=process` (the default) competes with the other workers to run the indexer
    process (collect/indexer_process.py). With explicit settings the indexer is a thread.
    """
    server_process = settings is None
    settings = settings or Settings.from_env()
    separate = server_process and settings.indexer == "process"
    collector = build_collector(settings, index=not separate)
    indexer_process = None
    if separate:
        engine_name = collector.events.engine.dialect.name
        processes = settings.indexer_processes or (1 if engine_name == "sqlite" else 2)
        indexer_process = IndexerProcess(settings.data_dir, settings.indexer_nice, processes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        playback = app.state.playback
        collector.indexer.start()
        if indexer_process is not None:
            indexer_process.start()
        if server_process:
            tune_garbage_collection()
        tasks = [asyncio.create_task(_maintenance(collector, playback.store, playback.assets))]
        tasks.append(asyncio.create_task(_assets_loop(playback.assets, settings.playback_asset_interval_s)))
        if settings.process_sessions:
            tasks.append(
                asyncio.create_task(
                    _sessions_loop(app.state.sessions, settings.session_interval_s, settings.session_batch)
                )
            )
        tasks.append(asyncio.create_task(_salesforce_loop(app.state.salesforce, settings.salesforce_tick_s)))
        tasks.append(asyncio.create_task(_s3_loop(app.state.s3_imports, settings.s3_poll_interval_s)))
        try:
            yield
        finally:
            import_routes.stop_background_work(app)
            for task in tasks:
                task.cancel()
            collector.writer.close()
            collector.indexer.close()
            await collector.id_tokens.close()
            if indexer_process is not None:
                indexer_process.close()
            playback.assets.fetcher.close()
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
            *segments_api.routes,
            *playback_routes.routes,
            *salesforce_routes.routes,
            *scim_routes.routes,
            *import_routes.routes,
            *auth.routes,
            *oidc_routes.routes,
            *access_api.routes,
            *reports_api.routes,
            *overview_api.routes,
            *retention_api.routes,
            *api_docs.routes,
            *pages.routes,
        ],
        exception_handlers={ApiError: _api_error},
        middleware=[Middleware(EncodedSlashes)],
        lifespan=lifespan,
    )
    app.state.collector = collector
    app.state.users = UserStore(collector.events.engine)
    app.state.audit = AuditLog(collector.events.engine)
    app.state.attributes = AttributeStore(collector.events.engine)
    app.state.integration_log = IntegrationLog(collector.events.engine)
    app.state.update_api = UpdateApi(collector.events.engine, app.state.attributes, app.state.integration_log)
    app.state.sessions = SessionProcessor(
        create_engine(settings.resolved_database_url, durable=False), settle_ms=settings.session_settle_ms
    )
    app.state.segments = SegmentStore(collector.events.engine)
    app.state.client_segments = segments_api.client_cache(settings.client_segments_cache_s)
    app.state.segment_columns = ColumnStore(collector.events.engine, settings.segment_columns_mb << 20, background=True)
    app.state.salesforce = SalesforceImporter(
        collector.events.engine,
        app.state.attributes,
        app.state.integration_log,
        SecretBox.from_environment(settings.data_dir),
        collector.projects,
    )
    app.state.scim = ScimIntegration(collector.events.engine, app.state.attributes, app.state.integration_log)
    app.state.csv_importer = CsvImporter(collector.events.engine, app.state.attributes, app.state.integration_log)
    app.state.s3_imports = S3Imports(collector.events.engine, app.state.csv_importer, app.state.integration_log)
    app.state.import_stop = threading.Event()
    app.state.settings = settings
    recordings = build_recording_store(settings, collector.events.engine)
    app.state.playback = PlaybackService(
        settings, collector, recordings, build_asset_store(settings, collector, recordings)
    )
    app.state.accounts = AccountStore(collector.events.engine, session_ttl_s=int(settings.session_ttl_hours * 3600))
    oidc_config = OidcConfig.from_settings(settings)
    app.state.oidc = None if oidc_config is None else OidcClient(oidc_config, app.state.accounts)
    return app


def build_recording_store(settings: Settings, engine: sa.Engine) -> RecordingStore:
    """Session Playback's store: the configured blob engine and the master key(s)."""
    blobs = open_blob_store(settings.playback_store, settings.data_dir, settings.s3_endpoint_url)
    keys = KeySource(settings.master_key, settings.data_dir)
    return RecordingStore(engine, blobs, keys, settings.playback_zstd_level)


def build_asset_store(settings: Settings, collector: Collector, recordings: RecordingStore) -> AssetStore:
    """Session Playback's assets: in the recordings' blob engine, fetched under the configured limits."""
    fetcher = SafeFetcher(
        allow_private=settings.playback_assets_allow_private,
        max_bytes=settings.playback_asset_max_bytes,
        timeout_s=settings.playback_asset_timeout_s,
    )
    return AssetStore(
        recordings.engine,
        recordings.blobs,
        fetcher,
        lambda project_id, env: collector.environments(project_id).get(env),
    )
