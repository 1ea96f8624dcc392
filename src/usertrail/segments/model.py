"""The rule tree of a segment: parsing and validation against a project's attribute catalogue.

A segment's rules are JSON:

    {"match": "all" | "any", "rules": [<rule or group>, ...]}

An attribute rule is `{"attribute": NAME, "operator": OP, "value": …}` (plus `"unit"` or `"days"`
for some operators); a behaviour rule is `{"behaviour": {"event"|"item"|"page": …}, "operator":
"did" | "did_not" | "stopped", …}`. docs/segments.md lists every operator. Parsing resolves each
name to its kind and type once, so both evaluators work from the same typed tree.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from usertrail.collect.wire import ANALYTICS_PROPERTIES
from usertrail.profiles import standard
from usertrail.profiles.custom import InvalidValue, convert

DAY_MS = 86_400_000
UNIT_MS = {"hours": 3_600_000, "days": DAY_MS, "weeks": 7 * DAY_MS}
MAX_RULES = 200
MAX_DEPTH = 8
MAX_LIST = 1_000
MAX_DAYS = 3_660
MAX_PATTERN = 200

Kind = Literal["standard", "analytics", "custom"]
# "datetime" is a timestamp in ms (First seen, Last seen); "date" is a custom `YYYY-MM-DD` value.
ValueType = Literal["string", "number", "date", "datetime", "boolean"]

STANDARD_TYPES: dict[str, ValueType] = {
    standard.FIRST_SEEN: "datetime",
    standard.LAST_SEEN: "datetime",
    standard.TOTAL_SESSIONS: "number",
    standard.AVERAGE_SESSION_DURATION: "number",
    standard.TOTAL_SESSION_DURATION: "number",
    standard.AVERAGE_TIME_BETWEEN_SESSIONS: "number",
    standard.COUNTRY: "string",
    standard.REGION: "string",
    standard.CITY: "string",
    standard.BROWSER_NAME: "string",
    standard.BROWSER_VERSION: "string",
}

PRESENCE = ("is_set", "is_not_set")
OPERATORS: dict[str, tuple[str, ...]] = {
    "string": (
        "is",
        "is_not",
        "is_one_of",
        "contains",
        "does_not_contain",
        "starts_with",
        "ends_with",
        "matches_regex",
        *PRESENCE,
    ),
    "number": ("eq", "ne", "lt", "lte", "gt", "gte", "between", *PRESENCE),
    "date": ("before", "after", "on", "within_last", "more_than_days_ago", "between", *PRESENCE),
    "boolean": ("is_true", "is_false", *PRESENCE),
}
OPERATORS["datetime"] = OPERATORS["date"]
# Change operators read the attribute history, which only integrations' attributes have.
CHANGE_OPERATORS = ("changed_to", "was")
BEHAVIOUR_OPERATORS = ("did", "did_not", "stopped")
# WalkMe's event types (shared/research/walkme-spec.md §9), offered where a person names an event.
WALKME_EVENT_TYPES = (
    "play",
    "playFailed",
    "click",
    "close",
    "open",
    "complete",
    "goalReach",
    "search",
    "submitted",
    "passed",
    "failed",
    "progressUpdate",
    "custom",
)
# The negation of each negative operator; the evaluators compute the positive one and invert it,
# so "is not" / "does not contain" / "≠" / "did not" also match users who have no value at all.
NEGATIONS = {
    "is_not": "is",
    "does_not_contain": "contains",
    "ne": "eq",
    "is_not_set": "is_set",
    "did_not": "did",
}


class InvalidRule(ValueError):
    """A rule tree that does not validate: `path` is the JSON path of the field, `reason` says why."""

    def __init__(self, path: str, reason: str, suggestions: list[str] | None = None) -> None:
        super().__init__(reason)
        self.path, self.reason, self.suggestions = path, reason, suggestions or []


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: Kind
    type: ValueType
    slot: str | None = None  # custom attributes: the `custom_attributes` column holding the value


@dataclass(frozen=True)
class Catalog:
    """What a project's rules may name: the standard attributes, analytics properties, custom attributes."""

    custom: Mapping[str, str] = field(default_factory=dict)  # registry name -> type
    slots: Mapping[str, str] = field(default_factory=dict)  # registry name -> slot (for SQL)

    def resolve(self, name: str) -> Attribute | None:
        if name in STANDARD_TYPES:
            return Attribute(name, "standard", STANDARD_TYPES[name])
        if name in ANALYTICS_PROPERTIES:
            return Attribute(name, "analytics", "string")
        if name in self.custom:
            return Attribute(name, "custom", self.custom[name], self.slots.get(name))  # type: ignore[arg-type]
        return None

    def names(self) -> list[str]:
        return [*STANDARD_TYPES, *ANALYTICS_PROPERTIES, *self.custom]


@dataclass(frozen=True)
class Interval:
    """A time condition as ms bounds: `lo` inclusive, `hi` exclusive; None is open. Relative bounds
    (`within_last`, `more_than_days_ago`) are offsets from the evaluation time."""

    lo: int | None = None
    hi: int | None = None
    lo_ago: int | None = None  # lo = now - lo_ago
    hi_ago: int | None = None  # hi = now - hi_ago

    def bounds(self, now: int) -> tuple[int | None, int | None]:
        lo = now - self.lo_ago if self.lo_ago is not None else self.lo
        hi = now - self.hi_ago if self.hi_ago is not None else self.hi
        return lo, hi


@dataclass(frozen=True)
class AttributeRule:
    path: str
    attribute: Attribute
    operator: str
    value: object = None  # typed per operator: str, tuple[str, ...], float, (lo, hi), Interval, bool
    days: int | None = None  # changed_to: within the last N days


@dataclass(frozen=True)
class Target:
    """What a behaviour rule counts: events of a type, of a WalkMe item, or page views of a path."""

    event: str | None = None
    item: str | None = None
    page: str | None = None


@dataclass(frozen=True)
class BehaviourRule:
    path: str
    target: Target
    operator: str
    times: int = 1
    days: int = 0  # did / did_not: the last N days; stopped: not within the last N days
    since_days: int = 0  # stopped: did it between since_days and days ago


@dataclass(frozen=True)
class Group:
    path: str
    match: Literal["all", "any"]
    rules: tuple[Node, ...]


Node = AttributeRule | BehaviourRule | Group


def parse(tree: object, catalog: Catalog, path: str = "$") -> Group:
    """The typed tree of a segment's rules, or InvalidRule naming the first wrong field."""
    counter = [0]
    group = _group(tree, catalog, path, 1, counter)
    if not group.rules:
        raise InvalidRule(f"{path}.rules", "a segment needs at least one rule")
    return group


def attribute_rules_of(node: Node) -> list[AttributeRule]:
    """Every attribute rule in a tree (to load only what an evaluation needs)."""
    if isinstance(node, Group):
        return [r for child in node.rules for r in attribute_rules_of(child)]
    return [node] if isinstance(node, AttributeRule) else []


def behaviours_of(node: Node) -> list[BehaviourRule]:
    if isinstance(node, Group):
        return [b for child in node.rules for b in behaviours_of(child)]
    return [node] if isinstance(node, BehaviourRule) else []


def _group(raw: object, catalog: Catalog, path: str, depth: int, counter: list[int]) -> Group:
    if not isinstance(raw, dict):
        raise InvalidRule(path, 'a group is an object: {"match": "all" | "any", "rules": [...]}')
    _no_extra(raw, {"match", "rules"}, path)
    if depth > MAX_DEPTH:
        raise InvalidRule(path, f"groups nest at most {MAX_DEPTH} deep")
    match = raw.get("match", "all")
    if match not in ("all", "any"):
        raise InvalidRule(f"{path}.match", 'match is "all" (AND) or "any" (OR)')
    rules = raw.get("rules")
    if not isinstance(rules, list):
        raise InvalidRule(f"{path}.rules", "rules must be a list")
    nodes: list[Node] = []
    for i, item in enumerate(rules):
        item_path = f"{path}.rules[{i}]"
        counter[0] += 1
        if counter[0] > MAX_RULES:
            raise InvalidRule(item_path, f"a segment has at most {MAX_RULES} rules")
        if isinstance(item, dict) and "rules" in item:
            child = _group(item, catalog, item_path, depth + 1, counter)
            if not child.rules:
                raise InvalidRule(f"{item_path}.rules", "an empty group matches nothing: remove it or add a rule")
            nodes.append(child)
        elif isinstance(item, dict) and ("behaviour" in item or "behavior" in item):
            nodes.append(_behaviour(item, item_path))
        elif isinstance(item, dict):
            nodes.append(_attribute_rule(item, catalog, item_path))
        else:
            raise InvalidRule(item_path, "a rule is an object")
    return Group(path, match, tuple(nodes))


def _no_extra(raw: dict, allowed: set[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidRule(f"{path}.{key}", f"unknown field {key!r}{hint}", close)


def _attribute_rule(raw: dict, catalog: Catalog, path: str) -> AttributeRule:
    _no_extra(raw, {"attribute", "operator", "value", "unit", "days"}, path)
    name = raw.get("attribute")
    if not isinstance(name, str) or not name:
        raise InvalidRule(f"{path}.attribute", "attribute must be a non-empty string")
    attribute = catalog.resolve(name)
    if attribute is None:
        close = difflib.get_close_matches(name, catalog.names(), n=3, cutoff=0.6)
        folded = [n for n in catalog.names() if n.lower() == name.lower() and n not in close]
        suggestions = folded + close
        hint = f"; did you mean {' or '.join(repr(c) for c in suggestions)}?" if suggestions else ""
        raise InvalidRule(
            f"{path}.attribute", f"unknown attribute {name!r} (names are case-sensitive){hint}", suggestions
        )
    op = raw.get("operator")
    allowed = allowed_operators(attribute)
    if op not in allowed:
        close = difflib.get_close_matches(str(op), allowed, n=3)
        raise InvalidRule(
            f"{path}.operator",
            f"operator {op!r} does not apply to {attribute.type} attribute {name!r}; use one of {', '.join(allowed)}",
            close,
        )
    value_path = f"{path}.value"
    extra: dict[str, object] = {}
    if op in PRESENCE:
        _absent(raw, ("value", "unit", "days"), path, op)
        value: object = None
    elif op in CHANGE_OPERATORS:
        value = _typed(raw.get("value"), attribute, value_path)
        if op == "changed_to":
            extra["days"] = _whole(raw.get("days"), f"{path}.days", 1, MAX_DAYS)
        else:
            _absent(raw, ("days",), path, op)
        _absent(raw, ("unit",), path, op)
    else:
        value = _operand(raw, attribute, op, path)
    return AttributeRule(path, attribute, op, value, **extra)  # type: ignore[arg-type]


def allowed_operators(attribute: Attribute) -> tuple[str, ...]:
    """The operators of the attribute's type; change operators only for custom attributes (they have a history)."""
    return OPERATORS[attribute.type] + (CHANGE_OPERATORS if attribute.kind == "custom" else ())


def _absent(raw: dict, keys: tuple[str, ...], path: str, op: str) -> None:
    for key in keys:
        if key in raw:
            raise InvalidRule(f"{path}.{key}", f"operator {op!r} takes no {key}")


def _operand(raw: dict, attribute: Attribute, op: str, path: str) -> object:
    value, value_path = raw.get("value"), f"{path}.value"
    if op != "within_last":
        _absent(raw, ("unit",), path, op)
    _absent(raw, ("days",), path, op)
    kind = attribute.type
    if kind == "string":
        if op == "is_one_of":
            if not isinstance(value, list) or not value or len(value) > MAX_LIST:
                raise InvalidRule(value_path, f"is_one_of takes a list of 1 to {MAX_LIST} strings")
            return tuple(_string(v, f"{value_path}[{i}]") for i, v in enumerate(value))
        text = _string(value, value_path)
        if op in ("contains", "does_not_contain", "starts_with", "ends_with", "matches_regex") and not text:
            raise InvalidRule(value_path, f"{op} needs a non-empty value")
        if op == "matches_regex":
            if len(text) > MAX_PATTERN:
                raise InvalidRule(value_path, f"a pattern is at most {MAX_PATTERN} characters")
            try:
                re.compile(text)
            except re.error as exc:
                raise InvalidRule(value_path, f"not a valid regular expression: {exc}") from None
        return text
    if kind == "number":
        if op == "between":
            lo, hi = _pair(value, value_path, _number)
            if lo > hi:
                raise InvalidRule(value_path, "between takes [low, high] with low ≤ high")
            return (lo, hi)
        return _number(value, value_path)
    if kind == "boolean":
        _absent(raw, ("value",), path, op)
        return op == "is_true"
    # date and datetime
    if op == "within_last":
        unit = raw.get("unit", "days")
        if unit not in UNIT_MS:
            raise InvalidRule(f"{path}.unit", "unit is hours, days or weeks")
        n = _whole(value, value_path, 1, MAX_DAYS * 24)
        return Interval(lo_ago=n * UNIT_MS[unit], hi_ago=-1)
    if op == "more_than_days_ago":
        return Interval(hi_ago=_whole(value, value_path, 0, MAX_DAYS) * DAY_MS)
    if op == "between":
        (a, _), (b, b_day) = _pair(value, value_path, _moment)
        hi = b + DAY_MS if b_day else b + 1
        if a >= hi:
            raise InvalidRule(value_path, "between takes [start, end] with start ≤ end")
        return Interval(lo=a, hi=hi)
    moment, is_day = _moment(value, value_path)
    if op == "before":
        return Interval(hi=moment)
    if op == "after":
        return Interval(lo=moment + DAY_MS if is_day else moment + 1)
    # on
    if not is_day:
        raise InvalidRule(value_path, "on takes a date as YYYY-MM-DD")
    return Interval(lo=moment, hi=moment + DAY_MS)


def _typed(value: object, attribute: Attribute, path: str) -> object:
    if value is None:
        raise InvalidRule(path, "a value is required")
    try:
        return convert(value, attribute.type)
    except InvalidValue as exc:
        raise InvalidRule(path, f"{attribute.name!r} is a {attribute.type} attribute: {exc}") from None


def _string(value: object, path: str) -> str:
    if value is None:
        raise InvalidRule(path, "a value is required")
    if not isinstance(value, str):
        raise InvalidRule(path, f"expected a string, got {type(value).__name__}")
    return value


def _number(value: object, path: str) -> float:
    if value is None:
        raise InvalidRule(path, "a number is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRule(path, f"expected a number, got {type(value).__name__}")
    return float(value)


def _whole(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRule(path, f"expected a whole number from {low} to {high}")
    return value


def _pair(value: object, path: str, item):
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidRule(path, "expected a list of two values: [low, high]")
    return item(value[0], f"{path}[0]"), item(value[1], f"{path}[1]")


def _moment(value: object, path: str) -> tuple[int, bool]:
    """A date (`YYYY-MM-DD`, midnight UTC) or an ISO 8601 time with a zone, in ms; and whether it is a date."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date_ms(text), True
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                return _ms(moment), False
        except ValueError:
            pass
    raise InvalidRule(path, "expected a date (YYYY-MM-DD) or a time with a zone (2026-11-20T10:00:00Z)")


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ms(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(milliseconds=1)


def _behaviour(raw: dict, path: str) -> BehaviourRule:
    key = "behaviour" if "behaviour" in raw else "behavior"
    _no_extra(raw, {key, "operator", "times", "days", "since_days"}, path)
    target_raw = raw[key]
    target_path = f"{path}.{key}"
    if not isinstance(target_raw, dict) or not target_raw:
        raise InvalidRule(target_path, 'behaviour names what was done: {"event": …, "item": …, "page": …}')
    _no_extra(target_raw, {"event", "item", "page"}, target_path)
    for name, value in target_raw.items():
        if not isinstance(value, str) or not value:
            raise InvalidRule(f"{target_path}.{name}", "expected a non-empty string")
    target = Target(**target_raw)
    op = raw.get("operator")
    if op not in BEHAVIOUR_OPERATORS:
        raise InvalidRule(f"{path}.operator", f"a behaviour rule's operator is one of {', '.join(BEHAVIOUR_OPERATORS)}")
    days = _whole(raw.get("days"), f"{path}.days", 1 if op != "stopped" else 0, MAX_DAYS)
    if op == "did":
        _absent(raw, ("since_days",), path, op)
        times = _whole(raw.get("times", 1), f"{path}.times", 1, 1_000_000)
        return BehaviourRule(path, target, op, times=times, days=days)
    _absent(raw, ("times",), path, op)
    if op == "did_not":
        _absent(raw, ("since_days",), path, op)
        return BehaviourRule(path, target, op, days=days)
    since_days = _whole(raw.get("since_days"), f"{path}.since_days", 1, MAX_DAYS)
    if since_days <= days:
        raise InvalidRule(f"{path}.since_days", "stopped: since_days (when it started) must be more than days")
    return BehaviourRule(path, target, op, days=days, since_days=since_days)


def behaviour_windows(rule: BehaviourRule, now: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """The window the rule's events must fall in, and (for `stopped`) the window they must be absent from.

    Windows are [lo, hi) in ms. `did`/`did_not`: the last N days up to now. `stopped`: did it
    between `since_days` and `days` ago, and not from `days` ago until now.
    """
    if rule.operator == "stopped":
        return (now - rule.since_days * DAY_MS, now - rule.days * DAY_MS), (now - rule.days * DAY_MS, now + 1)
    return (now - rule.days * DAY_MS, now + 1), None


def date_string_bound(ms: int | None) -> str | None:
    """For `YYYY-MM-DD` values: `midnight(v) >= ms` exactly when `v >= date_string_bound(ms)`."""
    if ms is None:
        return None
    days = -(-ms // DAY_MS)  # the first midnight at or after ms
    try:
        return (EPOCH.date() + dt.timedelta(days=days)).isoformat()
    except OverflowError:
        # Past the calendar's ends: strings that sort after (or before) every YYYY-MM-DD.
        return "9999-99-99" if days > 0 else "0000-00-00"


def date_ms(text: str) -> int:
    """Midnight UTC of a `YYYY-MM-DD` value, in ms."""
    return (dt.date.fromisoformat(text) - EPOCH.date()).days * DAY_MS


# What each operator takes, for rule builders (GET …/segments/catalog): "none", "text", "texts" (a list),
# "number", "number_range", "date" (a date or a time with a zone), "date_range", "count_unit" (N and a
# unit), "days" (N days), "boolean"; change operators take the attribute's own type ("changed_to" with days).
_OPERANDS = {
    "is_one_of": "texts",
    "within_last": "count_unit",
    "more_than_days_ago": "days",
    "is_true": "none",
    "is_false": "none",
    "is_set": "none",
    "is_not_set": "none",
}
_VALUE_OF_TYPE = {"string": "text", "number": "number", "date": "date", "datetime": "date", "boolean": "boolean"}


def operand(attribute: Attribute, op: str) -> str:
    """The shape of the value `op` takes on `attribute` (see `_OPERANDS`)."""
    if op in _OPERANDS:
        return _OPERANDS[op]
    if op == "between":
        return "number_range" if attribute.type == "number" else "date_range"
    return _VALUE_OF_TYPE[attribute.type]


def operators_of(attribute: Attribute) -> list[dict[str, str]]:
    """The operators a rule on `attribute` may use, each with the shape of its value."""
    return [{"operator": op, "operand": operand(attribute, op)} for op in allowed_operators(attribute)]
