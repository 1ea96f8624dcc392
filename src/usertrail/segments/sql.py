"""Rule trees compiled to SQL over `end_users`, for member lists and counts on SQLite and PostgreSQL.

Each rule becomes a definite true/false condition (never NULL), so NOT and OR behave as in the
in-process evaluator: a positive condition is false for a user without the value, and a negative
operator is the NOT of its positive. Within each group the tests run cheapest first (the row's
columns, its analytics JSON, custom attributes, history, behaviour). A custom attribute that every
member must have becomes a `user_key IN (subquery)` set the planner can drive from (one range of a
per-type value index); anywhere else it is an `EXISTS` lookup of the user's own row by primary key.
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
from usertrail.store.schema import attribute_history, end_users, events, identity_links, user_attributes
from usertrail.store.users import STANDARD_COLUMNS

u = end_users


class Compiler:
    """Compiles rule trees of one project, as of `now`, for one SQL dialect ("sqlite" or "postgresql")."""

    def __init__(self, project_id: int, now: int, dialect: str) -> None:
        self.project_id, self.now, self.dialect = project_id, now, dialect

    def members(self, tree: Group) -> sa.Select:
        """SELECT user_key of every member."""
        return sa.select(u.c.user_key).where(u.c.project_id == self.project_id, self.condition(tree))

    def count(self, tree: Group) -> sa.Select:
        return sa.select(sa.func.count()).select_from(u).where(u.c.project_id == self.project_id, self.condition(tree))

    def condition(self, node: Node) -> sa.ColumnElement[bool]:
        """The tree as one WHERE condition on `end_users` (correlated with its row)."""
        return self._condition(node, top=True)

    def _condition(self, node: Node, top: bool = False) -> sa.ColumnElement[bool]:
        if isinstance(node, Group):
            # Both AND and OR stop at the first deciding operand, so the cheap tests go first:
            # a custom attribute is only looked up for users the row's own columns have not decided.
            children = sorted(node.rules, key=_cost)
            parts = [self._condition(child, top and node.match == "all") for child in children]
            return sa.and_(*parts) if node.match == "all" else sa.or_(*parts)
        if node.operator in NEGATIONS:
            return sa.not_(self._positive(node, NEGATIONS[node.operator], top=False))
        return self._positive(node, node.operator, top)

    # --- attribute rules -------------------------------------------------------------------

    def _positive(self, rule: AttributeRule | BehaviourRule, op: str, top: bool) -> sa.ColumnElement[bool]:
        """`top`: the rule must hold for every member (it is ANDed from the root, not negated), so its set
        may drive the query: a custom attribute becomes a `user_key IN (set)` the planner can start
        from. Elsewhere it is looked up per user (`EXISTS` on the primary key): under OR a set
        would be built whole for every count (at 1M users, sets of up to 800,000 keys, and on
        PostgreSQL a set larger than work_mem rescanned per user), while the lookups run only
        for the users the cheaper tests before them leave undecided."""
        if isinstance(rule, BehaviourRule):
            return self._behaviour(rule)
        attribute = rule.attribute
        if attribute.kind == "custom":
            if top:
                return u.c.user_key.in_(self._custom_set(rule, op))
            return self._custom_probe(rule, op)
        if attribute.kind == "standard":
            column: sa.ColumnElement = STANDARD_COLUMNS[attribute.name]
        else:
            column = self._json_field(u.c.analytics_properties, attribute.name)
        return sa.and_(column.is_not(None), self._test(column, column, rule, op))

    def _custom_set(self, rule: AttributeRule, op: str) -> sa.Select:
        ua, name = user_attributes, rule.attribute.name
        if op in ("changed_to", "was"):
            h = attribute_history
            wanted = msgspec.json.encode(rule.value).decode()
            where = [h.c.project_id == self.project_id, h.c.name == name]
            if op == "changed_to":
                where += [h.c.new_value == wanted, h.c.changed_at >= self.now - rule.days * 86_400_000]  # type: ignore[operator]
            else:
                where.append(h.c.old_value == wanted)
            return sa.select(h.c.user_key).where(*where)
        where = [ua.c.project_id == self.project_id, ua.c.name == name]
        if op != "is_set":
            type_ = rule.attribute.type
            if type_ == "number":
                where.append(self._test(ua.c.value_num, ua.c.value_num, rule, op))
            else:
                # Equality on the stored JSON uses the (project, name, value) index; the rest reads the text.
                where.append(self._test(self._json_text(ua.c.value), ua.c.value, rule, op))
        return sa.select(ua.c.user_key).where(*where)

    def _custom_probe(self, rule: AttributeRule, op: str) -> sa.ColumnElement[bool]:
        """Whether this user's value passes: primary-key lookups of the row's own attribute."""
        ua, name = user_attributes, rule.attribute.name
        if op in ("changed_to", "was"):
            h = attribute_history
            wanted = msgspec.json.encode(rule.value).decode()
            where = [h.c.project_id == self.project_id, h.c.user_key == u.c.user_key, h.c.name == name]
            if op == "changed_to":
                where += [h.c.new_value == wanted, h.c.changed_at >= self.now - rule.days * 86_400_000]  # type: ignore[operator]
            else:
                where.append(h.c.old_value == wanted)
            return sa.exists().where(*where)
        where = [ua.c.project_id == self.project_id, ua.c.user_key == u.c.user_key, ua.c.name == name]
        if op != "is_set":
            if rule.attribute.type == "number":
                where.append(self._test(ua.c.value_num, ua.c.value_num, rule, op))
            else:
                where.append(self._test(self._json_text(ua.c.value), ua.c.value, rule, op))
        return sa.exists().where(*where)

    def _test(self, value: sa.ColumnElement, stored: sa.ColumnElement, rule: AttributeRule, op: str):
        """The positive test of `op` on a non-NULL value; `stored` is the raw JSON column for custom values."""
        v = rule.value
        custom_json = rule.attribute.kind == "custom" and rule.attribute.type != "number"
        if op == "is_set":
            return sa.true()
        if op == "is":
            return stored == _json(v) if custom_json else value == v
        if op == "is_one_of":
            return stored.in_([_json(x) for x in v]) if custom_json else value.in_(list(v))  # type: ignore[union-attr]
        if op in ("is_true", "is_false"):
            return stored == _json(v)
        # The raw JSON of a string is '"' + the string with only '"', '\\' and control characters
        # escaped (msgspec, which writes every value). For a text made only of characters written as
        # themselves, a test on the raw JSON decides (starts with) or pre-filters (contains, ends
        # with: a match could start inside an escape such as \n) without decoding every value.
        plain = custom_json and isinstance(v, str) and _PLAIN_JSON.fullmatch(v) is not None
        if op == "contains":
            test = self._contains(value, v)  # type: ignore[arg-type]
            return sa.and_(self._contains(stored, v), test) if plain else test  # type: ignore[arg-type]
        if op == "starts_with":
            if plain:
                return sa.func.substr(stored, 1, len(v) + 1) == f'"{v}'  # type: ignore[arg-type]
            return sa.func.substr(value, 1, len(v)) == v  # type: ignore[arg-type]
        if op == "ends_with":
            test = self._ends_with(value, v)  # type: ignore[arg-type]
            return sa.and_(self._ends_with(stored, f'{v}"'), test) if plain else test
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
                lo, hi = date_string_bound(lo), date_string_bound(hi)  # type: ignore[assignment]
                if custom_json:
                    # A date is stored as '"YYYY-MM-DD"': the quoted bounds order the raw JSON the
                    # same way, so the rule is one range of the (project, name, value) index.
                    value = stored
                    lo, hi = (None if b is None else _json(b) for b in (lo, hi))  # type: ignore[assignment]
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

    def _json_text(self, column: sa.ColumnElement) -> sa.ColumnElement:
        if self.dialect == "postgresql":
            return sa.cast(column, JSONB).op("#>>", return_type=sa.Text)(sa.literal_column("'{}'"))
        return sa.func.json_extract(column, "$")

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


_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]+")  # printable ASCII but '"' and '\\': JSON writes them as themselves


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
