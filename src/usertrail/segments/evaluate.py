"""In-process evaluation of a rule tree for one end user, with a per-rule explanation.

Results are three-valued: True, False, or None ("cannot assert"). A user whose first session has
not closed has no End User Object, so every rule is "cannot assert" for them and they are in no
segment (segmentation is retroactive: it sees the object as of the end of the previous session).
Groups combine with Kleene logic; a user is a member when the whole tree is True.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa

from usertrail.segments.model import (
    NEGATIONS,
    AttributeRule,
    BehaviourRule,
    Group,
    Interval,
    Node,
    Target,
    attribute_rules_of,
    behaviour_windows,
    behaviours_of,
    date_ms,
)
from usertrail.sessions.rules import PAGE_TYPES
from usertrail.store.identity import members_of
from usertrail.store.schema import attribute_changes, custom_attributes, end_users, events
from usertrail.store.users import STANDARD_COLUMNS

Truth = bool | None
EventFact = tuple[int, str, str | None, str | None]  # ts, type, object_id, url_path


@dataclass
class UserFacts:
    """What rules read about one end user; `exists` is False before their first session closes."""

    exists: bool
    standard: dict[str, object] = field(default_factory=dict)
    analytics: dict[str, str] = field(default_factory=dict)
    custom: dict[str, object] = field(default_factory=dict)
    history: list[tuple[str, object, object, int]] = field(default_factory=list)  # name, old, new, changed_at
    events: list[EventFact] = field(default_factory=list)  # of closed sessions only (ts ≤ Last seen)


Check = Callable[[UserFacts, int], Truth]


def compile_tree(tree: Group) -> Check:
    """A function (facts, now) -> True / False / None for the tree, built once and reused."""
    return _compile(tree)


def matches(tree: Group, facts: UserFacts, now: int) -> bool:
    """Whether the user is a member (the tree is True)."""
    return compile_tree(tree)(facts, now) is True


def explain(tree: Group, facts: UserFacts, now: int) -> dict:
    """The tree with each group's and rule's result: "true", "false" or "cannot assert"."""
    return _explain(tree, facts, now)


def _label(result: Truth) -> str:
    return "cannot assert" if result is None else str(result).lower()


def _explain(node: Node, facts: UserFacts, now: int) -> dict:
    if isinstance(node, Group):
        children = [_explain(child, facts, now) for child in node.rules]
        return {
            "path": node.path,
            "match": node.match,
            "result": _label(_compile(node)(facts, now)),
            "rules": children,
        }
    out: dict = {"path": node.path, "operator": node.operator, "result": _label(_compile(node)(facts, now))}
    if isinstance(node, AttributeRule):
        out["attribute"] = node.attribute.name
        if facts.exists:
            out["actual"] = _value(node, facts)
    else:
        out["behaviour"] = {k: v for k, v in vars(node.target).items() if v is not None}
    return out


def _compile(node: Node) -> Check:
    if isinstance(node, Group):
        checks = [_compile(child) for child in node.rules]
        return _all(checks) if node.match == "all" else _any(checks)
    if node.operator in NEGATIONS:
        positive = _positive(node, NEGATIONS[node.operator])

        def negated(facts: UserFacts, now: int) -> Truth:
            result = positive(facts, now)
            return None if result is None else not result

        return negated
    return _positive(node, node.operator)


def _all(checks: Sequence[Check]) -> Check:
    def check(facts: UserFacts, now: int) -> Truth:
        unknown = False
        for c in checks:
            result = c(facts, now)
            if result is False:
                return False
            unknown = unknown or result is None
        return None if unknown else True

    return check


def _any(checks: Sequence[Check]) -> Check:
    def check(facts: UserFacts, now: int) -> Truth:
        unknown = False
        for c in checks:
            result = c(facts, now)
            if result is True:
                return True
            unknown = unknown or result is None
        return None if unknown else False

    return check


def _value(rule: AttributeRule, facts: UserFacts) -> object:
    attribute = rule.attribute
    if attribute.kind == "standard":
        return facts.standard.get(attribute.name)
    if attribute.kind == "analytics":
        return facts.analytics.get(attribute.name)
    return facts.custom.get(attribute.name)


def _positive(rule: AttributeRule | BehaviourRule, op: str) -> Check:
    if isinstance(rule, BehaviourRule):
        return _behaviour(rule)
    test = _value_test(rule, op)
    name, kind = rule.attribute.name, rule.attribute.kind
    if op in ("changed_to", "was"):
        return test  # reads the history, not the current value
    source = {"standard": "standard", "analytics": "analytics", "custom": "custom"}[kind]

    def check(facts: UserFacts, now: int) -> Truth:
        if not facts.exists:
            return None
        value = getattr(facts, source).get(name)
        return value is not None and test(value, now)

    return check


def _value_test(rule: AttributeRule, op: str) -> Callable:
    v = rule.value
    if op == "is_set":
        return lambda value, now: True
    if op == "is":
        return lambda value, now: value == v
    if op == "is_one_of":
        options = frozenset(v)  # type: ignore[arg-type]
        return lambda value, now: value in options
    if op == "contains":
        return lambda value, now: v in value
    if op == "starts_with":
        return lambda value, now: value.startswith(v)
    if op == "ends_with":
        return lambda value, now: value.endswith(v)
    if op == "matches_regex":
        pattern = re.compile(v)  # type: ignore[arg-type]
        return lambda value, now: pattern.search(value) is not None
    if op in ("eq", "lt", "lte", "gt", "gte"):
        compare = {
            "eq": lambda a: a == v,
            "lt": lambda a: a < v,
            "lte": lambda a: a <= v,
            "gt": lambda a: a > v,
            "gte": lambda a: a >= v,
        }[op]
        return lambda value, now: compare(value)
    if op == "between" and not isinstance(v, Interval):
        lo, hi = v  # type: ignore[misc]
        return lambda value, now: lo <= value <= hi
    if op in ("is_true", "is_false"):
        return lambda value, now: value is v
    if isinstance(v, Interval):
        as_ms = date_ms if rule.attribute.type == "date" else int

        def within(value, now: int) -> bool:
            lo, hi = v.bounds(now)
            moment = as_ms(value)
            return (lo is None or moment >= lo) and (hi is None or moment < hi)

        return within
    name = rule.attribute.name
    if op == "changed_to":
        horizon = rule.days * 86_400_000  # type: ignore[operator]

        def changed_to(facts: UserFacts, now: int) -> Truth:
            if not facts.exists:
                return None
            return any(h[0] == name and h[2] == v and h[3] >= now - horizon for h in facts.history)

        return changed_to
    if op == "was":

        def was(facts: UserFacts, now: int) -> Truth:
            if not facts.exists:
                return None
            return any(h[0] == name and h[1] == v for h in facts.history)

        return was
    raise AssertionError(f"unhandled operator {op}")


def target_matches(target: Target, event: EventFact) -> bool:
    _, type_, object_id, url_path = event
    if target.event is not None and type_ != target.event:
        return False
    if target.item is not None and object_id != target.item:
        return False
    if target.page is not None:
        if url_path != target.page:
            return False
        if target.event is None and type_ not in PAGE_TYPES:
            return False
    return True


def _behaviour(rule: BehaviourRule) -> Check:
    target, needed = rule.target, rule.times

    def check(facts: UserFacts, now: int) -> Truth:
        if not facts.exists:
            return None
        (lo, hi), absent = behaviour_windows(rule, now)
        count = 0
        for event in facts.events:
            if lo <= event[0] < hi and target_matches(target, event):
                count += 1
                if count >= needed and absent is None:
                    return True
        if count < needed:
            return False
        a_lo, a_hi = absent  # type: ignore[misc]
        return not any(a_lo <= e[0] < a_hi and target_matches(target, e) for e in facts.events)

    return check


# --- loading one user's facts -------------------------------------------------------------


def load_facts(conn: sa.Connection, project_id: int, owner: str, trees: Iterable[Group], now: int) -> UserFacts:
    """Read what `trees` need about the end user `owner` (the key that owns their End User Object)."""
    row = conn.execute(
        sa.select(end_users).where(end_users.c.project_id == project_id, end_users.c.user_key == owner)
    ).first()
    if row is None:
        return UserFacts(exists=False)
    facts = UserFacts(
        exists=True,
        standard={name: getattr(row, column.name) for name, column in STANDARD_COLUMNS.items()},
        analytics=msgspec.json.decode(row.analytics_properties) if row.analytics_properties else {},
    )
    trees = list(trees)
    custom = {r.attribute for t in trees for r in attribute_rules_of(t) if r.attribute.kind == "custom"}
    if any(a.slot is None for a in custom):
        raise ValueError("custom attributes without a slot: build the catalog from the registry")
    readable = sorted(custom, key=lambda a: a.name)
    if readable:
        values = conn.execute(
            sa.select(*(custom_attributes.c[a.slot] for a in readable)).where(  # type: ignore[index]
                custom_attributes.c.project_id == project_id, custom_attributes.c.user_key == owner
            )
        ).first()
        for attribute, value in zip(readable, values or (), strict=False):
            if value is not None:
                facts.custom[attribute.name] = (value != 0) if attribute.type == "boolean" else value
    changes = {
        a.attribute.slot: a.attribute.name
        for t in trees
        for a in attribute_rules_of(t)
        if a.operator in ("changed_to", "was")
    }
    if changes:
        for change in conn.execute(
            sa.select(attribute_changes.c.changed_at, attribute_changes.c.changes)
            .where(attribute_changes.c.project_id == project_id, attribute_changes.c.user_key == owner)
            .order_by(attribute_changes.c.id)
        ):
            for slot, (old, new) in msgspec.json.decode(change.changes).items():
                if slot in changes:
                    facts.history.append((changes[slot], old, new, change.changed_at))
    behaviours = [b for t in trees for b in behaviours_of(t)]
    if behaviours:
        earliest = min(behaviour_windows(b, now)[0][0] for b in behaviours)
        facts.events = [
            (r.ts, r.type, r.object_id, r.url_path)
            for r in conn.execute(
                sa.select(events.c.ts, events.c.type, events.c.object_id, events.c.url_path).where(
                    events.c.project_id == project_id,
                    events.c.user_key.in_(members_of(conn, project_id, owner)),
                    events.c.ts >= earliest,
                    events.c.ts <= row.last_seen,
                )
            )
        ]
    return facts
