"""The two wire formats, decoded into one shape: `Incoming` events.

WalkMe format (accepted as-is, see docs/collection.md):
  text/plain, newline-separated JSON: a header line `{"_static":true,"Wm-Client-Timestamp":<ms>}`
  then one event per line; or application/json with one event object or an array of them.
Native format (Segment/PostHog style):
  `{"batch": [{"type": "track"|"page"|"identify", ...}], "sentAt": ..., "environment": ...}`.

Known fields are checked with typed structs (so errors name the field path); the event text is
kept whole, unknown fields included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from usertrail.config import Limits

Scalar = str | int | float | bool | None


class WireError(ValueError):
    """A request whose body cannot be read at all (as opposed to one bad event inside it)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --- WalkMe events -------------------------------------------------------------------------


class _WmLocation(msgspec.Struct):
    protocol: str | None = None
    hostname: str | None = None
    pathname: str | None = None
    port: str | int | None = None


class _WmCtx(msgspec.Struct):
    location: _WmLocation | None = None
    title: str | None = None
    visitId: str | None = None
    isIframe: bool | None = None


class _WmInit(msgspec.Struct):
    type: int | None = None


class _WmData(msgspec.Struct):
    type: str | None = None
    oId: int | str | None = None
    oName: str | None = None
    pId: str | None = None
    pInit: _WmInit | None = None


class _WmIdentity(msgspec.Struct):
    euId: Annotated[str, msgspec.Meta(min_length=1)]
    euIdSource: str | None = None
    uId: str | None = None
    env: int | None = None
    userVars: dict[str, Scalar] | None = None


class _WmBrowser(msgspec.Struct):
    name: str | None = None
    version: str | None = None


class _WmOs(msgspec.Struct):
    name: str | None = None


class _WmScreen(msgspec.Struct):
    height: int | float | None = None
    width: int | float | None = None


class _WmEnv(msgspec.Struct):
    browser: _WmBrowser | None = None
    os: _WmOs | None = None
    mobile: bool | None = None
    screen: _WmScreen | None = None
    timezone: int | float | None = None


class _WmVisions(msgspec.Struct):
    sId: str | None = None


class _WmVersion(msgspec.Struct):
    lib: str | None = None
    pe: str | None = None


class WalkMeEvent(msgspec.Struct):
    """The fields of a WalkMe recorder event that usertrail reads; the rest is kept untouched."""

    time: int
    type: Annotated[str, msgspec.Meta(min_length=1)]
    wm: _WmIdentity
    data: _WmData | None = None
    sId: str | None = None
    env: _WmEnv | None = None
    ctx: _WmCtx | None = None
    visions: _WmVisions | None = None
    version: _WmVersion | None = None


# `euIdSource` values that mean "the WalkMe-generated anonymous id" (seen: "Cache"); any other
# source means the configured identifier provider supplied the id.
ANONYMOUS_ID_SOURCES = frozenset({"", "cache", "walkme", "walkme_id", "anonymous", "guid"})


# --- native events -------------------------------------------------------------------------

IsoOrMs = int | float | str


class _NativePage(msgspec.Struct):
    url: str | None = None
    path: str | None = None
    title: str | None = None
    referrer: str | None = None


class _NativeContext(msgspec.Struct):
    page: _NativePage | None = None
    sessionId: str | None = None
    userAgent: str | None = None
    # Free-form for compatibility (Segment's `context.screen` is an object too): read when they are numbers.
    screen: Any = None
    timezone: Any = None
    # The end user's ID token from the company's identity provider (UUID provider `idp`); never stored.
    idToken: str | None = None


class NativeMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One native message. Unknown top-level keys are refused; properties/traits/context are free."""

    type: Literal["track", "page", "identify"]
    anonymousId: str | None = None
    userId: str | None = None
    event: str | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: _NativeContext | None = None
    timestamp: IsoOrMs | None = None
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    environment: str | None = None


class NativeBatch(msgspec.Struct, forbid_unknown_fields=True):
    batch: list[msgspec.Raw]
    sentAt: IsoOrMs | None = None
    sent_at: IsoOrMs | None = None  # PostHog's spelling of the same
    environment: str | None = None
    writeKey: str | None = None


# --- the common shape ----------------------------------------------------------------------


class Incoming(msgspec.Struct):
    """One event of either format, with the fields the pipeline needs pulled out.

    A struct rather than a dataclass: one is built per event, and a struct is built faster.
    """

    source: str  # "walkme" or "native"
    index: int
    raw: bytes  # the event's JSON text as it arrived
    type: str
    client_ts: int
    name: str | None = None
    env_code: int | None = None  # WalkMe `wm.env`
    env_name: str | None = None  # native `environment`
    app_type: str | None = None
    object_id: str | None = None
    object_name: str | None = None
    session_hint: str | None = None
    visit_id: str | None = None
    anon_id: str | None = None
    user_id: str | None = None
    url_host: str | None = None
    url_path: str | None = None
    title: str | None = None
    message_id: str | None = None
    account_id: str | None = None  # WalkMe `wm.uId`
    user_agent: str | None = None
    id_token: str | None = None  # native `context.idToken`
    client_env: _WmEnv | None = None  # WalkMe `env`: the browser as the event describes it
    user_vars: dict | None = None  # analytics properties carried by the event
    user_vars_json: str | None = None  # the same as JSON text (shared by the events of a batch that agree)
    screen_width: int | None = None
    screen_height: int | None = None
    tz_offset: int | None = None  # minutes behind UTC, as JavaScript's getTimezoneOffset()
    in_iframe: bool | None = None
    lib_version: str | None = None  # WalkMe `version.lib`
    pe_version: str | None = None  # WalkMe `version.pe`
    modified: bool = False
    _obj: dict | None = None

    @property
    def obj(self) -> dict:
        """The event decoded as a dict; decoded on first use, since most events are stored as they came."""
        if self._obj is None:
            self._obj = msgspec.json.decode(self.raw)
        return self._obj


@dataclass
class Invalid:
    """An event that failed validation, reported by index and kept in the rejected store."""

    index: int
    raw: bytes
    path: str
    reason: str
    kind: str = "invalid"  # or "limit_exceeded"


@dataclass
class DecodedBatch:
    events: list[Incoming | Invalid]
    sent_at: int | None  # client clock when the batch was sent, ms
    env_name: str | None = None
    write_key: str | None = None


_AT_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


def _split_error(exc: msgspec.MsgspecError, prefix: str = "$") -> tuple[str, str]:
    match = _AT_PATH.match(str(exc))
    assert match is not None
    path = match.group("path") or "$"
    return prefix + path[1:], match.group("reason")


def decode_walkme(body: bytes, content_type: str, limits: Limits) -> DecodedBatch:
    """Decode a WalkMe request body (NDJSON with header, one object, or an array)."""
    sent_at: int | None = None
    if "json" in content_type and not _looks_like_ndjson(body):
        is_array = body.lstrip()[:1] == b"["
        try:
            document = msgspec.json.decode(body, type=list[msgspec.Raw] if is_array else msgspec.Raw)
        except msgspec.DecodeError as exc:
            raise WireError("$", f"malformed JSON: {exc}") from None
        raw_items = [bytes(r) for r in document] if is_array else [bytes(document)]
        first_index = 0
        one_event_per_line = False
    else:
        lines = [line for line in body.split(b"\n") if line.strip()]
        if not lines:
            raise WireError("$", "empty body: expected a header line and at least one event line")
        first_index = 0
        header = _read_header(lines[0])
        if header is not None:
            sent_at = header
            lines = lines[1:]
            first_index = 1
        raw_items = lines
        one_event_per_line = True
    if len(raw_items) > limits.max_events_per_batch:
        raise WireError("$", f"{len(raw_items)} events exceed the limit of {limits.max_events_per_batch} per batch")
    # One look at the whole body's brackets bounds every line's nesting depth at once (an array
    # body nests one level deeper than its events, so it is checked event by event).
    depth_fits = one_event_per_line and _depth_within(body.translate(None, _BRACKETS_ONLY), limits.max_depth)
    properties = _PropertiesMemo()
    # Index = position in the body (the header line counts as 0 for NDJSON), as the client sees it.
    events = [_walkme_event(first_index + i, raw, limits, depth_fits, properties) for i, raw in enumerate(raw_items)]
    return DecodedBatch(events, sent_at)


class _PropertiesMemo:
    """`analytics_properties` and its JSON text, computed once per run of equal inputs.

    The events of one batch come from one browser, so they nearly always carry the same
    `wm.userVars`: comparing two small dicts is far cheaper than rebuilding and encoding them.
    """

    def __init__(self) -> None:
        self._values: dict | None = None
        self._found: tuple[dict | None, str | None] = (None, None)

    def __call__(self, values: dict | None) -> tuple[dict | None, str | None]:
        if not values:
            return None, None
        if values != self._values:
            found = analytics_properties(values)
            self._values, self._found = values, (found, msgspec.json.encode(found).decode() if found else None)
        return self._found


def _looks_like_ndjson(body: bytes) -> bool:
    return b'"_static"' in body[:200] and b"\n" in body.strip()


def _read_header(line: bytes) -> int | None:
    if b"_static" not in line:
        return None
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("_static") is not True:
        return None
    client_ts = obj.get("Wm-Client-Timestamp")
    if client_ts is not None and (not isinstance(client_ts, int) or isinstance(client_ts, bool)):
        raise WireError("$[0].Wm-Client-Timestamp", f"Expected `int`, got `{type(client_ts).__name__}`")
    return client_ts


_WALKME_DECODER = msgspec.json.Decoder(WalkMeEvent)


def _walkme_properties(obj: dict) -> list:
    return [obj.get("data"), (obj.get("wm") or {}).get("userVars")]


def _walkme_event(
    index: int, raw: bytes, limits: Limits, depth_fits: bool = False, properties: _PropertiesMemo | None = None
) -> Incoming | Invalid:
    try:
        ev = _WALKME_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        path, reason = _split_error(exc)
        return Invalid(index, raw, path, reason)
    except msgspec.DecodeError as exc:
        return Invalid(index, raw, "$", f"malformed JSON: {exc}")
    problem = check_limits(raw, limits, _walkme_properties, depth_fits=depth_fits)
    if problem:
        return Invalid(index, raw, problem[0], problem[1], "limit_exceeded")
    data, ctx, loc = ev.data, ev.ctx, ev.ctx.location if ev.ctx else None
    screen, version = ev.env.screen if ev.env else None, ev.version
    source = (ev.wm.euIdSource or "").lower()
    anonymous = source in ANONYMOUS_ID_SOURCES
    user_vars, user_vars_json = (properties or _PropertiesMemo())(ev.wm.userVars)
    return Incoming(
        source="walkme",
        index=index,
        raw=raw,
        type=ev.type,
        client_ts=ev.time,
        env_code=ev.wm.env if ev.wm.env is not None else 0,
        app_type=data.type if data else None,
        object_id=None if data is None or data.oId is None else str(data.oId),
        object_name=data.oName if data else None,
        session_hint=ev.sId or (ev.visions.sId if ev.visions else None),
        visit_id=ctx.visitId if ctx else None,
        anon_id=ev.wm.euId if anonymous else None,
        user_id=None if anonymous else ev.wm.euId,
        url_host=loc.hostname if loc else None,
        url_path=loc.pathname if loc else None,
        title=ctx.title if ctx else None,
        account_id=ev.wm.uId,
        client_env=ev.env,
        user_vars=user_vars,
        user_vars_json=user_vars_json,
        screen_width=_whole(screen.width) if screen else None,
        screen_height=_whole(screen.height) if screen else None,
        tz_offset=_whole(ev.env.timezone) if ev.env else None,
        in_iframe=ctx.isIframe if ctx else None,
        lib_version=version.lib if version else None,
        pe_version=version.pe if version else None,
    )


# An integer column's range, on both engines: a larger number is not a screen or an offset.
_INT_RANGE = range(-(2**31), 2**31)


def _whole(value: object) -> int | None:
    """A client's number as a whole number (screens and offsets are whole), None if absent or not a number."""
    if type(value) is int:
        return value if value in _INT_RANGE else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return None
    try:
        whole = round(value)
    except OverflowError:  # infinity
        return None
    return whole if whole in _INT_RANGE else None


def decode_native(body: bytes, limits: Limits) -> DecodedBatch:
    """Decode a native batch (also accepts a single message without the `batch` envelope)."""
    try:
        probe = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError("$", f"malformed JSON: {exc}") from None
    if not isinstance(probe, dict):
        raise WireError("$", "expected a JSON object with a `batch` array")
    if "batch" not in probe:
        probe = {"batch": [probe]}
        body = msgspec.json.encode(probe)
    try:
        envelope = msgspec.json.decode(body, type=NativeBatch)
    except msgspec.ValidationError as exc:
        path, reason = _split_error(exc)
        raise WireError(path, reason) from None
    if len(envelope.batch) > limits.max_events_per_batch:
        raise WireError(
            "$.batch",
            f"{len(envelope.batch)} events exceed the limit of {limits.max_events_per_batch} per batch",
        )
    sent_at = None
    if envelope.sentAt is not None and envelope.sent_at is not None:
        raise WireError("$.sent_at", "give the send time once, as sentAt or sent_at")
    for field_name, given in (("sentAt", envelope.sentAt), ("sent_at", envelope.sent_at)):
        if given is not None:
            sent_at = parse_time(given)
            if sent_at is None:
                raise WireError(f"$.{field_name}", "expected milliseconds since the epoch or an ISO 8601 time")
    events = [_native_event(i, bytes(raw), limits) for i, raw in enumerate(envelope.batch)]
    return DecodedBatch(events, sent_at, envelope.environment, envelope.writeKey)


def _native_event(index: int, raw: bytes, limits: Limits) -> Incoming | Invalid:
    prefix = f"$.batch[{index}]"
    try:
        msg = msgspec.json.decode(raw, type=NativeMessage)
    except msgspec.ValidationError as exc:
        path, reason = _split_error(exc, prefix)
        return Invalid(index, raw, path, reason)
    problem = check_limits(raw, limits, lambda obj: [obj.get("properties"), obj.get("traits")], prefix)
    if problem:
        return Invalid(index, raw, problem[0], problem[1], "limit_exceeded")
    if not (msg.anonymousId or msg.userId):
        return Invalid(index, raw, f"{prefix}.anonymousId", "either anonymousId or userId is required")
    if msg.type == "track" and not msg.event:
        return Invalid(index, raw, f"{prefix}.event", "a track message needs an event name")
    client_ts = None
    if msg.timestamp is not None:
        client_ts = parse_time(msg.timestamp)
        if client_ts is None:
            return Invalid(index, raw, f"{prefix}.timestamp", "expected milliseconds or an ISO 8601 time")
    user_vars = analytics_properties(msg.traits) if msg.type == "identify" else None
    page = msg.context.page if msg.context else None
    screen = msg.context.screen if msg.context else None
    host = path = None
    if page and page.url:
        parts = urlsplit(page.url)
        host, path = parts.hostname, parts.path or "/"
    if page and page.path:
        path = page.path
    return Incoming(
        source="native",
        index=index,
        raw=raw,
        type=msg.type,
        client_ts=client_ts if client_ts is not None else -1,
        name=msg.event if msg.type == "track" else msg.name,
        env_name=msg.environment,
        session_hint=msg.context.sessionId if msg.context else None,
        anon_id=msg.anonymousId,
        user_id=msg.userId,
        url_host=host,
        url_path=path,
        title=page.title if page else None,
        message_id=msg.messageId,
        user_agent=msg.context.userAgent if msg.context else None,
        id_token=msg.context.idToken if msg.context else None,
        user_vars=user_vars,
        user_vars_json=msgspec.json.encode(user_vars).decode() if user_vars else None,
        screen_width=_whole(screen.get("width")) if isinstance(screen, dict) else None,
        screen_height=_whole(screen.get("height")) if isinstance(screen, dict) else None,
        tz_offset=_whole(msg.context.timezone) if msg.context else None,
    )


ANALYTICS_PROPERTIES = ("name", "role", "type", "status", "info")


def analytics_properties(values: dict | None) -> dict | None:
    """The five analytics properties among `values` (WalkMe `wm.userVars`, native identify traits).

    Empty strings mean "not set" in WalkMe's payloads, so they are left out. Values are kept as
    text (numbers and booleans as their JSON spelling), so rules compare them the same way in SQL
    and in process.
    """
    if not values:
        return None
    found = {
        k: v if isinstance(v, str) else msgspec.json.encode(v).decode()
        for k in ANALYTICS_PROPERTIES
        if (v := values.get(k)) not in (None, "") and isinstance(v, str | int | float | bool)
    }
    return found or None


def parse_time(value: IsoOrMs) -> int | None:
    """Milliseconds since the epoch from a number (ms) or an ISO 8601 string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return int(parsed.timestamp() * 1000)
    return None


_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"{}[]")


def check_limits(
    raw: bytes,
    limits: Limits,
    property_maps: Callable[[dict], list],
    prefix: str = "$",
    depth_fits: bool = False,
) -> tuple[str, str] | None:
    """The first limit an event breaks, as (path, reason), or None.

    Cheap upper bounds taken from the raw text settle almost every event without decoding it:
    no string can be longer than the text, no object holds more keys than the text has `":`,
    and brackets (counting those inside strings too) bound the nesting depth. `depth_fits` says
    the caller has already bounded the depth (for a whole body at once).
    """
    fits_strings = len(raw) <= limits.max_string_length
    fits_properties = raw.count(b'":') <= limits.max_properties_per_event
    fits_depth = depth_fits or _depth_within(raw.translate(None, _BRACKETS_ONLY), limits.max_depth)
    if fits_strings and fits_properties and fits_depth:
        return None
    obj = msgspec.json.decode(raw)
    count = sum(len(m) for m in property_maps(obj) if isinstance(m, dict))
    if count > limits.max_properties_per_event:
        return prefix, f"{count} properties exceed the limit of {limits.max_properties_per_event}"
    return _walk(obj, prefix, 1, limits)


_INNERMOST_PAIR = re.compile(rb"\{\}|\[\]")


def _depth_within(brackets: bytes, limit: int) -> bool:
    """True if the brackets nest at most `limit` deep (one pass peels one level).

    Brackets inside strings only make it answer False, which sends the event to the exact walk.
    With one kind of bracket only (the usual WalkMe event has no arrays), `bytes.replace` peels
    a level exactly as the regex does, several times faster.
    """
    has_braces, has_square = b"{" in brackets, b"[" in brackets
    pair = b"{}" if not has_square else b"[]" if not has_braces else None
    for _ in range(limit):
        if not brackets:
            return True
        brackets = brackets.replace(pair, b"") if pair else _INNERMOST_PAIR.sub(b"", brackets)
    return not brackets


def _walk(node: Any, path: str, depth: int, limits: Limits) -> tuple[str, str] | None:
    if isinstance(node, str):
        if len(node) > limits.max_string_length:
            return path, f"string of {len(node)} characters exceeds the limit of {limits.max_string_length}"
        return None
    if isinstance(node, dict | list):
        if depth > limits.max_depth:
            return path, f"nesting deeper than the limit of {limits.max_depth}"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            child = f"{path}.{key}" if isinstance(node, dict) else f"{path}[{key}]"
            if isinstance(key, str) and len(key) > limits.max_string_length:
                return child, "key exceeds the string length limit"
            problem = _walk(value, child, depth + 1, limits)
            if problem:
                return problem
    return None
