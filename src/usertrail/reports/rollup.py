"""What the engagement reports read instead of scanning every event (docs/reports.md, "How it runs").

- `report_days`: per end-user key, UTC day and item (or widget event kind), the events, the latest one and
  the latest name. Items and widget reports read whole days of a range here and only its partial first and
  last day from `events`.
- `report_steps`: every Walk-Thru / Smart Walk-Thru step play with its flow taken out of the payload, so a
  funnel reads one flow's steps by index.

Both are written in the ingest transaction from the events that were new in it (`add`), with the same
classification the reports' SQL uses (engagement.ITEM_KINDS and the widget's definitions), and can be
recomputed from the events (`rebuild`, run by the migration that added them and by `usertrail rebuild`).
They hold nothing the events do not: erasing an end user deletes their rows with the events.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from usertrail.reports.engagement import (
    DAY_MS,
    FLOW_STEP_TYPES,
    ITEM_KINDS,
    OPEN_KIND,
    SEARCH_APP_TYPE,
    SEARCH_KINDS,
    SEARCH_TYPE,
    STEP_PLAY,
    TOTAL_KINDS,
    WIDGET_OPEN,
)
from usertrail.store.schema import events, report_days, report_steps

PLAY, DONE = "play", "done"
TOTALS = dict(zip((PLAY, DONE), TOTAL_KINDS, strict=True))  # per item and day, user_key ""
OPEN, (SEARCH, SEARCH_UNNAMED) = OPEN_KIND, SEARCH_KINDS
STEP_APP_TYPES = frozenset(FLOW_STEP_TYPES.values())
COLUMNS = ("project_id", "user_key", "event_id", "ts", "type", "app_type", "object_id", "object_name", "payload")
_DAY_KEY = ("project_id", "kind", "day", "app_type", "object_id", "detail", "user_key")
_PLAYS = {(k.app_type, t) for k in ITEM_KINDS.values() for t in k.plays}
_DONES = {(k.app_type, t) for k in ITEM_KINDS.values() for t in k.completions}


class _Data(msgspec.Struct):
    pId: object = None
    owId: object = None


class _Payload(msgspec.Struct):
    data: _Data | None = None


_decode = msgspec.json.Decoder(_Payload).decode


def _text(value: object) -> str | None:
    """A JSON value as text, the way PostgreSQL's `#>>` gives it (None for null)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return msgspec.json.encode(value).decode()


def _data(payload: str | bytes | None) -> _Data:
    if payload is None:
        return _Data()
    try:
        return _decode(payload).data or _Data()
    except (msgspec.DecodeError, msgspec.ValidationError):  # kept payloads are JSON objects; be safe anyway
        return _Data()


def kind_of(type_: str, app_type: str | None, object_id: str | None) -> str | None:
    """The rollup kind of an event, or None if no items or widget report counts it."""
    if object_id is not None and (app_type, type_) in _PLAYS:
        return PLAY
    if object_id is not None and (app_type, type_) in _DONES:
        return DONE
    if (type_, app_type) == WIDGET_OPEN:
        return OPEN
    if type_ == SEARCH_TYPE or app_type == SEARCH_APP_TYPE:
        return SEARCH
    return None


def flow_of(data: _Data) -> str | None:
    """A step's flow: `data.owId`, else the flow id inside the play instance `<ms>-<flow id>-<guid>`."""
    owner = _text(data.owId)
    if owner is not None:
        return owner
    pid = _text(data.pId)
    if pid is None:
        return None
    parts = pid.split("-")
    return parts[1] if len(parts) > 1 else ""


@dataclass
class Day:
    """One `report_days` row being summed."""

    events: int
    last_ts: int
    name_ts: int | None
    name: str | None

    def add(self, ts: int, name: str | None) -> None:
        self.events += 1
        self.last_ts = max(self.last_ts, ts)
        if name is not None and (self.name_ts is None or (ts, name) > (self.name_ts, self.name)):
            self.name_ts, self.name = ts, name


@dataclass
class Rollup:
    """Rows for `report_days` (summed by key) and `report_steps`, from event rows."""

    days: dict[tuple, Day]
    steps: list[tuple]  # STEP_COLUMNS

    @classmethod
    def of(cls, rows: Iterable[Sequence]) -> Rollup:
        """Rows are (COLUMNS...) of events; only those a report counts leave a trace."""
        days: dict[tuple, Day] = {}
        steps: list[dict] = []
        for project_id, user_key, event_id, ts, type_, app_type, object_id, name, payload in rows:
            if type_ == STEP_PLAY and app_type in STEP_APP_TYPES and object_id is not None:
                flow = flow_of(_data(payload))
                if flow is not None:
                    steps.append((project_id, user_key, event_id, app_type, flow, object_id, ts, name))
            kind = kind_of(type_, app_type, object_id)
            if kind is None:
                continue
            detail = ""
            if kind == DONE:
                pid = _text(_data(payload).pId)
                detail = event_id if pid is None else pid
            elif kind == SEARCH:
                kind, detail = (SEARCH, name) if name is not None else (SEARCH_UNNAMED, "")
            if kind in (OPEN, SEARCH, SEARCH_UNNAMED):
                app_type, object_id = "", ""
            day = ts // DAY_MS
            keys = [(project_id, kind, day, app_type, object_id, detail, user_key)]
            if kind in (PLAY, DONE):
                # The item's total of the day, over every key: plays, latest event and name in one row.
                keys.append((project_id, TOTALS[kind], day, app_type, object_id, "", ""))
            for key in keys:
                row = days.get(key)
                if row is None:
                    days[key] = Day(1, ts, ts if name is not None else None, name)
                else:
                    row.add(ts, name)
        return cls(days, steps)

    def write(self, conn: sa.Connection) -> None:
        """Add these rows to the tables (summing into existing days).

        Rows go in key order, so two transactions updating the same day rows (every commit touches an
        item's totals) take their row locks in one order and never deadlock. PostgreSQL gets each table's
        rows as column arrays in one statement; SQLite, whose statements cost no round trip, row by row.
        """
        days = [(*key, d.events, d.last_ts, d.name_ts, d.name) for key, d in sorted(self.days.items())]
        if conn.dialect.name == "postgresql":
            if days:
                conn.exec_driver_sql(_upsert_days_sql(_unnest(_DAY_TYPES)), _arrays(days))
            if self.steps:
                conn.exec_driver_sql(_insert_steps_sql(_unnest(_STEP_TYPES)), _arrays(self.steps))
            return
        if days:
            conn.exec_driver_sql(_upsert_days_sql(_values(len(_DAY_TYPES))), days)
        if self.steps:
            conn.exec_driver_sql(_insert_steps_sql(_values(len(_STEP_TYPES))), self.steps)


# Plain SQL handed to the driver: this runs inside every ingest transaction that stores a counted event,
# where SQLAlchemy's per-row parameter processing cost more than the upsert itself. The upsert's text is
# valid on SQLite and PostgreSQL (ON CONFLICT … DO UPDATE, `excluded`); only the rows' source differs.
_DAY_VALUES = (*_DAY_KEY, "events", "last_ts", "name_ts", "name")
STEP_COLUMNS = ("project_id", "user_key", "event_id", "app_type", "flow_id", "step_id", "ts", "name")
# PostgreSQL array types of those columns, in that order.
_DAY_TYPES = ("integer", "text", "integer", "text", "text", "text", "text", "integer", "bigint", "bigint", "text")
_STEP_TYPES = ("integer", "text", "text", "text", "text", "text", "bigint", "text")


def _values(n: int) -> str:
    return f"VALUES ({', '.join(['?'] * n)})"


def _unnest(types: Sequence[str]) -> str:
    return f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"


def _arrays(rows: Sequence[Sequence]) -> tuple[list, ...]:
    """Row tuples as one list per column (the parameters of `_unnest`)."""
    return tuple(list(column) for column in zip(*rows, strict=True))


@functools.cache
def _upsert_days_sql(source: str) -> str:
    newer_name = (
        "excluded.name_ts IS NOT NULL AND (report_days.name_ts IS NULL OR excluded.name_ts > report_days.name_ts"
        " OR (excluded.name_ts = report_days.name_ts AND excluded.name > report_days.name))"
    )
    return (
        f"INSERT INTO report_days ({', '.join(_DAY_VALUES)}) {source} "
        f"ON CONFLICT ({', '.join(_DAY_KEY)}) DO UPDATE SET "
        "events = report_days.events + excluded.events, "
        "last_ts = CASE WHEN excluded.last_ts > report_days.last_ts"
        " THEN excluded.last_ts ELSE report_days.last_ts END, "
        f"name_ts = CASE WHEN {newer_name} THEN excluded.name_ts ELSE report_days.name_ts END, "
        f"name = CASE WHEN {newer_name} THEN excluded.name ELSE report_days.name END"
    )


@functools.cache
def _insert_steps_sql(source: str) -> str:
    return f"INSERT INTO report_steps ({', '.join(STEP_COLUMNS)}) {source} ON CONFLICT DO NOTHING"


def counted(type_: str, app_type: str | None, object_id: str | None) -> bool:
    """Whether an event row leaves a trace in the rollup (a report counts it, or it is a step play)."""
    return kind_of(type_, app_type, object_id) is not None or (
        type_ == STEP_PLAY and app_type in STEP_APP_TYPES and object_id is not None
    )


def add(conn: sa.Connection, rows: Iterable[Sequence]) -> None:
    """Roll up new event rows (COLUMNS order) inside the caller's transaction."""
    Rollup.of(rows).write(conn)


def _event_rows(conn: sa.Connection, project_id: int) -> Iterator[tuple]:
    relevant = sa.or_(
        events.c.app_type.in_([*ITEM_KINDS, *STEP_APP_TYPES, WIDGET_OPEN[1], SEARCH_APP_TYPE]),
        events.c.type == SEARCH_TYPE,
    )
    # Only completions and step plays need their payload (play instance, flow): the rest is not read.
    parsed = sa.or_(
        events.c.type.in_(sorted({t for _, t in _DONES})),
        sa.and_(events.c.type == STEP_PLAY, events.c.app_type.in_(sorted(STEP_APP_TYPES))),
    )
    columns = [events.c[name] for name in COLUMNS[:-1]] + [sa.case((parsed, events.c.payload)).label("payload")]
    query = sa.select(*columns).where(events.c.project_id == project_id, relevant)
    # Streamed on this statement only: the connection goes on to write (executemany) afterwards.
    result = conn.execute(query.execution_options(stream_results=True, yield_per=20_000))
    for row in result:
        yield tuple(row)


def rebuild(conn: sa.Connection, project_id: int, batch: int = 200_000) -> int:
    """Recompute a project's rollup from its events (in the caller's transaction); returns events read."""
    conn.execute(report_days.delete().where(report_days.c.project_id == project_id))
    conn.execute(report_steps.delete().where(report_steps.c.project_id == project_id))
    read, chunk, total = 0, [], Rollup({}, [])
    for row in _event_rows(conn, project_id):
        chunk.append(row)
        if len(chunk) >= batch:
            _merge(total, Rollup.of(chunk))
            read += len(chunk)
            chunk = []
    _merge(total, Rollup.of(chunk))
    read += len(chunk)
    # Written once at the end: partial sums of one key from two batches must not meet the upsert twice
    # in one statement (PostgreSQL refuses that), and whole sums insert without conflicts.
    for start in range(0, len(total.steps), 20_000):
        Rollup({}, total.steps[start : start + 20_000]).write(conn)
    items = list(total.days.items())
    for start in range(0, len(items), 20_000):
        Rollup(dict(items[start : start + 20_000]), []).write(conn)
    return read


def _merge(into: Rollup, part: Rollup) -> None:
    into.steps += part.steps
    for key, day in part.days.items():
        have = into.days.get(key)
        if have is None:
            into.days[key] = day
            continue
        have.events += day.events
        have.last_ts = max(have.last_ts, day.last_ts)
        if day.name_ts is not None and (have.name_ts is None or (day.name_ts, day.name) > (have.name_ts, have.name)):
            have.name_ts, have.name = day.name_ts, day.name
