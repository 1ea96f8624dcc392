"""Set-based sessionization and End User Object aggregates, in SQL on SQLite and PostgreSQL.

One statement sessionizes many end users at once: window functions over (user, event time,
event id) find where a gap of 30 minutes or more starts a new run of activity, and a GROUP BY
per run computes the session's columns. A run shorter than 12 hours is exactly one session. The
few runs the SQL cannot finish exactly go through the Python rule in `rules.py` instead: runs of
12 hours or more (the cap is iterative), runs with more than two client session ids (their
order of first appearance) and runs whose events carry different analytics properties (merged
in event order). The End User Object row comes from the closed, non-empty sessions the processor
has just written or read (`profile_row`, by the definitions of `profiles.standard`).

"Latest event that has a value" is a `max()` over text that starts with the event's rank in the
window, zero-padded, followed by the values, each NULL-flagged and length-prefixed: exact on both
engines (compared byte-wise on PostgreSQL) and one pass over the rows.
"""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.profiles.standard import SessionFacts, compute
from usertrail.sessions.rules import (
    IDLE_MS,
    MAX_SESSION_MS,
    PAGE_TYPES,
    PASSIVE_TYPES,
    EventPoint,
    Session,
    sessionize,
)
from usertrail.sessions.table import SessionTable

# Column order of a session row as the processor and the rebuild write it (insert_rows).
SESSION_COLUMNS = (
    "project_id", "user_key", "start_ts", "end_ts", "event_count", "interaction_count", "page_views", "is_empty",
    "status", "closed_at", "client_session_ids", "entry_path", "exit_path", "country", "region", "city", "browser",
    "browser_version", "os", "device_type", "user_vars",
)  # fmt: skip
PROFILE_COLUMNS = (
    "project_id", "user_key", "first_seen", "last_seen", "total_sessions", "avg_session_duration_ms",
    "total_session_duration_ms", "avg_time_between_sessions_ms", "country", "region", "city", "browser_name",
    "browser_version", "analytics_properties", "updated_at",
)  # fmt: skip
EVENT_POINT_COLUMNS = (
    "ts", "event_id", "type", "session_hint", "url_path", "country", "region", "city", "browser", "browser_version",
    "os", "device_type", "user_vars",
)  # fmt: skip

# Temporary tables: the keys (and from which time on) a statement works on, and the runs found.
SCOPE = "_ut_session_scope"
RUNS = "_ut_session_runs"
AGGREGATES = "_ut_session_aggregates"
TS_WIDTH = 16


def _quote(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values))


def _pad(dialect: str, expr: str, width: int) -> str:
    if dialect == "postgresql":
        return f"lpad(CAST({expr} AS TEXT), {width}, '0')"
    return f"printf('%0{width}d', {expr})"


def _pack(dialect: str, columns: Sequence[str], order: str = "e.ts", tiebreak: str = "e.event_id") -> str:
    """Text that sorts by (`order`, event id) and carries `columns` exactly.

    Layout: the zero-padded time, the event id, a \\x01 separator, then each value as a NULL flag
    ("N") or "V", its length (6 digits) and the text. Event ids are hex digests
    (collect.pipeline.assign_event_id), so the separator is never part of one.
    """
    sep = "chr(1)" if dialect == "postgresql" else "char(1)"
    parts = [_pad(dialect, order, TS_WIDTH), tiebreak, sep]
    for c in columns:
        parts.append(f"(CASE WHEN {c} IS NULL THEN 'N' ELSE 'V' || {_pad(dialect, f'length({c})', 6)} || {c} END)")
    text = " || ".join(parts)
    return f'({text}) COLLATE "C"' if dialect == "postgresql" else f"({text})"


def _unpack(text: str | None, count: int) -> tuple[tuple[int, str], list[str | None]] | None:
    """((time, event id), values) from `_pack` text, or None."""
    if text is None:
        return None
    cut = text.index("\x01", TS_WIDTH)
    values: list[str | None] = []
    i = cut + 1
    for _ in range(count):
        if text[i] == "N":
            values.append(None)
            i += 1
        else:
            n = int(text[i + 1 : i + 7])
            values.append(text[i + 7 : i + 7 + n])
            i += 7 + n
    return (int(text[:TS_WIDTH]), text[TS_WIDTH:cut]), values


def _values(text: str | None, count: int) -> list[str | None]:
    unpacked = _unpack(text, count)
    return unpacked[1] if unpacked else [None] * count


def fill_scope(conn: sa.Connection, scope: dict[str, int]) -> None:
    """Name the keys (and each one's first event time) the next statements work on."""
    integer = "BIGINT" if conn.dialect.name == "postgresql" else "INTEGER"
    _temp_table(conn, SCOPE, f"user_key TEXT PRIMARY KEY, since {integer} NOT NULL")
    if not scope:
        return
    if conn.dialect.name == "postgresql":
        # One statement with the keys as arrays: a row per statement cost the server a parse and a run each.
        sql = f"INSERT INTO {SCOPE} (user_key, since) SELECT * FROM unnest(%s::text[], %s::bigint[])"
        conn.exec_driver_sql(sql, (list(scope), list(scope.values())))
    else:
        conn.exec_driver_sql(f"INSERT INTO {SCOPE} (user_key, since) VALUES (?, ?)", list(scope.items()))


def _temp_table(conn: sa.Connection, name: str, columns: str) -> None:
    """An empty temporary table of this connection (PostgreSQL also empties it at commit)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS")
    else:
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})")
    conn.exec_driver_sql(f"DELETE FROM {name}")


def _starts_sql(dialect: str) -> str:
    """Where runs of activity start (a gap of 30 minutes or more), and equal times inside a key.

    Each event looks at the one before it (LAG in time order, which the (project, user, time)
    index delivers without sorting and without reading the table). The scope's keys drive the join
    (CROSS JOIN fixes that order on SQLite).
    """
    p = "%s" if dialect == "postgresql" else "?"
    in_scope = f"e.project_id = {p} AND e.user_key = s.user_key AND e.ts >= s.since"
    source = f"{SCOPE} s {_events_of(dialect, ('user_key', 'ts'), in_scope, cross=True)}"
    return f"""
SELECT k, ts, CASE WHEN gap IS NULL OR gap >= {IDLE_MS} THEN 1 ELSE 0 END AS is_start FROM (
    SELECT e.user_key AS k, e.ts, e.ts - lag(e.ts) OVER (PARTITION BY e.user_key ORDER BY e.ts) AS gap
    FROM {source}
) AS marked
WHERE gap IS NULL OR gap >= {IDLE_MS} OR gap = 0
ORDER BY k, ts, is_start DESC
"""


_RUN_EVENTS = "e.project_id = {p} AND e.user_key = r.k AND e.ts >= r.start_ts AND e.ts < r.next_ts"
_AGGREGATED = (
    "ts", "type", "session_hint", "user_vars", "anon_id", "url_path", "country", "browser", "os", "device_type"
)  # fmt: skip


def _events_of(dialect: str, columns: Sequence[str], condition: str, cross: bool = False) -> str:
    """The join of a driving temporary table (scope, runs, aggregates) to its keys' `events` (alias `e`).

    PostgreSQL gets a LATERAL subquery fenced by `OFFSET 0`: one index range of
    (project, user, time) per row of the small table. Left to plan it freely, PostgreSQL estimated a
    project that appeared since the last ANALYZE at one event, scanned all of its events once per row of
    the temporary table, and a batch of 1,000 users ran for minutes under steady ingest
    (docs/benchmarks.md). SQLite gets CROSS JOIN (`cross`) where that keeps `events` out of the outer loop.
    """
    if dialect == "postgresql":
        return f"CROSS JOIN LATERAL (SELECT {', '.join(columns)} FROM events e WHERE {condition} OFFSET 0) AS e"
    return f"{'CROSS JOIN' if cross else 'JOIN'} events e ON {condition}"


# The timestamps of the events a session's columns come from (one event per time: runs with two
# events at the same time go to the Python rule, which breaks the tie by event id).
_AT = ("hint_at", "entry_at", "exit_at", "loc_at", "brw_at", "os_at", "device_at", "anon_at")


def _aggregates_sql(dialect: str) -> str:
    """One row per run: counts, and the time of the first or latest event that has each value."""
    p = "%s" if dialect == "postgresql" else "?"
    return f"""
INSERT INTO {AGGREGATES}
SELECT r.id, r.k, r.start_ts, max(e.ts), count(*),
       sum(CASE WHEN e.type IN ({_quote(PASSIVE_TYPES | PAGE_TYPES)}) THEN 0 ELSE 1 END),
       sum(CASE WHEN e.type IN ({_quote(PAGE_TYPES)}) THEN 1 ELSE 0 END),
       min(CASE WHEN e.session_hint <> '' THEN e.session_hint END),
       max(CASE WHEN e.session_hint <> '' THEN e.session_hint END),
       min(CASE WHEN e.user_vars <> '' THEN e.user_vars END),
       max(CASE WHEN e.user_vars <> '' THEN e.user_vars END),
       min(CASE WHEN e.anon_id <> '' THEN e.anon_id END),
       max(CASE WHEN e.anon_id <> '' THEN e.anon_id END),
       min(CASE WHEN e.session_hint <> '' THEN e.ts END),
       min(CASE WHEN e.url_path <> '' THEN e.ts END),
       max(CASE WHEN e.url_path <> '' THEN e.ts END),
       max(CASE WHEN e.country <> '' THEN e.ts END),
       max(CASE WHEN e.browser <> '' THEN e.ts END),
       max(CASE WHEN e.os <> '' THEN e.ts END),
       max(CASE WHEN e.device_type <> '' THEN e.ts END),
       min(CASE WHEN e.anon_id <> '' THEN e.ts END)
FROM {RUNS} r {_events_of(dialect, _AGGREGATED, _RUN_EVENTS.format(p=p))}
WHERE r.python = 0
GROUP BY r.id, r.k, r.start_ts
"""


def _values_sql(dialect: str) -> str:
    """The events the columns come from: a few per run, each found through the index.

    CROSS JOIN keeps SQLite from putting `events` in the outer loop (PostgreSQL plans it freely).
    """
    p = "%s" if dialect == "postgresql" else "?"
    times = ", ".join(f"a.{c}" for c in _AT)
    # PostgreSQL uses the index for `= ANY(array)` (not for an IN list of columns).
    match = f"e.ts = ANY(ARRAY[{times}])" if dialect == "postgresql" else f"e.ts IN ({times})"
    columns = (
        "ts", "event_id", "session_hint", "url_path", "country", "region", "city", "browser", "browser_version", "os",
        "device_type", "anon_id",
    )  # fmt: skip
    return f"""
SELECT a.id, {", ".join(f"e.{c}" for c in columns)}
FROM {AGGREGATES} a {_events_of(dialect, columns, f"e.project_id = {p} AND e.user_key = a.k AND {match}", True)}
WHERE a.end_ts - a.start_ts < {MAX_SESSION_MS} AND a.hints_low IS NOT DISTINCT FROM a.hints_high
  AND a.vars_low IS NOT DISTINCT FROM a.vars_high AND a.anon_low IS NOT DISTINCT FROM a.anon_high
"""


def _fallback_sql(dialect: str) -> str:
    p = "%s" if dialect == "postgresql" else "?"
    columns = ", ".join(f"e.{c}" for c in EVENT_POINT_COLUMNS)
    joined = _events_of(dialect, ("anon_id", *EVENT_POINT_COLUMNS), _RUN_EVENTS.format(p=p))
    return f"""
SELECT r.id, r.k, e.anon_id, {columns}
FROM {RUNS} r {joined}
WHERE r.python = 1
ORDER BY r.id
"""


def _links_sql(dialect: str) -> str:
    """The scope's events from each key's `since` on that carry a client session id or an anonymous id."""
    p = "%s" if dialect == "postgresql" else "?"
    condition = (
        f"e.project_id = {p} AND e.user_key = s.user_key AND e.ts >= s.since"
        " AND (e.session_hint <> '' OR e.anon_id <> '')"
    )
    columns = ("user_key", "ts", "event_id", "session_hint", "anon_id")
    joined = _events_of(dialect, columns, condition, cross=True)
    return f"SELECT {', '.join(f'e.{c}' for c in columns)} FROM {SCOPE} s {joined}"


_SQL: dict[tuple[str, str], str] = {}


def _sql(dialect: str, name: str) -> str:
    sql = _SQL.get((dialect, name))
    if sql is None:
        build = {
            "starts": _starts_sql,
            "aggregates": _aggregates_sql,
            "values": _values_sql,
            "fallback": _fallback_sql,
            "links": _links_sql,
        }
        sql = _SQL[(dialect, name)] = build[name](dialect)
    return sql


@dataclass
class KeySessions:
    """What one set-based pass found: sessions by key, and the links its events carry."""

    sessions: dict[str, list[Session]] = field(default_factory=lambda: defaultdict(list))
    # (session hint, key) and (anonymous id, key) -> first (time, event id) seen
    hints: list[tuple[str, str, tuple[int, str]]] = field(default_factory=list)
    anon_ids: list[tuple[str, str, tuple[int, str]]] = field(default_factory=list)
    # The column-wise pass only: sessions of the keys it finished in numpy, as columns (not in `sessions`).
    table: SessionTable | None = None


def sessionize_keys(conn: sa.Connection, project_id: int) -> KeySessions:
    """Sessions of every key in scope (`fill_scope`: from each key's `since` on); the session loop's
    pass (the full rebuild reads the whole project column-wise instead, `columnar.py`).

    Four statements, whatever the number of keys: where runs of activity start (a window
    function), one GROUP BY row per run, the few events each run's columns come from, and the
    events of the runs the SQL does not finish, which the Python rule sessionizes: runs of 12
    hours or more, runs with two events at the same time, and runs with several client session
    ids, anonymous ids or sets of analytics properties (their order of appearance matters).
    """
    dialect = conn.dialect.name
    integer = "BIGINT" if dialect == "postgresql" else "INTEGER"
    marker = "%s" if dialect == "postgresql" else "?"
    _temp_table(
        conn, RUNS, f"id {integer} PRIMARY KEY, k TEXT NOT NULL, start_ts {integer}, next_ts {integer}, python INTEGER"
    )
    _temp_table(
        conn,
        AGGREGATES,
        f"id {integer} PRIMARY KEY, k TEXT, start_ts {integer}, end_ts {integer}, events {integer}, "
        f"interactions {integer}, page_views {integer}, hints_low TEXT, hints_high TEXT, vars_low TEXT, "
        f"vars_high TEXT, anon_low TEXT, anon_high TEXT, " + ", ".join(f"{c} {integer}" for c in _AT),
    )
    found = KeySessions()
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(_sql(dialect, "starts"), (project_id,))
        runs = _runs(cursor.fetchall())
        if dialect == "postgresql":
            with cursor.copy(f"COPY {RUNS} (id, k, start_ts, next_ts, python) FROM STDIN") as copy:
                for run in runs:
                    copy.write_row(run)
            # The GROUP BY hashes one row per run: in memory rather than spilled to disk.
            cursor.execute("SET LOCAL work_mem = '256MB'")
        else:
            cursor.executemany(f"INSERT INTO {RUNS} (id, k, start_ts, next_ts, python) VALUES (?, ?, ?, ?, ?)", runs)
        cursor.execute(_sql(dialect, "aggregates"), (project_id,))
        cursor.execute(f"SELECT * FROM {AGGREGATES}")
        aggregates = cursor.fetchall()
        cursor.execute(_sql(dialect, "values"), (project_id,))
        at: dict[int, dict[int, tuple]] = defaultdict(dict)
        for row in cursor.fetchall():
            at[row[0]][row[1]] = row
        python = [(row[0],) for row in aggregates if not _from_aggregates(row, at.get(row[0], {}), found)]
        if python:
            cursor.executemany(f"UPDATE {RUNS} SET python = 1 WHERE id = {marker}", python)
        cursor.execute(_sql(dialect, "fallback"), (project_id,))
        for _, run in itertools.groupby(cursor.fetchall(), key=operator.itemgetter(0)):
            rows = list(run)
            key = rows[0][1]
            points = [EventPoint(*r[3:]) for r in rows]
            found.sessions[key].extend(sessionize(points))
            for r, point in zip(rows, points, strict=True):
                if point.session_hint:
                    found.hints.append((point.session_hint, key, (point.ts, point.event_id)))
                if r[2]:
                    found.anon_ids.append((r[2], key, (point.ts, point.event_id)))
    finally:
        cursor.close()
    for sessions in found.sessions.values():
        sessions.sort(key=operator.attrgetter("start"))
    return found


def _runs(starts: list[tuple[str, int, int]]) -> list[tuple]:
    """(id, key, start, next start, needs Python) from the start and tie rows in (key, time) order."""
    runs: list[list] = []
    for key, ts, is_start in starts:
        if is_start:
            if runs and runs[-1][1] == key:
                runs[-1][3] = ts
            runs.append([len(runs), key, ts, _FOREVER, 0])
        else:
            runs[-1][4] = 1  # two events at the same time: the event id decides their order
    return [tuple(r) for r in runs]


_FOREVER = 2**62


def _from_aggregates(row: tuple, at: dict[int, tuple], found: KeySessions) -> bool:
    """Add the run's session (and links); False if the run needs the Python rule."""
    (
        _, key, start, end, count, interactions, page_views, hints_low, hints_high, vars_low, vars_high, anon_low,
        anon_high, hint_at, entry_at, exit_at, loc_at, brw_at, os_at, device_at, anon_at,
    ) = row  # fmt: skip
    if end - start >= MAX_SESSION_MS or hints_low != hints_high or vars_low != vars_high or anon_low != anon_high:
        return False
    hints = []
    if hints_low is not None:
        hints.append(hints_low)
        found.hints.append((hints_low, key, (hint_at, at[hint_at][2])))
    if anon_low is not None:
        found.anon_ids.append((anon_low, key, (anon_at, at[anon_at][2])))
    loc = at[loc_at] if loc_at is not None else _NONE
    brw = at[brw_at] if brw_at is not None else _NONE
    found.sessions[key].append(
        Session(
            start=start,
            end=end,
            events=count,
            interactions=int(interactions),
            page_views=int(page_views),
            hints=hints,
            entry_path=at[entry_at][4] if entry_at is not None else None,
            exit_path=at[exit_at][4] if exit_at is not None else None,
            country=loc[5],
            region=loc[6],
            city=loc[7],
            browser=brw[8],
            browser_version=brw[9],
            os=at[os_at][10] if os_at is not None else None,
            device_type=at[device_at][11] if device_at is not None else None,
            user_vars=msgspec.json.decode(vars_low) if vars_low else {},
        )
    )
    return True


_NONE = (None,) * 13


def scope_link_events(conn: sa.Connection, project_id: int) -> list[tuple]:
    """(user_key, ts, event_id, session_hint, anon_id) of the scope's events that may add identity links."""
    return conn.exec_driver_sql(_sql(conn.dialect.name, "links"), (project_id,)).all()


def fetch_points(conn: sa.Connection, project_id: int, keys: Sequence[str], since: int, until: int) -> list[EventPoint]:
    """Events of these keys in [since, until], as the Python rule reads them (raw driver)."""
    m = "%s" if conn.dialect.name == "postgresql" else "?"
    sql = (
        f"SELECT {', '.join(EVENT_POINT_COLUMNS)} FROM events "
        f"WHERE project_id = {m} AND user_key IN ({', '.join([m] * len(keys))}) AND ts >= {m} AND ts <= {m}"
    )
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, (project_id, *keys, since, until))
        return [EventPoint(*row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def session_row(project_id: int, owner: str, s: Session, status: str, closed_at: int | None) -> tuple:
    """A `sessions` row tuple in SESSION_COLUMNS order."""
    return (
        project_id,
        owner,
        s.start,
        s.end,
        s.events,
        s.interactions,
        s.page_views,
        s.is_empty,
        status,
        closed_at,
        msgspec.json.encode(s.hints).decode(),
        s.entry_path,
        s.exit_path,
        s.country,
        s.region,
        s.city,
        s.browser,
        s.browser_version,
        s.os,
        s.device_type,
        msgspec.json.encode(s.user_vars).decode() if s.user_vars else None,
    )


# --- End User Objects ----------------------------------------------------------------------------


def profile_row(project_id: int, key: str, closed: Sequence[SessionFacts], now: int) -> tuple | None:
    """The End User Object row (PROFILE_COLUMNS order) of one user from their closed, non-empty sessions, by
    the definitions of `profiles.standard.compute`; None before the first one closed (no object)."""
    attributes = compute(closed)
    if attributes is None:
        return None
    properties = attributes.analytics_properties
    return (
        project_id,
        key,
        attributes.first_seen,
        attributes.last_seen,
        attributes.total_sessions,
        attributes.average_session_duration,
        attributes.total_session_duration,
        attributes.average_time_between_sessions,
        attributes.country,
        attributes.region,
        attributes.city,
        attributes.browser_name,
        attributes.browser_version,
        msgspec.json.encode(properties).decode() if properties else None,
        now,
    )
