"""Segments benchmark (issue 5): segment counts on SQLite and PostgreSQL against a DuckDB ceiling.

    .venv/bin/python bench/segments.py                 # 1,000,000 end users
    .venv/bin/python bench/segments.py --quick         # 100,000 end users
    .venv/bin/python bench/segments.py --engines sqlite,duckdb --runs 30 --json /tmp/segments.json

Data. A deterministic generator (one `random.Random(seed)`) makes N end users with all 11
standard attributes (first seen over the year before `NOW`, skewed session counts, durations,
locations and browsers from bench/datagen.py's vocabularies, analytics properties role/type/status
for most), 20 custom attributes of mixed types registered in `attribute_registry` (with their slots)
and written to `custom_attributes` as store/attributes.py writes them (one row per user, each value
in its attribute's slot, booleans as 1.0 / 0.0, sources and times in `stamps`), and the Plan history
in `attribute_changes` as one row per change (the first value, about 10% of users with an older
change, 5% with a change in the 30 days before `NOW`, a third of those to VIP). The rows are
cached as CSV under bench/results/data/. SQLite is loaded with executemany in large transactions
(bulk pragmas, secondary indexes rebuilt after), PostgreSQL with COPY (then VACUUM ANALYZE, as
autovacuum would); both schemas come from the Alembic migrations.

Segments. The four questions of the spec and a nested 10-rule segment (SEGMENTS below). The
benchmark has no events, so "active until a month ago, then stopped" is the attribute version
(Total sessions, Last seen, First seen), not the `stopped` behaviour rule.

Measured. Each count — the product's own `Compiler(...).count(tree)`, built and run as the API
did before column-wise counts — runs `--runs` times after a warm-up on each engine: p50/p95 ms. In the same run the same
filters are hand-written in DuckDB SQL over a wide table built from an export of the same rows (one
column per standard and custom attribute, plus the Plan changes as a list): the columnar ceiling.
Column-wise ("<engine>, columns"): the API's live count since then (`member_count`: segments/columns.py,
SQL for trees it cannot answer), after the first build of the columns the trees need (timed); then
the refresh after 100, 1,000 and 10,000 users are written through the attribute store, and the
memory the columns hold (`--no-columns` skips it).
In process, `compile_tree(tree)(facts, now)` is timed over up to 100,000 users' `UserFacts`
(evaluations/s, one core).

Checked (exit status 1 if not): every count is equal on every engine; the in-process members among
those users equal the SQL members among them; and for a sample of users, `load_facts` from the
database gives the facts the generator made and the same membership as SQL.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import datetime as dt
import hashlib
import itertools
import json
import math
import random
import resource
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ingest.py and bench/datagen.py, run as a script

import datagen
import ingest
from usertrail.segments.evaluate import UserFacts, compile_tree, load_facts
from usertrail.segments.model import DAY_MS, Catalog, Group, attribute_rules_of, parse
from usertrail.segments.sql import Compiler
from usertrail.store.attributes import free_slot, stored
from usertrail.store.users import STANDARD_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / "results" / "data"

NOW = 1_795_348_800_000  # 2026-11-22T12:00:00Z: the evaluation time; data lies in the year before it
SEED = 20261122
FULL_USERS, QUICK_USERS = 1_000_000, 100_000
IN_PROCESS_USERS = 100_000
TARGET_COUNT_MS = 250.0
TARGET_EVALS_PER_S = 100_000
SOURCE = "bench"
GENERATOR_VERSION = 1  # bump when the generator changes: the CSV cache is keyed by it
PG_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "4GB"}

# --- the data -----------------------------------------------------------------------------------------

PLANS = [("Free", 40), ("Starter", 25), ("Pro", 20), ("Business", 12), ("VIP", 3)]
PLAN_WEIGHTS = list(itertools.accumulate(w for _, w in PLANS))
PLAN_MRR = {"Free": 0.0, "Starter": 49.0, "Pro": 199.0, "Business": 899.0, "VIP": 4_900.0}
COMPANY_NAMES = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Soylent", "Cyberdyne",
    "Tyrell", "Aperture", "Vandelay", "Pied Piper", "Massive", "Oscorp", "Nakatomi", "Gringotts", "Monarch", "Virtucon",
    "Dunder", "Prestige", "Blue Sun", "Buy n Large", "Zorg", "Ollivander", "Sirius", "Bluth", "Krusty", "Duff",
]  # fmt: skip
COMPANY_SUFFIXES = ["Inc", "GmbH", "Ltd", "Labs", "Systems", "Group", "Partners", "Analytics", "Cloud", "Works"]
INDUSTRIES = ["Software", "Finance", "Healthcare", "Retail", "Manufacturing", "Education", "Government",
              "Media", "Energy", "Logistics", "Telecom", "Insurance"]  # fmt: skip
INDUSTRY_WEIGHTS = list(itertools.accumulate(1 / (i + 1) ** 0.7 for i in range(len(INDUSTRIES))))
SIGNUP_SOURCES = ["organic", "ads", "referral", "partner", "event", "sales"]
REGION_CODES = {"US": "AMER", "CA": "AMER", "BR": "LATAM", "JP": "APAC", "IN": "APAC", "AU": "APAC", "SG": "APAC"}
TIERS = ["Gold", "Silver", "Bronze"]
LANGUAGES = ["en", "en", "en", "de", "fr", "es", "ja", "pt", "he"]
MANAGERS = [f"{first} {last}" for first in ("Ana", "Ben", "Chen", "Dana", "Eli", "Fay", "Gus", "Hila")
            for last in ("Levi", "Smith", "Mori", "Cohen", "Dubois")]  # fmt: skip
DEPARTMENTS = ["Sales", "Engineering", "Support", "Marketing", "Finance", "HR", "Operations", "IT"]
ROLES = [("viewer", 50), ("editor", 35), ("admin", 10), ("owner", 5)]
ROLE_WEIGHTS = list(itertools.accumulate(w for _, w in ROLES))

# The 20 custom attributes: name -> type (as registered).
CUSTOM: dict[str, str] = {
    "Plan": "string",
    "Seats": "number",
    "Renewal": "date",
    "Trial": "boolean",
    "Company": "string",
    "Industry": "string",
    "MRR": "number",
    "Signup source": "string",
    "Employees": "number",
    "NPS": "number",
    "Region code": "string",
    "Tier": "string",
    "Onboarded": "boolean",
    "Last invoice date": "date",
    "Account manager": "string",
    "Language": "string",
    "Health score": "number",
    "Beta opt-in": "boolean",
    "Contract end": "date",
    "Department": "string",
}
SLOTS: dict[str, str] = {}
for _name, _type in CUSTOM.items():  # registered in this order, as store/attributes.py assigns slots
    SLOTS[_name] = free_slot(SLOTS.values(), _type)
CATALOG = Catalog(custom=CUSTOM, slots=SLOTS)
ANALYTICS_KEYS = ("role", "type", "status")

END_USER_COLUMNS = (
    "project_id", "user_key", "first_seen", "last_seen", "total_sessions", "avg_session_duration_ms",
    "total_session_duration_ms", "avg_time_between_sessions_ms", "country", "region", "city", "browser_name",
    "browser_version", "analytics_properties", "updated_at",
)  # fmt: skip
ATTRIBUTE_ORDER = sorted(CUSTOM, key=lambda name: (SLOTS[name][0], int(SLOTS[name][1:])))  # column order
ATTRIBUTE_COLUMNS = ("project_id", "user_key", *(SLOTS[name] for name in ATTRIBUTE_ORDER), "stamps")
HISTORY_COLUMNS = ("project_id", "user_key", "id", "source", "changed_at", "changes")
TABLES = {"end_users": END_USER_COLUMNS, "custom_attributes": ATTRIBUTE_COLUMNS, "attribute_changes": HISTORY_COLUMNS}


@dataclass
class User:
    """One generated end user: the `end_users` row (without project) and the typed custom values."""

    key: str
    standard: tuple  # END_USER_COLUMNS[2:13] in order
    analytics: dict[str, str] | None
    custom: dict[str, object]
    history: list[tuple[str | None, str, int]]  # Plan: (old, new, changed_at), oldest first
    written: int  # when the custom values other than Plan were written (Plan: its last change)


_EPOCH_DAY = dt.date(1970, 1, 1)
_DAYS: dict[int, str] = {}


def _day(ms: int) -> str:
    """The `YYYY-MM-DD` of a time in ms (cached: the generator asks for the same few hundred days)."""
    days = ms // DAY_MS
    text = _DAYS.get(days)
    if text is None:
        text = _DAYS[days] = (_EPOCH_DAY + dt.timedelta(days=days)).isoformat()
    return text


def _pick(rand: Callable[[], float], items: list, cumulative: list[float]) -> Any:
    return items[bisect.bisect(cumulative, rand() * cumulative[-1])]


def generate(n: int, seed: int = SEED) -> Iterator[User]:
    """N end users, always the same for the same seed; the first k of N users do not depend on N."""
    rng = random.Random(seed)
    rand, lognormal, expo = rng.random, rng.lognormvariate, rng.expovariate
    plans = [p for p, _ in PLANS]
    others = {p: [q for q in plans if q != p] for p in plans}
    month_ago = NOW - 30 * DAY_MS
    for i in range(n):
        key = f"user-{i:07d}"
        age = int(365 * DAY_MS * rand() ** 1.2) + 1
        first_seen = NOW - age
        single = rand() < 0.3
        sessions = 1 if single else min(5_000, 2 + int(lognormal(1.5, 1.1)))
        avg_duration = round(lognormal(12.6, 0.9), 1)  # median about 5 minutes
        total_duration = int(avg_duration * sessions)
        if single:
            last_seen = first_seen + total_duration
        elif rand() < 0.5:  # still active
            last_seen = max(first_seen + total_duration, NOW - int(expo(1 / (3 * DAY_MS))))
        else:  # stopped somewhere in their lifetime
            last_seen = first_seen + total_duration + int(rand() * max(0, age - total_duration))
        last_seen = min(last_seen, NOW)
        between = None if single else max(0.0, round((last_seen - first_seen - total_duration) / (sessions - 1), 1))
        if rand() < 0.03:
            country = region = city = None
        else:
            country, region, city = _pick(rand, datagen.CITIES, datagen.CITY_WEIGHTS)
        if rand() < 0.01:
            browser = version = None
        else:
            browser, version = _pick(rand, datagen.BROWSERS, datagen.BROWSER_WEIGHTS)[:2]
        standard = (first_seen, last_seen, sessions, avg_duration, total_duration, between,
                    country, region, city, browser, version)  # fmt: skip
        analytics = None
        if rand() < 0.7:
            analytics = {"role": _pick(rand, ROLES, ROLE_WEIGHTS)[0]}
            if rand() < 0.8:
                analytics["type"] = "employee" if rand() < 0.75 else ("contractor" if rand() < 0.7 else "partner")
            if rand() < 0.6:
                analytics["status"] = "active" if rand() < 0.8 else ("trial" if rand() < 0.6 else "suspended")

        plan = _pick(rand, plans, PLAN_WEIGHTS)
        history: list[tuple[str | None, str, int]] = [(None, plan, first_seen)]
        if first_seen < month_ago and rand() < 0.10:
            at = first_seen + int(rand() * (month_ago - first_seen))
            new = others[plan][int(rand() * 4)]
            history.append((plan, new, at))
            plan = new
        if rand() < 0.05:
            since = max(month_ago, history[-1][2])
            at = since + int(rand() * (NOW - since))
            new = "VIP" if plan != "VIP" and rand() < 1 / 3 else others[plan][int(rand() * 4)]
            history.append((plan, new, at))
            plan = new

        # The other 19, each set for most users (in CUSTOM's order, so the draws stay in step).
        c: dict[str, object] = {"Plan": plan}
        if rand() < 0.98:
            c["Seats"] = float(max(1, int(lognormal(2.0, 1.2))))
        if rand() < 0.95:
            c["Renewal"] = _day(NOW + int((rand() * 395 - 30) * DAY_MS))
        if rand() < 0.995:
            c["Trial"] = rand() < 0.2
        if rand() < 0.99:
            c["Company"] = f"{COMPANY_NAMES[int(rand() * 30)]} {COMPANY_SUFFIXES[int(rand() * 10)]}"
        if rand() < 0.95:
            c["Industry"] = _pick(rand, INDUSTRIES, INDUSTRY_WEIGHTS)
        if rand() < 0.98:
            c["MRR"] = float(round(PLAN_MRR[plan] * (0.5 + rand())))
        if rand() < 0.95:
            c["Signup source"] = SIGNUP_SOURCES[int(rand() * len(SIGNUP_SOURCES))]
        if rand() < 0.9:
            c["Employees"] = float(int(lognormal(5.0, 1.8)) + 1)
        if rand() < 0.5:
            c["NPS"] = float(int(rand() * 11))
        if rand() < 0.98:
            c["Region code"] = REGION_CODES.get(country or "", "EMEA")
        if rand() < 0.95:
            c["Tier"] = TIERS[int(rand() * 3)]
        if rand() < 0.995:
            c["Onboarded"] = rand() < 0.7
        if plan != "Free" and rand() < 0.98:
            c["Last invoice date"] = _day(NOW - int(rand() * 60 * DAY_MS))
        if rand() < 0.7:
            c["Account manager"] = MANAGERS[int(rand() * len(MANAGERS))]
        if rand() < 0.98:
            c["Language"] = LANGUAGES[int(rand() * len(LANGUAGES))]
        if rand() < 0.95:
            c["Health score"] = round(rand() * 100, 1)
        if rand() < 0.85:
            c["Beta opt-in"] = rand() < 0.15
        if rand() < 0.75:
            c["Contract end"] = _day(NOW + int((rand() * 730 - 60) * DAY_MS))
        if rand() < 0.9:
            c["Department"] = DEPARTMENTS[int(rand() * len(DEPARTMENTS))]
        written = first_seen + int(rand() * (NOW - first_seen))
        yield User(key, standard, analytics, c, history, written)


def _encode(value: object) -> str:
    return msgspec.json.encode(value).decode()


def table_rows(user: User, project_id: int) -> tuple[tuple, tuple | None, list[tuple]]:
    """The user's rows of `end_users`, `custom_attributes` and `attribute_changes`, as the product stores them."""
    key, custom, written = user.key, user.custom, user.written
    analytics = None if user.analytics is None else _encode(user.analytics)
    end_user = (project_id, key, *user.standard, analytics, user.standard[1])
    plan_at = user.history[-1][2]
    others = [SLOTS[name] for name in ATTRIBUTE_ORDER if name != "Plan" and custom.get(name) is not None]
    groups = (
        [[SOURCE, plan_at, [SLOTS["Plan"]]], [SOURCE, written, others]]
        if others
        else [[SOURCE, plan_at, [SLOTS["Plan"]]]]
    )
    if plan_at == written and others:
        groups = [[SOURCE, written, [SLOTS["Plan"], *others]]]
    attributes = (project_id, key, *(stored(custom.get(name)) for name in ATTRIBUTE_ORDER), _encode(groups))  # type: ignore[arg-type]
    history = [
        (project_id, key, f"{at:013d}-{j:06d}-{SOURCE}", SOURCE, at, _encode({SLOTS["Plan"]: [old, new]}))
        for j, (old, new, at) in enumerate(user.history)
    ]
    return end_user, attributes, history


def facts_of(user: User) -> UserFacts:
    """What the in-process evaluator reads about the user: the same facts `load_facts` reads from the database."""
    return UserFacts(
        exists=True,
        standard=dict(zip(STANDARD_COLUMNS, user.standard, strict=True)),
        analytics=dict(user.analytics or {}),
        custom=dict(user.custom),
        history=[("Plan", old, new, at) for old, new, at in user.history],
    )


def data_files(n: int, seed: int, regenerate: bool) -> tuple[dict[str, Path], float | None]:
    """The three tables as CSV (project 1) under bench/results/data/, generated once; (paths, seconds or None)."""
    from usertrail.store.schema import metadata

    shape = repr([(t, [str(c.type) for c in metadata.tables[t].columns]) for t in TABLES]) + str(GENERATOR_VERSION)
    folder = DATA_DIR / f"segments-{n}-{seed}-{hashlib.sha256(shape.encode()).hexdigest()[:8]}"
    paths = {table: folder / f"{table}.csv" for table in TABLES}
    if not regenerate and all(p.exists() for p in paths.values()):
        return paths, None
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    files = {table: (folder / f"{table}.csv.partial").open("w", newline="") for table in TABLES}
    try:
        writers = {table: csv.writer(f, lineterminator="\n") for table, f in files.items()}
        for user in generate(n, seed):
            end_user, attributes, history = table_rows(user, 1)
            writers["end_users"].writerow(end_user)
            writers["custom_attributes"].writerow(attributes)
            writers["attribute_changes"].writerows(history)
    finally:
        for f in files.values():
            f.close()
    for table, path in paths.items():
        (folder / f"{table}.csv.partial").rename(path)
    return paths, time.perf_counter() - began


# --- loading ------------------------------------------------------------------------------------------


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def register(url: str, project_id: int) -> None:
    """The 20 custom attributes in the project's registry, as the first write of an integration leaves them."""
    import sqlalchemy as sa

    from usertrail.store.database import create_engine
    from usertrail.store.schema import attribute_registry

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                attribute_registry.insert(),
                [
                    {"project_id": project_id, "name": name, "type": type_, "integrations": _encode([SOURCE]),
                     "created_at": NOW, "updated_at": NOW, "slot": SLOTS[name]}
                    for name, type_ in CUSTOM.items()
                ],
            )  # fmt: skip
            registered = conn.execute(
                sa.select(sa.func.count()).where(attribute_registry.c.project_id == project_id)
            ).scalar()
        assert registered == len(CUSTOM)
    finally:
        engine.dispose()


def load_sqlite(path: str, n: int, seed: int, project_id: int) -> dict[str, int]:
    """Generate and insert the rows with the raw driver; secondary indexes are rebuilt after the load."""
    conn = sqlite3.connect(path, isolation_level=None)
    counts = dict.fromkeys(TABLES, 0)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN "
            f"({', '.join(repr(t) for t in TABLES)})"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        sql = {t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for t, c in TABLES.items()}
        for batch in _chunks(generate(n, seed), 50_000):
            rows: dict[str, list[tuple]] = {t: [] for t in TABLES}
            for user in batch:
                end_user, attributes, history = table_rows(user, project_id)
                rows["end_users"].append(end_user)
                rows["custom_attributes"].append(attributes)
                rows["attribute_changes"].extend(history)
            conn.execute("BEGIN")
            for table, values in rows.items():
                conn.executemany(sql[table], values)
                counts[table] += len(values)
            conn.execute("COMMIT")
        for _, create in indexes:
            conn.execute(create)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return counts


def load_postgres(url: str, paths: dict[str, Path]) -> dict[str, int]:
    """COPY the CSV files (keys and indexes dropped during the load and rebuilt after), then VACUUM ANALYZE."""
    import psycopg

    counts = {}
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for table, columns in TABLES.items():
            constraints = conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype IN ('p', 'u')",
                (table,),
            ).fetchall()
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
                (table, table),
            ).fetchall()
            with conn.transaction():
                for name, _ in indexes:
                    conn.execute(f'DROP INDEX "{name}"')
                for name, _ in constraints:
                    conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
                cursor = conn.cursor()
                sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)"
                with cursor.copy(sql) as copy, paths[table].open("rb") as f:
                    while block := f.read(8 << 20):
                        copy.write(block)
                counts[table] = cursor.rowcount
            for name, definition in constraints:
                conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            for _, definition in indexes:
                conn.execute(definition)
            conn.execute(f"VACUUM ANALYZE {table}")
    return counts


# --- the segments -------------------------------------------------------------------------------------


def _rule(attribute: str, operator: str, value: object = None, **extra: object) -> dict:
    rule: dict[str, object] = {"attribute": attribute, "operator": operator}
    if value is not None:
        rule["value"] = value
    return {**rule, **extra}


SEGMENTS: dict[str, dict] = {
    "signed up last week": {"match": "all", "rules": [_rule("First seen", "within_last", 7, unit="days")]},
    "signed up once, never came back": {
        "match": "all",
        "rules": [_rule("Total sessions", "eq", 1), _rule("Last seen", "more_than_days_ago", 14)],
    },
    "recently upgraded to VIP": {"match": "all", "rules": [_rule("Plan", "changed_to", "VIP", days=7)]},
    "active until a month ago, then stopped": {
        "match": "all",
        "rules": [
            _rule("Total sessions", "gte", 5),
            _rule("Last seen", "more_than_days_ago", 30),
            _rule("First seen", "more_than_days_ago", 90),
        ],
    },
    "nested, 10 rules": {
        "match": "all",
        "rules": [
            _rule("Country", "is_one_of", ["US", "GB", "DE", "FR", "CA"]),
            _rule("Last seen", "within_last", 30),
            _rule("role", "is_one_of", ["admin", "owner", "editor"]),
            {
                "match": "any",
                "rules": [
                    _rule("Plan", "is", "Business"),
                    {
                        "match": "all",
                        "rules": [
                            _rule("Seats", "between", [10, 200]),
                            _rule("Trial", "is_false"),
                            _rule("Industry", "is_one_of", ["Software", "Finance"]),
                        ],
                    },
                ],
            },
            {
                "match": "any",
                "rules": [
                    _rule("Company", "contains", "Labs"),
                    _rule("Total sessions", "gte", 20),
                    _rule("Last invoice date", "within_last", 30),
                ],
            },
        ],
    },
}


def _first_day_at_or_after(ms: int) -> str:
    days = -(-ms // DAY_MS)
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()


def duckdb_counts_sql(now: int) -> dict[str, str]:
    """The same filters, hand-written over the wide table `users` (one row per end user).

    No NOT appears, so a NULL (value not set) in a condition can never make a row count: the
    same result as the product's "false when not set".
    """
    d = DAY_MS
    # A YYYY-MM-DD value is "within the last 30 days" when its midnight lies in [now - 30 d, now].
    invoice_from, invoice_to = _first_day_at_or_after(now - 30 * d), _first_day_at_or_after(now + 1)
    return {
        "signed up last week": f"first_seen >= {now - 7 * d} AND first_seen <= {now}",
        "signed up once, never came back": f"total_sessions = 1 AND last_seen < {now - 14 * d}",
        "recently upgraded to VIP": (
            f"len(list_filter(plan_changes, lambda c: c.new = 'VIP' AND c.at >= {now - 7 * d})) > 0"
        ),
        "active until a month ago, then stopped": (
            f"total_sessions >= 5 AND last_seen < {now - 30 * d} AND first_seen < {now - 90 * d}"
        ),
        "nested, 10 rules": f"""
            country IN ('US', 'GB', 'DE', 'FR', 'CA')
            AND last_seen >= {now - 30 * d} AND last_seen <= {now}
            AND role IN ('admin', 'owner', 'editor')
            AND ("Plan" = 'Business'
                 OR ("Seats" BETWEEN 10 AND 200 AND NOT "Trial" AND "Industry" IN ('Software', 'Finance')))
            AND (contains("Company", 'Labs') OR total_sessions >= 20
                 OR ("Last invoice date" >= DATE '{invoice_from}' AND "Last invoice date" < DATE '{invoice_to}'))""",
    }


# --- timing -------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Timing:
    engine: str
    segment: str
    count: int
    runs_ms: list[float]

    @property
    def p50(self) -> float:
        return _pct(self.runs_ms, 0.5)

    @property
    def p95(self) -> float:
        return _pct(self.runs_ms, 0.95)


@dataclass
class EngineRun:
    engine: str
    label: str
    timings: list[Timing] = field(default_factory=list)
    load_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    loadavg_before: str = ""
    loadavg_after: str = ""
    own_cpu: float = 0.0  # cores used by this process (and PostgreSQL's) while timing
    other_cpu: float = 0.0  # cores used by everything else while timing
    plans: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_facts_ms: list[float] = field(default_factory=list)  # per user, the sample check


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def time_counts(
    engine_name: str, label: str, counters: dict[str, Callable[[], int]], runs: int, db_pids: Callable[[], list[int]]
) -> EngineRun:
    """Each counter: one warm-up, then `runs` timed calls; CPU of us, the database and the rest of the machine."""
    import os

    run = EngineRun(engine_name, label, loadavg_before=loadavg())
    mine = [os.getpid()]
    cpu0, busy0 = ingest.cpu_seconds(mine + db_pids()), ingest.machine_busy()
    wall0 = time.monotonic()
    for segment, counter in counters.items():
        count = counter()
        samples = []
        for _ in range(runs):
            began = time.perf_counter()
            again = counter()
            samples.append((time.perf_counter() - began) * 1000)
            if again != count:
                raise RuntimeError(f"{label}: {segment} counted {count} then {again}")
        run.timings.append(Timing(engine_name, segment, count, samples))
        print(f"    {segment:<40} {count:>9,}  p50 {_pct(samples, 0.5):8.1f} ms  p95 {_pct(samples, 0.95):8.1f} ms")
    wall = max(1e-6, time.monotonic() - wall0)
    own = (ingest.cpu_seconds(mine + db_pids()) - cpu0) / wall
    busy = ingest.busy_cores(busy0, ingest.machine_busy())
    run.own_cpu, run.other_cpu = round(own, 2), round(max(0.0, busy - own), 2)
    run.loadavg_after = loadavg()
    return run


def sql_counters(conn, trees: dict[str, Group]) -> dict[str, Callable[[], int]]:
    """The product's count, built and run per call as the segments API does (on one open connection)."""
    dialect = conn.dialect.name

    def counter(tree: Group) -> Callable[[], int]:
        def count() -> int:
            value = conn.execute(Compiler(1, NOW, dialect).count(tree)).scalar()
            conn.rollback()  # each count is its own read, as in the API
            return int(value)

        return count

    return {name: counter(tree) for name, tree in trees.items()}


def column_counters(engine, store, trees: dict[str, Group]) -> dict[str, Callable[[], int]]:
    """The API's live count (`member_count`): column-wise where the tree allows it, else SQL; one
    connection per count, as a request has."""
    from usertrail.segments.columns import member_count

    def counter(tree: Group) -> Callable[[], int]:
        def count() -> int:
            with engine.connect() as conn:
                return member_count(store, conn, Compiler(1, NOW, engine.dialect.name), tree)

        return count

    return {name: counter(tree) for name, tree in trees.items()}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_columns(
    engine, engine_name: str, trees: dict[str, Group], users: list[User], runs: int, quiet_wait: float, db_pids
) -> EngineRun:
    """Column-wise counts (segments/columns.py): the first build for the nested tree, the other trees'
    columns, the timed counts, the refresh after N users were written through the attribute store
    (their own Plan again: a change to the log like any other, leaving the data as generated), memory."""
    from usertrail.segments.columns import ColumnStore
    from usertrail.store.attributes import AttributeStore

    store = ColumnStore(engine, 4 << 30)
    rss0 = _rss_mb()
    notes = []
    for name in ("nested, 10 rules", *trees):
        began = time.perf_counter()
        found = store.count(1, trees[name], NOW)
        took = (time.perf_counter() - began) * 1000
        if found is None:
            notes.append(f"{name}: not columnar, counted in SQL")
        elif store.last["action"] == "build" or name != "nested, 10 rules":
            notes.append(f"first count of {name!r} ({store.last['action']}, loading its columns): {took:,.0f} ms")
    ingest.wait_for_quiet(quiet_wait)
    run = time_counts(engine_name, f"{engine_name}, columns", column_counters(engine, store, trees), runs, db_pids)
    notes.append(f"columns held: {store.memory() / 2**20:,.1f} MB (estimate); RSS grew {_rss_mb() - rss0:,.0f} MB")
    attributes = AttributeStore(engine)
    for n in (100, 1_000, 10_000):
        written = [(u.key, {"Plan": u.custom["Plan"]}) for u in users[:n]]
        began = time.perf_counter()
        attributes.write(1, SOURCE, written)
        write_ms = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        store.count(1, trees["nested, 10 rules"], NOW)
        took = (time.perf_counter() - began) * 1000
        notes.append(
            f"refresh after {n:,} users written ({write_ms:,.0f} ms to write): nested count {took:,.0f} ms "
            f"({store.last['action']}, {store.last['changed']:,} users re-read)"
        )
    run.notes = notes
    for note in notes:
        print(f"    {note}")
    return run


def saved_counters(engine, trees: dict[str, Group]) -> dict[str, Callable[[], int]]:
    """Each tree saved as a segment (its member list computed in SQL, as the API does on create), then
    counted from that list with `SegmentStore.member_counts`, as `GET …/segments/{id}` does."""
    from usertrail.segments.membership import refresh_segment
    from usertrail.store.database import write_transaction
    from usertrail.store.segments import SegmentStore

    store = SegmentStore(engine)

    def counter(name: str, tree: Group) -> Callable[[], int]:
        segment_id = store.create(1, {"name": name, "rules": SEGMENTS[name]}, NOW)
        began = time.perf_counter()
        with write_transaction(engine) as conn:
            entered, _ = refresh_segment(conn, 1, segment_id, tree, NOW)
        print(f"    saved {name!r}: {entered:,} members written in {time.perf_counter() - began:.1f} s")
        return lambda: store.member_counts(1, [segment_id]).get(segment_id, 0)

    return {name: counter(name, tree) for name, tree in trees.items()}


def explain(engine, tree: Group, analyse: bool) -> str:
    """SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN (ANALYZE, BUFFERS) when `analyse`."""
    statement = Compiler(1, NOW, engine.dialect.name).count(tree)
    sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            return "\n".join(f"{r[0]:>3} {r[1]:>3} {r[3]}" for r in rows) + "\n-- " + " ".join(sql.split())
        prefix = "EXPLAIN (ANALYZE, BUFFERS)" if analyse else "EXPLAIN"
        rows = conn.exec_driver_sql(f"{prefix} {sql}").all()
        return "\n".join(r[0] for r in rows) + "\n-- " + " ".join(sql.split())


# --- DuckDB -------------------------------------------------------------------------------------------

DUCK_TYPES = {"string": "VARCHAR", "number": "DOUBLE", "date": "DATE", "boolean": "BOOLEAN"}


def _duck_columns(table: str) -> str:
    from usertrail.store.schema import metadata

    kinds = {"INTEGER": "INTEGER", "BIGINT": "BIGINT", "FLOAT": "DOUBLE"}
    columns = metadata.tables[table].columns
    return ", ".join(f"'{c}': '{kinds.get(str(columns[c].type), 'VARCHAR')}'" for c in TABLES[table])


def build_duckdb(paths: dict[str, Path]) -> tuple[Any, float, int]:
    """A wide `users` table from the exported rows: standard columns, role/type/status, one column per
    custom attribute (typed), and `plan_changes`, the Plan history as a list of {old, new, at}."""
    import duckdb

    con = duckdb.connect()
    began = time.perf_counter()
    for table, path in paths.items():
        con.execute(f"CREATE TEMP TABLE x_{table} AS SELECT * FROM read_csv('{path}', header = false, "
                    f"columns = {{{_duck_columns(table)}}})")  # fmt: skip
    columns = []
    for name in ATTRIBUTE_ORDER:
        slot, type_ = SLOTS[name], CUSTOM[name]
        if type_ == "boolean":
            columns.append(f'a.{slot} <> 0 AS "{name}"')
        elif type_ == "date":
            columns.append(f'CAST(a.{slot} AS DATE) AS "{name}"')
        else:
            columns.append(f'a.{slot} AS "{name}"')
    analytics = ", ".join(f"json_extract_string(e.analytics_properties, '$.{k}') AS {k}" for k in ANALYTICS_KEYS)
    plan = SLOTS["Plan"]
    con.execute(f"""
        CREATE TABLE users AS
        SELECT e.* EXCLUDE (project_id, analytics_properties, updated_at), {analytics},
               {", ".join(columns)}, h.plan_changes
        FROM x_end_users e
        LEFT JOIN x_custom_attributes a USING (user_key)
        LEFT JOIN (
            SELECT user_key, list({{'old': json_extract_string(changes, '$.{plan}[0]'),
                                    'new': json_extract_string(changes, '$.{plan}[1]'), 'at': changed_at}} ORDER BY id)
                   AS plan_changes
            FROM x_attribute_changes GROUP BY user_key
        ) h USING (user_key)
    """)
    for table in paths:
        con.execute(f"DROP TABLE x_{table}")
    rows = con.execute("SELECT count(*) FROM users").fetchone()[0]  # type: ignore[index]
    return con, time.perf_counter() - began, rows


def duck_counters(con, now: int) -> dict[str, Callable[[], int]]:
    def counter(where: str) -> Callable[[], int]:
        sql = f"SELECT count(*) FROM users WHERE {where}"
        return lambda: int(con.execute(sql).fetchone()[0])

    return {name: counter(where) for name, where in duckdb_counts_sql(now).items()}


# --- in process ---------------------------------------------------------------------------------------


@dataclass
class InProcess:
    users: int
    evaluations_per_s: dict[str, float] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)
    facts_build_s: float = 0.0


def run_in_process(
    users: list[User], trees: dict[str, Group], repeat: int = 3
) -> tuple[InProcess, dict[str, set[str]]]:
    """Evaluations per second of each compiled tree over the users' facts (best of `repeat` passes)."""
    began = time.perf_counter()
    facts = [facts_of(u) for u in users]
    result = InProcess(len(users), facts_build_s=round(time.perf_counter() - began, 2))
    members: dict[str, set[str]] = {}
    for name, tree in trees.items():
        check = compile_tree(tree)
        best = math.inf
        for _ in range(repeat):
            began = time.perf_counter()
            found = [f for f in facts if check(f, NOW) is True]
            best = min(best, time.perf_counter() - began)
        keys = {u.key for u, f in zip(users, facts, strict=True) if check(f, NOW) is True}
        assert len(keys) == len(found)
        members[name] = keys
        result.evaluations_per_s[name] = len(facts) / best
        result.members[name] = len(keys)
        print(f"    {name:<40} {len(keys):>9,} members  {len(facts) / best:>12,.0f} evaluations/s")
    return result, members


def sql_members(engine, trees: dict[str, Group]) -> dict[str, set[str]]:
    """Every segment's member keys, from the product's member query."""
    with engine.connect() as conn:
        return {
            name: set(conn.execute(Compiler(1, NOW, engine.dialect.name).members(tree)).scalars())
            for name, tree in trees.items()
        }


def check_sample(
    engine, users: list[User], trees: dict[str, Group], members: dict[str, set[str]], sample: int
) -> tuple[list[str], list[float]]:
    """`load_facts` from the database for a spread of users: equal to the generator's facts, and its
    membership equal to SQL's (`members`). Returns the problems found (empty when all agree) and the
    time of each `load_facts` call in ms (it is what a membership refresh does per user)."""
    problems, times_ms = [], []
    step = max(1, len(users) // sample)
    chosen = users[::step][:sample]
    named = {r.attribute.name for tree in trees.values() for r in attribute_rules_of(tree)}
    with engine.connect() as conn:
        for user in chosen:
            began = time.perf_counter()
            loaded = load_facts(conn, 1, user.key, list(trees.values()), NOW)
            times_ms.append((time.perf_counter() - began) * 1000)
            expected = facts_of(user)
            # load_facts reads only the custom attributes that the trees name.
            expected.custom = {k: v for k, v in expected.custom.items() if k in named}
            for part in ("standard", "analytics", "custom"):
                if getattr(loaded, part) != getattr(expected, part):
                    problems.append(f"{user.key}: {part} loaded {getattr(loaded, part)} != {getattr(expected, part)}")
            if sorted(loaded.history, key=lambda h: h[3]) != expected.history:
                problems.append(f"{user.key}: history loaded {loaded.history} != {expected.history}")
            for name, tree in trees.items():
                in_process = compile_tree(tree)(loaded, NOW) is True
                if in_process != (user.key in members[name]):
                    problems.append(f"{user.key}: {name}: in process {in_process}, SQL {not in_process}")
    return problems[:20], times_ms


# --- report -------------------------------------------------------------------------------------------


def results_table(runs: list[EngineRun], in_process: InProcess | None) -> str:
    segments = list(SEGMENTS)
    duck = next((r for r in runs if r.engine == "duckdb"), None)
    head = "| segment | count |"
    rule = "|---|---|"
    for run in runs:
        head += f" {run.label} p50 / p95 ms |"
        rule += "---|"
    if duck:
        head += " × DuckDB (p50) |"
        rule += "---|"
    if in_process:
        head += f" in process, evaluations/s ({in_process.users:,} users) |"
        rule += "---|"
    lines = [head, rule]
    for segment in segments:
        cells = {r.label: next(t for t in r.timings if t.segment == segment) for r in runs}
        counts = {t.count for t in cells.values()}
        count = f"{next(iter(counts)):,}" if len(counts) == 1 else " ≠ ".join(f"{c:,}" for c in sorted(counts))
        line = f"| {segment} | {count} |"
        for run in runs:
            t = cells[run.label]
            slow = run.engine != "duckdb" and t.p50 > TARGET_COUNT_MS
            mark = "**" if slow else ""
            line += f" {mark}{t.p50:,.1f}{mark} / {t.p95:,.1f} |"
        if duck:
            base = cells[duck.label].p50
            line += " " + ", ".join(f"{cells[r.label].p50 / base:,.1f}×" for r in runs if r is not duck) + " |"
        if in_process:
            line += f" {in_process.evaluations_per_s[segment]:,.0f} |"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=None, help=f"end users (default {FULL_USERS:,})")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_USERS:,} end users")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--engines", default="sqlite,postgresql,duckdb", help="comma-separated: sqlite, postgresql, duckdb")
    p.add_argument("--runs", type=int, default=20, help="timed runs per count, after one warm-up (default 20)")
    p.add_argument("--in-process-users", type=int, default=IN_PROCESS_USERS, help="users for the in-process timing")
    p.add_argument("--sample", type=int, default=20, help="users checked through load_facts (default 20)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--explain", action="store_true", help="print every query plan (plans of slow counts always are)")
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="SQL",
        help="EXPERIMENT: after the timings, run this statement (CREATE INDEX …, ANALYZE) in the benchmark\n"
        "database only, then time the counts again (repeatable; it must suit every SQL engine in --engines)",
    )
    p.add_argument("--no-saved", action="store_true", help="skip counting saved segments from their member lists")
    p.add_argument("--no-columns", action="store_true", help="skip the column-wise counts (segments/columns.py)")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for an idle machine per engine")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached CSV files")
    p.add_argument("--keep", action="store_true", help="keep the databases (their location is printed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 if a check failed (counts differ between engines or evaluators)."""
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows in a log file
    command = (
        ".venv/bin/python bench/segments.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    n = args.users or (QUICK_USERS if args.quick else FULL_USERS)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    info = ingest.machine_info()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, {info['memory']}; load average {loadavg()}")
    print(f"{n:,} end users, seed {args.seed}, now = {dt.datetime.fromtimestamp(NOW / 1000, dt.UTC):%Y-%m-%dT%H:%MZ}")
    trees = {name: parse(rules, CATALOG) for name, rules in SEGMENTS.items()}

    paths, generate_s = data_files(n, args.seed, args.regenerate)
    if generate_s is not None:
        print(f"generated the CSV export in {generate_s:.1f} s: {paths['end_users'].parent}")

    runs: list[EngineRun] = []
    experiments: list[EngineRun] = []
    failures: list[str] = []
    in_process: InProcess | None = None
    scratch = Path(tempfile.mkdtemp(prefix="usertrail-segments-"))
    sample_users = list(generate(min(n, args.in_process_users), args.seed))
    try:
        with contextlib.ExitStack() as stack:
            for engine_name in engines:
                if engine_name == "duckdb":
                    import duckdb

                    print(f"duckdb {duckdb.__version__}: building the wide table ...", flush=True)
                    con, build_s, rows = build_duckdb(paths)
                    stack.callback(con.close)
                    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]  # type: ignore[index]
                    ingest.wait_for_quiet(args.quiet_wait)
                    run = time_counts(
                        "duckdb", f"DuckDB {duckdb.__version__} ({threads} threads)", duck_counters(con, NOW),
                        args.runs, lambda: [],
                    )  # fmt: skip
                    run.load_s, run.rows = round(build_s, 1), {"users": rows}
                    runs.append(run)
                    continue
                postmaster = None
                if engine_name == "sqlite":
                    url = f"sqlite:///{scratch / 'segments.db'}"
                elif engine_name == "postgresql":
                    from usertrail.testing.postgres import PostgresUnavailable, TemporaryPostgres

                    try:
                        pg = TemporaryPostgres(PG_SETTINGS)
                    except PostgresUnavailable as exc:
                        print(f"skipping postgresql: {exc}")
                        continue
                    url = pg.start()
                    if args.keep:
                        print(f"    keeping the cluster: stop it with `pg_ctl -D {pg.data} stop` (as postgres)")
                    else:
                        stack.callback(pg.stop)
                    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
                else:
                    raise SystemExit(f"unknown engine {engine_name!r}")
                project_id = datagen.prepare_project(url, "bench")
                if project_id != 1:
                    raise RuntimeError("the benchmark's rows are for project 1: load into a fresh database")
                register(url, project_id)
                print(f"{engine_name}: loading {n:,} end users ...", flush=True)
                began = time.perf_counter()
                if engine_name == "sqlite":
                    rows = load_sqlite(url.removeprefix("sqlite:///"), n, args.seed, project_id)
                else:
                    rows = load_postgres(url, paths)
                load_s = time.perf_counter() - began
                print(f"    loaded in {load_s:.1f} s: {rows}", flush=True)

                from usertrail.store.database import create_engine

                engine = create_engine(url)
                stack.callback(engine.dispose)

                def db_pids(root: int | None = postmaster) -> list[int]:
                    return ingest.process_tree(root) if root else []

                ingest.wait_for_quiet(args.quiet_wait)
                conn = stack.enter_context(engine.connect())
                run = time_counts(engine_name, engine_name, sql_counters(conn, trees), args.runs, db_pids)
                run.load_s, run.rows = round(load_s, 1), rows
                for t in run.timings:
                    if args.explain or t.p50 > TARGET_COUNT_MS:
                        run.plans[t.segment] = explain(engine, trees[t.segment], analyse=True)
                        print(f"--- plan, {engine_name}, {t.segment} (p50 {t.p50:.0f} ms):\n{run.plans[t.segment]}")
                runs.append(run)
                if not args.no_saved:
                    saved = saved_counters(engine, trees)
                    ingest.wait_for_quiet(args.quiet_wait)
                    label = f"{engine_name}, saved"
                    runs.append(time_counts(engine_name, label, saved, args.runs, db_pids))
                if not args.no_columns:
                    column_run = time_columns(
                        engine, engine_name, trees, sample_users, args.runs, args.quiet_wait, db_pids
                    )
                    runs.append(column_run)
                in_sql = sql_members(engine, trees)
                problems, load_ms = check_sample(engine, sample_users, trees, in_sql, args.sample)
                run.load_facts_ms = load_ms
                print(
                    f"    load_facts for {len(load_ms)} users (all five trees): {problems or 'agrees'}; "
                    f"p50 {_pct(load_ms, 0.5):,.1f} ms, max {max(load_ms):,.1f} ms per user"
                )
                failures += [f"{engine_name}: {p}" for p in problems]
                if in_process is None:
                    print(f"in process: {len(sample_users):,} users ...", flush=True)
                    in_process, members = run_in_process(sample_users, trees)
                keys = [u.key for u in sample_users]
                for name in trees:
                    among = in_sql[name].intersection(keys)
                    if among != members[name]:
                        failures.append(
                            f"{engine_name}: {name}: SQL has {len(among):,} of the in-process users as members, "
                            f"in process {len(members[name]):,}; e.g. {sorted(among ^ members[name])[:5]}"
                        )
                if args.experiment:
                    with engine.begin() as ddl:
                        for statement in args.experiment:
                            began = time.perf_counter()
                            ddl.exec_driver_sql(statement)
                            print(f"    EXPERIMENT {statement}: {time.perf_counter() - began:.1f} s")
                    label = f"{engine_name} + experiment"
                    experiment = time_counts(engine_name, label, sql_counters(conn, trees), args.runs, db_pids)
                    experiment.notes = list(args.experiment)
                    for t in experiment.timings:
                        experiment.plans[t.segment] = explain(engine, trees[t.segment], analyse=True)
                        if args.explain:
                            print(f"--- plan, {label}, {t.segment}:\n{experiment.plans[t.segment]}")
                    experiments.append(experiment)
                if args.keep:
                    print(f"    kept: {url}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    for segment in SEGMENTS:
        counts = {r.label: next(t.count for t in r.timings if t.segment == segment) for r in runs}
        if len(set(counts.values())) > 1:
            failures.append(f"{segment}: counts differ: {counts}")
        # When the in-process users are all the users, their member count is the count too.
        whole = in_process is not None and len(sample_users) == n
        if whole and counts and in_process.members[segment] != next(iter(counts.values())):  # type: ignore[union-attr]
            failures.append(f"{segment}: in process {in_process.members[segment]:,} members, counts {counts}")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(results_table(runs, in_process))
    if experiments:
        print()
        print("EXPERIMENT (indexes created in the benchmark database only):", "; ".join(args.experiment))
        print(results_table(experiments, None))
    print()
    for run in runs + experiments:
        print(
            f"{run.label}: load {run.load_s:,.1f} s, rows {run.rows}; load average {run.loadavg_before} -> "
            f"{run.loadavg_after}; CPU while timing: ours {run.own_cpu}, others {run.other_cpu}"
            + (f"; load_facts p50 {_pct(run.load_facts_ms, 0.5):,.1f} ms per user" if run.load_facts_ms else "")
        )
        for note in run.notes:
            print(f"    {note}")
    print(f"peak RSS of this process: {peak_mb:,.0f} MB")
    if in_process:
        slow = [s for s, v in in_process.evaluations_per_s.items() if v < TARGET_EVALS_PER_S]
        verdict = "missed by " + ", ".join(slow) if slow else "met"
        print(f"in process: target ≥ {TARGET_EVALS_PER_S:,} evaluations/s: {verdict}")
    missed = [
        f"{r.label}: {t.segment} ({t.p50:.0f} ms)" for r in runs if r.engine != "duckdb" for t in r.timings
        if t.p50 > TARGET_COUNT_MS
    ]  # fmt: skip
    print(f"counts: target ≤ {TARGET_COUNT_MS:.0f} ms (p50): {'missed by ' + '; '.join(missed) if missed else 'met'}")
    for failure in failures:
        print(f"CHECK FAILED: {failure}")
    print("checks: " + ("FAILED" if failures else "counts equal on every engine and in process"))

    if args.json:
        payload = {
            "benchmark": "segments",
            "date": started,
            "command": command,
            "machine": info,
            "users": n,
            "seed": args.seed,
            "now": NOW,
            "segments": SEGMENTS,
            "duckdb_sql": duckdb_counts_sql(NOW),
            "runs": [
                {**r.__dict__, "timings": [{**t.__dict__, "p50": t.p50, "p95": t.p95} for t in r.timings]}
                for r in runs + experiments
            ],
            "in_process": in_process.__dict__ if in_process else None,
            "peak_rss_mb": round(peak_mb),
            "failures": failures,
            "table": results_table(runs, in_process),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"JSON: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
