"""Segment rules: validation, the semantics of each operator, and the two evaluators agreeing.

The property test draws random users (standard attributes, analytics properties, custom attributes
with history, events under identified and linked anonymous keys) and random rule trees, and checks
that the SQL member list equals the users the in-process evaluator finds, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import os

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usertrail.segments.evaluate import UserFacts, explain, load_facts, matches
from usertrail.segments.membership import refresh_segment
from usertrail.segments.model import DAY_MS, Catalog, InvalidRule, date_string_bound, parse
from usertrail.segments.sql import Compiler, _json_needles
from usertrail.store.attributes import stored as slot_value
from usertrail.store.schema import attribute_changes, custom_attributes, end_users, events, identity_links
from usertrail.store.segments import SegmentStore

NOW = 1_795_000_000_000  # 2026-11-18T…Z, fixed so rules with relative dates are reproducible
HOUR = 3_600_000
CATALOG = Catalog(
    custom={"Plan": "string", "Seats": "number", "Renewal": "date", "Trial": "boolean"},
    slots={"Plan": "t0", "Seats": "n0", "Renewal": "t1", "Trial": "n1"},
)


def facts(**standard) -> UserFacts:
    return UserFacts(exists=True, standard=standard)


def tree(*rules, match="all") -> dict:
    return {"match": match, "rules": list(rules)}


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "path", "fragment"),
    [
        (tree({"attribute": "country", "operator": "is", "value": "FR"}), "$.rules[0].attribute", "'Country'"),
        (tree({"attribute": "plan", "operator": "is", "value": "VIP"}), "$.rules[0].attribute", "'Plan'"),
        (tree({"attribute": "Seats", "operator": "gt", "value": "ten"}), "$.rules[0].value", "expected a number"),
        (tree({"attribute": "Country", "operator": "gt", "value": 1}), "$.rules[0].operator", "use one of"),
        (tree({"attribute": "Country", "operator": "changed_to", "value": "FR", "days": 3}), "$.rules[0].operator", ""),
        (tree({"attribute": "Plan", "operator": "changed_to", "value": "VIP"}), "$.rules[0].days", "whole number"),
        (tree({"attribute": "Renewal", "operator": "on", "value": "2026-13-01"}), "$.rules[0].value", "date"),
        (tree({"attribute": "Country", "operator": "matches_regex", "value": "("}), "$.rules[0].value", "regular"),
        (tree({"attribute": "Country", "operator": "contains", "value": ""}), "$.rules[0].value", "non-empty"),
        (tree({"attribute": "Seats", "operator": "between", "value": [5, 1]}), "$.rules[0].value", "low ≤ high"),
        (tree({"attribute": "Country", "operator": "is_set", "value": "x"}), "$.rules[0].value", "takes no value"),
        (tree({"attribute": "Country", "operatr": "is", "value": "x"}), "$.rules[0].operatr", "'operator'"),
        (tree({"match": "any", "rules": []}), "$.rules[0].rules", "empty group"),
        (tree(), "$.rules", "at least one rule"),
        ({"match": "some", "rules": []}, "$.match", "all"),
        (tree({"behaviour": {"event": "play"}, "operator": "did", "times": 0, "days": 7}), "$.rules[0].times", ""),
        (tree({"behaviour": {"evnt": "play"}, "operator": "did", "days": 7}), "$.rules[0].behaviour.evnt", "event"),
        (
            tree({"behaviour": {"event": "play"}, "operator": "stopped", "days": 30, "since_days": 10}),
            "$.rules[0].since_days",
            "more than days",
        ),
    ],
)
def test_invalid_rules_name_the_field(rules, path, fragment):
    with pytest.raises(InvalidRule) as caught:
        parse(rules, CATALOG)
    assert caught.value.path == path
    assert fragment in caught.value.reason


def test_unknown_attribute_suggests_close_names():
    with pytest.raises(InvalidRule) as caught:
        parse(tree({"attribute": "Total session", "operator": "gt", "value": 1}), CATALOG)
    assert "Total sessions" in caught.value.suggestions


# --- semantics of single operators --------------------------------------------------------


def check(rule: dict, f: UserFacts, now: int = NOW) -> bool:
    return matches(parse(tree(rule), CATALOG), f, now)


def test_string_operators_are_case_sensitive_and_negations_include_unset():
    f = facts(Country="FR", City=None)
    assert check({"attribute": "Country", "operator": "is", "value": "FR"}, f)
    assert not check({"attribute": "Country", "operator": "is", "value": "fr"}, f)
    assert check({"attribute": "City", "operator": "is_not", "value": "Paris"}, f)
    assert check({"attribute": "City", "operator": "does_not_contain", "value": "a"}, f)
    assert not check({"attribute": "City", "operator": "contains", "value": "a"}, f)
    assert check({"attribute": "City", "operator": "is_not_set"}, f)
    assert check({"attribute": "Country", "operator": "matches_regex", "value": "^F"}, f)


def test_date_operators():
    day = date_string_bound(NOW)  # the first midnight after NOW
    f = facts(**{"First seen": NOW - 3 * DAY_MS, "Last seen": NOW - 40 * DAY_MS})
    assert check({"attribute": "First seen", "operator": "within_last", "value": 7}, f)
    assert not check({"attribute": "First seen", "operator": "within_last", "value": 48, "unit": "hours"}, f)
    assert check({"attribute": "Last seen", "operator": "more_than_days_ago", "value": 30}, f)
    assert check({"attribute": "First seen", "operator": "before", "value": day}, f)
    f2 = UserFacts(exists=True, custom={"Renewal": "2026-11-20"})
    assert check({"attribute": "Renewal", "operator": "on", "value": "2026-11-20"}, f2)
    assert check({"attribute": "Renewal", "operator": "between", "value": ["2026-11-20", "2026-11-20"]}, f2)
    assert not check({"attribute": "Renewal", "operator": "after", "value": "2026-11-20"}, f2)


def test_date_string_bound_is_the_first_midnight_at_or_after():
    midnight = 1_795_046_400_000  # 2026-11-19T00:00:00Z
    assert date_string_bound(midnight) == "2026-11-19"
    assert date_string_bound(midnight + 1) == "2026-11-20"
    assert date_string_bound(midnight - 1) == "2026-11-19"


def test_no_end_user_object_means_cannot_assert():
    parsed = parse(tree({"attribute": "Country", "operator": "is_not_set"}), CATALOG)
    explained = explain(parsed, UserFacts(exists=False), NOW)
    assert explained["result"] == "cannot assert"
    assert explained["rules"][0]["result"] == "cannot assert"
    assert not matches(parsed, UserFacts(exists=False), NOW)


def test_kleene_logic_in_groups():
    parsed = parse(
        tree(
            {"attribute": "Country", "operator": "is", "value": "FR"},
            {"attribute": "Country", "operator": "is", "value": "DE"},
            match="any",
        ),
        CATALOG,
    )
    assert explain(parsed, facts(Country="DE"), NOW)["result"] == "true"
    assert explain(parsed, facts(Country="US"), NOW)["result"] == "false"


def test_change_operators_read_the_history():
    f = UserFacts(
        exists=True,
        custom={"Plan": "VIP"},
        history=[("Plan", None, "Free", NOW - 40 * DAY_MS), ("Plan", "Free", "VIP", NOW - 2 * DAY_MS)],
    )
    assert check({"attribute": "Plan", "operator": "changed_to", "value": "VIP", "days": 7}, f)
    assert not check({"attribute": "Plan", "operator": "changed_to", "value": "VIP", "days": 1}, f)
    assert check({"attribute": "Plan", "operator": "was", "value": "Free"}, f)
    assert not check({"attribute": "Plan", "operator": "was", "value": "VIP"}, f)


def test_behaviour_operators():
    f = UserFacts(
        exists=True,
        events=[
            (NOW - 45 * DAY_MS, "play", "wt1", "/a"),
            (NOW - 40 * DAY_MS, "play", "wt1", "/a"),
            (NOW - 2 * DAY_MS, "page", None, "/billing"),
        ],
    )
    assert check({"behaviour": {"event": "play"}, "operator": "did", "times": 2, "days": 60}, f)
    assert not check({"behaviour": {"event": "play"}, "operator": "did", "times": 3, "days": 60}, f)
    assert check({"behaviour": {"item": "wt1"}, "operator": "did_not", "days": 30}, f)
    assert check({"behaviour": {"event": "play"}, "operator": "stopped", "since_days": 60, "days": 30}, f)
    assert not check({"behaviour": {"page": "/billing"}, "operator": "stopped", "since_days": 60, "days": 3}, f)
    assert check({"behaviour": {"page": "/billing"}, "operator": "did", "days": 7}, f)


# --- the two evaluators agree -------------------------------------------------------------

STRINGS = ["FR", "DE", "US", "Paris", "Berlin", "Chrome", "Firefox", "ab", "b%", "x_y", "Ünï", "VIP", "Free", 'a"q']
PATTERNS = ["^F", "R$", "e.", "[ab]", "^(FR|DE)$", "i", "^.{2}$", "%", "_"]
EVENT_TYPES = ["play", "complete", "click", "page"]
ITEMS = ["wt1", "wt2", None]
PATHS = ["/a", "/b", None]
maybe_string = st.none() | st.sampled_from(STRINGS)
times = st.integers(min_value=0, max_value=24 * 90).map(lambda h: NOW - h * HOUR)
dates = st.integers(min_value=-40, max_value=40).map(lambda d: date_string_bound(NOW + d * DAY_MS))


# Changes of each custom attribute: (attribute, old value, new value, when), values of its type.
CHANGE_VALUES: dict[str, tuple[list, list]] = {
    "Plan": (["VIP", "Free", "Pro", None], ["VIP", "Free"]),
    "Seats": ([None, 1.0, 2.5], [1.0, 10.0]),
    "Renewal": ([None, date_string_bound(NOW - 3 * DAY_MS)], [date_string_bound(NOW - 3 * DAY_MS),
                                                              date_string_bound(NOW + 30 * DAY_MS)]),
    "Trial": ([None, True, False], [True, False]),
}  # fmt: skip
history_entries = st.sampled_from(sorted(CHANGE_VALUES)).flatmap(
    lambda name: st.tuples(
        st.just(name), st.sampled_from(CHANGE_VALUES[name][0]), st.sampled_from(CHANGE_VALUES[name][1]), times
    )
)


@st.composite
def users(draw):
    n = draw(st.integers(min_value=1, max_value=6))
    out = []
    for i in range(n):
        identified = draw(st.booleans())
        key = f"u:{i}" if identified else f"a:{i}"
        first = draw(times)
        out.append(
            {
                "key": key,
                "has_object": draw(st.integers(0, 4)) > 0,
                "first_seen": first,
                "last_seen": draw(st.integers(min_value=first, max_value=NOW)),
                "total_sessions": draw(st.integers(1, 5)),
                "avg": draw(st.sampled_from([0.0, 1500.5, 60_000.0])),
                "between": draw(st.none() | st.sampled_from([3_600_000.0, 86_400_000.0])),
                "country": draw(maybe_string),
                "city": draw(maybe_string),
                "role": draw(maybe_string),
                "plan": draw(st.none() | st.sampled_from(["VIP", "Free", "Pro"])),
                "seats": draw(st.none() | st.sampled_from([0.0, 1.0, 2.5, 10.0])),
                "renewal": draw(st.none() | dates),
                "trial": draw(st.none() | st.booleans()),
                "history": draw(st.lists(history_entries, max_size=4)),
                "anon": identified and draw(st.booleans()),
                "events": draw(
                    st.lists(
                        st.tuples(
                            times,
                            st.sampled_from(EVENT_TYPES),
                            st.sampled_from(ITEMS),
                            st.sampled_from(PATHS),
                            st.booleans(),
                        ),
                        max_size=6,
                    )
                ),
            }
        )
    return out


def _attribute_rules():
    s = st.sampled_from
    return st.one_of(
        st.fixed_dictionaries(
            {
                "attribute": s(["Country", "City", "role", "Plan"]),
                "operator": s(["is", "is_not", "contains", "does_not_contain", "starts_with", "ends_with"]),
                "value": s([*STRINGS, "a", "R", "%"]),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["Country", "Plan", "role"]),
                "operator": s(["is_one_of"]),
                "value": st.lists(s(STRINGS), min_size=1, max_size=3),
            }
        ),
        st.fixed_dictionaries(
            {"attribute": s(["Country", "City", "Plan"]), "operator": s(["matches_regex"]), "value": s(PATTERNS)}
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["Country", "Plan", "Seats", "Renewal", "Trial", "Average time between sessions"]),
                "operator": s(["is_set", "is_not_set"]),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(
                    ["Total sessions", "Seats", "Average session duration", "Average time between sessions"]
                ),
                "operator": s(["eq", "ne", "lt", "lte", "gt", "gte"]),
                "value": s([0, 1, 2, 2.5, 3, 1500.5, 3_600_000]),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["Total sessions", "Seats"]),
                "operator": s(["between"]),
                "value": st.tuples(s([0, 1, 2]), s([2, 3, 10])).map(list),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["First seen", "Last seen", "Renewal"]),
                "operator": s(["within_last"]),
                "value": st.integers(1, 60),
                "unit": s(["hours", "days", "weeks"]),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["First seen", "Last seen", "Renewal"]),
                "operator": s(["more_than_days_ago"]),
                "value": st.integers(0, 60),
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["First seen", "Last seen", "Renewal"]),
                "operator": s(["before", "after", "on"]),
                "value": dates,
            }
        ),
        st.fixed_dictionaries(
            {
                "attribute": s(["First seen", "Renewal"]),
                "operator": s(["between"]),
                "value": st.tuples(dates, dates).map(sorted),
            }
        ),
        st.fixed_dictionaries({"attribute": s(["Trial"]), "operator": s(["is_true", "is_false"])}),
        s(sorted(CHANGE_VALUES)).flatmap(
            lambda name: st.fixed_dictionaries(
                {
                    "attribute": st.just(name),
                    "operator": s(["changed_to"]),
                    "value": s(CHANGE_VALUES[name][1]),
                    "days": st.integers(1, 60),
                }
            )
        ),
        s(sorted(CHANGE_VALUES)).flatmap(
            lambda name: st.fixed_dictionaries(
                {
                    "attribute": st.just(name),
                    "operator": s(["was"]),
                    "value": s([v for v in CHANGE_VALUES[name][0] if v is not None] + CHANGE_VALUES[name][1][:1]),
                }
            )
        ),
    )


def _behaviour_rules():
    target = st.one_of(
        st.fixed_dictionaries({"event": st.sampled_from(EVENT_TYPES)}),
        st.fixed_dictionaries({"item": st.sampled_from(["wt1", "wt2"])}),
        st.fixed_dictionaries({"page": st.sampled_from(["/a", "/b"])}),
        st.fixed_dictionaries(
            {"item": st.sampled_from(["wt1", "wt2"]), "event": st.sampled_from(["play", "complete"])}
        ),
    )
    return st.one_of(
        st.fixed_dictionaries(
            {"behaviour": target, "operator": st.just("did"), "times": st.integers(1, 3), "days": st.integers(1, 90)}
        ),
        st.fixed_dictionaries({"behaviour": target, "operator": st.just("did_not"), "days": st.integers(1, 90)}),
        st.tuples(target, st.integers(0, 40), st.integers(1, 50)).map(
            lambda t: {"behaviour": t[0], "operator": "stopped", "days": t[1], "since_days": t[1] + t[2]}
        ),
    )


rule_trees = st.recursive(
    st.one_of(_attribute_rules(), _behaviour_rules()),
    lambda children: st.fixed_dictionaries(
        {"match": st.sampled_from(["all", "any"]), "rules": st.lists(children, min_size=1, max_size=4)}
    ),
    max_leaves=10,
).map(lambda node: node if "rules" in node else tree(node))

_projects = itertools.count(1)


def _store(conn: sa.Connection, project_id: int, people: list[dict]) -> None:
    ev_id = itertools.count()
    for p in people:
        key = p["key"]
        if p["has_object"]:
            properties = {"role": p["role"]} if p["role"] is not None else None
            conn.execute(
                end_users.insert().values(
                    project_id=project_id,
                    user_key=key,
                    first_seen=p["first_seen"],
                    last_seen=p["last_seen"],
                    total_sessions=p["total_sessions"],
                    avg_session_duration_ms=p["avg"],
                    total_session_duration_ms=int(p["avg"] * p["total_sessions"]),
                    avg_time_between_sessions_ms=p["between"],
                    country=p["country"],
                    city=p["city"],
                    analytics_properties=None if properties is None else msgspec.json.encode(properties).decode(),
                    updated_at=NOW,
                )
            )
        values = {"t0": p["plan"], "n0": p["seats"], "t1": p["renewal"], "n1": p["trial"]}
        if any(v is not None for v in values.values()):
            stored = {slot: (float(v) if isinstance(v, bool) else v) for slot, v in values.items()}
            slots = [slot for slot, v in values.items() if v is not None]
            conn.execute(
                custom_attributes.insert().values(
                    project_id=project_id,
                    user_key=key,
                    stamps=msgspec.json.encode([["test", NOW, slots]]).decode(),
                    **stored,
                )
            )
        for j, (name, old, new, at) in enumerate(p["history"]):
            conn.execute(
                attribute_changes.insert().values(
                    project_id=project_id,
                    user_key=key,
                    id=f"{at:013d}-{j}",
                    source="test",
                    changed_at=at,
                    changes=msgspec.json.encode({CATALOG.slots[name]: [slot_value(old), slot_value(new)]}).decode(),
                )
            )
        anon = f"a:anon-of-{key}"
        if p["anon"]:
            conn.execute(
                identity_links.insert().values(
                    project_id=project_id, user_key=anon, person_key=key, link_ts=p["first_seen"], link_event_id="e0"
                )
            )
        for ts, type_, item, path, under_anon in p["events"]:
            conn.execute(
                events.insert().values(
                    project_id=project_id,
                    user_key=anon if (under_anon and p["anon"]) else key,
                    event_id=f"e{next(ev_id)}",
                    ts=ts,
                    received_at=ts,
                    env="production",
                    source="native",
                    type=type_,
                    object_id=item,
                    url_path=path,
                    id_source="test",
                    payload="{}",
                )
            )


def test_sql_and_in_process_evaluators_agree(engine):
    dialect = engine.dialect.name

    @settings(
        max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "60")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(people=users(), rules=rule_trees, shift=st.integers(min_value=-5 * HOUR, max_value=5 * HOUR))
    def agree(people, rules, shift):
        now = NOW + shift
        parsed = parse(rules, CATALOG)
        project_id = next(_projects)
        with engine.begin() as conn:
            _store(conn, project_id, people)
        with engine.connect() as conn:
            compiler = Compiler(project_id, now, dialect)
            in_sql = set(conn.execute(compiler.members(parsed)).scalars())
            count = conn.execute(compiler.count(parsed)).scalar()
            # The WHERE form the user list, reports and previews use (the row read in a subquery).
            as_condition = set(
                conn.execute(
                    sa.select(end_users.c.user_key).where(
                        end_users.c.project_id == project_id, compiler.condition(parsed)
                    )
                ).scalars()
            )
            in_process = {
                p["key"] for p in people if matches(parsed, load_facts(conn, project_id, p["key"], [parsed], now), now)
            }
        assert in_sql == in_process, rules
        assert as_condition == in_sql, rules
        assert count == len(in_sql)

    agree()


def test_change_rules_on_numbers_booleans_and_dates(engine):
    """`changed_to` / `was` on each typed slot, in SQL and in process (booleans are stored as 1.0 / 0.0)."""
    project_id = next(_projects)
    renewal = date_string_bound(NOW + 30 * DAY_MS)
    person = {
        "key": "u:0", "has_object": True, "first_seen": NOW - 40 * DAY_MS, "last_seen": NOW, "total_sessions": 2,
        "avg": 0.0, "between": None, "country": None, "city": None, "role": None, "plan": None, "seats": 10.0,
        "renewal": renewal, "trial": False, "anon": False, "events": [],
        "history": [("Seats", 2.5, 10.0, NOW - 2 * DAY_MS), ("Trial", True, False, NOW - 2 * DAY_MS),
                    ("Renewal", None, renewal, NOW - 20 * DAY_MS)],
    }  # fmt: skip
    with engine.begin() as conn:
        _store(conn, project_id, [person])
    expected = [
        ({"attribute": "Seats", "operator": "changed_to", "value": 10, "days": 7}, True),
        ({"attribute": "Seats", "operator": "was", "value": 2.5}, True),
        ({"attribute": "Seats", "operator": "was", "value": 10}, False),
        ({"attribute": "Trial", "operator": "changed_to", "value": False, "days": 7}, True),
        ({"attribute": "Trial", "operator": "changed_to", "value": True, "days": 7}, False),
        ({"attribute": "Trial", "operator": "was", "value": True}, True),
        ({"attribute": "Renewal", "operator": "changed_to", "value": renewal, "days": 30}, True),
        ({"attribute": "Renewal", "operator": "changed_to", "value": renewal, "days": 7}, False),
    ]
    with engine.connect() as conn:
        for rule, member in expected:
            parsed = parse(tree(rule), CATALOG)
            in_sql = set(conn.execute(Compiler(project_id, NOW, engine.dialect.name).members(parsed)).scalars())
            in_process = matches(parsed, load_facts(conn, project_id, "u:0", [parsed], NOW), NOW)
            assert (in_sql == {"u:0"}, in_process) == (member, member), rule


def test_saved_counts_from_member_lists_equal_fresh_counts(engine):
    """A saved segment's count is read from its member list (`segment_members`), not from its rules:
    right after the list is computed it equals evaluating the rules, for each of a project's segments."""
    dialect = engine.dialect.name
    store = SegmentStore(engine)

    @settings(
        max_examples=max(10, int(os.environ.get("HYPOTHESIS_EXAMPLES", "60")) // 3),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(people=users(), trees=st.lists(rule_trees, min_size=1, max_size=3))
    def agree(people, trees):
        project_id = next(_projects)
        with engine.begin() as conn:
            _store(conn, project_id, people)
        fresh = {}
        for i, rules in enumerate(trees):
            parsed = parse(rules, CATALOG)
            segment_id = store.create(project_id, {"name": f"s{i}", "rules": rules}, NOW)
            with engine.begin() as conn:
                refresh_segment(conn, project_id, segment_id, parsed, NOW)
                fresh[segment_id] = conn.execute(Compiler(project_id, NOW, dialect).count(parsed)).scalar()
        saved = store.member_counts(project_id)
        assert {s: saved.get(s, 0) for s in fresh} == fresh
        assert set(saved) <= set(fresh)  # no counts for other projects' segments
        one = next(iter(fresh))
        assert store.member_counts(project_id, [one]) == ({one: fresh[one]} if fresh[one] else {})

    agree()


def test_text_tests_on_stored_json_with_escapes(engine):
    """`contains` / `ends_with` / `starts_with` first test the stored JSON; a match that only exists in
    an escape (`\\n` holds an "n", `\\"` a quote) must not count, and quotes in a needle still match."""
    dialect = engine.dialect.name
    project_id = next(_projects)
    plans = ["line\nbreak", 'say "hi"', "back\\slash", "Plain", 'n"', "end\n"]
    people = [
        {
            "key": f"u:{i}", "has_object": True, "first_seen": NOW - DAY_MS, "last_seen": NOW, "total_sessions": 1,
            "avg": 0.0, "between": None, "country": None, "city": None, "role": None, "plan": plan, "seats": None,
            "renewal": None, "trial": None, "history": [], "anon": False, "events": [],
        }
        for i, plan in enumerate(plans)
    ]  # fmt: skip
    with engine.begin() as conn:
        _store(conn, project_id, people)
    cases = [
        ("contains", "nb"),  # only in 'line\\nbreak' as stored
        ("contains", "n"),
        ("contains", 'y "h'),
        ("contains", "\\s"),
        ("ends_with", "n"),  # 'end\n' is stored as "end\\n"
        ("ends_with", 'hi"'),
        ("starts_with", "say"),
        ("starts_with", "n"),
        ("does_not_contain", "nb"),
    ]
    for op, needle in cases:
        parsed = parse(tree({"attribute": "Plan", "operator": op, "value": needle}), CATALOG)
        with engine.connect() as conn:
            in_sql = set(conn.execute(Compiler(project_id, NOW, dialect).members(parsed)).scalars())
            expected = {
                p["key"] for p in people if matches(parsed, load_facts(conn, project_id, p["key"], [parsed], NOW), NOW)
            }
        assert in_sql == expected, (op, needle)
    assert expected  # the cases are not all empty


def test_analytics_tests_on_stored_json_with_escapes(engine):
    """Analytics rules first search the JSON text for the value's spelling; values whose spelling an
    encoder may escape (quotes, slashes, non-ASCII) skip that search, so no member is missed."""
    dialect = engine.dialect.name
    project_id = next(_projects)
    roles = ["admin", 'say "hi"', "a/b", "Ünï", "line\nbreak", "x<y", "owner", "admins"]
    people = [
        {
            "key": f"u:{i}", "has_object": True, "first_seen": NOW - DAY_MS, "last_seen": NOW, "total_sessions": 1,
            "avg": 0.0, "between": None, "country": None, "city": None, "role": role, "plan": None, "seats": None,
            "renewal": None, "trial": None, "history": [], "anon": False, "events": [],
        }
        for i, role in enumerate(roles)
    ]  # fmt: skip
    with engine.begin() as conn:
        _store(conn, project_id, people)
    cases = [
        ("is", "admin"),  # not "admins"
        ("is", 'say "hi"'),
        ("is", "a/b"),
        ("is_not", "a/b"),
        ("is", "Ünï"),
        ("is", "x<y"),
        ("is_one_of", ["owner", "line\nbreak", "a/b"]),
        ("is_one_of", ["admin", "owner"]),
        ("contains", "min"),
        ("contains", "/"),
        ("does_not_contain", "min"),
        ("starts_with", 'say "'),
        ("ends_with", "nï"),
        ("is_set", None),
    ]
    for op, value in cases:
        rule = {"attribute": "role", "operator": op} | ({} if value is None else {"value": value})
        parsed = parse(tree(rule), CATALOG)
        with engine.connect() as conn:
            in_sql = set(conn.execute(Compiler(project_id, NOW, dialect).members(parsed)).scalars())
            expected = {
                p["key"] for p in people if matches(parsed, load_facts(conn, project_id, p["key"], [parsed], NOW), NOW)
            }
        assert in_sql == expected, (op, value)
        assert expected, (op, value)


@pytest.mark.parametrize(
    ("op", "value", "needles"),
    [
        ("is", "admin", ['"admin"']),
        ("is_one_of", ["admin", "owner"], ['"admin"', '"owner"']),
        ("contains", "dm", ["dm"]),
        ("is", "a/b", None),  # some encoders write "a\/b"
        ("is", 'a"b', None),
        ("is", "Ünï", None),  # some encoders write \u00dc
        ("is_one_of", [f"r{i}" for i in range(9)], None),  # too many substring searches to pay off
        ("matches_regex", "^a", None),
    ],
)
def test_analytics_prefilter_only_for_certain_spellings(op, value, needles):
    rule = parse(tree({"attribute": "role", "operator": op, "value": value}), CATALOG).rules[0]
    assert _json_needles(rule, op) == needles
