"""Decoding of both wire formats: field mapping, error paths, limits."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from usertrail.collect.wire import Incoming, Invalid, WireError, decode_native, decode_walkme, parse_time
from usertrail.config import Limits

from samples import SPEC_EVENT, walkme_body, walkme_event

LIMITS = Limits()


def test_spec_event_is_mapped_and_kept_whole():
    batch = decode_walkme(walkme_body([SPEC_EVENT], client_ts=1553433891000), "text/plain", LIMITS)
    assert batch.sent_at == 1553433891000
    [ev] = batch.events
    assert isinstance(ev, Incoming)
    assert (ev.type, ev.client_ts, ev.app_type, ev.object_id, ev.object_name) == (
        "play",
        1553433890150,
        "wt",
        "124909",
        "Log in",
    )
    assert ev.session_hint == "b34cd63b-b54f-3637-f48b-9ec7fb8247f6"
    assert ev.anon_id == "7302c5a9-9dbf-ef49-e898-8fce4d0add48" and ev.user_id is None
    assert (ev.url_host, ev.url_path, ev.title) == (
        "shopme.walkme.com",
        "/product/pink-alligator/",
        "Pink Alligator - ShopMe",
    )
    assert ev.visit_id == "9ef11e58809fd93c55d22f12c3fd401c"
    assert ev.env_code == 0 and ev.account_id == "3210be7ad82f403298f7c4da065ec657"
    assert json.loads(ev.raw) == SPEC_EVENT  # nothing dropped, unknown fields included


def test_identifier_source_means_identified_user():
    [ev] = decode_walkme(
        walkme_body([walkme_event(wm_euIdSource="Identifier", wm_euId="jane")]), "text/plain", LIMITS
    ).events
    assert ev.user_id == "jane" and ev.anon_id is None


@pytest.mark.parametrize("body", [json.dumps(SPEC_EVENT), json.dumps([SPEC_EVENT, SPEC_EVENT])])
def test_json_object_or_array(body):
    batch = decode_walkme(body.encode(), "application/json", LIMITS)
    assert all(isinstance(e, Incoming) for e in batch.events)
    assert len(batch.events) == body.count('"play"')


def test_wrong_type_is_reported_with_path_and_index():
    bad = walkme_event(data_oId=[1, 2])
    batch = decode_walkme(walkme_body([SPEC_EVENT, bad]), "text/plain", LIMITS)
    good, invalid = batch.events
    assert isinstance(good, Incoming)
    assert isinstance(invalid, Invalid)
    assert invalid.index == 2  # line 0 is the header
    assert invalid.path == "$.data.oId"
    assert "Expected" in invalid.reason


@pytest.mark.parametrize(
    ("event", "path"),
    [
        ({k: v for k, v in SPEC_EVENT.items() if k != "time"}, "$"),
        (walkme_event(time="yesterday"), "$.time"),
        (walkme_event(wm={"env": 0}), "$.wm"),
        (walkme_event(wm_euId=""), "$.wm.euId"),
    ],
)
def test_missing_or_wrong_fields(event, path):
    [invalid] = decode_walkme(walkme_body([event]), "text/plain", LIMITS).events
    assert isinstance(invalid, Invalid)
    assert invalid.path == path
    if path == "$":
        assert "time" in invalid.reason


def test_malformed_line_does_not_spoil_the_batch():
    body = walkme_body([SPEC_EVENT]) + b"\n{not json"
    good, bad = decode_walkme(body, "text/plain", LIMITS).events
    assert isinstance(good, Incoming) and isinstance(bad, Invalid)
    assert "malformed JSON" in bad.reason


def test_unreadable_json_body_is_a_wire_error():
    with pytest.raises(WireError) as exc:
        decode_walkme(b"[{", "application/json", LIMITS)
    assert exc.value.path == "$"


def test_limits_name_the_field():
    long_name = walkme_event(data_oName="x" * 9000)
    [invalid] = decode_walkme(walkme_body([long_name]), "text/plain", LIMITS).events
    assert isinstance(invalid, Invalid) and invalid.kind == "limit_exceeded"
    assert invalid.path == "$.data.oName"
    deep: dict = {}
    node = deep
    for _ in range(12):
        node["x"] = {}
        node = node["x"]
    [invalid] = decode_walkme(walkme_body([walkme_event(data_extra=deep)]), "text/plain", LIMITS).events
    assert isinstance(invalid, Invalid) and "nesting" in invalid.reason
    many = walkme_event(data={f"k{i}": i for i in range(250)} | {"type": "wt"})
    [invalid] = decode_walkme(walkme_body([many]), "text/plain", LIMITS).events
    assert isinstance(invalid, Invalid) and "properties" in invalid.reason
    with pytest.raises(WireError, match="per batch"):
        decode_walkme(walkme_body([SPEC_EVENT] * 501), "text/plain", LIMITS)


def test_native_limits_name_the_field():
    def one(**fields) -> Invalid:
        message = {"type": "track", "event": "e", "anonymousId": "a"} | fields
        [invalid] = decode_native(msgspec.json.encode({"batch": [message]}), LIMITS).events
        assert isinstance(invalid, Invalid), invalid
        return invalid

    long_value = one(properties={"note": "x" * 9000})
    assert (long_value.kind, long_value.path) == ("limit_exceeded", "$.batch[0].properties.note")
    deep: dict = {}
    node = deep
    for _ in range(12):
        node["x"] = {}
        node = node["x"]
    assert "nesting" in one(properties={"deep": deep}).reason
    many = one(properties={f"k{i}": i for i in range(150)}, traits={f"t{i}": i for i in range(60)})
    assert (many.path, many.kind) == ("$.batch[0]", "limit_exceeded") and "210 properties" in many.reason
    token = one(context={"idToken": "t" * 8_193})  # strings' limit, the ID token's too
    assert (token.path, token.kind) == ("$.batch[0].context.idToken", "limit_exceeded")
    with pytest.raises(WireError, match="per batch") as refused:
        decode_native(msgspec.json.encode({"batch": [{"type": "page", "anonymousId": "a"}] * 501}), LIMITS)
    assert refused.value.path == "$.batch"


def test_native_batch():
    body = msgspec.json.encode(
        {
            "batch": [
                {
                    "type": "track",
                    "event": "Signed up",
                    "anonymousId": "a1",
                    "properties": {"plan": "pro"},
                    "messageId": "m1",
                    "timestamp": "2026-11-20T10:00:00Z",
                    "context": {"page": {"url": "https://app.example.com/signup?x=1", "title": "Sign up"}},
                },
                {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"role": "admin"}},
                {"type": "page", "anonymousId": "a1", "name": "Home", "timestamp": 1700000000000},
            ],
            "sentAt": 1700000000500,
            "environment": "test",
        }
    )
    batch = decode_native(body, LIMITS)
    track, identify, page = batch.events
    assert batch.sent_at == 1700000000500 and batch.env_name == "test"
    assert (track.type, track.name, track.message_id, track.url_host, track.url_path, track.title) == (
        "track",
        "Signed up",
        "m1",
        "app.example.com",
        "/signup",
        "Sign up",
    )
    assert track.client_ts == parse_time("2026-11-20T10:00:00Z")
    assert identify.user_id == "u1" and identify.client_ts == -1
    assert page.client_ts == 1700000000000


def test_native_send_time_in_either_spelling():
    message = {"type": "track", "event": "x", "anonymousId": "a"}
    for envelope in ({"sentAt": "2026-11-20T10:00:00Z"}, {"sent_at": "2026-11-20T10:00:00Z"}):
        assert decode_native(msgspec.json.encode({"batch": [message], **envelope}), LIMITS).sent_at == parse_time(
            "2026-11-20T10:00:00Z"
        )
    for envelope, path in (({"sent_at": "yesterday"}, "$.sent_at"), ({"sentAt": 1, "sent_at": 1}, "$.sent_at")):
        with pytest.raises(WireError) as caught:
            decode_native(msgspec.json.encode({"batch": [message], **envelope}), LIMITS)
        assert caught.value.path == path


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({"type": "track", "anonymousId": "a", "event": "x", "colour": "red"}, "$.batch[0]"),
        ({"type": "shout", "anonymousId": "a"}, "$.batch[0].type"),
        ({"type": "track", "event": "x"}, "$.batch[0].anonymousId"),
        ({"type": "track", "anonymousId": "a"}, "$.batch[0].event"),
        ({"type": "track", "anonymousId": "a", "event": "x", "timestamp": "noon"}, "$.batch[0].timestamp"),
    ],
)
def test_native_errors_name_the_path(message, path):
    [invalid] = decode_native(msgspec.json.encode({"batch": [message]}), LIMITS).events
    assert isinstance(invalid, Invalid)
    assert invalid.path == path
    if path == "$.batch[0]":
        assert "colour" in invalid.reason


def test_native_envelope_errors():
    with pytest.raises(WireError) as exc:
        decode_native(b'{"batch": [], "extra": 1}', LIMITS)
    assert "extra" in exc.value.reason
    with pytest.raises(WireError):
        decode_native(b'{"batch": [], "sentAt": "soon"}', LIMITS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.lists(json_values, max_size=5))
def test_any_json_lines_decode_or_fail_cleanly(values):
    """Whatever JSON arrives, decoding never crashes: each line is an event or an Invalid with a path."""
    body = walkme_body(values)  # header + arbitrary lines
    batch = decode_walkme(body, "text/plain", LIMITS)
    for item in batch.events:
        assert isinstance(item, Incoming | Invalid)
        if isinstance(item, Invalid):
            assert item.path.startswith("$")


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_wire_error(body):
    for decode in (lambda b: decode_walkme(b, "application/json", LIMITS), lambda b: decode_native(b, LIMITS)):
        try:
            batch = decode(body)
        except WireError as exc:
            assert exc.path.startswith("$")
        else:
            assert all(isinstance(i, Incoming | Invalid) for i in batch.events)
