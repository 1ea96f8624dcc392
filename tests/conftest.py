"""Shared fixtures: a real PostgreSQL cluster, fresh databases on both engines, and a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from usertrail.config import UVICORN_OPTIONS, Settings
from usertrail.store.database import create_engine, migrate
from usertrail.store.projects import NewProject, ProjectStore
from usertrail.testing.postgres import TemporaryPostgres
from usertrail.web.app import create_app

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)

# httpx builds a new SSL context for every client unless given one, loading the CA bundle each time
# (~75 ms of CPU): a third of the suite's CPU went there, as tests open a client per request. The
# contexts are alike, so every test client shares this one.
SSL_CONTEXT = httpx.create_ssl_context()


def http_client(**kwargs) -> httpx.Client:
    """An httpx.Client with the suite's shared SSL context (otherwise exactly `httpx.Client(**kwargs)`)."""
    return httpx.Client(verify=SSL_CONTEXT, **kwargs)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL cluster for the whole run (or the one named by USERTRAIL_TEST_PG_URL)."""
    given = os.environ.get("USERTRAIL_TEST_PG_URL")
    if given:
        yield given
        return
    # fsync off: the tests stop servers, never the cluster or the machine, so flushing to the disk
    # changes nothing they can see, and it made each test's CREATE and DROP DATABASE and every commit
    # wait for the disk (the benchmarks keep fsync on).
    with TemporaryPostgres({"fsync": "off"}) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin(postgres_url: str) -> Iterator[sa.Engine]:
    """An autocommit engine on the cluster's `postgres` database, which creates and drops the tests' databases."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A SQLite database migrated to the latest schema once per run, copied by `database_url`."""
    path = tmp_path_factory.mktemp("template") / "usertrail.db"
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection's close checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str, postgres_admin: sa.Engine) -> str:
    """The name of a PostgreSQL database migrated once per run, the template of `database_url`'s."""
    name = "t_template_" + uuid.uuid4().hex[:8]
    _create_database(postgres_admin, name)
    engine = create_engine(postgres_url.rsplit("/", 1)[0] + "/" + name)
    migrate(engine)
    engine.dispose()  # CREATE DATABASE … TEMPLATE needs the template to have no connections
    return name


def _create_database(admin: sa.Engine, name: str, template: str | None = None) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each engine, already at the latest schema: a copy of a template migrated once
    per run (migrating every test's database from nothing cost a third of a second or more per test).
    The migrations themselves still run from an empty database on both engines, to build the templates."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_database_url")
        return
    server, admin = request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_admin")
    name = "t_" + uuid.uuid4().hex[:16]
    _create_database(admin, name, template=request.getfixturevalue("postgres_template"))
    yield server.rsplit("/", 1)[0] + "/" + name
    _drop_database(admin, name)


@pytest.fixture
def sqlite_database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database at the latest schema (a copy of the template), for modules that run on
    SQLite only."""
    path = tmp_path / "usertrail.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database (no schema) on each engine, for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usertrail.db'}"
        return
    server, admin = request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_admin")
    name = "t_" + uuid.uuid4().hex[:16]
    _create_database(admin, name)
    yield server.rsplit("/", 1)[0] + "/" + name
    _drop_database(admin, name)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = create_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


COLLECT_PATHS = ("/event/tell", "/v1/batch")


@dataclass
class LiveServer:
    """A usertrail server listening on a real socket, with one project ready."""

    base_url: str
    settings: Settings
    project: NewProject
    projects: ProjectStore
    engine: sa.Engine
    app: object

    def client(self, **kwargs) -> httpx.Client:
        """A client whose collection requests are indexed before they return, so a test reads what it sent
        (the server answers once events are journaled; its indexer stores them a moment later)."""
        headers = {"User-Agent": CHROME_UA, **kwargs.pop("headers", {})}
        hooks = {"response": [self._index_collected]}
        return http_client(base_url=self.base_url, timeout=30, headers=headers, event_hooks=hooks, **kwargs)

    def index(self) -> None:
        """Store every journaled request now (what the server's indexer thread would do next)."""
        self.app.state.collector.indexer.drain()

    def _index_collected(self, response: httpx.Response) -> None:
        if response.request.url.path in COLLECT_PATHS:  # a 400 for a partial batch journaled its valid events
            self.index()

    def admin(self, token: str | None = None) -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {token or self.project.admin_token}"})

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()


class ThreadedServer(uvicorn.Server):
    """A uvicorn server run in a thread of the test process, which `stop()` stops at once.

    uvicorn notices `should_exit` at its next 0.1 s tick and then waits a fixed 0.1 s for open
    connections to finish: 0.2 s of idle time per stopped server, paid by almost every test. Here
    `stop()` wakes the tick, and a shutdown with no open connection or running request skips the wait;
    with either, uvicorn's own shutdown drains them as usual.
    """

    def start(self, sock: socket.socket | None = None) -> None:
        """Serve in a daemon thread (on `sock` if given, else on the config's port) until `stop()`;
        return once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, kwargs={"sockets": [sock] if sock else None}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"test server on port {self.config.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut the server down (the app's lifespan shutdown included) and wait for its thread."""
        self.should_exit = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._wake.set)
        self._thread.join(timeout=10)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        await super().startup(sockets)

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)
            return
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


def start_server(settings: Settings) -> tuple[ThreadedServer, object]:
    """The usertrail app for `settings`, served on a free port of 127.0.0.1 (bound here, so no other
    process can take it between choosing and listening)."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=sock.getsockname()[1], log_level="warning", lifespan="on", **UVICORN_OPTIONS
    )
    server = ThreadedServer(config)
    server.start(sock)
    return server, app


@pytest.fixture
def make_server(database_url: str, tmp_path: Path):
    """Start a real server on the test database; settings can be overridden per test."""
    started: list[ThreadedServer] = []

    def make(**overrides) -> LiveServer:
        # Tests drive the session processor by hand and expect it to take new events at once.
        settings = replace(Settings(data_dir=tmp_path, database_url=database_url, session_settle_ms=0), **overrides)
        server, app = start_server(settings)
        started.append(server)
        engine = app.state.collector.events.engine
        projects = app.state.collector.projects
        new = projects.create("test project")
        return LiveServer(f"http://127.0.0.1:{server.config.port}", settings, new, projects, engine, app)

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def live(make_server) -> LiveServer:
    """A server with default settings and one project."""
    return make_server()


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's Chromium (tests/browser.py), one per run (a launch costs 1-2 s), calling itself desktop Chrome."""
    from browser import chromium

    with chromium(CHROME_UA) as launched:
        yield launched


@pytest.fixture
def browser(chromium_browser):
    """The run's Chromium; every context a test opened is closed after it, so none of its pages (a
    recorder's timers, a beacon on leaving) runs on into the next test."""
    yield chromium_browser
    for context in chromium_browser.contexts:
        context.close()


@pytest.fixture
def context(browser):
    """A browser context that looks like desktop Chrome: the server drops headless browsers as bots."""
    ctx = browser.new_context(user_agent=CHROME_UA)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    """A tab whose clock is paused: the snippet's 2 s flush timer never fires on its own, so only the
    sends a test asks for (the page view once the settings arrive, `usertrail.flush()`) happen."""
    tab = context.new_page()
    tab.clock.install()
    tab.clock.pause_at(datetime.datetime.now() + datetime.timedelta(seconds=1))
    return tab


@pytest.fixture
def site():
    """A customer's web site on 127.0.0.1 (tests/browser.py), for pages that embed the snippet."""
    from browser import PageServer

    with PageServer() as server:
        yield server


@pytest.fixture
def provider():
    """A local OpenID Connect provider (tests/oidc_provider.py), started for the test."""
    from oidc_provider import Provider  # imported here: it imports this module

    started = Provider().start()
    yield started
    started.stop()
