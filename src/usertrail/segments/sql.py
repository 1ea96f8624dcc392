"""Rule trees compiled to SQL over `end_users`, for member lists and counts on SQLite and PostgreSQL.

Each rule becomes a definite true/false condition (never NULL), so NOT and OR behave as in the
in-process evaluator: a positive condition is false for a user without the value, and a negative
operator is the NOT of its positive. Within each group the tests run cheapest first (the row's
columns, its analytics JSON, custom attributes, history, behaviour). Custom attributes live in one
`custom_attributes` row per user, so every custom-attribute rule is a test on a column of that row,
joined once (outer) for any number of rules. "Changed to" / "was" rules read the history rows
(`attribute_changes`, one per user and write): a rule every member must pass becomes a
`user_key IN (subquery)` set over the rows of its time window, anywhere else an `EXISTS` per user.
Behaviour rules are uncorrelated sets filtered by project. The only dialect differences are JSON
access and case-sensitive substring tests, both twinned below.
"""

from __future__ import annotations

import math
import re

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from usertrail.segments.model import (
    NEGATIONS,
    AttributeRule,
    BehaviourRule,
    Group,
    Interval,
    Node,
    Target,
    behaviour_windows,
    date_string_bound,
)
from usertrail.sessions.rules import PAGE_TYPES
from usertrail.store.attributes import stored
from usertrail.store.schema import attribute_changes, custom_attributes, end_users, events, identity_links
from usertrail.store.users import STANDARD_COLUMNS

u = end_users


class Compiler:
    """Compiles rule trees of one project, as of `now`, for one SQL dialect ("sqlite" or "postgresql")."""

    def __init__(self, project_id: int, now: int, dialect: str) -> None:
        self.project_id, self.now, self.dialect = project_id, now, dialect
        self.row = custom_attributes.alias("ca")

    def members(self, tree: Group) -> sa.Select:
        """SELECT user_key of every member."""
        query = sa.select(u.c.user_key).select_from(self._joined(tree))
        return query.where(u.c.project_id == self.project_id, self._condition(tree, top=True))

    def count(self, tree: Group) -> sa.Select:
        query = sa.select(sa.func.count()).select_from(self._joined(tree))
        return query.where(u.c.project_id == self.project_id, self._condition(tree, top=True))

    def _joined(self, tree: Group) -> sa.FromClause:
        """`end_users`, with the user's custom-attribute row (outer) joined once if any rule reads it."""
        if not _reads_row(tree):
            return u
        return u.outerjoin(self.row, self._row_on())

    def _row_on(self) -> sa.ColumnElement[bool]:
        return sa.and_(self.row.c.project_id == u.c.project_id, self.row.c.user_key == u.c.user_key)

    def condition(self, node: Node) -> sa.ColumnElement[bool]:
        """The tree as one WHERE condition on `end_users` (correlated with its row).

        Tests that read the custom-attribute row are evaluated in one correlated subquery that
        outer-joins the row once; the others stay outside it, so the planner can still use
        `end_users` indexes for them.
        """
        if not _reads_row(node):
            return self._condition(node, top=True)
        if isinstance(node, Group) and node.match == "all":
            plain = [child for child in node.rules if not _reads_row(child)]
            reading = [child for child in node.rules if _reads_row(child)]
        else:
            plain, reading = [], [node]
        tests = [self._condition(child, top=True) for child in sorted(plain, key=_cost)]
        # Positive tests of the row hold for no user without one, so they select rows: `user_key IN (rows
        # that pass)`, one pass over the project's attribute rows instead of a lookup per user; the
        # others (negations: users without a row match them) stay a test per user.
        holding = [child for child in reading if _positive_row_test(child)]
        if holding:
            passing = [self._condition(child, top=True) for child in sorted(holding, key=_cost)]
            rows = sa.select(self.row.c.user_key).where(self.row.c.project_id == self.project_id, *passing)
            tests.append(u.c.user_key.in_(rows))
        rest = [child for child in reading if not _positive_row_test(child)]
        if rest:
            one = sa.select(sa.literal(1).label("one")).subquery("one")
            inside = [self._condition(child, top=True) for child in sorted(rest, key=_cost)]
            tests.append(
                sa.exists(sa.select(sa.literal(1)).select_from(one.outerjoin(self.row, self._row_on())).where(*inside))
            )
        return sa.and_(*tests)

    def _condition(self, node: Node, top: bool = False) -> sa.ColumnElement[bool]:
        if isinstance(node, Group):
            # Both AND and OR stop at the first deciding operand, so the cheap tests go first.
            children = sorted(node.rules, key=_cost)
            parts = [self._condition(child, top and node.match == "all") for child in children]
            return sa.and_(*parts) if node.match == "all" else sa.or_(*parts)
        if node.operator in NEGATIONS:
            return sa.not_(self._positive(node, NEGATIONS[node.operator], top=False))
        return self._positive(node, node.operator, top)

    # --- attribute rules -------------------------------------------------------------------

    def _positive(self, rule: AttributeRule | BehaviourRule, op: str, top: bool) -> sa.ColumnElement[bool]:
        """`top`: the rule must hold for every member (it is ANDed from the root, not negated), so a
        history rule may become a `user_key IN (set)` the planner can start from; elsewhere it is an
        `EXISTS` per user, run only for the users the cheaper tests before it leave undecided."""
        if isinstance(rule, BehaviourRule):
            return self._behaviour(rule)
        attribute = rule.attribute
        if attribute.kind == "custom":
            if op in ("changed_to", "was"):
                return self._change(rule, op, top)
            if attribute.slot is None:
                raise ValueError(
                    f"custom attribute {attribute.name!r} has no slot: build the catalog from the registry"
                )
            column: sa.ColumnElement = self.row.c[attribute.slot]
        elif attribute.kind == "standard":
            column = STANDARD_COLUMNS[attribute.name]
        else:
            return self._analytics(rule, op)
        return sa.and_(column.is_not(None), self._test(column, rule, op))

    def _analytics(self, rule: AttributeRule, op: str) -> sa.ColumnElement[bool]:
        """A test on an analytics property, a field of the row's JSON text.

        Parsing the JSON is the costly part, so it is done once per row (`coalesce` makes the test
        definite without a second `IS NOT NULL` parse, which PostgreSQL would run separately) and,
        when the value's JSON spelling is certain, only for rows whose text contains it: a plain
        substring search rules out most rows first. The CASE fixes that order on PostgreSQL, whose
        planner would otherwise run the JSON test first.
        """
        text = u.c.analytics_properties
        column = self._json_field(text, rule.attribute.name)
        if op == "is_set":
            return column.is_not(None)
        test = sa.func.coalesce(self._test(column, rule, op), sa.false())
        needles = _json_needles(rule, op)
        if not needles:
            return test
        return sa.case((sa.or_(*(self._contains(text, n) for n in needles)), test), else_=sa.false())

    def _change(self, rule: AttributeRule, op: str, top: bool) -> sa.ColumnElement[bool]:
        """A history rule: some write changed the attribute to (`changed_to`, within the last N days)
        or away from (`was`) the value."""
        h, slot = attribute_changes, rule.attribute.slot
        if slot is None:
            raise ValueError(
                f"custom attribute {rule.attribute.name!r} has no slot: build the catalog from the registry"
            )
        index = 1 if op == "changed_to" else 0
        value = stored(rule.value)  # as the history holds it: booleans as 1.0 / 0.0 (JSONB's true is not 1.0)
        if self.dialect == "postgresql":
            element = sa.cast(h.c.changes, JSONB)[slot][index]
            test = element == sa.cast(sa.literal(_json(value)), JSONB)
        else:
            test = sa.func.json_extract(h.c.changes, f"$.{slot}[{index}]") == sa.literal(value)
        where = [h.c.project_id == self.project_id, test]
        if op == "changed_to":
            where.append(h.c.changed_at >= self.now - rule.days * 86_400_000)  # type: ignore[operator]
        if top:
            return u.c.user_key.in_(sa.select(h.c.user_key).where(*where))
        # Correlated with `end_users` explicitly: inside `condition()`'s subquery over the attribute
        # row, `end_users` is two levels up, where automatic correlation does not look.
        return sa.exists(sa.select(sa.literal(1)).where(h.c.user_key == u.c.user_key, *where).correlate(u))

    def _test(self, value: sa.ColumnElement, rule: AttributeRule, op: str):
        """The positive test of `op` on a non-NULL value (booleans are stored as 1.0 / 0.0)."""
        v = rule.value
        if op == "is_set":
            return sa.true()
        if op == "is":
            return value == v
        if op == "is_one_of":
            return value.in_(list(v))  # type: ignore[arg-type]
        if op in ("is_true", "is_false"):
            return value == (1.0 if v else 0.0)
        if op == "contains":
            return self._contains(value, v)  # type: ignore[arg-type]
        if op == "starts_with":
            return sa.func.substr(value, 1, len(v)) == v  # type: ignore[arg-type]
        if op == "ends_with":
            return self._ends_with(value, v)  # type: ignore[arg-type]
        if op == "matches_regex":
            return value.regexp_match(v)
        if rule.attribute.type == "number" and isinstance(value.type, sa.Integer):
            return self._whole_test(value, rule, op)
        if op in ("eq", "lt", "lte", "gt", "gte"):
            return {
                "eq": value == v,
                "lt": value < v,
                "lte": value <= v,
                "gt": value > v,
                "gte": value >= v,
            }[op]
        if isinstance(v, Interval):
            lo, hi = v.bounds(self.now)
            if rule.attribute.type == "date":
                # Dates are stored as YYYY-MM-DD text, which orders as the dates do.
                lo, hi = date_string_bound(lo), date_string_bound(hi)  # type: ignore[assignment]
            parts = []
            if lo is not None:
                parts.append(value >= lo)
            if hi is not None:
                parts.append(value < hi)
            return sa.and_(sa.true(), *parts)
        if op == "between":
            lo, hi = v  # type: ignore[misc]
            return sa.and_(value >= lo, value <= hi)
        raise AssertionError(f"unhandled operator {op}")

    @staticmethod
    def _whole_test(column: sa.ColumnElement, rule: AttributeRule, op: str) -> sa.ColumnElement[bool]:
        """A comparison of a whole-number column with whole bounds: the same users, but PostgreSQL keeps
        its index (against a float it would compare every row as numeric)."""
        v = rule.value
        bounds = v if op == "between" else (v, v)
        if not all(abs(b) < 2**53 for b in bounds):  # type: ignore[union-attr]
            lo, hi = bounds  # type: ignore[misc]
            return {"eq": column == lo, "lt": column < lo, "lte": column <= lo, "gt": column > lo,
                    "gte": column >= lo, "between": sa.and_(column >= lo, column <= hi)}[op]  # fmt: skip
        if op == "eq":
            return column == int(v) if float(v).is_integer() else sa.false()  # type: ignore[arg-type]
        if op == "between":
            lo, hi = v  # type: ignore[misc]
            return sa.and_(column >= math.ceil(lo), column <= math.floor(hi))
        return {
            "lt": column < math.ceil(v),  # type: ignore[arg-type]
            "lte": column <= math.floor(v),  # type: ignore[arg-type]
            "gt": column > math.floor(v),  # type: ignore[arg-type]
            "gte": column >= math.ceil(v),  # type: ignore[arg-type]
        }[op]

    # --- the dialect twins -----------------------------------------------------------------

    def _json_field(self, column: sa.ColumnElement, name: str) -> sa.ColumnElement:
        if self.dialect == "postgresql":
            return sa.cast(column, JSONB).op("->>", return_type=sa.Text)(sa.literal(name))
        return sa.func.json_extract(column, f'$."{name}"')

    def _contains(self, value: sa.ColumnElement, text: str) -> sa.ColumnElement[bool]:
        # Case-sensitive on both engines (SQLite's LIKE is not), so no LIKE.
        if self.dialect == "postgresql":
            return sa.func.strpos(value, text) > 0
        return sa.func.instr(value, text) > 0

    def _ends_with(self, value: sa.ColumnElement, text: str) -> sa.ColumnElement[bool]:
        if self.dialect == "postgresql":
            return sa.func.right(value, len(text)) == text
        return sa.func.substr(value, -len(text)) == text

    # --- behaviour rules -------------------------------------------------------------------

    def _behaviour(self, rule: BehaviourRule) -> sa.ColumnElement[bool]:
        (lo, hi), absent = behaviour_windows(rule, self.now)
        did = u.c.user_key.in_(self._owners_with(rule.target, lo, hi, rule.times))
        if absent is None:
            return did
        return sa.and_(did, sa.not_(u.c.user_key.in_(self._owners_with(rule.target, *absent, 1))))

    def _owners_with(self, target: Target, lo: int, hi: int, times: int) -> sa.Select:
        """Owners with at least `times` matching events in [lo, hi), counting only closed sessions' events.

        Events are stored under the key that sent them; an anonymous key's events count for the
        identified user who owns it (its earliest identity link, as store/identity.py decides).
        """
        e, link, earlier = events, identity_links, identity_links.alias("earlier")
        matching = [e.c.project_id == self.project_id, e.c.ts >= lo, e.c.ts < hi, *_target_where(target)]
        direct = sa.select(e.c.user_key.label("owner"), e.c.ts).where(*matching)
        owning_link = ~sa.exists().where(
            earlier.c.project_id == link.c.project_id,
            earlier.c.user_key == link.c.user_key,
            sa.tuple_(earlier.c.link_ts, earlier.c.link_event_id, earlier.c.person_key)
            < sa.tuple_(link.c.link_ts, link.c.link_event_id, link.c.person_key),
        )
        linked = (
            sa.select(link.c.person_key.label("owner"), e.c.ts)
            .select_from(e.join(link, sa.and_(link.c.project_id == e.c.project_id, link.c.user_key == e.c.user_key)))
            .where(*matching, owning_link)
        )
        found = sa.union_all(direct, linked).subquery("found")
        owner = end_users.alias("owner")
        return (
            sa.select(found.c.owner)
            .join(owner, sa.and_(owner.c.project_id == self.project_id, owner.c.user_key == found.c.owner))
            .where(found.c.ts <= owner.c.last_seen)
            .group_by(found.c.owner)
            .having(sa.func.count() >= times)
        )


def _cost(node: Node) -> int:
    """A rough order of what a test costs per user: the row's columns, its JSON, a lookup, events."""
    if isinstance(node, Group):
        return max(_cost(child) for child in node.rules)
    if isinstance(node, BehaviourRule):
        return 4
    kind = node.attribute.kind
    if kind == "standard":
        return 0
    if kind == "analytics":
        return 1
    return 3 if node.operator in ("changed_to", "was") else 2


def _target_where(target: Target) -> list[sa.ColumnElement[bool]]:
    where = []
    if target.event is not None:
        where.append(events.c.type == target.event)
    if target.item is not None:
        where.append(events.c.object_id == target.item)
    if target.page is not None:
        where.append(events.c.url_path == target.page)
        if target.event is None:
            where.append(events.c.type.in_(sorted(PAGE_TYPES)))
    return where


# Characters every JSON encoder writes as themselves inside a string (no escapes, no `\/` or `\u003c`).
_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;@#$%*+=?!()\[\]{}|~^'-]*")
_MAX_NEEDLES = 8


def _json_needles(rule: AttributeRule, op: str) -> list[str] | None:
    """Substrings the JSON text of a user's analytics properties must contain for the rule to hold
    (the values are JSON strings), or None when that is not certain or not worth testing."""
    if op in ("is", "is_one_of"):
        values, quote = (list(rule.value) if op == "is_one_of" else [rule.value]), '"'  # type: ignore[arg-type]
    elif op in ("contains", "starts_with", "ends_with"):
        values, quote = [rule.value], ""
    else:
        return None
    if len(values) > _MAX_NEEDLES or not all(isinstance(v, str) and _PLAIN.fullmatch(v) for v in values):
        return None
    return [f"{quote}{v}{quote}" for v in values]


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _positive_row_test(node: Node) -> bool:
    """A rule on a custom attribute's value that no user without a value matches (not a negation)."""
    return _reads_row(node) and isinstance(node, AttributeRule) and node.operator not in NEGATIONS


def _reads_row(node: Node) -> bool:
    """Whether any rule of the tree tests a value of the custom-attribute row."""
    if isinstance(node, Group):
        return any(_reads_row(child) for child in node.rules)
    return (
        isinstance(node, AttributeRule)
        and node.attribute.kind == "custom"
        and node.operator not in ("changed_to", "was")
    )
