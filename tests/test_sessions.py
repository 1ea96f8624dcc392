"""Sessions and the End User Object: the rule, stitching, closing, and incremental == rebuild."""

from __future__ import annotations

import os
import random
import shutil
import threading
from dataclasses import dataclass, replace

import msgspec
import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usertrail.profiles.standard import ClosedSession, compute
from usertrail.sessions import derive
from usertrail.sessions import processor as processor_module
from usertrail.sessions.derive import PROFILE_COLUMNS, profile_row, session_row, sessionize_keys
from usertrail.sessions.processor import SessionProcessor
from usertrail.sessions.rules import IDLE_MS, MAX_SESSION_MS, EventPoint, Session, is_closable, sessionize
from usertrail.sessions.table import VALUE_COLUMNS, SessionTable
from usertrail.store.database import create_engine, insert_ignore, insert_rows, write_transaction
from usertrail.store.events import EVENT_COLUMNS, event_row
from usertrail.store.pending import mark_pending
from usertrail.store.projects import ProjectStore
from usertrail.store.schema import end_users, events, identity_links, sessions

from samples import now_ms, walkme_body, walkme_event

MIN = 60_000
T0 = 1_750_000_000_000


def point(ts: int, type_: str = "click", **kw) -> EventPoint:
    return EventPoint(ts=ts, event_id=f"e{ts}", type=type_, **kw)


def test_thirty_minutes_of_silence_end_a_session():
    s = sessionize([point(T0), point(T0 + 29 * MIN), point(T0 + 58 * MIN), point(T0 + 88 * MIN)])
    assert [(x.start, x.end, x.events) for x in s] == [(T0, T0 + 58 * MIN, 3), (T0 + 88 * MIN, T0 + 88 * MIN, 1)]
    exactly = sessionize([point(T0), point(T0 + IDLE_MS)])
    assert len(exactly) == 2


def test_twelve_hours_at_most():
    busy = [point(T0 + i * 20 * MIN) for i in range(50)]  # ~16 h without a 30-minute pause
    s = sessionize(busy)
    assert len(s) == 2
    assert s[0].end - s[0].start < MAX_SESSION_MS and s[1].start - s[0].start >= MAX_SESSION_MS


def test_empty_sessions():
    assert sessionize([point(T0, "pageChange"), point(T0 + MIN, "sessionPing")])[0].is_empty
    assert not sessionize([point(T0, "pageChange"), point(T0 + MIN, "pageChange")])[0].is_empty  # navigated
    assert not sessionize([point(T0, "page"), point(T0 + MIN, "play")])[0].is_empty


def test_standard_attributes():
    a = ClosedSession(T0, T0 + 10 * MIN, "FR", "IDF", "Paris", "Firefox", "120")
    b = ClosedSession(T0 + 70 * MIN, T0 + 75 * MIN, "US", "CA", "San Jose", "Chrome", "124")
    c = ClosedSession(T0 + 24 * 60 * MIN, T0 + 24 * 60 * MIN + 20 * MIN, "DE", "BE", "Berlin", "Edge", "124")
    attrs = compute([c, a, b]).by_name()
    assert attrs["First seen"] == T0 and attrs["Last seen"] == T0 + 24 * 60 * MIN + 20 * MIN
    assert attrs["Total sessions"] == 3
    assert attrs["Total session duration"] == 35 * MIN
    assert attrs["Average session duration"] == pytest.approx(35 * MIN / 3)
    assert attrs["Average time between sessions"] == pytest.approx(((60 * MIN) + (24 * 60 - 75) * MIN) / 2)
    assert (attrs["Country"], attrs["Region/State"], attrs["City"]) == ("DE", "BE", "Berlin")
    assert (attrs["Browser Name"], attrs["Browser Version"]) == ("Edge", "124")
    assert compute([]) is None
    assert compute([a]).average_time_between_sessions is None


def test_an_end_user_object_row_holds_the_attributes_in_column_order_and_merged_properties():
    """The row the processor writes: the attributes under their columns; analytics properties merged in session
    order, the most recent value winning; no row before a session counted."""
    first = ClosedSession(T0, T0 + 10 * MIN, "FR", "IDF", "Paris", "Firefox", "120", {"plan": "free", "role": "a"})
    second = Session(T0 + 70 * MIN, T0 + 75 * MIN, country="US", region="CA", city="San Jose", browser="Chrome",
                     browser_version="124", user_vars={"plan": "VIP", "seats": 3})  # fmt: skip
    row = dict(zip(PROFILE_COLUMNS, profile_row(7, "u:ann", [second, first], now=T0 + 24 * 60 * MIN), strict=True))
    assert row == {
        "project_id": 7, "user_key": "u:ann", "first_seen": T0, "last_seen": T0 + 75 * MIN, "total_sessions": 2,
        "avg_session_duration_ms": 7.5 * MIN, "total_session_duration_ms": 15 * MIN,
        "avg_time_between_sessions_ms": 60 * MIN, "country": "US", "region": "CA", "city": "San Jose",
        "browser_name": "Chrome", "browser_version": "124",
        "analytics_properties": '{"plan":"VIP","role":"a","seats":3}', "updated_at": T0 + 24 * 60 * MIN,
    }  # fmt: skip
    assert profile_row(7, "u:ann", [], now=T0) is None
    assert profile_row(7, "u:ann", [replace(first, user_vars=None)], now=T0)[13] is None


_PLACE = st.sampled_from([None, "", "FR", "Île-de-France", "Paris"])
_HINTS = st.lists(st.sampled_from(["c1", 'c"2']), max_size=2, unique=True)
_VARS = [{}, {"plan": "free"}, {"plan": "VIP", "seats": 3}, {"role": "a"}]


@st.composite
def key_sessions(draw) -> dict[str, list[Session]]:
    """Sessions per key, in start order, as the column-wise pass hands them over."""
    made = {}
    for k in range(draw(st.integers(1, 4))):
        at, sessions = T0, []
        for _ in range(draw(st.integers(1, 4))):
            at += draw(st.integers(0, 3 * IDLE_MS))
            length = draw(st.integers(0, 2 * IDLE_MS))
            sessions.append(
                Session(
                    at, at + length, events=draw(st.integers(1, 5)), interactions=draw(st.integers(0, 2)),
                    page_views=draw(st.integers(0, 2)), hints=draw(_HINTS),
                    entry_path=draw(_PLACE), exit_path=draw(_PLACE), country=draw(_PLACE), region=draw(_PLACE),
                    city=draw(_PLACE), browser=draw(_PLACE), browser_version=draw(_PLACE), os=draw(_PLACE),
                    device_type=draw(_PLACE), user_vars=dict(draw(st.sampled_from(_VARS))),
                )
            )  # fmt: skip
            at += length + IDLE_MS
        made[f"u:{k}"] = sessions
    return made


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), object)
    array[:] = values
    return array


@given(made=key_sessions(), late=st.integers(0, 2 * IDLE_MS), skipped=st.sets(st.sampled_from(["u:0", "u:2"])))
def test_column_wise_rows_equal_the_python_rows(made, late, skipped):
    """`SessionTable.session_rows` and `profile_rows` of its `runs` (the rebuild's keys finished in numpy)
    give the rows `session_row` and `profile_row` give, session by session and End User Object by End
    User Object, and leave out the skipped keys."""
    keys = list(reversed(made))  # codes in another order than the keys' sort order
    runs = [(keys.index(k), s) for k in made for s in made[k]]
    distinct_vars = [{}, *(v for v in _VARS if v)]
    table = SessionTable(
        keys=keys,
        key=np.array([k for k, _ in runs], np.int64),
        start=np.array([s.start for _, s in runs], np.int64),
        end=np.array([s.end for _, s in runs], np.int64),
        events=np.array([s.events for _, s in runs], np.int64),
        interactions=np.array([s.interactions for _, s in runs], np.int64),
        page_views=np.array([s.page_views for _, s in runs], np.int64),
        hints=[msgspec.json.encode(s.hints).decode() for _, s in runs],
        values={name: _objects([getattr(s, name) for _, s in runs]) for name in VALUE_COLUMNS},
        vars_code=np.array([distinct_vars.index(s.user_vars) if s.user_vars else -1 for _, s in runs], np.int64),
        vars_values=distinct_vars,
    )  # fmt: skip
    now = max(s.end for _, s in runs) + late
    expected_sessions, expected_profiles, closed_count = [], [], 0
    for key in sorted(set(made) - skipped):
        closed = []
        for i, s in enumerate(made[key]):
            closable = is_closable(s, i == len(made[key]) - 1, now)
            closed_count += closable
            expected_sessions.append(
                session_row(3, key, s, "closed" if closable else "open", now if closable else None)
            )
            if closable and not s.is_empty:
                closed.append(s)
        if (row := profile_row(3, key, closed, now)) is not None:
            expected_profiles.append(row)
    runs = table.runs(now, frozenset(skipped))
    assert table.session_rows(3, now, runs, None) == expected_sessions
    assert table.profile_rows(3, now, runs) == (expected_profiles, closed_count, len(set(made) - skipped))


# --- the processor, against a real database ---------------------------------------------------


@dataclass(frozen=True)
class Ev:
    key: str
    ts: int
    type: str = "click"
    hint: str | None = None
    anon: str | None = None
    country: str | None = None
    browser: str | None = None
    vars: str | None = None  # analytics properties, JSON
    region: str | None = None
    city: str | None = None
    browser_version: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.key}-{self.ts}-{self.type}-{self.hint}"

    def row(self, project_id: int) -> dict:
        return {
            "project_id": project_id,
            "user_key": self.key,
            "event_id": self.event_id,
            "ts": self.ts,
            "client_ts": self.ts,
            "received_at": self.ts,
            "env": "production",
            "source": "native",
            "type": self.type,
            "session_hint": self.hint,
            "id_source": "test",
            "payload": "{}",
            "anon_id": self.anon if self.key.startswith("u:") else self.key[2:],
            "user_id": self.key[2:] if self.key.startswith("u:") else None,
            "country": self.country,
            "region": self.region,
            "city": self.city,
            "browser": self.browser,
            "browser_version": self.browser_version,
            "user_vars": self.vars,
        }


def ingest(engine: sa.Engine, project_id: int, batch: list[Ev]) -> None:
    """What the collector does: append, then mark the touched users as pending."""
    with write_transaction(engine) as conn:
        conn.execute(insert_ignore(events, conn.dialect.name), [e.row(project_id) for e in batch])
        mark_pending(conn, [(project_id, e.key, e.ts) for e in batch])


def snapshot(engine: sa.Engine, project_id: int) -> dict:
    with engine.connect() as conn:
        sess = conn.execute(
            sa.select(sessions)
            .where(sessions.c.project_id == project_id)
            .order_by(sessions.c.user_key, sessions.c.start_ts)
        ).all()
        users = conn.execute(
            sa.select(end_users).where(end_users.c.project_id == project_id).order_by(end_users.c.user_key)
        ).all()
    return {
        # closed_at / updated_at record when processing happened, which differs by design.
        "sessions": [tuple(v for k, v in r._mapping.items() if k != "closed_at") for r in sess],
        "users": [
            tuple(round(v, 6) if isinstance(v, float) else v for k, v in r._mapping.items() if k != "updated_at")
            for r in users
        ],
    }


@pytest.fixture
def project(engine) -> int:
    return ProjectStore(engine).create("sessions").project.id


def test_stitching_login_inside_a_session(engine, project):
    processor = SessionProcessor(engine)
    anon = [Ev("a:dev1", T0, "pageChange", hint="s1", country="FR"), Ev("a:dev1", T0 + MIN, "play", hint="s1")]
    ingest(engine, project, anon)
    processor.run(now=T0 + 2 * MIN)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sessions.c.user_key)).scalars().all() == ["a:dev1"]
    # The same browser session logs in: the anonymous events now belong to the identified user.
    ingest(engine, project, [Ev("u:jane", T0 + 3 * MIN, "click", hint="s1", browser="Chrome")])
    processor.run(now=T0 + 4 * MIN)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sessions)).all()
    assert [(r.user_key, r.start_ts, r.end_ts, r.event_count, r.status) for r in rows] == [
        ("u:jane", T0, T0 + 3 * MIN, 3, "open")
    ]
    # No attributes before the first session closes; after 30 idle minutes it closes.
    assert snapshot(engine, project)["users"] == []
    stats = processor.run(now=T0 + 3 * MIN + IDLE_MS)
    assert stats.sessions_closed == 1
    with engine.connect() as conn:
        user = conn.execute(sa.select(end_users)).one()
        assert conn.execute(sa.select(sessions.c.status)).scalar() == "closed"
    assert (user.user_key, user.first_seen, user.total_sessions, user.country, user.browser_name) == (
        "u:jane",
        T0,
        1,
        "FR",
        "Chrome",
    )
    # An identified user is never merged into another identified user.
    ingest(engine, project, [Ev("u:john", T0 + 5 * MIN, "click", hint="s1")])
    processor.run(now=T0 + 5 * MIN + IDLE_MS)
    with engine.connect() as conn:
        owners = dict(conn.execute(sa.select(sessions.c.user_key, sessions.c.event_count)).all())
    assert owners == {"u:jane": 3, "u:john": 1}


def test_events_that_arrive_during_a_rebuild_are_not_lost(engine, project, monkeypatch):
    """The rebuild reads the events, then replaces the derived tables: an event stored in between
    (the server keeps ingesting) is applied by the next round of the loop."""
    processor = SessionProcessor(engine)
    ingest(engine, project, [Ev("u:x", T0), Ev("u:x", T0 + 10 * MIN)])
    read = processor_module.sessionize_project

    def read_then_ingest(*args, **kwargs):
        found = read(*args, **kwargs)
        ingest(engine, project, [Ev("u:y", T0 + 5 * MIN), Ev("u:x", T0 + 20 * MIN)])
        return found

    monkeypatch.setattr(processor_module, "sessionize_project", read_then_ingest)
    processor.rebuild(project, now=T0 + 120 * MIN)
    monkeypatch.undo()
    processor.run(now=T0 + 120 * MIN)
    after_the_loop = snapshot(engine, project)
    processor.rebuild(project, now=T0 + 120 * MIN)
    assert after_the_loop == snapshot(engine, project)
    with engine.connect() as conn:
        users = dict(conn.execute(sa.select(end_users.c.user_key, end_users.c.total_session_duration_ms)).all())
    assert users == {"u:x": 20 * MIN, "u:y": 0}


def test_late_event_corrects_a_closed_session(engine, project):
    processor = SessionProcessor(engine)
    ingest(engine, project, [Ev("u:x", T0), Ev("u:x", T0 + 10 * MIN), Ev("u:x", T0 + 100 * MIN)])
    processor.run(now=T0 + 200 * MIN)
    before = snapshot(engine, project)
    assert before["users"][0][4] == 2  # two sessions
    # A late event fills the gap: the two sessions become one, and the attributes follow.
    ingest(engine, project, [Ev("u:x", T0 + 35 * MIN), Ev("u:x", T0 + 60 * MIN), Ev("u:x", T0 + 85 * MIN)])
    processor.run(now=T0 + 210 * MIN)
    with engine.connect() as conn:
        user = conn.execute(sa.select(end_users)).one()
    assert (user.total_sessions, user.total_session_duration_ms) == (1, 100 * MIN)


def test_empty_sessions_are_listed_but_do_not_count(engine, project):
    processor = SessionProcessor(engine)
    ingest(engine, project, [Ev("u:x", T0, "pageChange"), Ev("u:x", T0 + 5 * MIN, "sessionPing")])
    processor.run(now=T0 + 60 * MIN)
    with engine.connect() as conn:
        [s] = conn.execute(sa.select(sessions)).all()
        assert s.is_empty and s.status == "closed"
        assert conn.execute(sa.select(sa.func.count()).select_from(end_users)).scalar() == 0
    ingest(engine, project, [Ev("u:x", T0 + 120 * MIN, "click")])
    processor.run(now=T0 + 200 * MIN)
    with engine.connect() as conn:
        user = conn.execute(sa.select(end_users)).one()
    assert (user.total_sessions, user.first_seen) == (1, T0 + 120 * MIN)


def test_a_user_marked_again_during_a_round_stays_pending(engine, project, monkeypatch):
    """A mark that lands while a round processes the user (new events) keeps the pending row: the round
    releases it with the newer version, and the next round processes the user again."""
    processor = SessionProcessor(engine)
    ingest(engine, project, [Ev("u:x", T0), Ev("u:y", T0)])
    recompute = processor._recompute

    def marked_meanwhile(conn, *args, **kwargs):
        conn.execute(sa.text("UPDATE pending_users SET version = version + 1 WHERE user_key = 'u:x'"))
        return recompute(conn, *args, **kwargs)

    monkeypatch.setattr(processor, "_recompute", marked_meanwhile)
    assert processor.run(now=T0 + MIN, max_rounds=1).users == 2
    monkeypatch.undo()
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT user_key, version, claim, claimed_until FROM pending_users")).all()
    assert [tuple(r) for r in left] == [("u:x", 1, None, None)]
    assert processor.run(now=T0 + MIN).users == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pending_users")).scalar() == 0


def test_two_processors_close_each_session_once(engine, project, database_url):
    """Two processors, each with its own engine (as two server processes), work at once: every user is
    claimed by exactly one of them and every session closes exactly once.

    The first claims of the two are ordered (one, then the other) and both then process their batches
    at the same time, so both take part on every run; later rounds race freely."""
    n = 60
    ingest(engine, project, [Ev(f"u:{i}", T0 + i) for i in range(n)])
    second_engine = create_engine(database_url)
    processors = [SessionProcessor(engine), SessionProcessor(second_engine)]
    first_claimed, both_claimed = threading.Event(), threading.Barrier(2, timeout=60)

    def ordered_first_claim(processor: SessionProcessor, leader: bool) -> None:
        claim, calls = processor._claim, []

        def first_then_free(now: int, batch: int):
            calls.append(1)
            if len(calls) == 1 and not leader:
                assert first_claimed.wait(60)
            found = claim(now, batch)
            if len(calls) == 1:
                first_claimed.set()
                both_claimed.wait()  # both hold a claimed batch: they now process at the same time
            return found

        processor._claim = first_then_free  # type: ignore[method-assign]

    ordered_first_claim(processors[0], leader=True)
    ordered_first_claim(processors[1], leader=False)
    results: list = [None, None]

    def work(i: int) -> None:
        results[i] = processors[i].run(now=T0 + IDLE_MS + 100, batch=7)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].users >= 7 and results[1].users >= 7  # both worked
    assert results[0].users + results[1].users == n  # each user claimed and processed once
    assert results[0].sessions_closed + results[1].sessions_closed == n
    assert processors[0].run(now=T0 + 2 * IDLE_MS).sessions_closed == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(end_users)).scalar() == n
        assert conn.execute(sa.select(sa.func.count()).select_from(sessions)).scalar() == n
        assert conn.execute(sa.text("SELECT count(*) FROM pending_users")).scalar() == 0
    second_engine.dispose()


# --- incremental processing gives exactly what the rebuild gives --------------------------------

KEYS = ["u:ann", "u:bob", "a:d1", "a:d2", "a:d3"]
HINTS = ["s1", "s2", "s3", None]
TYPES = ["pageChange", "click", "play", "sessionPing", "complete"]

# Places and browsers that share a country or a browser name, so that region, city and version must
# come from the same event as country and browser name.
PLACES = [(None, None, None), ("FR", "Île-de-France", "Paris"), ("FR", "Auvergne-Rhône-Alpes", "Lyon"),
          ("US", "California", "San Jose"), ("US", None, None)]  # fmt: skip
BROWSERS = [(None, None), ("Chrome", "124.0.0"), ("Chrome", "125.0.1"), ("Firefox", "125.0"), ("Firefox", None)]


def placed(ev: Ev, place: tuple, browser: tuple) -> Ev:
    """The event seen from `place` (country, region, city) in `browser` (name, version)."""
    return replace(ev, country=place[0], region=place[1], city=place[2], browser=browser[0], browser_version=browser[1])


event_strategy = st.builds(
    placed,
    st.builds(
        Ev,
        key=st.sampled_from(KEYS),
        ts=st.integers(0, 3 * 24 * 60).map(lambda m: T0 + m * MIN),
        type=st.sampled_from(TYPES),
        hint=st.sampled_from(HINTS),
        anon=st.sampled_from([None, None, "d1", "d2", "d3"]),
        vars=st.sampled_from([None, None, '{"type":"free"}', '{"type":"VIP","role":"admin"}']),
    ),
    st.sampled_from(PLACES),
    st.sampled_from(BROWSERS),
)
# Bursts of activity so sessions have several events, and a long busy stretch for the 12-hour cap.
burst_strategy = st.tuples(
    st.sampled_from(KEYS), st.integers(0, 3 * 24 * 60), st.integers(1, 50), st.sampled_from([5, 20, 29, 31])
)


@settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    singles=st.lists(event_strategy, max_size=40),
    bursts=st.lists(burst_strategy, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_incremental_equals_rebuild(tmp_path_factory, sqlite_template, singles, bursts, seed):
    rng = random.Random(seed)
    evs = set(singles)
    for key, start, count, step in bursts:
        for i in range(count):
            burst = Ev(key, T0 + (start + i * step) * MIN, rng.choice(TYPES), hint=rng.choice(HINTS))
            evs.add(placed(burst, rng.choice(PLACES), rng.choice(BROWSERS)))
    evs = sorted(evs, key=lambda e: e.event_id)
    path = tmp_path_factory.mktemp("inc") / "db.sqlite"
    shutil.copyfile(sqlite_template, path)  # a migrated database (migrating each example's costs ~0.3 s)
    engine = create_engine(f"sqlite:///{path}")
    project = ProjectStore(engine).create("p").project.id
    processor = SessionProcessor(engine)
    # Arrival: each event after its time, some very late; random batch sizes; resends; processing at random times.
    arrivals = sorted(
        evs, key=lambda e: e.ts + (rng.randint(0, 3 * 24 * 60) if rng.random() < 0.2 else rng.randint(0, 90)) * MIN
    )
    now = T0
    i = 0
    while i < len(arrivals):
        size = rng.randint(1, 12)
        batch = arrivals[i : i + size]
        if rng.random() < 0.1 and i:
            batch = batch + rng.sample(arrivals[:i], min(2, i))  # re-sent events
        i += size
        now = max(now, max(e.ts for e in batch)) + rng.randint(0, 40) * MIN
        ingest(engine, project, batch)
        if rng.random() < 0.5:
            processor.run(now=now, batch=rng.randint(1, 5))
    final = now + rng.choice([0, 10 * MIN, IDLE_MS, 10 * IDLE_MS])
    processor.run(now=final)
    processor.run(now=final)  # everything drained
    incremental = snapshot(engine, project)
    processor.rebuild(project, now=final)
    rebuilt = snapshot(engine, project)
    assert incremental == rebuilt
    with engine.connect() as conn:
        linked = conn.execute(sa.select(identity_links.c.user_key).distinct()).scalars().all()
    assert all(k.startswith("a:") for k in linked)
    engine.dispose()


def test_processor_waits_for_a_burst_to_settle_but_not_forever_and_never_for_due_closes(make_server):
    live = make_server(process_sessions=False)
    processor = SessionProcessor(live.engine, settle_ms=5_000, max_defer_ms=60_000)
    t0 = now_ms()
    body = walkme_body([walkme_event(time=t0 - 10 * 60_000, wm_euId="ana", wm_euIdSource="Identifier")])
    with live.client() as client:
        assert client.post(f"/event/tell?key={live.project.write_key}", content=body).status_code == 200
    marked = live.scalar("SELECT marked_at FROM pending_users")
    assert processor.run(marked + 4_999).users == 0  # the burst may go on
    assert processor.run(marked + 5_000).users == 1
    assert live.scalar("SELECT status FROM sessions") == "open"
    # Half an hour later the session is due to close: that work is marked "due now" and not deferred.
    stats = processor.run(t0 + IDLE_MS)
    assert stats.users == 1 and stats.sessions_closed == 1
    # A user marked again and again is still taken a minute after the first mark.
    pid = live.project.project.id
    with write_transaction(live.engine) as conn:
        mark_pending(conn, [(pid, "u:ana", t0)], marked_at=t0)
        mark_pending(conn, [(pid, "u:ana", t0)], marked_at=t0 + 59_000)
    assert processor.run(t0 + 59_999).users == 0
    assert processor.run(t0 + 60_000).users == 1


# --- the set-based SQL gives exactly what the Python rule gives ----------------------------------

sql_event_strategy = st.builds(
    placed,
    st.builds(
        Ev,
        key=st.sampled_from(KEYS),
        # Minutes, with whole-hour steps now and then, so events share times and runs pass 12 hours.
        ts=st.integers(0, 2 * 24 * 60).map(lambda m: T0 + m * MIN),
        type=st.sampled_from(TYPES),
        hint=st.sampled_from(HINTS),
        anon=st.sampled_from([None, None, "d1", "d2"]),
        vars=st.sampled_from([None, None, '{"type":"free"}', '{"type":"VIP","role":"admin"}']),
    ),
    st.sampled_from(PLACES),
    st.sampled_from(BROWSERS),
)


@settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    singles=st.lists(sql_event_strategy, max_size=40),
    bursts=st.lists(burst_strategy, max_size=3),
    seed=st.integers(0, 2**32),
)
def test_set_based_sql_equals_the_rule(engine, singles, bursts, seed):
    """Sessions and links from the SQL statements equal the Python rule's, on both engines."""
    rng = random.Random(seed)
    evs = set(singles)
    for key, start, count, step in bursts:
        for i in range(count):
            burst = Ev(key, T0 + (start + i * step) * MIN, rng.choice(TYPES), hint=rng.choice(HINTS))
            evs.add(placed(burst, rng.choice(PLACES), rng.choice(BROWSERS)))
    # One event per (key, event id), as the store keeps them.
    evs = list({(e.key, e.event_id): e for e in sorted(evs, key=repr)}.values())
    project = ProjectStore(engine).create(f"sql-{seed}-{len(evs)}").project.id
    if evs:
        with write_transaction(engine) as conn:
            conn.execute(insert_ignore(events, conn.dialect.name), [e.row(project) for e in evs])
    now = T0 + rng.choice([0, 24 * 60, 3 * 24 * 60]) * MIN
    with engine.connect() as conn:
        derive.fill_scope(conn, {key: 0 for key in {e.key for e in evs}})  # every key, from its first event
        found = sessionize_keys(conn, project)
    by_key: dict[str, list[Ev]] = {}
    for e in evs:
        by_key.setdefault(e.key, []).append(e)
    expected = []
    for key in sorted(by_key):
        points = [
            EventPoint(
                e.ts,
                e.event_id,
                e.type,
                e.hint,
                None,
                e.country,
                e.region,
                e.city,
                e.browser,
                e.browser_version,
                None,
                None,
                e.vars,
            )
            for e in by_key[key]
        ]
        made = sessionize(points)
        rows = [session_row(project, key, s, "closed" if is_closable(s, i == len(made) - 1, now) else "open", None)
                for i, s in enumerate(made)]  # fmt: skip
        expected += rows
    got = []
    for key in sorted(found.sessions):
        made = found.sessions[key]
        got += [session_row(project, key, s, "closed" if is_closable(s, i == len(made) - 1, now) else "open", None)
                for i, s in enumerate(made)]  # fmt: skip
    assert got == expected
    # The links the pass found: the first event of each (client session id, key), as the rule sees it.
    first_hint: dict[tuple[str, str], tuple[int, str]] = {}
    for e in evs:
        if e.hint:
            k = (e.hint, e.key)
            first_hint[k] = min(first_hint.get(k, (e.ts, e.event_id)), (e.ts, e.event_id))
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for hint, key, at in found.hints:
        seen[(hint, key)] = min(seen.get((hint, key), at), at)
    assert seen == first_hint


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_batches_read_one_index_range_per_user_even_for_a_project_newer_than_its_statistics(engine):
    """A project whose events arrived after the last ANALYZE is estimated at one event: the incremental
    statements must still reach `events` per user of the batch, never by scanning the project's events."""

    def row(project_id: int, key: str, n: int) -> tuple:
        return event_row(
            project_id=project_id, user_key=key, event_id=f"{project_id}-{n}", ts=60_000 * n, received_at=0,
            env="production", source="native", type="click", id_source="user", payload="{}",
        )  # fmt: skip

    old = [row(1, f"u:{i % 300}", i) for i in range(6_000)]
    new = [row(2, f"u:{i % 50}", i) for i in range(3_000)]
    with write_transaction(engine) as conn:
        insert_rows(conn, events, EVENT_COLUMNS, old)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE events")
    with write_transaction(engine) as conn:
        insert_rows(conn, events, EVENT_COLUMNS, new)
        derive.fill_scope(conn, {f"u:{i}": 0 for i in range(50)})
        derive.sessionize_keys(conn, 2)  # makes (and fills) the statements' temporary tables
        cursor = conn.connection.dbapi_connection.cursor()
        for name in ("starts", "aggregates", "values", "fallback", "links"):
            sql = derive._sql("postgresql", name)
            plan = "\n".join(r[0] for r in cursor.execute(f"EXPLAIN {sql}", (2,)).fetchall())
            assert "Seq Scan on events" not in plan, (name, plan)
            assert "Index" in plan and "events" in plan, (name, plan)
            assert "Nested Loop" in plan, (name, plan)
