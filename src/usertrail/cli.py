"""The `usertrail` command: serve, demo, projects, keys, migrate, maintenance."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from usertrail.config import UVICORN_OPTIONS, Settings
from usertrail.project_settings import UuidSettings
from usertrail.store.database import create_engine, migrate
from usertrail.store.projects import ProjectStore, UnknownProject

app = typer.Typer(help="usertrail: self-hosted product insights.", no_args_is_help=True, add_completion=False)
projects_app = typer.Typer(help="Create and list projects.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage a project's keys.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions and End User Objects.", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.add_typer(sessions_app, name="sessions")
playback_app = typer.Typer(help="Session Playback: recording keys.", no_args_is_help=True)
app.add_typer(playback_app, name="playback")
import_app = typer.Typer(
    help="Imports of end-user attributes from other systems (CSV files, S3, Salesforce).", no_args_is_help=True
)
import_s3_app = typer.Typer(help="Amazon S3 sources (created through the API).", no_args_is_help=True)
salesforce_app = typer.Typer(help="Salesforce sources (configured through the admin API).", no_args_is_help=True)
app.add_typer(import_app, name="import")
import_app.add_typer(salesforce_app, name="salesforce")
import_app.add_typer(import_s3_app, name="s3")
accounts_app = typer.Typer(help="Accounts that sign in, and their roles per project.", no_args_is_help=True)
activity_app = typer.Typer(help="The playback activity log.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(activity_app, name="activity-log")
console = Console(soft_wrap=True)
err = Console(stderr=True)

DataDir = typer.Option(Path("usertrail-data"), "--data-dir", envvar="USERTRAIL_DATA_DIR", help="Where data lives.")
DatabaseUrl = typer.Option(
    "",
    "--database-url",
    envvar="USERTRAIL_DATABASE_URL",
    help="postgresql://… for PostgreSQL; default: SQLite in the data folder.",
)
LOCAL_ORIGINS = ["http://localhost:*", "http://127.0.0.1:*"]


def _settings(data_dir: Path, database_url: str, **overrides) -> Settings:
    try:
        base = Settings.from_env()
    except ValueError as exc:  # a USERTRAIL_* variable that does not parse
        _fail(f"bad setting: {exc}")
    return Settings(**{**base.__dict__, "data_dir": data_dir, "database_url": database_url, **overrides})


def _projects(settings: Settings) -> ProjectStore:
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    return ProjectStore(engine)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _print_new_project(new, base_url: str) -> None:
    from usertrail.web.snippet import snippet_tag

    console.print(f"[bold]Project {new.project.id}[/bold] “{new.project.name}” created.")
    console.print(f"  write key   : {new.write_key}   (public: goes in the snippet)")
    console.print(f"  admin token : {new.admin_token}   (secret: shown once, keep it)")
    console.print(f"  snippet     : {snippet_tag(base_url, new.write_key)}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Server worker processes."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
    demo: bool = typer.Option(False, "--demo", help="Also send simulated traffic once the server is up."),
    demo_users: int = typer.Option(300, help="Simulated end users for --demo."),
    demo_weeks: int = typer.Option(4, help="Simulated weeks for --demo."),
    admin_email: str = typer.Option("admin@localhost.localdomain", help="E-mail of the first admin account."),
) -> None:
    """Start the server (127.0.0.1:8000, data in ./usertrail-data), creating a first project and a first
    admin account if there are none."""
    import uvicorn

    overrides = {}
    if demo:
        # Simulated users arrive from many countries through the demo's X-Forwarded-For header,
        # which is believed only from this machine.
        import ipaddress

        overrides["trusted_proxies"] = (ipaddress.ip_network("127.0.0.1/32"),)
    settings = _settings(data_dir, database_url, **overrides)
    _check_geoip_db(settings)
    store = _projects(settings)
    base_url = f"http://{host}:{port}"
    existing = store.list()
    if not existing:
        new = store.create("My first project")
        for env_name, env in store.environments(new.project.id).items():
            env.allowed_origins = list(LOCAL_ORIGINS)
            store.save_environment(new.project.id, env_name, env)
        _print_new_project(new, base_url)
        first_id = new.project.id
    else:
        first_id = existing[0].id
        for p in existing:
            write = next((k["key"] for k in store.keys(p.id) if k["kind"] == "write" and not k["expires_at"]), "?")
            console.print(f"Project {p.id} “{p.name}”: write key {write}")
        console.print("Admin tokens are shown only when made: `usertrail keys rotate PROJECT --kind admin`.")
    _first_admin(store, first_id, admin_email)
    console.print(f"Serving on {base_url}  (data: {settings.resolved_database_url})")
    os.environ.update(settings.to_env())
    if demo:
        production = store.environments(first_id)["production"]
        production.uuid = UuidSettings(provider="variable", source="currentUser.id")
        store.save_environment(first_id, "production", production)
        write_key = next(k["key"] for k in store.keys(first_id) if k["kind"] == "write" and not k["expires_at"])
        threading.Thread(target=_demo_when_up, args=(base_url, write_key, demo_users, demo_weeks), daemon=True).start()
    uvicorn.run(
        "usertrail.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning" if demo else "info",
        timeout_graceful_shutdown=5,
        **UVICORN_OPTIONS,
    )


def _check_geoip_db(settings: Settings) -> None:
    """Refuse to start with an unusable USERTRAIL_GEOIP_DB, before any worker starts and fails the same way."""
    from usertrail.enrich.geo import GeoDatabaseError, GeoLocator

    try:
        GeoLocator(settings.geoip_db)
    except GeoDatabaseError as exc:
        _fail(str(exc))


def _first_admin(store: ProjectStore, project_id: int, email: str) -> None:
    """With no account yet, create an admin of the first project and print its one-time password."""
    from usertrail.access.accounts import AccountStore, InvalidAccount, one_time_password

    accounts = AccountStore(store.engine)
    if accounts.count():
        return
    password = one_time_password()
    try:
        account = accounts.create(email, "Admin", password, password_change_required=True)
    except InvalidAccount as exc:
        _fail(f"--admin-email: {exc}")
    accounts.set_role(account.id, project_id, "admin")
    console.print(f"[bold]Admin account[/bold] {account.email} (role admin on project {project_id}) created.")
    console.print(f"  one-time password : {password}   (shown once; set your own at first sign-in)")
    console.print('  sign in           : POST /api/auth/login {"email": …, "password": …}')


def _demo_when_up(base_url: str, write_key: str, users: int, weeks: int) -> None:
    import httpx

    for _ in range(300):
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    _run_demo(base_url, write_key, users, weeks, seed=7)


def _run_demo(base_url: str, write_key: str, users: int, weeks: int, seed: int) -> dict:
    from usertrail import demo as demo_traffic

    with Progress(
        TextColumn("[bold]demo traffic"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("users"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("users", total=users)
        totals = demo_traffic.send(
            base_url,
            write_key,
            users=users,
            weeks=weeks,
            seed=seed,
            on_user=lambda n: progress.advance(task, n),
        )
    console.print(
        f"demo: {totals['events']} events from {totals['users']} users in {totals['requests']} requests"
        + (f", [red]{totals['failed_requests']} failed[/red]" if totals["failed_requests"] else "")
    )
    return totals


@app.command("demo")
def demo_command(
    url: str = typer.Option("http://127.0.0.1:8000", help="The running server."),
    key: str = typer.Option(..., "--key", help="The project's write key."),
    users: int = typer.Option(300, min=1),
    weeks: int = typer.Option(4, min=1),
    seed: int = typer.Option(7),
) -> None:
    """Send realistic simulated traffic through the HTTP API of a running server."""
    import httpx

    try:
        totals = _run_demo(url, key, users, weeks, seed)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if totals["failed_requests"]:
        raise typer.Exit(1)


@app.command("migrate")
def migrate_command(data_dir: Path = DataDir, database_url: str = DatabaseUrl) -> None:
    """Create or upgrade the database schema."""
    _projects(_settings(data_dir, database_url))
    console.print("schema is up to date")


@app.command("purge-security-log")
def purge_security_log(
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
    days: int = typer.Option(
        7, min=0, envvar="USERTRAIL_SECURITY_LOG_RETENTION_DAYS", help="Keep this many days of entries."
    ),
) -> None:
    """Delete security-log entries (the only place full IPs are kept) older than `days` (the server does it hourly)."""
    store = _projects(_settings(data_dir, database_url))
    from usertrail.store.events import EventStore

    removed = EventStore(store.engine).purge_security_log(int(time.time() * 1000) - days * 86_400_000)
    console.print(f"removed {removed} security-log entries")


def _engine(data_dir: Path, database_url: str):
    return _projects(_settings(data_dir, database_url)).engine


def _project_ids(store: ProjectStore, project: int | None) -> list[int]:
    if project is None:
        return [p.id for p in store.list()]
    try:
        store.get(project)
    except UnknownProject:
        _fail(f"no project {project}")
    return [project]


@sessions_app.command("process")
def sessions_process(data_dir: Path = DataDir, database_url: str = DatabaseUrl) -> None:
    """Sessionize new events, close sessions idle for 30 minutes and update End User Objects, now."""
    from usertrail.sessions.processor import SessionProcessor
    from usertrail.store.events import EventStore

    engine = _engine(data_dir, database_url)
    EventStore(engine).index_all()  # events answered but not yet indexed (a server stopped with a backlog)
    processor = SessionProcessor(engine)
    total = processor.run(_now_ms(), max_rounds=10**6)
    console.print(
        f"processed {total.users} users: {total.sessions_closed} sessions closed, "
        f"{total.profiles_updated} End User Objects updated"
    )


@app.command()
def rebuild(
    project: int = typer.Option(None, help="Only this project (default: all)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Recompute every session, identity link and End User Object, and the reports' rollup, from the stored events."""
    from usertrail.reports import rollup
    from usertrail.sessions.processor import SessionProcessor
    from usertrail.store.database import write_transaction
    from usertrail.store.events import EventStore

    store = _projects(_settings(data_dir, database_url))
    EventStore(store.engine).index_all()  # the rebuild reads `events`: first what the journal still holds
    processor = SessionProcessor(store.engine)
    for project_id in _project_ids(store, project):
        started = time.perf_counter()
        stats = processor.rebuild(project_id, _now_ms())
        with write_transaction(store.engine) as conn:
            rolled = rollup.rebuild(conn, project_id)
        console.print(
            f"project {project_id}: {stats.users} end users, {stats.sessions_closed} closed sessions, "
            f"{stats.profiles_updated} End User Objects, reports' rollup of {rolled} events "
            f"in {time.perf_counter() - started:.1f} s"
        )


@app.command()
def retention(
    days: int = typer.Option(
        183, min=1, envvar="USERTRAIL_USER_RETENTION_DAYS", help="Delete end users with no session for this many days."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list who would be deleted."),
    project: int = typer.Option(None, help="Only this project (default: all)."),
    playback_days: int = typer.Option(
        365,
        min=1,
        envvar="USERTRAIL_PLAYBACK_RETENTION_DAYS",
        help="Delete Session Playback recordings started more than this many days ago.",
    ),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Delete end users inactive for `days` (with their events, sessions and attributes), and old recordings.

    A project's own retention periods (settings page, `PUT /api/projects/{id}/retention`) win over
    `--days` and `--playback-days`, which are the installation's defaults.
    """
    from usertrail.store.retention import RetentionStore, delete_inactive_users
    from usertrail.store.users import UserStore

    store = _projects(_settings(data_dir, database_url))
    periods = RetentionStore(store.engine)
    table = Table("project", "end user", "last session ended")
    count = 0
    for project_id in _project_ids(store, project):
        own = periods.get(project_id).user_days
        if own is not None:
            console.print(f"project {project_id}: end users are kept {own} days without a session (its own period)")
        now, period = _now_ms(), own if own is not None else days
        found = (
            UserStore(store.engine).inactive(project_id, now - period * 86_400_000)
            if dry_run
            else delete_inactive_users(store.engine, project_id, period, now)
        )
        for key, last in found:
            table.add_row(str(project_id), key, time.strftime("%Y-%m-%d %H:%M", time.gmtime(last / 1000)))
        count += len(found)
    if count:
        console.print(table)
    console.print(f"{count} end users {'would be' if dry_run else 'were'} deleted (no session for {days} days)")
    _playback_retention(store, _project_ids(store, project), playback_days, dry_run, data_dir, database_url)


def _playback_retention(
    store: ProjectStore, project_ids: list[int], days: int, dry_run: bool, data_dir: Path, database_url: str
) -> None:
    from usertrail.playback.store import Filters
    from usertrail.store.retention import RetentionStore

    recordings = _recording_store(data_dir, database_url, store.engine)
    periods = RetentionStore(store.engine)
    count = 0
    for project_id in project_ids:
        own = periods.get(project_id).playback_days
        if own is not None:
            console.print(f"project {project_id}: recordings are kept {own} days (its own period)")
        cutoff = _now_ms() - (own if own is not None else days) * 86_400_000
        if dry_run:
            count += len(recordings.list(project_id, Filters(until=cutoff, limit=10**9)))
        else:
            count += len(recordings.delete_started_before(project_id, cutoff))
    console.print(f"{count} recordings {'would be' if dry_run else 'were'} deleted (started over {days} days ago)")
    if not dry_run:
        from usertrail.playback.assets import AssetStore
        from usertrail.playback.fetch import SafeFetcher

        # Assets no remaining recording uses (older than a day, so none being fetched right now).
        fetcher = SafeFetcher()
        try:
            assets = AssetStore(recordings.engine, recordings.blobs, fetcher, lambda project_id, env: None)
            unused = sum(assets.delete_unused(p, _now_ms() - 86_400_000) for p in project_ids)
        finally:
            fetcher.close()
        console.print(f"{unused} unused assets were deleted")


def _recording_store(data_dir: Path, database_url: str, engine):
    from usertrail.web.app import build_recording_store

    return build_recording_store(_settings(data_dir, database_url), engine)


@playback_app.command("rotate-keys")
def playback_rotate_keys(
    project: int = typer.Option(None, help="Only this project (default: all)."),
    new_master_key: bool = typer.Option(
        False, "--new-master-key", help="First add a newly generated master key to the key file (it becomes current)."
    ),
    drop_old_master_keys: bool = typer.Option(
        False, "--drop-old-master-keys", help="Afterwards remove every master key but the current one."
    ),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Re-wrap every recording's data key under a new project key version (and the current master key)."""
    from usertrail.playback import crypto

    settings = _settings(data_dir, database_url)
    configured = bool(settings.master_key.strip())
    if (new_master_key or drop_old_master_keys) and configured:
        _fail(
            "USERTRAIL_MASTER_KEY is set: put the new key first in it (NEW,OLD), run rotate-keys, "
            "then remove the old key from it"
        )
    if drop_old_master_keys and project is not None:
        _fail("--drop-old-master-keys re-wraps every project: leave out --project")
    key_file = settings.data_dir / crypto.MASTER_KEY_FILE
    if new_master_key:
        old = crypto.load_master_keys("", settings.data_dir)
        _write_key_file(key_file, [crypto.new_master_key(), *(_b64(k) for k in old)])
        console.print(f"new master key added to {key_file}; running servers pick it up within a second")
    store = _projects(settings)
    recordings = _recording_store(data_dir, database_url, store.engine)
    total = 0
    for project_id in _project_ids(store, project):
        rewrapped = recordings.rotate_keys(project_id, _now_ms())
        total += rewrapped
        console.print(f"project {project_id}: {rewrapped} recording keys re-wrapped")
    if drop_old_master_keys:
        left = recordings.not_under_current_master()
        if left:
            _fail(f"{left} recording keys still need an old master key (created during the rotation): run again")
        current = crypto.load_master_keys("", settings.data_dir)[0]
        _write_key_file(key_file, [_b64(current)])
        console.print(f"old master keys removed from {key_file}")
    console.print(f"{total} recording keys re-wrapped")


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


def _write_key_file(path: Path, keys: list[str]) -> None:
    """Replace the key file atomically (a crash leaves the old or the new file, never half of one)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(keys) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now_ms() -> int:
    return int(time.time() * 1000)


@projects_app.command("create")
def projects_create(
    name: str,
    walkme_account_id: str = typer.Option(None, help="WalkMe account GUID (wm.uId) routed to this project."),
    base_url: str = typer.Option("http://127.0.0.1:8000", help="Server address used in the printed snippet."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Create a project and print its write key, admin token and snippet."""
    if not name.strip():
        _fail("a project needs a name")
    store = _projects(_settings(data_dir, database_url))
    _print_new_project(store.create(name.strip(), walkme_account_id), base_url)


@projects_app.command("list")
def projects_list(data_dir: Path = DataDir, database_url: str = DatabaseUrl) -> None:
    """List projects with their environments and current write key."""
    store = _projects(_settings(data_dir, database_url))
    table = Table("id", "name", "environments", "write key", "created")
    for p in store.list():
        write = next((k["key"] for k in store.keys(p.id) if k["kind"] == "write" and not k["expires_at"]), "")
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.created_at / 1000))
        table.add_row(str(p.id), p.name, ", ".join(sorted(store.environments(p.id))), write, created)
    console.print(table)


@keys_app.command("rotate")
def keys_rotate(
    project_id: int,
    kind: str = typer.Option("write", help="`write` (snippet key) or `admin` (API token)."),
    grace_seconds: int = typer.Option(None, min=0, help="How long old keys keep working (write: 1 day)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Issue a new key; the old ones expire after the grace period."""
    if kind not in ("write", "admin"):
        _fail("--kind must be `write` or `admin`")
    grace = grace_seconds if grace_seconds is not None else (86_400 if kind == "write" else 0)
    store = _projects(_settings(data_dir, database_url))
    try:
        token = store.rotate(project_id, kind, grace)
    except UnknownProject:
        _fail(f"no project {project_id}")
    console.print(f"new {kind} key for project {project_id}: {token}")
    console.print(f"previous {kind} keys stop working in {grace} s")


def _salesforce_importer(data_dir: Path, database_url: str):
    from usertrail.integrations.salesforce import build_importer

    store = _projects(_settings(data_dir, database_url))
    return store, build_importer(store.engine, data_dir, store)


def _print_runs(runs: list[dict]) -> None:
    table = Table("source", "run", "status", "records", "applied", "errors", "watermark", "error")
    for run in runs:
        error = run.get("error") or {}
        table.add_row(
            run["source_id"],
            run["run_id"],
            run["status"],
            str(run.get("records", 0)),
            str(run.get("records_applied", 0)),
            str(run.get("error_count", 0)),
            run.get("watermark_after") or "",
            f"{error.get('code')}: {error.get('reason')}" if error else "",
        )
    console.print(table)


@salesforce_app.command("list")
def salesforce_list(
    project: int = typer.Option(None, help="Only this project (default: all)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """List Salesforce sources with their schedule and watermark."""
    store, importer = _salesforce_importer(data_dir, database_url)
    table = Table("project", "source", "name", "object", "fields", "every", "enabled", "watermark", "next run")
    for project_id in _project_ids(store, project):
        for source in importer.sources(project_id):
            spec = source.spec
            table.add_row(
                str(project_id),
                source.source_id,
                spec.name,
                spec.object,
                str(len(spec.fields)),
                f"{spec.interval_s // 60} min",
                "yes" if spec.enabled else "no",
                source.watermark or "",
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(source.next_run_at / 1000)),
            )
    console.print(table)


@salesforce_app.command("run")
def salesforce_run(
    source: str = typer.Option(None, "--source", help="Run only this source (sf_…), even if disabled."),
    project: int = typer.Option(None, help="Only this project's enabled sources (default: all projects)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Import from Salesforce now: one source, or every enabled source. Exits 1 if a run failed."""
    from usertrail.integrations.salesforce import ID_PREFIX, RunInProgress, SourceNotFound
    from usertrail.integrations.update_api import project_of

    store, importer = _salesforce_importer(data_dir, database_url)
    if source is not None:
        project_id = project_of(source, ID_PREFIX)
        if project_id is None:
            _fail(f"{source!r} is not a Salesforce source id (sf_<project>_…)")
        targets = [(project_id, source)]
    else:
        targets = [
            (project_id, s.source_id)
            for project_id in _project_ids(store, project)
            for s in importer.sources(project_id)
            if s.spec.enabled
        ]
    runs = []
    for project_id, source_id in targets:
        try:
            runs.append(importer.run(project_id, source_id, "cli"))
        except SourceNotFound:
            _fail(f"no Salesforce source {source_id} in project {project_id}")
        except RunInProgress:
            err.print(f"[yellow]skipped:[/yellow] {source_id} is running elsewhere")
    if not targets:
        console.print("no enabled Salesforce sources")
        return
    _print_runs(runs)
    if any(r["status"] != "done" for r in runs):
        raise typer.Exit(1)


def _import_project(store: ProjectStore, project: int | None) -> int:
    """The project to import into: the one given, or the only one there is."""
    if project is None:
        ids = [p.id for p in store.list()]
        if len(ids) != 1:
            _fail(f"there are {len(ids)} projects: choose one with --project")
        project = ids[0]
    try:
        store.get(project)
    except UnknownProject:
        _fail(f"no project {project}")
    if all(env.uuid.provider == "none" for env in store.environments(project).values()):
        _fail(
            f"project {project} has no UUID settings: end users and their attributes exist only with an "
            "identification provider other than `none` (409 uuid_settings_required in the API)"
        )
    return project


@import_app.command("csv")
def import_csv(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The CSV file."),
    id_column: str = typer.Option(..., "--id-column", help="The column holding the end-user id."),
    columns: list[str] = typer.Option(None, "--columns", help="Columns to import, comma-separated (default: all)."),
    rename: list[str] = typer.Option(None, "--rename", help="COLUMN=Name: the attribute name (repeatable)."),
    type_: list[str] = typer.Option(
        None, "--type", help="COLUMN=string|number|date|boolean (repeatable; default: registered or inferred)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every row and report; write nothing."),
    force: bool = typer.Option(False, "--force", help="Import even if this file was imported with this mapping."),
    errors_out: Path = typer.Option(None, "--errors", help="Write the row-level error report (CSV) here."),
    project: int = typer.Option(None, help="The project (default: the only one)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Import custom attributes from a CSV file (header row; comma, semicolon or tab; UTF-8).

    Exit status: 0 when every row was imported, 1 when some rows or values had errors (the rest
    was imported), 2 when the file or the mapping was refused (nothing was imported).
    """
    from usertrail.integrations import IntegrationLog
    from usertrail.integrations.csv_import import (
        CsvFileError,
        CsvImporter,
        FileScan,
        MappingError,
        error_report_csv,
        mapping_from_options,
    )
    from usertrail.store.attributes import AttributeStore

    store = _projects(_settings(data_dir, database_url))
    project_id = _import_project(store, project)
    options = {"id_column": "--id-column", "columns": "--columns", "rename": "--rename", "type": "--type"}
    importer = CsvImporter(store.engine, AttributeStore(store.engine), IntegrationLog(store.engine))
    size = file.stat().st_size
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("checking", total=size, rows=0)
        reader = importer.start_reader(size)  # starts while the file is checked below
        try:
            try:
                spec = mapping_from_options(id_column, columns or [], rename or [], type_ or [])
                sha256, size = FileScan.of_file(file, on_bytes=lambda n: progress.advance(task, n))
                job = importer.create_job(
                    project_id, file, spec, file_name=file.name, sha256=sha256, size=size, dry_run=dry_run, force=force
                )
            except MappingError as exc:
                progress.stop()
                _fail(f"{options.get(exc.path, exc.path)}: {exc.reason}")
            except CsvFileError as exc:
                progress.stop()
                _fail(f"{file}: " + (f"line {exc.line}: " if exc.line else "") + exc.reason)
            progress.reset(task, total=size, description="dry run" if dry_run else "importing", rows=0)
            result = importer.run(
                job,
                file,
                on_progress=lambda p: progress.update(task, completed=p.bytes_read, rows=p.rows),
                reader=reader,
            )
        finally:
            if reader is not None:
                reader.close()  # ends it if the import did not get to take it over
        progress.update(task, completed=size, rows=result["rows"])
    mapping = Table("column", "attribute", "type")
    for c in result["mapping"]["columns"]:
        mapping.add_row(c["column"], c["name"], c["type"] + (" (inferred)" if c["type_inferred"] else ""))
    console.print(mapping)
    if result["status"] == "skipped":
        console.print(f"{file.name}: {result['message']} (--force imports it again)")
        return
    verb = "would apply" if dry_run else "applied"
    console.print(
        f"job {result['id']}: {result['status']}; {result['rows']:,} rows, {result['rows_applied']:,} {verb}, "
        f"{result['rows_failed']:,} with errors; {result['values_applied']:,} values"
        + ("" if dry_run else f", {result['values_changed']:,} changed")
    )
    if result["message"]:
        err.print(f"[red]{result['message']}[/red]")
    if result["error_count"]:
        rows = importer.error_rows(project_id, result["id"])
        if errors_out is not None:
            with open(errors_out, "w", encoding="utf-8", newline="") as out:
                for block in error_report_csv(rows):
                    out.write(block)
            err.print(f"{result['error_count']:,} errors; the report is in {errors_out}")
        else:
            shown = Table("line", "column", "reason")
            for n, (line, column, reason) in enumerate(rows):
                if n == 20:
                    break
                shown.add_row(str(line), column or "", reason)
            err.print(shown)
            err.print(f"{result['error_count']:,} errors (the first 20 above; --errors FILE writes them all)")
    if result["status"] == "failed":
        raise typer.Exit(2)
    if result["error_count"]:
        raise typer.Exit(1)


def _s3_imports(store: ProjectStore):
    from usertrail.integrations import IntegrationLog
    from usertrail.integrations.csv_import import CsvImporter
    from usertrail.integrations.s3_import import S3Imports
    from usertrail.store.attributes import AttributeStore

    log = IntegrationLog(store.engine)
    return S3Imports(store.engine, CsvImporter(store.engine, AttributeStore(store.engine), log), log)


@import_s3_app.command("list")
def import_s3_list(
    project: int = typer.Option(None, help="Only this project (default: all)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """List S3 sources with their bucket, pattern, interval and next run."""
    store = _projects(_settings(data_dir, database_url))
    table = Table("project", "id", "name", "location", "every", "next run", "enabled")
    for source in _s3_imports(store).list(project):
        location = f"s3://{source.bucket}/{source.prefix}{source.pattern}"
        next_run = time.strftime("%Y-%m-%d %H:%M", time.gmtime(source.next_run_at / 1000))
        table.add_row(
            str(source.project_id), source.id, source.name, location, f"{source.interval_s} s", next_run,
            "yes" if source.enabled else "no",
        )  # fmt: skip
    console.print(table)


@import_s3_app.command("run")
def import_s3_run(
    source: str = typer.Option(None, "--source", help="Run this source now (default: every source that is due)."),
    project: int = typer.Option(None, help="The project of --source (default: the only one)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Run S3 imports: the sources that are due, or one source now. Exit 1 if a run had errors."""
    from usertrail.integrations.s3_import import RunInProgress

    store = _projects(_settings(data_dir, database_url))
    s3 = _s3_imports(store)
    if source is not None:
        project_id = _import_project(store, project)
        try:
            runs = [s3.run(project_id, source, trigger="cli")]
        except KeyError:
            _fail(f"project {project_id} has no S3 source {source}")
        except RunInProgress as exc:
            _fail(str(exc))
    else:
        runs = s3.run_due(trigger="cli")
    table = Table("source", "run", "status", "objects new/unchanged/failed", "rows", "applied", "errors")
    for run in runs:
        table.add_row(
            run["source_id"], run["id"], run["status"],
            f"{run['objects_imported']}/{run['objects_skipped']}/{run['objects_failed']}",
            f"{run['rows']:,}", f"{run['rows_applied']:,}", str(run["error_count"]),
        )  # fmt: skip
    console.print(table if runs else "no S3 source is due")
    for run in runs:
        if run["message"]:
            err.print(f"[red]{run['source_id']}: {run['message']}[/red]")
    if any(r["status"] != "done" or r["error_count"] for r in runs):
        raise typer.Exit(1)


def _account_store(data_dir: Path, database_url: str):
    from usertrail.access.accounts import AccountStore

    return AccountStore(_engine(data_dir, database_url))


def _account_by_email(accounts, email: str):
    from usertrail.access.accounts import InvalidAccount, UnknownAccount

    try:
        return accounts.by_email(email)
    except (UnknownAccount, InvalidAccount):
        _fail(f"no account {email}")


def _read_password(password_stdin: bool, prompt: str) -> str | None:
    """The password from stdin (first line), or typed twice at a prompt; None to generate one."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        return None
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=True)


@accounts_app.command("create")
def accounts_create(
    email: str,
    project: int = typer.Option(..., "--project", help="Project the account gets a role on."),
    role: str = typer.Option("viewer", "--role", help="admin, analyst or viewer."),
    name: str = typer.Option(None, "--name", help="Display name (default: the part before @)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Create an account with a role on a project. Without a terminal or --password-stdin, a one-time
    password is generated and printed (to be changed at first sign-in)."""
    from usertrail.access.accounts import AccountExists, AccountStore, InvalidAccount, one_time_password
    from usertrail.access.permissions import ROLES

    if role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}")
    store = _projects(_settings(data_dir, database_url))
    _project_ids(store, project)
    accounts = AccountStore(store.engine)
    password = _read_password(password_stdin, "Password")
    generated = password is None
    if generated:
        password = one_time_password()
    try:
        account = accounts.create(email, name, password, password_change_required=generated)
        accounts.set_role(account.id, project, role)
    except (InvalidAccount, AccountExists) as exc:
        _fail(str(exc))
    console.print(f"account {account.id} {account.email}: role {role} on project {project}")
    if generated:
        console.print(f"one-time password: {password}   (shown once; set your own at first sign-in)")


@accounts_app.command("list")
def accounts_list(data_dir: Path = DataDir, database_url: str = DatabaseUrl) -> None:
    """Every account with its roles, state and last sign-in."""
    table = Table("id", "email", "name", "roles", "state", "last sign-in")
    for account, roles in _account_store(data_dir, database_url).list():
        last = account.last_login_at
        table.add_row(
            str(account.id),
            account.email,
            account.display_name,
            ", ".join(f"{pid}:{role}" for pid, role in sorted(roles.items())) or "-",
            "disabled" if account.disabled else "active",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(last / 1000)) if last else "never",
        )
    console.print(table)


@accounts_app.command("set-role")
def accounts_set_role(
    email: str,
    project: int = typer.Option(..., "--project"),
    role: str = typer.Option(..., "--role", help="admin, analyst, viewer, or `none` to remove from the project."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Give an account a role on a project (or remove it with --role none)."""
    from usertrail.access.accounts import InvalidAccount

    accounts = _account_store(data_dir, database_url)
    account = _account_by_email(accounts, email)
    try:
        accounts.set_role(account.id, project, None if role == "none" else role)
    except InvalidAccount as exc:
        _fail(str(exc))
    console.print(f"{account.email}: {'no role' if role == 'none' else 'role ' + role} on project {project}")


@accounts_app.command("disable")
def accounts_disable(
    email: str,
    enable: bool = typer.Option(False, "--enable", help="Re-enable instead."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Disable an account (its sign-in sessions end at once), or re-enable it with --enable."""
    accounts = _account_store(data_dir, database_url)
    account = _account_by_email(accounts, email)
    accounts.set_disabled(account.id, not enable)
    console.print(f"{account.email} {'enabled' if enable else 'disabled'}")


@accounts_app.command("reset-password")
def accounts_reset_password(
    email: str,
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from standard input."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Set a new password (ending the account's sessions); without --password-stdin a one-time one is printed."""
    from usertrail.access.accounts import InvalidAccount, one_time_password

    accounts = _account_store(data_dir, database_url)
    account = _account_by_email(accounts, email)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else one_time_password()
    try:
        accounts.set_password(account.id, password, change_required=not password_stdin)
    except InvalidAccount as exc:
        _fail(str(exc))
    if password_stdin:
        console.print(f"new password set for {account.email}")
    else:
        console.print(f"one-time password for {account.email}: {password}   (to be changed at first sign-in)")


@activity_app.command("verify")
def activity_verify(
    project: int = typer.Option(None, help="Only this project (default: all)."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Walk each project's hash chain; exit 1 and name the first broken entry if one was changed or removed."""
    from usertrail.access.activity_log import verify

    store = _projects(_settings(data_dir, database_url))
    broken = False
    for project_id in _project_ids(store, project):
        result = verify(store.engine, project_id)
        if result.ok:
            console.print(f"project {project_id}: {result.entries} entries, chain intact")
        else:
            broken = True
            console.print(
                f"[red]project {project_id}: chain broken at entry {result.first_broken_seq}[/red]: {result.reason} "
                f"({result.entries} entries before it verified)"
            )
    if broken:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `usertrail` command."""
    app(prog_name="usertrail")


if __name__ == "__main__":
    sys.exit(main())
