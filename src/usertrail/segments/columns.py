"""Column-wise segment counts: a process-local copy of the attributes rules test, kept current.

A count in SQL reads one row-store row (and one attribute row) per user the cheaper tests leave
undecided: seconds at a million users when every rule is broad (docs/benchmarks.md, Segments).
Here each attribute a rule tests is one array over the project's end users: numbers (standard
numbers, times in ms, custom numbers and booleans as 1.0 / 0.0) as float64 with NaN for "not
set"; strings (standard strings, analytics properties, custom strings and `YYYY-MM-DD` dates) as
int32 codes into the column's distinct values, -1 for "not set". A rule is one vectorised test
(a string test runs once per distinct value, then one table lookup per user), groups are `&` / `|`
of those masks. The semantics are the SQL Compiler's (segments/sql.py), test for test: a positive
test is false without a value, a negation is the NOT of its positive, dates compare as their text.

What is read: only the columns some counted tree named, loaded from the database on first use
(one pass over `end_users` or `custom_attributes` of the project) and kept per project.

Freshness: every writer of `end_users` / `custom_attributes` records the change in the same
transaction (store/changes.py). Each count opens one snapshot (REPEATABLE READ on PostgreSQL, a
deferred read transaction on SQLite), reads the project's change counter, and, if it moved since
the copy was made, re-reads only the users changed in between (or the whole project after a
rebuild, a large import, or a gap the pruned log no longer covers), all in that snapshot. So a
count reflects every change committed before it started, in any process.

Not columnar (the caller counts in SQL instead, never an approximation): history rules (`changed_to`,
`was`), behaviour rules, analytics properties holding a non-string value somewhere in the project
(the two engines compare those differently), and, on PostgreSQL, a regular expression over a
column with more than `REGEX_VALUES` distinct values (PostgreSQL's own regex engine is asked about
each distinct value, to match its semantics exactly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import sqlalchemy as sa

from usertrail.segments.model import NEGATIONS, AttributeRule, BehaviourRule, Group, Interval, Node, date_string_bound
from usertrail.segments.sql import Compiler
from usertrail.store.changes import changed_since, read_state
from usertrail.store.schema import custom_attributes, end_users
from usertrail.store.users import STANDARD_COLUMNS

log = logging.getLogger(__name__)

REGEX_VALUES = 100_000
_CHUNK = 2_000  # keys per `IN (…)` when re-reading changed users
# Rebuild rather than patch when this share of rows was appended or deleted since the last build
# (appended keys sit outside the sorted index; deleted rows keep their place until a build).
_REBUILD_SHARE = 0.1
_OVERSIZED_RETRY_S = 3600.0

Source = tuple[str, str]  # ("end_users", column) | ("analytics", property) | ("custom", slot)


class NotColumnar(Exception):
    """The tree has a rule this evaluator cannot answer exactly."""


@dataclass
class _Numbers:
    values: np.ndarray  # float64, NaN = not set

    def nbytes(self) -> int:
        return self.values.nbytes


@dataclass
class _Texts:
    codes: np.ndarray  # int32 into `values`, -1 = not set
    values: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    exact: bool = True  # False: an analytics property holds a non-string value somewhere
    text_bytes: int = 0  # the distinct values, in the list and the dict

    def code(self, value: object) -> int:
        if value is None:
            return -1
        if not isinstance(value, str):
            self.exact = False
            return -1
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.values)
            self.values.append(value)
            self.text_bytes += 150 + len(value)  # the str object, its list slot and its dict entry
        return found

    def nbytes(self) -> int:
        return self.codes.nbytes + self.text_bytes


_Column = _Numbers | _Texts


def _is_text(source: Source) -> bool:
    kind, name = source
    if kind == "analytics":
        return True
    if kind == "custom":
        return name.startswith("t")
    return not isinstance(end_users.c[name].type, sa.Integer | sa.BigInteger | sa.Float)


def source_of(rule: AttributeRule) -> Source:
    """Where the rule's value lives (raises NotColumnar for rules that read no single value)."""
    attribute = rule.attribute
    if rule.operator in ("changed_to", "was"):
        raise NotColumnar(f"{rule.path}: history rules read attribute_changes")
    if attribute.kind == "standard":
        return ("end_users", STANDARD_COLUMNS[attribute.name].name)
    if attribute.kind == "analytics":
        return ("analytics", attribute.name)
    if attribute.slot is None:
        raise NotColumnar(f"{rule.path}: custom attribute without a slot")
    return ("custom", attribute.slot)


def sources_of(node: Node) -> set[Source]:
    if isinstance(node, Group):
        return set().union(*(sources_of(child) for child in node.rules))
    if isinstance(node, BehaviourRule):
        raise NotColumnar(f"{node.path}: behaviour rules read events")
    return {source_of(node)}


class _Keys:
    """The project's user keys: sorted at the build (binary search), plus a dict of keys appended since."""

    def __init__(self, keys: list[str]) -> None:
        encoded = [k.encode() for k in keys]
        width = max(map(len, encoded), default=1)
        # Fixed-width bytes are compact, but drop trailing NULs and need one width for all keys.
        if width <= 64 and not any(e.endswith(b"\0") for e in encoded):
            self.sorted = np.array(encoded, dtype=f"S{width}")
            self.width: int | None = width
        else:
            self.sorted = np.array(keys, dtype=object)
            self.width = None
        self.sorted = self.sorted[np.argsort(self.sorted, kind="stable")]
        self.appended: dict[str, int] = {}
        self._bytes = self.sorted.nbytes + (0 if self.width is not None else sum(60 + len(k) for k in keys))

    def positions(self, keys: list[str]) -> np.ndarray:
        """Each key's row (-1 if not present)."""
        found = np.full(len(keys), -1, dtype=np.int64)
        if len(self.sorted):
            if self.width is None:
                probe = np.array(keys, dtype=object)
                fits = np.ones(len(keys), dtype=bool)
            else:
                encoded = [k.encode() for k in keys]
                fits = np.array([len(e) <= self.width and not e.endswith(b"\0") for e in encoded], dtype=bool)
                probe = np.array([e if f else b"" for e, f in zip(encoded, fits, strict=True)], dtype=self.sorted.dtype)
            at = np.minimum(np.searchsorted(self.sorted, probe), len(self.sorted) - 1)
            hit = fits & (self.sorted[at] == probe)
            found[hit] = at[hit]
        if self.appended:
            for i, key in enumerate(keys):
                if found[i] < 0:
                    found[i] = self.appended.get(key, -1)
        return found

    def nbytes(self) -> int:
        return self._bytes + len(self.appended) * 120


class _Project:
    """One project's columns as of `version` (rows in key order at the build, then appended)."""

    def __init__(self, version: int, rebuilt_version: int, keys: list[str]) -> None:
        self.version, self.rebuilt_version = version, rebuilt_version
        self.keys = _Keys(keys)
        self.size = len(keys)
        self.capacity = max(16, len(keys))
        self.alive = np.zeros(self.capacity, dtype=bool)
        self.alive[: self.size] = True
        self.deleted = 0
        self.columns: dict[Source, _Column] = {}
        self.used = time.monotonic()

    def nbytes(self) -> int:
        return self.keys.nbytes() + self.alive.nbytes + sum(c.nbytes() for c in self.columns.values())

    def stale_layout(self) -> bool:
        churn = len(self.keys.appended) + self.deleted
        return churn > _REBUILD_SHARE * max(1, self.size)

    def grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        self.alive = np.concatenate([self.alive, np.zeros(capacity - self.capacity, dtype=bool)])
        for column in self.columns.values():
            if isinstance(column, _Numbers):
                column.values = np.concatenate([column.values, np.full(capacity - self.capacity, np.nan)])
            else:
                column.codes = np.concatenate([column.codes, np.full(capacity - self.capacity, -1, dtype=np.int32)])
        self.capacity = capacity


class ColumnStore:
    """Column-wise counts for the projects of one database, at most `max_bytes` of columns per process
    (least recently used projects are dropped first; a project that alone exceeds it is counted in SQL)."""

    def __init__(self, engine: sa.Engine, max_bytes: int, background: bool = False) -> None:
        """`background`: a count that would first have to load columns from the database (seconds at a million
        users) starts that load in a thread and answers None (count in SQL) until it is done, and a count
        arriving while a load runs does the same; otherwise (commands, tests) the count loads and waits."""
        self.engine, self.max_bytes, self.background = engine, max_bytes, background
        self._projects: dict[int, _Project] = {}
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self.loads = 0  # background loads started
        # Projects whose columns alone exceeded the budget, and when: counted in SQL without loading them
        # again at every count (retried after `_OVERSIZED_RETRY_S`, the project may have shrunk).
        self._oversized: dict[int, float] = {}
        self.last: dict[str, float | int | str] = {}  # what the last count did (for benchmarks and logs)

    def count(self, project_id: int, tree: Group, now: int) -> int | None:
        """The number of members, or None when the tree is not columnar (count it in SQL)."""
        if self.max_bytes <= 0:
            return None
        try:
            sources = sources_of(tree)
        except NotColumnar:
            return None
        if time.monotonic() - self._oversized.get(project_id, -_OVERSIZED_RETRY_S) < _OVERSIZED_RETRY_S:
            return None
        if not self._lock.acquire(blocking=not self.background):
            return None  # a background load holds the columns
        try:
            return self._count(project_id, tree, now, sources)
        finally:
            self._lock.release()

    def wait(self) -> None:
        """Until a background load started by `count` has finished."""
        loader = self._loader
        if loader is not None:
            loader.join()

    def _count(self, project_id: int, tree: Group, now: int, sources: set[Source]) -> int | None:
        with self._snapshot() as conn:
            if self.background and self._must_load(conn, project_id, sources):
                self._loader = threading.Thread(
                    target=self._load_in_background, args=(project_id, sources), name="usertrail-columns", daemon=True
                )
                self._loader.start()
                self.loads += 1
                self.last.update(action="loading")
                return None
            began = time.perf_counter()
            project = self._current(conn, project_id, sources)
            prepared = time.perf_counter()
            if project is None:
                return None
            try:
                mask = _Evaluator(project, now, conn).mask(tree)
            except NotColumnar:
                return None
            result = int(np.count_nonzero(mask & project.alive[: project.size]))
            self.last.update(prepare_ms=(prepared - began) * 1000, evaluate_ms=(time.perf_counter() - prepared) * 1000)
            self._evict(keep=project_id)
            return result

    def _must_load(self, conn: sa.Connection, project_id: int, sources: set[Source]) -> bool:
        """Whether bringing the project's copy up to date means reading whole columns (not a few changed users)."""
        project = self._projects.get(project_id)
        if project is None or not sources <= set(project.columns):
            return True
        state = read_state(conn, project_id)
        return (
            state.rebuilt_version > project.version or state.pruned_version > project.version or project.stale_layout()
        )

    def _load_in_background(self, project_id: int, sources: set[Source]) -> None:
        try:
            with self._lock, self._snapshot() as conn:
                self._current(conn, project_id, sources)
                self._evict(keep=project_id)
        except Exception:  # the counts go on in SQL; the next one tries again
            log.exception("loading the segment columns of project %d failed", project_id)

    def memory(self) -> int:
        """Bytes held by the columns of every project (an estimate of the arrays and distinct values)."""
        return sum(p.nbytes() for p in self._projects.values())

    def _snapshot(self):
        return _Reading(self.engine.connect())

    def _current(self, conn: sa.Connection, project_id: int, sources: set[Source]) -> _Project | None:
        """The project's columns brought to the snapshot's version, with `sources` loaded."""
        state = read_state(conn, project_id)
        project = self._projects.get(project_id)
        rebuild = (
            project is None
            or state.rebuilt_version > project.version
            or state.pruned_version > project.version
            or project.stale_layout()
        )
        if rebuild:
            # Columns a previous copy held are loaded again with the ones asked for.
            previous = self._projects.pop(project_id, None)
            sources = sources | set(previous.columns if previous is not None else ())
            keys = list(
                conn.execute(sa.select(end_users.c.user_key).where(end_users.c.project_id == project_id)).scalars()
            )
            project = _Project(state.version, state.rebuilt_version, keys)
            self.last.update(action="build", changed=len(keys))
        elif state.version != project.version:  # type: ignore[union-attr]
            changed = changed_since(conn, project_id, project.version, state.version)  # type: ignore[union-attr]
            _refresh(conn, project_id, project, changed)  # type: ignore[arg-type]
            project.version = state.version  # type: ignore[union-attr]
            self.last.update(action="refresh", changed=len(changed))
        else:
            self.last.update(action="none", changed=0)
        missing = sources - set(project.columns)  # type: ignore[union-attr]
        if missing:
            _load(conn, project_id, project, missing)  # type: ignore[arg-type]
        project.used = time.monotonic()  # type: ignore[union-attr]
        self._projects[project_id] = project  # type: ignore[assignment]
        if project.nbytes() > self.max_bytes:  # type: ignore[union-attr]
            del self._projects[project_id]
            self._oversized[project_id] = time.monotonic()
            return None
        return project

    def _evict(self, keep: int) -> None:
        while self.memory() > self.max_bytes and len(self._projects) > 1:
            oldest = min((p for p in self._projects if p != keep), key=lambda p: self._projects[p].used)
            del self._projects[oldest]


class _Reading:
    """A read-only snapshot: one transaction, rolled back at the end."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sa.Connection:
        self.conn.begin()
        if self.conn.dialect.name == "postgresql":
            # The transaction's first statement, so every read below sees one snapshot (no session
            # setting to reset when the connection goes back to the pool). SQLite's deferred BEGIN
            # takes its snapshot at the first read already.
            self.conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


# --- reading the columns ---------------------------------------------------------------------


def _end_user_columns(sources: Iterable[Source]) -> tuple[list[str], list[str]]:
    """The `end_users` columns and the analytics properties among `sources`."""
    plain = sorted(name for kind, name in sources if kind == "end_users")
    analytics = sorted(name for kind, name in sources if kind == "analytics")
    return plain, analytics


def _empty(source: Source, capacity: int) -> _Column:
    if _is_text(source):
        return _Texts(np.full(capacity, -1, dtype=np.int32))
    return _Numbers(np.full(capacity, np.nan))


def _load(conn: sa.Connection, project_id: int, project: _Project, sources: set[Source]) -> None:
    """Read whole columns for every user of the project (one pass per table)."""
    for source in sources:
        project.columns[source] = _empty(source, project.capacity)
    plain, analytics = _end_user_columns(sources)
    if plain or analytics:
        selected = [end_users.c[name] for name in plain]
        if analytics:
            selected.append(end_users.c.analytics_properties)
        rows = conn.execute(
            sa.select(end_users.c.user_key, *selected).where(end_users.c.project_id == project_id)
        ).all()
        _assign(project, rows, [("end_users", n) for n in plain], analytics)
    slots = sorted(name for kind, name in sources if kind == "custom")
    if slots:
        rows = conn.execute(
            sa.select(custom_attributes.c.user_key, *(custom_attributes.c[s] for s in slots)).where(
                custom_attributes.c.project_id == project_id
            )
        ).all()
        _assign(project, rows, [("custom", s) for s in slots], [])


def _assign(project: _Project, rows: list, plain: list[Source], analytics: list[str]) -> None:
    """Write rows `(user_key, *plain values[, analytics JSON])` into their users' places (rows of keys
    the project does not hold, such as attribute rows of users without an End User Object, are skipped)."""
    if not rows:
        return
    keys = [r[0] for r in rows]
    at = project.keys.positions(keys)
    held = at >= 0
    where = at[held]
    picked = [r for r, h in zip(rows, held.tolist(), strict=True) if h]
    for i, source in enumerate(plain, start=1):
        _set(project.columns[source], where, [r[i] for r in picked])
    if analytics:
        documents = [msgspec.json.decode(r[-1]) if r[-1] else {} for r in picked]
        for name in analytics:
            _set(project.columns[("analytics", name)], where, [d.get(name) for d in documents])


def _set(column: _Column, where: np.ndarray, values: list) -> None:
    if isinstance(column, _Numbers):
        column.values[where] = np.array(values, dtype=np.float64)
    else:
        code = column.code
        column.codes[where] = np.fromiter((code(v) for v in values), dtype=np.int32, count=len(values))


def _refresh(conn: sa.Connection, project_id: int, project: _Project, changed: list[str]) -> None:
    """Re-read these users' rows (their End User Object and attribute row) into the columns."""
    plain, analytics = _end_user_columns(project.columns)
    slots = sorted(name for kind, name in project.columns if kind == "custom")
    for start in range(0, len(changed), _CHUNK):
        chunk = changed[start : start + _CHUNK]
        selected = [end_users.c[name] for name in plain]
        if analytics:
            selected.append(end_users.c.analytics_properties)
        rows = conn.execute(
            sa.select(end_users.c.user_key, *selected).where(
                end_users.c.project_id == project_id, end_users.c.user_key.in_(chunk)
            )
        ).all()
        present = {r[0] for r in rows}
        at = project.keys.positions(chunk)
        for key, position in zip(chunk, at.tolist(), strict=True):
            if key not in present and position >= 0 and project.alive[position]:
                project.alive[position] = False  # erased, forgotten or deleted by retention
                project.deleted += 1
        new = [key for key, position in zip(chunk, at.tolist(), strict=True) if key in present and position < 0]
        if new:
            project.grow(project.size + len(new))
            for key in new:
                project.keys.appended[key] = project.size
                project.alive[project.size] = True
                project.size += 1
        for position in project.keys.positions(sorted(present)).tolist():
            if not project.alive[position]:  # deleted, then written again
                project.alive[position] = True
                project.deleted -= 1
        # Every loaded column of these users is rewritten: values that are gone become "not set".
        held = project.keys.positions(chunk)
        held = held[held >= 0]
        for column in project.columns.values():
            if isinstance(column, _Numbers):
                column.values[held] = np.nan
            else:
                column.codes[held] = -1
        _assign(project, rows, [("end_users", n) for n in plain], analytics)
        if slots:
            attribute_rows = conn.execute(
                sa.select(custom_attributes.c.user_key, *(custom_attributes.c[s] for s in slots)).where(
                    custom_attributes.c.project_id == project_id, custom_attributes.c.user_key.in_(chunk)
                )
            ).all()
            _assign(project, attribute_rows, [("custom", s) for s in slots], [])


# --- evaluating a tree -----------------------------------------------------------------------


class _Evaluator:
    def __init__(self, project: _Project, now: int, conn: sa.Connection) -> None:
        self.project, self.now, self.conn = project, now, conn
        self.size = project.size

    def mask(self, node: Node) -> np.ndarray:
        if isinstance(node, Group):
            masks = [self.mask(child) for child in node.rules]
            combine = np.logical_and if node.match == "all" else np.logical_or
            result = masks[0]
            for other in masks[1:]:
                result = combine(result, other)
            return result
        assert isinstance(node, AttributeRule)  # behaviour rules were refused by sources_of
        if node.operator in NEGATIONS:
            return ~self._positive(node, NEGATIONS[node.operator])
        return self._positive(node, node.operator)

    def _positive(self, rule: AttributeRule, op: str) -> np.ndarray:
        column = self.project.columns[source_of(rule)]
        if isinstance(column, _Texts):
            if not column.exact:
                raise NotColumnar(f"{rule.path}: an analytics property holds non-string values")
            codes = column.codes[: self.size]
            table = np.append(self._text_test(rule, op, column.values), False)  # code -1 reads the False
            return table[codes]
        return self._number_test(rule, op, column.values[: self.size])

    def _number_test(self, rule: AttributeRule, op: str, v: np.ndarray) -> np.ndarray:
        value = rule.value
        with np.errstate(invalid="ignore"):  # NaN (not set) compares false, as NULL does in SQL
            if op == "is_set":
                return ~np.isnan(v)
            if op in ("is_true", "is_false"):
                return v == (1.0 if value else 0.0)
            if isinstance(value, Interval):
                lo, hi = value.bounds(self.now)
                result = ~np.isnan(v)
                if lo is not None:
                    result &= v >= lo
                if hi is not None:
                    result &= v < hi
                return result
            if op == "between":
                lo, hi = value  # type: ignore[misc]
                return (v >= lo) & (v <= hi)
            compare: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
                "eq": np.equal, "lt": np.less, "lte": np.less_equal, "gt": np.greater, "gte": np.greater_equal,
            }  # fmt: skip
            return compare[op](v, value)

    def _text_test(self, rule: AttributeRule, op: str, values: list[str]) -> np.ndarray:
        """The test on each distinct value (the SQL Compiler's test on a non-NULL text)."""
        v = rule.value
        if op == "matches_regex" and self.conn.dialect.name == "postgresql":
            return self._postgres_regex(rule, values)
        test: Callable[[str], bool]
        if op == "is_set":
            return np.ones(len(values), dtype=bool)
        if op == "is":
            test = v.__eq__  # type: ignore[assignment]
        elif op == "is_one_of":
            options = frozenset(v)  # type: ignore[arg-type]
            test = options.__contains__
        elif op == "contains":
            test = lambda s: v in s  # noqa: E731
        elif op == "starts_with":
            test = lambda s: s.startswith(v)  # noqa: E731
        elif op == "ends_with":
            test = lambda s: s.endswith(v)  # noqa: E731
        elif op == "matches_regex":
            import re

            pattern = re.compile(v)  # type: ignore[arg-type]  # SQLite's REGEXP is Python's re.search
            test = lambda s: pattern.search(s) is not None  # noqa: E731
        elif isinstance(v, Interval):
            # Custom dates are `YYYY-MM-DD` text, compared as text with the bounds' dates (as in SQL).
            lo, hi = (date_string_bound(b) for b in v.bounds(self.now))
            test = lambda s: (lo is None or s >= lo) and (hi is None or s < hi)  # noqa: E731
        else:
            raise NotColumnar(f"{rule.path}: operator {op} on text")
        return np.fromiter(map(test, values), dtype=bool, count=len(values))

    def _postgres_regex(self, rule: AttributeRule, values: list[str]) -> np.ndarray:
        """PostgreSQL's POSIX regular expressions differ from Python's: ask it about each distinct value."""
        if len(values) > REGEX_VALUES:
            raise NotColumnar(f"{rule.path}: too many distinct values for a regular expression")
        if not values:
            return np.zeros(0, dtype=bool)
        matching = set(
            self.conn.execute(
                sa.text("SELECT o - 1 FROM unnest(CAST(:values AS text[])) WITH ORDINALITY AS t(v, o) WHERE v ~ :p"),
                {"values": values, "p": rule.value},
            ).scalars()
        )
        return np.fromiter((i in matching for i in range(len(values))), dtype=bool, count=len(values))


def member_count(columns: ColumnStore | None, conn: sa.Connection, compiler: Compiler, tree: Group) -> int:
    """The live member count: column-wise when the tree allows it, else the SQL Compiler's on `conn`."""
    if columns is not None:
        found = columns.count(compiler.project_id, tree, compiler.now)
        if found is not None:
            return found
    return int(conn.execute(compiler.count(tree)).scalar_one())
