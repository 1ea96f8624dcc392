"""The full rebuild's sessionization, column-wise: one read of the project's events in storage order, then numpy.

The session loop's set-based statements (`derive.sessionize_keys`) reach each key's events through the
(project, user, time) index, one table read per event in random order: at 5M events that was most of
the rebuild. The rebuild reads every event anyway, so here it reads them once, sequentially, and only
the columns the rule needs: the time, the key, the client session id and the event's traits (its kind,
and one bit per value column saying whether the event has a value there: sessions/traits.py).
Each chunk of rows comes back as a few long strings (`group_concat` / `string_agg`) rather than one
driver row per event, which costs the driver a Python object per value.

numpy then does what the per-run GROUP BY did: keys and client session ids become integer codes, a
sort by (key, time) lines the events up, a gap of 30 minutes or more starts a run, and reductions
over each run (`np.minimum.reduceat` …) give its counts and the positions of the first or latest
event with each value. A run's client session ids are its distinct ones in order of first appearance
(one sort of the (run, id) pairs). Only the picked events' values are then read, by their storage
address (SQLite's rowid, PostgreSQL's ctid: all reads of the rebuild share one snapshot, so an address
found by the scan still holds the same row).

The runs numpy does not finish go through the Python rule, as the session loop's runs do: runs of 12
hours or more, runs with two events at the same time, and runs with several anonymous ids or sets of
analytics properties (merged in order). Their events are read by address and handed to `rules.sessionize`.
Client session ids and the other strings are only compared for equality (one code per distinct value),
so no collation is involved.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import itertools
import operator
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
import numpy as np
import psycopg
import sqlalchemy as sa

from usertrail.sessions.derive import EVENT_POINT_COLUMNS, KeySessions
from usertrail.sessions.rules import IDLE_MS, MAX_SESSION_MS, EventPoint, Session, sessionize
from usertrail.sessions.table import SessionTable
from usertrail.sessions.traits import (
    BROWSER,
    COUNTRY,
    DEVICE,
    FLAGS,
    INTERACTION,
    KIND_SHIFT,
    LINKS,
    OS,
    PAGE_VIEW,
    STORED_OR_COMPUTED,
    URL,
)

SEP = "\x01"
# Rows per read: SQLite rowids, PostgreSQL heap blocks.
SQLITE_ROWIDS = 1 << 16
PG_BLOCKS = 4096
# Below this share of the table's rows, a project's events are read through the index, not by a scan.
SCAN_SHARE = 0.25
# Storage addresses per look-up statement.
LOOKUP = 50_000
# Parts of the keys the pass finishes on two threads (more parts measured no faster at 5M events).
PARTS = 2


class _Codes:
    """Distinct strings -> dense integer codes, in order of first appearance (a C-speed dict lookup per value)."""

    def __init__(self) -> None:
        self.index: defaultdict[str, int] = defaultdict()
        self.index.default_factory = self.index.__len__

    def encode(self, values: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self.index.__getitem__, values), np.int64, len(values))

    def values(self) -> list[str]:
        return list(self.index)


class _Events:
    """The project's events as columns, in storage order."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)
        self.keys, self.hints = _Codes(), _Codes()

    def add(self, loc: np.ndarray, ts: np.ndarray, traits_: np.ndarray, keys, hints) -> None:
        n = len(loc)
        if not (len(ts) == len(traits_) == len(keys) == len(hints) == n):
            raise _Unsplittable
        for name, values in (("loc", loc), ("ts", ts), ("traits", traits_)):
            self.parts[name].append(values)
        self.parts["key"].append(self.keys.encode(keys))
        self.parts["hint"].append(self.hints.encode(hints))

    def column(self, name: str) -> np.ndarray:
        parts = self.parts.get(name)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


class _Unsplittable(Exception):
    """A value held the separator: the chunk is read again with its strings hex-encoded."""


class _Reader:
    """Runs the pass's statements on worker threads, one per connection, ahead of the caller: the database
    computes the next chunks (sqlite3 and psycopg release the GIL while it works) while this thread decodes
    the last one. The statements of a sequence (`ones`, `alls`) go to the connections in turn; `one` and a
    sequence's first statement run on the first connection. Each connection is used by its own thread
    only, and answers come back in the order they were asked for. The connections must share one snapshot
    (`_cursors`)."""

    def __init__(self, cursors: Sequence, binary: bool) -> None:
        self.cursors = list(cursors)
        self.options = {"binary": True} if binary else {}
        self.pools = [
            ThreadPoolExecutor(1, thread_name_prefix=f"usertrail-rebuild-read{i}") for i in range(len(self.cursors))
        ]

    def one(self, sql: str, params: tuple) -> tuple:
        """The statement's first row."""
        return next(self.ones(sql, (params,)))

    def ones(self, sql: str, each: Iterable[tuple]) -> Iterator[tuple]:
        """The statement's first row for each parameter tuple, the next ones already being computed."""
        return self._ahead(lambda cursor, params: cursor.execute(sql, params, **self.options).fetchone(), each)

    def alls(self, sql: str, each: Iterable[tuple]) -> Iterator[list[tuple]]:
        """The statement's rows for each parameter tuple, the next ones already being fetched."""
        return self._ahead(lambda cursor, params: cursor.execute(sql, params, **self.options).fetchall(), each)

    def _ahead(self, run: Callable[[object, tuple], object], each: Iterable[tuple]) -> Iterator:
        pending: collections.deque[Future] = collections.deque()
        workers = len(self.pools)
        for i, params in enumerate(each):
            pending.append(self.pools[i % workers].submit(run, self.cursors[i % workers], params))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown()


@contextlib.contextmanager
def _cursors(conn: sa.Connection) -> Iterator[list]:
    """The cursors the pass reads through, all seeing what `conn` sees.

    PostgreSQL: `conn`'s and a second connection's, which imports `conn`'s snapshot (`conn` is REPEATABLE
    READ): the scan and the look-ups run on two backends at once (5M events: the rebuild 27-30 s -> 25-27 s).
    SQLite: `conn`'s alone. Two connections of one process do not read faster than one there (the scan's
    statements on two threads: 5.2 -> 4.6 s, with 40% more CPU; the look-ups of 1.2M picked events: 2.5 ->
    3.8 s), and sharing a snapshot would take a moment of the write lock.
    """
    main = conn.connection.dbapi_connection.cursor()
    if conn.dialect.name != "postgresql":
        try:
            yield [main]
        finally:
            main.close()
        return
    snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
    other = conn.engine.raw_connection()
    driver = other.driver_connection
    try:
        driver.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        driver.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        second = driver.cursor()
        try:
            yield [main, second]
        finally:
            main.close()
            second.close()
    finally:
        driver.rollback()
        driver.isolation_level = None
        other.close()


_SNAPSHOT_ID = re.compile(r"[0-9A-F-]+")


# Whether the project is the only one with events: two index probes (`<>` would read every row).
_ALONE = " AND ".join(f"NOT EXISTS (SELECT 1 FROM events WHERE project_id {op} %s)" for op in "<>")


# --- reading: SQLite ---------------------------------------------------------------------------------


_SQLITE_HINT = "ifnull(session_hint, '')"


def _sqlite_scan_sql(source: str, where: str, hexed: bool) -> str:
    def text(expr: str) -> str:
        return f"group_concat(hex({expr}), ',')" if hexed else f"group_concat({expr}, char(1))"

    return (
        f"SELECT group_concat(rowid), group_concat(ts), group_concat({STORED_OR_COMPUTED}), "
        f"{text('user_key')}, {text(_SQLITE_HINT)} FROM {source} WHERE {where}"
    )


def _sqlite_chunk(row: tuple, rehex: Callable[[], tuple], events: _Events) -> None:
    """Add one range's row of the scan; `rehex` reads the range again with its strings hex-encoded."""
    if row[0] is None:
        return
    loc, ts, traits_ = (np.fromstring(text, np.int64, sep=",") for text in row[:3])
    try:
        events.add(loc, ts, traits_, *(text.split(SEP) for text in row[3:]))
    except _Unsplittable:
        row = rehex()
        events.add(loc, ts, traits_, *([bytes.fromhex(h).decode() for h in text.split(",")] for text in row[3:]))


def _read_sqlite(reader: _Reader, project_id: int) -> _Events:
    events = _Events()
    if reader.one("SELECT " + _ALONE.replace("%s", "?"), (project_id, project_id))[0]:
        # No other project's events (two index probes): read the whole table, without counting it first.
        low, high = reader.one("SELECT min(rowid), max(rowid) FROM events", ())
        count = 0 if high is None else high - low + 1
    else:
        low, high, count = reader.one(
            "SELECT min(rowid), max(rowid), count(*) FROM events WHERE project_id = ?", (project_id,)
        )
    if not count:
        return events
    if count >= SCAN_SHARE * (high - low + 1):
        # Most rows of the range are the project's: read the table in rowid order, a range at a time.
        where = "rowid BETWEEN ? AND ? AND project_id = ?"
        plain, hexed = (_sqlite_scan_sql("events NOT INDEXED", where, h) for h in (False, True))
        ranges = [(start, start + SQLITE_ROWIDS - 1, project_id) for start in range(low, high + 1, SQLITE_ROWIDS)]
    else:
        plain, hexed = (_sqlite_scan_sql("events", "project_id = ?", h) for h in (False, True))
        ranges = [(project_id,)]
    for params, row in zip(ranges, reader.ones(plain, ranges), strict=True):
        _sqlite_chunk(row, lambda params=params: reader.one(hexed, params), events)
    return events


def _sqlite_rows(reader: _Reader, columns: Sequence[str], locs: np.ndarray) -> Iterator[tuple]:
    """(rowid, *columns) of the events at these rowids."""
    selected = ", ".join(f"e.{c}" for c in columns)
    sql = f"SELECT e.rowid, {selected} FROM json_each(?) AS j CROSS JOIN events AS e ON e.rowid = j.value"
    chunks = (("[" + ",".join(map(str, locs[i : i + LOOKUP].tolist())) + "]",) for i in range(0, len(locs), LOOKUP))
    for rows in reader.alls(sql, chunks):
        yield from rows


def _sqlite_values_sql(hexed: bool) -> str:
    return (
        "SELECT group_concat(e.rowid), "
        + _values_select(hexed, "group_concat", "char")
        + (" FROM json_each(?) AS j CROSS JOIN events AS e ON e.rowid = j.value")
    )


def _sqlite_values(reader: _Reader, chunks: Iterable[np.ndarray], hexed: bool) -> Iterator[tuple[np.ndarray, list]]:
    texts = (("[" + ",".join(map(str, locs.tolist())) + "]",) for locs in chunks)
    for row in reader.ones(_sqlite_values_sql(hexed), texts):
        yield np.fromstring(row[0], np.int64, sep=","), list(row[1:])


# --- reading: PostgreSQL -----------------------------------------------------------------------------

_PG_FIXED = np.dtype([("block", ">u4"), ("offset", ">u2"), ("ts", ">i8"), ("traits", ">i2")])
_PG_LOC = "((ctid::text::point)[0]::bigint * 65536 + (ctid::text::point)[1]::bigint)"


_PG_HINT = "coalesce(session_hint, '')"


def _pg_scan_sql(where: str, hexed: bool) -> str:
    def text(expr: str) -> str:
        return f"string_agg(encode(textsend({expr}), 'hex'), ',')" if hexed else f"string_agg({expr}, chr(1))"

    return (
        f"SELECT string_agg(tidsend(ctid) || int8send(ts) || int2send(CAST({STORED_OR_COMPUTED} AS SMALLINT)), "
        f"''::bytea), {text('user_key')}, {text(_PG_HINT)} "
        f"FROM events WHERE {where}"
    )


def _pg_chunk(row: tuple, rehex: Callable[[], tuple], events: _Events) -> None:
    """Add one range's row of the scan; `rehex` reads the range again with its strings hex-encoded."""
    if row[0] is None:
        return
    fixed = np.frombuffer(row[0], _PG_FIXED)
    loc = fixed["block"].astype(np.int64) * 65536 + fixed["offset"]
    ts, traits_ = (fixed[name].astype(np.int64) for name in ("ts", "traits"))
    try:
        events.add(loc, ts, traits_, *(text.split(SEP) for text in row[1:]))
    except _Unsplittable:
        row = rehex()
        events.add(loc, ts, traits_, *([bytes.fromhex(h).decode() for h in text.split(",")] for text in row[1:]))


def _read_postgresql(reader: _Reader, project_id: int) -> _Events:
    events = _Events()
    alone, blocks = reader.one(
        f"SELECT {_ALONE}, pg_relation_size('events') / current_setting('block_size')::int", (project_id, project_id)
    )
    if alone:
        # No other project's events (two index probes): read the whole table, without counting it first.
        count, rows = blocks, 0
    else:
        count, rows = reader.one(
            "SELECT (SELECT count(*) FROM events WHERE project_id = %s), "
            "(SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass)",
            (project_id,),
        )
    if not count:
        return events
    scan = count >= SCAN_SHARE * rows
    if scan:
        # A TID range scan per chunk of heap blocks: the table in storage order.
        where = "project_id = %s AND ctid >= %s::tid AND ctid < %s::tid"
        plain, hexed = (_pg_scan_sql(where, h) for h in (False, True))
        ranges = [(project_id, f"({start},0)", f"({start + PG_BLOCKS},0)") for start in range(0, blocks + 1, PG_BLOCKS)]
    else:
        # A bitmap scan reads the project's blocks in storage order (an index scan would read them in key order).
        reader.one("SELECT set_config('enable_indexscan', 'off', true)", ())
        plain, hexed = (_pg_scan_sql("project_id = %s", h) for h in (False, True))
        ranges = [(project_id,)]
    for params, row in zip(ranges, reader.ones(plain, ranges), strict=True):
        _pg_chunk(row, lambda params=params: reader.one(hexed, params), events)
    if not scan:
        reader.one("SELECT set_config('enable_indexscan', 'on', true)", ())
    return events


def _pg_rows(reader: _Reader, columns: Sequence[str], locs: np.ndarray) -> Iterator[tuple]:
    """(address, *columns) of the events at these addresses (block * 65536 + offset)."""
    selected = ", ".join(columns)
    sql = f"SELECT {_PG_LOC}, {selected} FROM events WHERE ctid = ANY(%s::tid[])"

    def tids(chunk: list[int]) -> tuple[str]:
        return ("{" + ",".join(f'"({loc >> 16},{loc & 65535})"' for loc in chunk) + "}",)

    for rows in reader.alls(sql, (tids(locs[i : i + LOOKUP].tolist()) for i in range(0, len(locs), LOOKUP))):
        yield from rows


def _pg_values_sql(hexed: bool) -> str:
    return (
        "SELECT string_agg(tidsend(e.ctid), ''::bytea), "
        + _values_select(hexed, "string_agg", "chr")
        + (
            " FROM events AS e WHERE e.ctid = ANY(ARRAY(SELECT CAST('(' || (loc >> 16) || ',' || (loc & 65535) || ')'"
            " AS tid) FROM unnest(%s::bigint[]) AS u(loc)))"
        )
    )


def _pg_values(reader: _Reader, chunks: Iterable[np.ndarray], hexed: bool) -> Iterator[tuple[np.ndarray, list]]:
    texts = (("{" + ",".join(map(str, locs.tolist())) + "}",) for locs in chunks)
    for row in reader.ones(_pg_values_sql(hexed), texts):
        fixed = np.frombuffer(row[0], np.dtype([("block", ">u4"), ("offset", ">u2")]))
        yield fixed["block"].astype(np.int64) * 65536 + fixed["offset"], list(row[1:])


# --- the picked events' values -----------------------------------------------------------------------

# Each row's event id, path and the other columns joined into one text (few distinct ones), rows apart by
# ROW_SEP, columns by FIELD_SEP, or hex-encoded if a value holds one of them; NULL is read as '' there,
# and told apart by one more column, a bit per NULL value (cheaper for the database than marking each value).
_COMBINED = ("country", "region", "city", "browser", "browser_version", "os", "device_type")
_NULLABLE = ("url_path", *_COMBINED)
ROW_SEP, FIELD_SEP = "\x01", "\x02"


def _values_select(hexed: bool, aggregate: str, char: str) -> str:
    row_sep, field_sep = ("','", "';'") if hexed else (f"{char}(1)", f"{char}(2)")

    def text(column: str) -> str:
        value = f"coalesce(e.{column}, '')"
        if not hexed:
            return value
        return f"hex({value})" if aggregate == "group_concat" else f"encode(textsend({value}), 'hex')"

    combined = f" || {field_sep} || ".join(text(c) for c in _COMBINED)
    nulls = " + ".join(f"CASE WHEN e.{c} IS NULL THEN {1 << i} ELSE 0 END" for i, c in enumerate(_NULLABLE))
    return (
        f"{aggregate}({text('event_id')}, {row_sep}), {aggregate}({text('url_path')}, {row_sep}), "
        f"{aggregate}({combined}, {row_sep}), {aggregate}(CAST({nulls} AS TEXT), ',')"
    )


def _values_at(fetch, locs: np.ndarray) -> dict[str, np.ndarray]:
    """The value columns of the events at `locs` (sorted, distinct): column -> object array in that order,
    with one more slot holding None ("no event"). `fetch(chunks, hexed)` reads each chunk's values."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("event_id", *_NULLABLE)}
    chunks = [locs[i : i + LOOKUP] for i in range(0, len(locs), LOOKUP)]
    for chunk, plain in zip(chunks, fetch(chunks, False), strict=True):
        for hexed in (False, True):
            got, texts = next(fetch([chunk], True)) if hexed else plain
            row_sep, field_sep = (",", ";") if hexed else (ROW_SEP, FIELD_SEP)
            ids, paths, combined = (t.split(row_sep) for t in texts[:3])
            if not len(got) == len(ids) == len(paths) == len(combined) == len(chunk):
                continue
            path_codes, combined_codes = _Codes(), _Codes()
            path_at, combined_at = path_codes.encode(paths), combined_codes.encode(combined)
            fields = [f.split(field_sep) for f in combined_codes.values()]
            if any(len(f) != len(_COMBINED) for f in fields):
                continue
            break
        else:
            raise RuntimeError("the picked events' values could not be read")
        order = np.argsort(got)
        if not np.array_equal(got[order], chunk):
            raise RuntimeError("the rebuild's look-up by storage address returned other events")
        nulls = np.fromstring(texts[3], np.int64, sep=",")[order]

        def decoded(values: Iterable[str], hexed: bool = hexed) -> np.ndarray:
            return np.array([bytes.fromhex(v).decode() for v in values] if hexed else list(values), object)

        columns["event_id"].append(decoded(ids)[order])
        distinct = [decoded(path_codes.values()), *(decoded(f[j] for f in fields) for j in range(len(_COMBINED)))]
        for j, (name, at) in enumerate(zip(_NULLABLE, (path_at, *[combined_at] * len(_COMBINED)), strict=True)):
            columns[name].append(np.where(nulls & (1 << j), None, distinct[j][at][order]))
    return {name: np.append(np.concatenate([*parts, np.empty(0, object)]), None) for name, parts in columns.items()}


# --- the pass ----------------------------------------------------------------------------------------


def _rows_at(rows: Callable[[Sequence[str], np.ndarray], Iterator[tuple]], columns: Sequence[str], locs: np.ndarray):
    """The rows at `locs` (sorted, distinct), in that order, as a list of tuples without the address."""
    fetched = list(rows(columns, locs))
    got = np.fromiter((r[0] for r in fetched), np.int64, len(fetched))
    if len(got) != len(locs):
        raise RuntimeError(f"{len(locs) - len(got)} events vanished while the rebuild read them")
    order = np.argsort(got)
    if not np.array_equal(got[order], locs):
        raise RuntimeError("the rebuild's look-up by storage address returned other events")
    return [fetched[i][1:] for i in order.tolist()]


def _codes_of(values: list, fill: int = -1) -> tuple[np.ndarray, list]:
    """Codes of the non-empty values (`fill` for None and ''), and the distinct values."""
    codes = _Codes()
    encoded = codes.encode([v or "" for v in values])
    distinct = codes.values()
    empty = np.array([not v for v in distinct], bool)
    return np.where(empty[encoded], fill, encoded), distinct


def sessionize_project(conn: sa.Connection, project_id: int) -> KeySessions:
    """Sessions of every key of the project, and the links its events carry: `derive.sessionize_keys`'s result
    over the whole project, from one read of its events in storage order.

    PostgreSQL: call inside a REPEATABLE READ transaction (the look-ups by storage address must see the
    scan's snapshot); SQLite's transaction keeps its snapshot anyway.
    """
    postgresql = conn.dialect.name == "postgresql"

    def rows(columns: Sequence[str], locs: np.ndarray) -> Iterator[tuple]:
        return (_pg_rows if postgresql else _sqlite_rows)(reader, columns, locs)

    def fetch(chunks: Iterable[np.ndarray], hexed: bool) -> Iterator[tuple[np.ndarray, list]]:
        return (_pg_values if postgresql else _sqlite_values)(reader, chunks, hexed)

    with _cursors(conn) as cursors:
        reader = _Reader(cursors, binary=postgresql)
        try:
            with collector_paused():
                events = (_read_postgresql if postgresql else _read_sqlite)(reader, project_id)
                return _sessionize(events, rows, fetch)
        finally:
            reader.close()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for code that keeps hundreds of thousands of objects alive while
    it makes more, none of them in cycles. The collector's full passes would walk them again and again
    (5M events: building the sessions took 17 s with it, 3.3 s without)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _first(mask: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Per run: the position of its first event where `mask` holds, or n."""
    return np.minimum.reduceat(np.where(mask, np.arange(n), n), starts)


def _last(mask: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Per run: the position of its latest event where `mask` holds, or -1."""
    return np.maximum.reduceat(np.where(mask, np.arange(n), -1), starts)


def _several(codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run: whether its events carry two or more distinct values (codes; -1 = none)."""
    low = np.minimum.reduceat(np.where(codes >= 0, codes, np.iinfo(np.int64).max), starts)
    high = np.maximum.reduceat(codes, starts)
    return (high >= 0) & (low != high)


@dataclass
class _Sorted:
    """The events sorted by (key, time), as columns; `keys` and `hint_values` decode the codes."""

    keys: list[str]
    hint_values: list[str]
    key: np.ndarray
    ts: np.ndarray
    loc: np.ndarray
    traits: np.ndarray
    hint: np.ndarray  # -1 for none

    def part(self, at: slice) -> _Sorted:
        """The events of `at` (views, not copies)."""
        return _Sorted(
            self.keys, self.hint_values, self.key[at], self.ts[at], self.loc[at], self.traits[at], self.hint[at]
        )


def _sessionize(events: _Events, rows, fetch) -> KeySessions:
    """Sessions of the events' keys, in PARTS parts of about equal size, each a range of keys, on two threads.

    numpy, sqlite3 and psycopg release the GIL while they work, so one part's array operations and
    look-ups run beside the other's (5M events, this step after the scan, two runs each: SQLite 6.1-6.9 ->
    4.9-5.6 s, PostgreSQL 6.7-7.9 -> 5.4 s). The look-ups share the pass's readers, so they take turns
    (`lock`).
    """
    key_codes = events.column("key")
    n = len(key_codes)
    if not n:
        return KeySessions()
    ts = events.column("ts")
    order = np.lexsort((ts, key_codes))
    hint_valid = np.array([bool(h) for h in events.hints.values()], bool)
    hint_codes = events.column("hint")[order]
    ordered = _Sorted(
        keys=events.keys.values(),
        hint_values=events.hints.values(),
        key=key_codes[order],
        ts=ts[order],
        loc=events.column("loc")[order],
        traits=events.column("traits")[order],
        hint=np.where(hint_valid[hint_codes], hint_codes, -1),
    )
    # Each part starts at the first event of a key: every key is in one part.
    cuts = sorted({int(np.searchsorted(ordered.key, ordered.key[n * i // PARTS])) for i in range(PARTS)} | {0, n})
    lock = threading.Lock()
    with ThreadPoolExecutor(2, thread_name_prefix="usertrail-rebuild-part") as pool:
        found = list(
            pool.map(
                lambda at: _sessionize_part(ordered.part(at), rows, fetch, lock),
                [slice(a, b) for a, b in itertools.pairwise(cuts)],
            )
        )
    return functools.reduce(_joined, found)


def _joined(first: KeySessions, second: KeySessions) -> KeySessions:
    """Both parts' findings as one (their keys are distinct)."""
    first.sessions.update(second.sessions)
    first.hints += second.hints
    first.anon_ids += second.anon_ids
    a, b = first.table, second.table
    if a is None or b is None:
        first.table = a or b
        return first
    first.table = SessionTable(
        keys=a.keys,
        key=np.concatenate((a.key, b.key)),
        start=np.concatenate((a.start, b.start)),
        end=np.concatenate((a.end, b.end)),
        events=np.concatenate((a.events, b.events)),
        interactions=np.concatenate((a.interactions, b.interactions)),
        page_views=np.concatenate((a.page_views, b.page_views)),
        hints=a.hints + b.hints,
        values={name: np.concatenate((column, b.values[name])) for name, column in a.values.items()},
        vars_code=np.concatenate((a.vars_code, np.where(b.vars_code >= 0, b.vars_code + len(a.vars_values), -1))),
        vars_values=a.vars_values + b.vars_values,
    )
    return first


def _sessionize_part(events: _Sorted, rows, fetch, lock: threading.Lock) -> KeySessions:
    """The sessions and links of one part's keys; its look-ups hold `lock`."""
    found = KeySessions()
    keys, hint_values = events.keys, events.hint_values
    key, ts, loc, hint = events.key, events.ts, events.loc, events.hint
    n = len(key)
    flags, kinds = events.traits & FLAGS, events.traits >> KIND_SHIFT

    # Analytics properties and anonymous ids: read only for the events that have some.
    user_vars = np.full(n, -1, np.int64)
    anon = np.full(n, -1, np.int64)
    vars_values: list[str] = []
    anon_values: list[str] = []
    carrying = np.flatnonzero(flags & LINKS)
    if len(carrying):
        by_loc = np.argsort(loc[carrying])
        with lock:
            fetched = _rows_at(rows, ("user_vars", "anon_id"), loc[carrying][by_loc])
        at = carrying[by_loc]
        codes, vars_values = _codes_of([r[0] for r in fetched])
        user_vars[at] = codes
        codes, anon_values = _codes_of([r[1] for r in fetched])
        anon[at] = codes

    # Runs of activity: a new key, or a gap of 30 minutes or more.
    same_key = np.zeros(n, bool)
    same_key[1:] = key[1:] == key[:-1]
    gap = np.zeros(n, np.int64)
    gap[1:] = ts[1:] - ts[:-1]
    is_start = ~same_key | (gap >= IDLE_MS)
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], n) - 1
    tie = same_key & (gap == 0)
    python = (
        np.maximum.reduceat(tie, starts)
        | (ts[ends] - ts[starts] >= MAX_SESSION_MS)
        | _several(user_vars, starts)
        | _several(anon, starts)
    )
    run_of = np.cumsum(is_start) - 1

    simple = np.flatnonzero(~python)
    # Client session ids: each distinct one of a run at its first event, in order of appearance (runs
    # follow each other in position order, so sorting the positions keeps each run's ids together).
    hinted = np.flatnonzero((hint >= 0) & ~python[run_of])
    # The first event of a (run, id) pair follows one of another run or id: only those are sorted (a run
    # mostly keeps one id, so this is about one event per run, not every event).
    # (Usually every event carries an id: then the arrays themselves, not a copy of 5M positions.)
    run_hinted, hint_hinted = (run_of, hint) if len(hinted) == n else (run_of[hinted], hint[hinted])
    changed = np.ones(len(hinted), bool)
    changed[1:] = (run_hinted[1:] != run_hinted[:-1]) | (hint_hinted[1:] != hint_hinted[:-1])
    candidates = np.flatnonzero(changed)
    _, first_seen = np.unique(run_hinted[candidates] * len(hint_values) + hint_hinted[candidates], return_index=True)
    hint_at = np.sort(hinted[candidates[first_seen]])
    hints_from = np.searchsorted(run_of[hint_at], simple)
    hints_to = np.append(hints_from, len(hint_at))[1:]
    firsts = {
        "entry": _first(flags & URL != 0, starts, n)[simple],
        "anon": _first(anon >= 0, starts, n)[simple],
    }
    lasts = {
        "exit": _last(flags & URL != 0, starts, n)[simple],
        "loc": _last(flags & COUNTRY != 0, starts, n)[simple],
        "brw": _last(flags & BROWSER != 0, starts, n)[simple],
        "os": _last(flags & OS != 0, starts, n)[simple],
        "device": _last(flags & DEVICE != 0, starts, n)[simple],
    }
    picks = {**{k: np.where(v < n, v, -1) for k, v in firsts.items()}, **lasts}
    # Sorted and distinct: a mask over the events costs one pass where sorting the picks cost 1.5 s at 5M events.
    picked = np.zeros(n, bool)
    for p in picks.values():
        picked[p[p >= 0]] = True
    picked[hint_at] = True
    wanted = np.flatnonzero(picked)
    # The picked events' values, by their position in the sorted events (one more slot: "no event").
    by_loc = np.argsort(loc[wanted])
    values = {}
    with lock:
        found_values = _values_at(fetch, loc[wanted][by_loc])
    for column, sorted_values in found_values.items():
        values[column] = np.empty(len(wanted) + 1, object)
        values[column][by_loc] = sorted_values[:-1]
    slot = {name: np.where(p >= 0, np.searchsorted(wanted, p), len(wanted)) for name, p in picks.items()}

    def value(pick: str, column: str) -> np.ndarray:
        return values[column][slot[pick]]

    # Per simple run (in `simple` order).
    run_key = key[starts[simple]]
    interactions = np.add.reduceat((kinds == INTERACTION).astype(np.int64), starts)[simple]
    page_views = np.add.reduceat((kinds == PAGE_VIEW).astype(np.int64), starts)[simple]
    run_vars = np.maximum.reduceat(user_vars, starts)[simple]
    run_values = {
        "entry_path": value("entry", "url_path"),
        "exit_path": value("exit", "url_path"),
        "country": value("loc", "country"),
        "region": value("loc", "region"),
        "city": value("loc", "city"),
        "browser": value("brw", "browser"),
        "browser_version": value("brw", "browser_version"),
        "os": value("os", "os"),
        "device_type": value("device", "device_type"),
    }
    run_hints = [hint_values[h] for h in hint[hint_at].tolist()]
    found.hints.extend(
        zip(
            run_hints,
            [keys[k] for k in key[hint_at].tolist()],
            zip(ts[hint_at].tolist(), values["event_id"][np.searchsorted(wanted, hint_at)].tolist(), strict=True),
            strict=True,
        )
    )
    anonymous = np.flatnonzero(firsts["anon"] < n)
    anon_at = firsts["anon"][anonymous]
    found.anon_ids.extend(
        zip(
            [anon_values[a] for a in anon[anon_at].tolist()],
            [keys[k] for k in run_key[anonymous].tolist()],
            zip(ts[anon_at].tolist(), value("anon", "event_id")[anonymous].tolist(), strict=True),
            strict=True,
        )
    )
    decoded_vars = [msgspec.json.decode(v) if v else {} for v in vars_values]  # '' is never a run's code

    # Keys with a run the Python rule takes get Session objects for all their runs (the rule's sessions
    # and these are merged per key); the other keys' sessions stay columns.
    ruled_key = np.zeros(len(keys), bool)
    ruled_key[key[starts[python]]] = True
    as_objects = ruled_key[run_key]
    plain = np.flatnonzero(~as_objects)
    found.table = SessionTable(
        keys=keys,
        key=run_key[plain],
        start=ts[starts[simple]][plain],
        end=ts[ends[simple]][plain],
        events=(ends - starts + 1)[simple][plain],
        interactions=interactions[plain],
        page_views=page_views[plain],
        hints=[
            msgspec.json.encode(run_hints[a:b]).decode()
            for a, b in zip(hints_from[plain].tolist(), hints_to[plain].tolist(), strict=True)
        ],
        values={name: column[plain] for name, column in run_values.items()},
        vars_code=run_vars[plain],
        vars_values=decoded_vars,
    )
    objects = np.flatnonzero(as_objects)
    sessions = found.sessions
    columns = zip(
        run_key[objects].tolist(),
        ts[starts[simple]][objects].tolist(),
        ts[ends[simple]][objects].tolist(),
        (ends - starts + 1)[simple][objects].tolist(),
        interactions[objects].tolist(),
        page_views[objects].tolist(),
        hints_from[objects].tolist(),
        hints_to[objects].tolist(),
        *(column[objects].tolist() for column in run_values.values()),
        run_vars[objects].tolist(),
        strict=True,
    )
    for (
        k, start, end, count, interaction_count, page_view_count, h_from, h_to, entry, exit_, country, region, city,
        browser, version, os_, device, v,
    ) in columns:  # fmt: skip
        sessions[keys[k]].append(
            Session(
                start=start,
                end=end,
                events=count,
                interactions=interaction_count,
                page_views=page_view_count,
                hints=run_hints[h_from:h_to],
                entry_path=entry,
                exit_path=exit_,
                country=country,
                region=region,
                city=city,
                browser=browser,
                browser_version=version,
                os=os_,
                device_type=device,
                user_vars=dict(decoded_vars[v]) if v >= 0 else {},
            )
        )

    # The other runs, event by event through the Python rule.
    ruled = np.flatnonzero(python[run_of])
    if len(ruled):
        by_loc = np.argsort(loc[ruled])
        with lock:
            fetched = _rows_at(rows, ("anon_id", *EVENT_POINT_COLUMNS), loc[ruled][by_loc])
        in_order = [None] * len(ruled)
        for i, row in zip(by_loc.tolist(), fetched, strict=True):
            in_order[i] = row
        triples = zip(run_of[ruled].tolist(), key[ruled].tolist(), in_order, strict=True)
        for _, run in itertools.groupby(triples, operator.itemgetter(0)):
            group = list(run)
            owner = keys[group[0][1]]
            points = [EventPoint(*row[1:]) for _, _, row in group]
            sessions[owner].extend(sessionize(points))
            for (_, _, row), point in zip(group, points, strict=True):
                if point.session_hint:
                    found.hints.append((point.session_hint, owner, (point.ts, point.event_id)))
                if row[0]:
                    found.anon_ids.append((row[0], owner, (point.ts, point.event_id)))
    for made in sessions.values():
        made.sort(key=operator.attrgetter("start"))
    return found
