"""Engagement reports on WalkMe content events, in SQL on SQLite and PostgreSQL (docs/reports.md).

- items: per Walk-Thru, Smart Walk-Thru, ShoutOut, Launcher, Resource and Survey, the plays, unique
  users, completions and completion rate (what counts as a play and a completion: `ITEM_KINDS`);
- funnel: the steps of one Walk-Thru or Smart Walk-Thru, counted per session, in order;
- widget: widget opens and searches per day, and the top search terms.

Every report covers a time range [start, end) and can be narrowed to the members of a segment: the
events sent under their own keys and under the anonymous keys they own (store/identity.py). Unique
users are counted by owner, so an anonymous key stitched to a user counts as that user. All
counting is done by the database with GROUP BY; Python only names, orders and fills empty days.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from usertrail.store.schema import (
    REPORT_DONE_WHERE,
    REPORT_EVENTS_WHERE,
    events,
    identity_links,
    report_days,
    report_steps,
    sessions,
)

DAY_MS = 86_400_000
DEFAULT_DAYS = 30
MAX_FUNNEL_STEPS = 100
REPORT_WORK_MEM = "64MB"  # PostgreSQL sort/hash memory of a report's transaction


@dataclass(frozen=True)
class ItemKind:
    """Which event types count as a play and as a completion of one kind of WalkMe item (`data.type`)."""

    app_type: str
    label: str
    plays: tuple[str, ...]
    completions: tuple[str, ...]  # none: the item has no completion, and no completion rate


ITEM_KINDS: dict[str, ItemKind] = {
    kind.app_type: kind
    for kind in (
        ItemKind("wt", "Walk-Thru", ("play",), ("complete",)),
        ItemKind("bizFlow", "Smart Walk-Thru", ("play",), ("complete", "goalReach")),
        ItemKind("shoutout", "ShoutOut", ("play",), ("click",)),
        ItemKind("launcher", "Launcher", ("click",), ()),
        ItemKind("resource", "Resource", ("play",), ()),
        ItemKind("survey", "Survey", ("play",), ("submitted",)),
    )
}
# The app type of the steps of each kind of flow, and the event type that counts as reaching a step.
FLOW_STEP_TYPES = {"wt": "step", "bizFlow": "bizFlowStep"}
STEP_PLAY = "play"
WIDGET_OPEN = ("open", "player")  # (event type, app type)
SEARCH_TYPE, SEARCH_APP_TYPE = "search", "widgetSearch"
# The rollup's kinds of widget rows (reports/rollup.py): opens, and searches with and without a term.
OPEN_KIND, SEARCH_KINDS = "open", ("search", "search_unnamed")

TOTAL_KINDS = ("play_total", "done_total")  # an item's plays / completion events of a day, over every key

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MS = re.compile(r"-?\d{1,16}")


class BadParameter(ValueError):
    """A report parameter that cannot be used, with the parameter's name."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in ms since the epoch."""

    start: int
    end: int

    def as_json(self) -> dict:
        return {"from": self.start, "to": self.end}


def parse_range(raw_from: str | None, raw_to: str | None, now: int) -> TimeRange:
    """The range of `from` / `to` query values: ms, `YYYY-MM-DD` (UTC; `to` includes the whole day)
    or an ISO 8601 time (UTC when it has no offset). `to` defaults to now, `from` to 30 days before `to`."""
    end = now + 1 if raw_to is None else _instant(raw_to, "to", end_of_day=True)
    start = end - DEFAULT_DAYS * DAY_MS if raw_from is None else _instant(raw_from, "from", end_of_day=False)
    if start >= end:
        raise BadParameter("from", f"from ({start}) must be before to ({end}): the range is empty")
    return TimeRange(start, end)


def _instant(raw: str, name: str, end_of_day: bool) -> int:
    raw = raw.strip()
    if _MS.fullmatch(raw):
        return int(raw)
    try:
        if _DATE.fullmatch(raw):
            day = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(), dt.UTC)
            return int((day + dt.timedelta(days=1 if end_of_day else 0)).timestamp() * 1000)
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadParameter(name, f"{raw!r} is not a date (YYYY-MM-DD), an ISO 8601 time or ms since 1970") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Scope:
    """Which events a report reads: one project, a time range, and optionally a segment's members."""

    project_id: int
    range: TimeRange
    members: sa.Select | None = None  # SELECT of owner keys (e.g. segments.sql Compiler.members); None: everyone


# --- shared SQL pieces -----------------------------------------------------------------------------

e = events


def _owner(key: sa.ColumnElement | None = None, project_id: sa.ColumnElement | int | None = None) -> sa.ColumnElement:
    """The owner of a key (default: each event's): an identified key owns itself, an anonymous key belongs
    to its earliest identity link (store/identity.py), or to itself when it has none."""
    key = e.c.user_key if key is None else key
    project_id = e.c.project_id if project_id is None else project_id
    link = identity_links
    owning = (
        sa.select(link.c.person_key)
        .where(link.c.project_id == project_id, link.c.user_key == key)
        .order_by(link.c.link_ts, link.c.link_event_id, link.c.person_key)
        .limit(1)
        .scalar_subquery()
    )
    # Only anonymous keys can be linked: identified keys skip the lookup.
    return sa.case((sa.func.substr(key, 1, 2) == "u:", key), else_=sa.func.coalesce(owning, key))


def _member_keys(project_id: int, members: sa.Select) -> sa.CompoundSelect:
    """The keys whose events belong to `members`: the members' own keys and the anonymous keys they own."""
    link, earlier = identity_links, identity_links.alias("earlier")
    owning = ~sa.exists().where(
        earlier.c.project_id == link.c.project_id,
        earlier.c.user_key == link.c.user_key,
        sa.tuple_(earlier.c.link_ts, earlier.c.link_event_id, earlier.c.person_key)
        < sa.tuple_(link.c.link_ts, link.c.link_event_id, link.c.person_key),
    )
    linked = sa.select(link.c.user_key).where(link.c.project_id == project_id, link.c.person_key.in_(members), owning)
    return sa.union(members, linked)


def _where(scope: Scope) -> list[sa.ColumnElement[bool]]:
    where = [e.c.project_id == scope.project_id, e.c.ts >= scope.range.start, e.c.ts < scope.range.end]
    if scope.members is not None:
        where.append(e.c.user_key.in_(_member_keys(scope.project_id, scope.members)))
    return where


@dataclass(frozen=True)
class _Split:
    """A range as whole UTC days [first_day, end_day) read from the rollup, and the partial days at its ends
    read from the events (`edges`, ms intervals; empty when the range starts and ends at midnight)."""

    first_day: int
    end_day: int
    edges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, time_range: TimeRange) -> _Split:
        first, end = -(-time_range.start // DAY_MS), time_range.end // DAY_MS
        if first >= end:
            return cls(0, 0, ((time_range.start, time_range.end),))
        edges = [(time_range.start, first * DAY_MS), (end * DAY_MS, time_range.end)]
        return cls(first, end, tuple((a, b) for a, b in edges if a < b))


def _edges(scope: Scope, split: _Split, query: sa.Select) -> list[sa.Select]:
    """`query` over the events of each partial day (one plain time range each, so each reads the
    partial `(project_id, ts)` index of the events reports count); none when the range is made of whole days."""
    out = []
    for start, end in split.edges:
        where = [e.c.project_id == scope.project_id, sa.text(REPORT_EVENTS_WHERE), e.c.ts >= start, e.c.ts < end]
        if scope.members is not None:
            where.append(e.c.user_key.in_(_member_keys(scope.project_id, scope.members)))
        out.append(query.where(*where))
    return out


def _day_where(scope: Scope, split: _Split, *kinds: str) -> list[sa.ColumnElement[bool]]:
    """The rollup rows of the whole days."""
    r = report_days
    where = [r.c.project_id == scope.project_id, r.c.kind.in_(kinds), r.c.day >= split.first_day,
             r.c.day < split.end_day]  # fmt: skip
    if scope.members is not None:
        where.append(r.c.user_key.in_(_member_keys(scope.project_id, scope.members)))
    return where


def _data_field(dialect: str, name: str) -> sa.ColumnElement:
    """`data.<name>` of the stored WalkMe event, as text (numbers become their decimal text)."""
    if dialect == "postgresql":
        path = sa.literal_column(f"'{{data,{name}}}'")
        return sa.cast(e.c.payload, JSONB).op("#>>", return_type=sa.Text)(path)
    return sa.cast(sa.func.json_extract(e.c.payload, f"$.data.{name}"), sa.Text)


def _pid_flow(dialect: str) -> sa.ColumnElement:
    """The flow id inside `data.pId`, the play instance `<ms>-<flow id>-<guid>`."""
    pid = _data_field(dialect, "pId")
    if dialect == "postgresql":
        return sa.func.split_part(pid, "-", 2)
    rest = sa.func.substr(pid, sa.func.instr(pid, "-") + 1)
    return sa.func.substr(rest, 1, sa.func.instr(rest, "-") - 1)


def _contains(dialect: str, column: sa.ColumnElement, text: str) -> sa.ColumnElement[bool]:
    if dialect == "postgresql":
        return sa.func.strpos(column, text) > 0
    return sa.func.instr(column, text) > 0


def _tune(conn: sa.Connection) -> None:
    """PostgreSQL, for the rest of this transaction: no JIT (compiling a report's queries took longer than
    running them: 0.3-0.5 s each at 2M events) and room to sort and hash a report's rows in memory."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# --- items -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRow:
    app_type: str
    object_id: str
    name: str | None
    plays: int
    unique_users: int
    completions: int
    last_event_ts: int

    @property
    def completion_rate(self) -> float | None:
        """Completions per play; None for items without a completion event, or without plays in the range."""
        return _ratio(self.completions, self.plays) if ITEM_KINDS[self.app_type].completions else None

    def as_json(self) -> dict:
        return {
            "app_type": self.app_type,
            "label": ITEM_KINDS[self.app_type].label,
            "object_id": self.object_id,
            "name": self.name,
            "plays": self.plays,
            "unique_users": self.unique_users,
            "completions": self.completions if ITEM_KINDS[self.app_type].completions else None,
            "completion_rate": self.completion_rate,
            "last_event_ts": self.last_event_ts,
        }


ITEM_SORTS = ("plays", "unique_users", "completions", "completion_rate", "name", "app_type", "object_id",
              "last_event_ts")  # fmt: skip


def items(conn: sa.Connection, scope: Scope, app_types: Sequence[str] = tuple(ITEM_KINDS)) -> list[ItemRow]:
    """Plays, unique users (owners who played) and completions of every item with a play or a completion
    in the scope. A completion is counted once per play instance (`data.pId`; per event without one).

    Whole days come from the daily rollup (reports/rollup.py), the partial first and last day from the
    events, with the same definitions; both meet before any count, so the result is the same as counting
    the events of the range."""
    _tune(conn)
    dialect = conn.dialect.name
    kinds = [ITEM_KINDS[a] for a in app_types]
    split = _Split.of(scope.range)
    r = report_days
    is_play = sa.or_(*(sa.and_(e.c.app_type == k.app_type, e.c.type.in_(k.plays)) for k in kinds))
    completing = [k for k in kinds if k.completions]
    is_done = sa.or_(*(sa.and_(e.c.app_type == k.app_type, e.c.type.in_(k.completions)) for k in completing))
    edge = [e.c.app_type.in_(list(app_types)), e.c.object_id.is_not(None)]
    days = [r.c.app_type.in_(list(app_types))]
    relevant = sa.or_(is_play, is_done) if completing else is_play
    # Without a segment, plays, the latest event and the latest name come from the items' day totals;
    # within a segment, from the members' own rows.
    totals = TOTAL_KINDS if scope.members is None else ("play", "done")
    counted = sa.union_all(
        sa.select(
            r.c.app_type,
            r.c.object_id,
            sa.case((r.c.kind == totals[0], r.c.events), else_=0).label("plays"),
            r.c.last_ts.label("ts"),
        ).where(*_day_where(scope, split, *totals), *days),
        *_edges(
            scope,
            split,
            sa.select(e.c.app_type, e.c.object_id, sa.case((is_play, 1), else_=0).label("plays"), e.c.ts).where(
                *edge, relevant
            ),
        ),
    ).subquery("counted")
    count_query = sa.select(
        counted.c.app_type,
        counted.c.object_id,
        sa.func.sum(counted.c.plays).label("plays"),
        sa.func.max(counted.c.ts).label("last_ts"),
    ).group_by(counted.c.app_type, counted.c.object_id)
    # Unique users = distinct owners of the keys that played. Identified keys own themselves, so they are
    # counted straight from the rollup (one pass in the order of its user index, no sort of every row);
    # then the owners of anonymous keys and of the partial days' keys that are not among those.
    identified = sa.func.substr(r.c.user_key, 1, 2) == "u:"
    own = {
        (row.app_type, row.object_id): row.users
        for row in conn.execute(
            sa.select(r.c.app_type, r.c.object_id, sa.func.count(sa.distinct(r.c.user_key)).label("users"))
            .where(*_day_where(scope, split, "play"), *days, identified)
            .group_by(r.c.app_type, r.c.object_id)
        )
    }
    others = sa.union_all(
        sa.select(r.c.app_type, r.c.object_id, _owner(r.c.user_key, scope.project_id).label("owner")).where(
            *_day_where(scope, split, "play"), *days, ~identified
        ),
        *_edges(
            scope,
            split,
            sa.select(e.c.app_type, e.c.object_id, _owner().label("owner")).where(
                *edge, e.c.type.in_(sorted({t for k in kinds for t in k.plays})), is_play
            ),
        ),
    ).subquery("others")
    counted_as_itself = sa.exists().where(
        r.c.project_id == scope.project_id,
        r.c.kind == "play",
        r.c.app_type == others.c.app_type,
        r.c.object_id == others.c.object_id,
        r.c.user_key == others.c.owner,
        r.c.day >= split.first_day,
        r.c.day < split.end_day,
    )
    user_query = (
        sa.select(others.c.app_type, others.c.object_id, sa.func.count(sa.distinct(others.c.owner)).label("users"))
        .where(~sa.and_(sa.func.substr(others.c.owner, 1, 2) == "u:", counted_as_itself))
        .group_by(others.c.app_type, others.c.object_id)
    )
    users = dict(own)
    for u in conn.execute(user_query):
        users[(u.app_type, u.object_id)] = users.get((u.app_type, u.object_id), 0) + u.users
    found: dict[tuple[str, str], list] = {
        (c.app_type, c.object_id): [int(c.plays), users.get((c.app_type, c.object_id), 0), 0, c.last_ts]
        for c in conn.execute(count_query)
    }
    if completing:
        # Only completion events are parsed for their play instance; the rollup keeps it as `detail`.
        done_app_types = [k.app_type for k in completing]
        # Everyone's completions are read in instance order from their partial index (store/schema.py);
        # a segment's, through its members' keys.
        in_order = [sa.text(REPORT_DONE_WHERE)] if scope.members is None else []
        done = sa.union_all(
            sa.select(r.c.app_type, r.c.object_id, r.c.detail.label("instance"), r.c.last_ts.label("ts")).where(
                *_day_where(scope, split, "done"), *in_order, r.c.app_type.in_(done_app_types)
            ),
            *_edges(
                scope,
                split,
                sa.select(
                    e.c.app_type,
                    e.c.object_id,
                    sa.func.coalesce(_data_field(dialect, "pId"), e.c.event_id).label("instance"),
                    e.c.ts,
                ).where(*edge, e.c.type.in_(sorted({t for k in completing for t in k.completions})), is_done),
            ),
        ).subquery("done")
        done_query = sa.select(
            done.c.app_type,
            done.c.object_id,
            sa.func.count(sa.distinct(done.c.instance)).label("completions"),
            sa.func.max(done.c.ts).label("last_ts"),
        ).group_by(done.c.app_type, done.c.object_id)
        for d in conn.execute(done_query):
            row = found.setdefault((d.app_type, d.object_id), [0, 0, 0, d.last_ts])
            row[2], row[3] = d.completions, max(row[3], d.last_ts)
    names = _item_names(conn, scope, split, totals, [*edge, relevant], days) if found else {}
    return [
        ItemRow(app_type, object_id, names.get((app_type, object_id)), *counts)
        for (app_type, object_id), counts in found.items()
    ]


def _item_names(
    conn: sa.Connection, scope: Scope, split: _Split, kinds: Sequence[str], edge: list, days: list
) -> dict[tuple, str]:
    """The most recent name of each item among its plays and completions (rollup rows keep their latest)."""
    r = report_days
    named = sa.union_all(
        sa.select(r.c.app_type, r.c.object_id, r.c.name, r.c.name_ts.label("ts")).where(
            *_day_where(scope, split, *kinds), *days, r.c.name.is_not(None)
        ),
        *_edges(
            scope,
            split,
            sa.select(e.c.app_type, e.c.object_id, e.c.object_name.label("name"), e.c.ts).where(
                *edge, e.c.object_name.is_not(None)
            ),
        ),
    ).subquery("named")
    query = sa.select(
        named.c.app_type, named.c.object_id, named.c.name, sa.func.max(named.c.ts).label("seen")
    ).group_by(named.c.app_type, named.c.object_id, named.c.name)
    latest: dict[tuple, tuple[int, str]] = {}
    for row in conn.execute(query):
        key = (row.app_type, row.object_id)
        if key not in latest or (row.seen, row.name) > latest[key]:
            latest[key] = (row.seen, row.name)
    return {key: name for key, (_, name) in latest.items()}


def sort_items(rows: list[ItemRow], sort: str = "plays", descending: bool = True) -> list[ItemRow]:
    """Rows ordered by one column; missing values (no name, no rate) always last; ties by app type and id."""
    if sort not in ITEM_SORTS:
        raise BadParameter("sort", f"sort must be one of {', '.join(ITEM_SORTS)}")
    stable = sorted(rows, key=lambda r: (r.app_type, r.object_id))
    present = [r for r in stable if getattr(r, sort) is not None]
    missing = [r for r in stable if getattr(r, sort) is None]
    return sorted(present, key=lambda r: getattr(r, sort), reverse=descending) + missing


# --- the step funnel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelStep:
    position: int
    step_id: str
    name: str | None
    reached: int  # sessions that played this step after every earlier one, in order
    played: int  # sessions that played this step at all, in any order

    def as_json(self, previous: int | None, first: int, following: int | None) -> dict:
        return {
            "position": self.position,
            "step_id": self.step_id,
            "name": self.name,
            "reached": self.reached,
            "played": self.played,
            "conversion": _ratio(self.reached, previous) if previous is not None else None,
            "conversion_from_first": _ratio(self.reached, first),
            "drop_off": _ratio(self.reached - following, self.reached) if following is not None else None,
        }


@dataclass(frozen=True)
class Funnel:
    app_type: str
    flow_id: str
    order: str  # "given" (steps=…) or "observed"
    steps: list[FunnelStep]
    more_steps: int = 0  # observed steps left out past MAX_FUNNEL_STEPS

    def step_json(self) -> list[dict]:
        reached = [s.reached for s in self.steps]
        first = reached[0] if reached else 0
        return [
            step.as_json(
                reached[i - 1] if i else None,
                first,
                reached[i + 1] if i + 1 < len(reached) else None,
            )
            for i, step in enumerate(self.steps)
        ]


def funnel(
    conn: sa.Connection, scope: Scope, app_type: str, flow_id: str, steps: Sequence[str] | None = None
) -> Funnel:
    """The step funnel of one Walk-Thru (`wt`) or Smart Walk-Thru (`bizFlow`).

    A step event is a `play` of the flow's step app type whose `data.owId` is the flow, or, without
    `owId`, whose play instance `data.pId` (`<ms>-<flow id>-<guid>`) names the flow. Each event is
    placed in its owner's session (the `sessions` row whose [start_ts, end_ts] holds it; events not
    yet sessionized are not counted). A session reaches step k when it played steps 1..k in that
    order (each at or after the previous one); a session counts once per step however often it
    replays, so a restart counts once. Step order: `steps` if given, else the observed order: by each
    step's mean position among the steps a session played (see `_step_stats`), then by sessions.
    """
    if app_type not in FLOW_STEP_TYPES:
        raise BadParameter("app_type", f"funnels exist for {' and '.join(FLOW_STEP_TYPES)}, not {app_type!r}")
    _tune(conn)
    # The step plays of the flow, with the flow taken out of their payload at ingest (reports/rollup.py).
    st = report_steps
    where = [
        st.c.project_id == scope.project_id,
        st.c.app_type == FLOW_STEP_TYPES[app_type],
        st.c.flow_id == flow_id,
        st.c.ts >= scope.range.start,
        st.c.ts < scope.range.end,
    ]
    if scope.members is not None:
        where.append(st.c.user_key.in_(_member_keys(scope.project_id, scope.members)))
    if steps is not None:
        where.append(st.c.step_id.in_(list(steps)))
    owned = (
        sa.select(
            _owner(st.c.user_key, scope.project_id).label("owner"),
            st.c.step_id.label("step"),
            st.c.ts,
            st.c.name,
        )
        .where(*where)
        .subquery("owned")
    )
    s = sessions
    placed = sa.select(owned.c.owner, s.c.start_ts, owned.c.step, owned.c.ts, owned.c.name).join(
        s,
        sa.and_(
            s.c.project_id == scope.project_id,
            s.c.user_key == owned.c.owner,
            s.c.start_ts <= owned.c.ts,
            s.c.end_ts >= owned.c.ts,
        ),
    )
    # The flow's step plays are read once, into a temporary table the following queries share; on
    # PostgreSQL it is analysed, so the step-to-step joins are planned on true row counts.
    table = _placed_table()
    table.create(conn)
    conn.execute(table.insert().from_select(["owner", "session", "step", "ts", "name"], placed))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {table.name}")
    played, position = _step_stats(conn, table)
    order, more = "given", 0
    if steps is None:
        observed = sorted(played, key=lambda step: (position[step], -played[step], step))
        order, more, steps = "observed", max(0, len(observed) - MAX_FUNNEL_STEPS), observed[:MAX_FUNNEL_STEPS]
    reached = _reached(conn, table, list(steps))
    names = _latest_step_names(conn, table)
    table.drop(conn)
    rows = [FunnelStep(i + 1, step, names.get(step), reached[i], played.get(step, 0)) for i, step in enumerate(steps)]
    return Funnel(app_type, flow_id, order, rows, more)


def _placed_table() -> sa.Table:
    """A connection's temporary table of one flow's step plays, each with its owner and session."""
    return sa.Table(
        "report_placed_steps",
        sa.MetaData(),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("session", sa.BigInteger, nullable=False),  # the session's start_ts
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text),
        prefixes=["TEMPORARY"],
    )


def _latest_step_names(conn: sa.Connection, placed: sa.Table) -> dict[str, str]:
    query = (
        sa.select(placed.c.step, placed.c.name, sa.func.max(placed.c.ts).label("seen"))
        .where(placed.c.name.is_not(None))
        .group_by(placed.c.step, placed.c.name)
    )
    latest: dict[str, tuple[int, str]] = {}
    for row in conn.execute(query):
        if row.step not in latest or (row.seen, row.name) > latest[row.step]:
            latest[row.step] = (row.seen, row.name)
    return {step: name for step, (_, name) in latest.items()}


def _step_stats(conn: sa.Connection, placed: sa.Table) -> tuple[dict[str, int], dict[str, float]]:
    """Per step: the sessions that played it, and its mean position among the flow's steps each such
    session played (by first play) — the observed order."""
    firsts = (
        sa.select(placed.c.owner, placed.c.session, placed.c.step, sa.func.min(placed.c.ts).label("t"))
        .group_by(placed.c.owner, placed.c.session, placed.c.step)
        .subquery("firsts")
    )
    ranked = sa.select(
        firsts.c.step,
        sa.func.row_number()
        .over(partition_by=(firsts.c.owner, firsts.c.session), order_by=(firsts.c.t, firsts.c.step))
        .label("pos"),
    ).subquery("ranked")
    query = sa.select(
        ranked.c.step, sa.func.count().label("sessions"), sa.func.avg(ranked.c.pos).label("pos")
    ).group_by(ranked.c.step)
    played, position = {}, {}
    for row in conn.execute(query):
        played[row.step], position[row.step] = row.sessions, float(row.pos)
    return played, position


def _reached(conn: sa.Connection, placed: sa.Table, steps: list[str]) -> list[int]:
    """Sessions reaching each step in order, greedily: the earliest play of step 1, then the earliest
    play of step k at or after the play matched for step k-1 (which finds an in-order run if any exists)."""
    if not steps:
        return []
    chain: list[sa.CTE] = []
    for k, step in enumerate(steps):
        query = sa.select(placed.c.owner, placed.c.session, sa.func.min(placed.c.ts).label("t")).where(
            placed.c.step == step
        )
        if chain:
            prev = chain[-1]
            query = query.join(prev, sa.and_(prev.c.owner == placed.c.owner, prev.c.session == placed.c.session)).where(
                placed.c.ts >= prev.c.t
            )
        chain.append(query.group_by(placed.c.owner, placed.c.session).cte(f"reach{k}"))
    counts = sa.select(
        *(sa.select(sa.func.count()).select_from(c).scalar_subquery().label(f"n{k}") for k, c in enumerate(chain))
    )
    return list(conn.execute(counts).one())


# --- the widget -------------------------------------------------------------------------------------


@dataclass
class WidgetReport:
    days: list[dict] = field(default_factory=list)  # {"day", "opens", "searches", "unique_users"}
    totals: dict = field(default_factory=dict)
    top_search_terms: list[dict] = field(default_factory=list)


def _is_open() -> sa.ColumnElement[bool]:
    return sa.and_(e.c.type == WIDGET_OPEN[0], e.c.app_type == WIDGET_OPEN[1])


def _is_search() -> sa.ColumnElement[bool]:
    return sa.or_(e.c.type == SEARCH_TYPE, e.c.app_type == SEARCH_APP_TYPE)


def widget(conn: sa.Connection, scope: Scope, terms: int = 10) -> WidgetReport:
    """Widget opens (`open` of `player`) and searches (type `search` or app type `widgetSearch`) per UTC
    day, with unique users (owners who opened or searched) per day and over the range, and the top terms.
    Whole days come from the daily rollup, the partial first and last day from the events."""
    _tune(conn)
    split = _Split.of(scope.range)
    r = report_days
    is_open = _is_open()
    uses = sa.union_all(
        sa.select(r.c.day, r.c.user_key, (r.c.kind == OPEN_KIND).label("is_open"), r.c.events.label("n")).where(
            *_day_where(scope, split, OPEN_KIND, *SEARCH_KINDS)
        ),
        *_edges(
            scope,
            split,
            sa.select(
                (e.c.ts // DAY_MS).label("day"), e.c.user_key, is_open.label("is_open"), sa.literal(1).label("n")
            ).where(sa.or_(is_open, _is_search())),
        ),
    ).subquery("uses")
    owner = _owner(uses.c.user_key, scope.project_id)
    opens = sa.func.sum(sa.case((uses.c.is_open, uses.c.n), else_=0)).label("opens")
    searches = sa.func.sum(sa.case((uses.c.is_open, 0), else_=uses.c.n)).label("searches")
    users = sa.func.count(sa.distinct(owner)).label("unique_users")
    by_day = {row.day: row for row in conn.execute(sa.select(uses.c.day, opens, searches, users).group_by(uses.c.day))}
    total = conn.execute(sa.select(opens, searches, users)).one()
    report = WidgetReport(
        totals={
            "opens": int(total.opens or 0),
            "searches": int(total.searches or 0),
            "unique_users": total.unique_users,
        }
    )
    first, last = scope.range.start // DAY_MS, (scope.range.end - 1) // DAY_MS
    for n in range(first, last + 1):
        row = by_day.get(n)
        report.days.append(
            {
                "day": _day_name(n),
                "opens": int(row.opens) if row else 0,
                "searches": int(row.searches) if row else 0,
                "unique_users": row.unique_users if row else 0,
            }
        )
    report.top_search_terms = search_terms(conn, scope, terms) if terms else []
    return report


def search_terms(conn: sa.Connection, scope: Scope, limit: int) -> list[dict]:
    """The most searched terms (`data.oName` of search events, as sent), with searches and unique users."""
    _tune(conn)
    split = _Split.of(scope.range)
    r = report_days
    searched = sa.union_all(
        sa.select(r.c.detail.label("term"), r.c.user_key, r.c.events.label("n")).where(
            *_day_where(scope, split, SEARCH_KINDS[0])
        ),
        *_edges(
            scope,
            split,
            sa.select(e.c.object_name.label("term"), e.c.user_key, sa.literal(1).label("n")).where(
                _is_search(), e.c.object_name.is_not(None)
            ),
        ),
    ).subquery("searched")
    count = sa.func.sum(searched.c.n)
    query = (
        sa.select(
            searched.c.term,
            count.label("searches"),
            sa.func.count(sa.distinct(_owner(searched.c.user_key, scope.project_id))).label("unique_users"),
        )
        .group_by(searched.c.term)
        .order_by(count.desc(), searched.c.term)
        .limit(limit)
    )
    return [{"term": t.term, "searches": int(t.searches), "unique_users": t.unique_users} for t in conn.execute(query)]


def _day_name(day_number: int) -> str:
    return dt.datetime.fromtimestamp(day_number * 86_400, dt.UTC).strftime("%Y-%m-%d")
