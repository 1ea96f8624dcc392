"""The path of one event from the wire to a stored row, as a visible list of named steps.

Each step looks at the event and either lets it continue (possibly enriched or trimmed),
drops it with a counted `DropReason`, or rejects it with a `RejectReason` (kept, re-processable).
Reading `STEPS` tells the whole story; docs/collection.md documents each step.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import xxhash

from usertrail.collect.drops import DropReason, RejectReason
from usertrail.collect.traffic import domain_matches, ip_matches, user_agent_matches
from usertrail.collect.wire import Incoming
from usertrail.enrich import idp
from usertrail.enrich.geo import Location
from usertrail.enrich.useragent import Agent, agent_from_fields, parse_agent
from usertrail.project_settings import EnvironmentSettings, TrackingLevel, UuidSettings


@dataclass
class RequestContext:
    """Facts about the request that every event in it shares."""

    project_id: int
    environments: dict[str, EnvironmentSettings]
    received_at: int
    skew_ms: int  # server receive time minus the client's send time
    ip: str | None  # the full client IP; None when re-processing (it was never stored)
    ip_masked: str
    location: Location
    agent: Agent
    user_agent: str
    # Outcomes of REQUEST_STEPS by (environment, event's own user agent): computed once per request.
    shared: dict = field(default_factory=dict)
    # The request's ID tokens, verified before its events run through the steps (enrich/idp.py).
    id_tokens: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    reason: DropReason


@dataclass(frozen=True)
class Reject:
    reason: RejectReason
    path: str
    message: str


@dataclass(slots=True)
class Working:
    """An event while it moves through the steps."""

    event: Incoming
    env: str = ""
    settings: EnvironmentSettings | None = None
    user_key: str = ""
    id_source: str = ""
    ts: int = 0
    event_id: str = ""


Step = Callable[[Working, RequestContext], Drop | Reject | None]


def resolve_environment(w: Working, ctx: RequestContext) -> Reject | None:
    ev = w.event
    if ev.source == "walkme":
        for name, settings in ctx.environments.items():
            if settings.walkme_env == ev.env_code:
                w.env, w.settings = name, settings
                return None
        return Reject(RejectReason.UNKNOWN_ENVIRONMENT, "$.wm.env", f"no environment has wm.env = {ev.env_code}")
    name = ev.env_name or "production"
    if name not in ctx.environments:
        return Reject(RejectReason.UNKNOWN_ENVIRONMENT, "$.environment", f"unknown environment {name!r}")
    w.env, w.settings = name, ctx.environments[name]
    return None


def exclude_ip(w: Working, ctx: RequestContext) -> Drop | None:
    # On re-processing only the masked IP is known: wildcard and range rules still apply to it.
    address = ctx.ip if ctx.ip is not None else ctx.ip_masked
    patterns = w.settings.traffic.excluded_ips
    if patterns and any(ip_matches(address, p) for p in patterns):
        return Drop(DropReason.EXCLUDED_IP)
    return None


def exclude_user_agent(w: Working, ctx: RequestContext) -> Drop | None:
    ua = w.event.user_agent or ctx.user_agent
    patterns = w.settings.traffic.excluded_user_agents
    if patterns and any(user_agent_matches(ua, p) for p in patterns):
        return Drop(DropReason.EXCLUDED_USER_AGENT)
    return None


def agent_of(event: Incoming, ctx: RequestContext) -> Agent:
    """The browser that produced the event.

    A server-side sender may name it in the event (native `context.userAgent`); a WalkMe event
    describes its browser in `env.*`, which counts when no browser sent the request (no
    User-Agent, or an HTTP library's: a server forwarding the recorder's events).
    """
    if event.user_agent:
        return parse_agent(event.user_agent)
    if ctx.agent.browserless:
        return described_agent(event) or ctx.agent
    return ctx.agent


def described_agent(event: Incoming) -> Agent | None:
    """The browser named by a WalkMe event's `env.browser`, `env.os` and `env.mobile`, if any."""
    env = event.client_env
    if env is None or (env.browser is None and env.os is None):
        return None
    browser, os_ = env.browser, env.os
    return agent_from_fields(
        browser.name if browser else None, browser.version if browser else None, os_.name if os_ else None, env.mobile
    )


def drop_bot(w: Working, ctx: RequestContext) -> Drop | None:
    if w.settings.traffic.drop_bots and agent_of(w.event, ctx).is_bot:
        return Drop(DropReason.BOT)
    return None


def exclude_domain(w: Working, ctx: RequestContext) -> Drop | None:
    host, patterns = w.event.url_host, w.settings.traffic.excluded_domains
    if host and patterns and any(domain_matches(host, p) for p in patterns):
        return Drop(DropReason.EXCLUDED_DOMAIN)
    return None


# WalkMe types recorded by the DXA collector (formerly UBT) and page views; everything else a
# WalkMe recorder sends is an engagement event about WalkMe content.
DXA_TYPES = frozenset(
    {
        "pageChange",
        "pageView",
        "pageview",
        "mousedown",
        "dblclick",
        "change",
        "submit",
        "keypress",
        "idle",
        "active",
    }
)


# Module-level names and plain ints: on Python 3.11 reading an enum member off its class, or a
# property of it, costs as much as the rest of this step.
_ENGAGEMENT, _DXA = TrackingLevel.ENGAGEMENT, TrackingLevel.DXA
_RANK = {level: level.rank for level in TrackingLevel}


def event_level(event: Incoming) -> TrackingLevel:
    """The lowest tracking level at which this event is collected."""
    if event.source == "native":
        return _DXA if event.type == "page" else _ENGAGEMENT
    return _DXA if event.type in DXA_TYPES else _ENGAGEMENT


def check_tracking_level(w: Working, ctx: RequestContext) -> Drop | None:
    if _RANK[event_level(w.event)] > _RANK[w.settings.tracking_level]:
        return Drop(DropReason.ABOVE_TRACKING_LEVEL)
    return None


def assign_event_id(w: Working, ctx: RequestContext) -> None:
    """The de-duplication key: the client's message id, else a hash of the event's text as sent."""
    ev = w.event
    key = b"m:" + ev.message_id.encode() if ev.message_id else b"c:" + ev.raw
    # XXH3-128, not a cryptographic hash: ids only need to differ between one end user's own events
    # (the key includes the user), and it costs a seventh of BLAKE2b-128 per event (docs/collection.md).
    w.event_id = xxhash.xxh3_128_hexdigest(key)


_PAGE_PROPERTIES = ("url", "path", "referrer", "search", "title")


def apply_page_privacy(w: Working, ctx: RequestContext) -> None:
    """When URL or title collection is off, neither is stored, whatever the client sent."""
    s, ev = w.settings, w.event
    if s.collect_url and s.collect_title:
        return
    obj = ev.obj
    if ev.source == "walkme":
        wm_ctx = obj.get("ctx") if isinstance(obj.get("ctx"), dict) else {}
        removed = {"location", "referrer"} if not s.collect_url else set()
        removed |= {"title", "topTitle"} if not s.collect_title else set()
        for key in removed:
            wm_ctx.pop(key, None)
    else:
        page = ((obj.get("context") or {}).get("page")) if isinstance(obj.get("context"), dict) else None
        props = obj.get("properties") if ev.type == "page" and isinstance(obj.get("properties"), dict) else {}
        for target in (page or {}, props):
            for key in _PAGE_PROPERTIES:
                if (key == "title" and not s.collect_title) or (key != "title" and not s.collect_url):
                    target.pop(key, None)
        if ev.type == "page" and not s.collect_title:
            # A page view's name is usually the document title (the snippet sends exactly that).
            obj.pop("name", None)
            ev.name = None
    if not s.collect_url:
        ev.url_host = ev.url_path = None
    if not s.collect_title:
        ev.title = None
    ev.modified = True


def hash_identifier(value: str, salt: str) -> str:
    """WalkMe's documented hashing: SHA-256, base64 without padding; the salt is prefixed."""
    digest = hashlib.sha256((salt + value).encode()).digest()
    return base64.b64encode(digest).decode().rstrip("=")


def identity_for(uuid: UuidSettings, user_id: str | None, anon_id: str | None) -> tuple[str | None, str | None, str]:
    """The (identified id, anonymous id, end-user key) the UUID settings allow for what a client sent.

    Providers `none` and `walkme_id` allow no identified id: one that arrives anyway is replaced
    by its hash (an opaque id), so no identifier is kept; `hash` settings hash it in place.
    """
    if user_id is not None and (uuid.provider in ("none", "walkme_id") or uuid.hash):
        hashed = hash_identifier(user_id, uuid.salt)
        if uuid.provider in ("none", "walkme_id"):
            user_id, anon_id = None, hashed
        else:
            user_id = hashed
    if user_id is not None:
        return user_id, anon_id, "u:" + user_id
    return None, anon_id, "a:" + (anon_id or "")


def identify_user(w: Working, ctx: RequestContext) -> None:
    """Pick the end-user key allowed by the UUID settings; a replaced identifier is replaced in the stored event too.

    Under the `idp` provider a native event is identified only by the verified ID token it carries; an id
    it merely claims is not believed (removed, its hash kept as the anonymous id if there is no other)."""
    uuid, ev = w.settings.uuid, w.event
    claimed = ev.user_id
    if uuid.provider == "idp" and ev.source == "native":
        token = ev.id_token
        claimed = idp.lookup(ctx.id_tokens, token, uuid, event_time(ev, ctx)) if token is not None else None
        if claimed is None and ev.user_id is not None and ev.anon_id is None:
            ev.anon_id = hash_identifier(ev.user_id, uuid.salt)
    if ev.id_token is not None:
        # A credential that names the person: used above, never stored.
        del ev.obj["context"]["idToken"]
        ev.id_token, ev.modified = None, True
    user_id, anon_id, w.user_key = identity_for(uuid, claimed, ev.anon_id)
    if user_id != ev.user_id:
        replacement = anon_id if user_id is None and uuid.provider in ("none", "walkme_id") else user_id
        _replace_identifier(ev, replacement)
    ev.user_id, ev.anon_id = user_id, anon_id
    if user_id is not None:
        w.id_source = uuid.provider
    else:
        w.id_source = {"none": "anonymous", "walkme_id": "walkme_id"}.get(uuid.provider, "anonymous_fallback")


def _replace_identifier(ev: Incoming, value: str | None) -> None:
    if ev.source == "walkme":
        ev.obj["wm"]["euId"] = value
    elif value is None:
        del ev.obj["userId"]
    else:
        ev.obj["userId"] = value
    ev.modified = True


def event_time(ev: Incoming, ctx: RequestContext) -> int:
    """The client's time corrected by the batch's clock skew, never later than receipt (ms)."""
    client = ev.client_ts
    return ctx.received_at if client < 0 else min(client + ctx.skew_ms, ctx.received_at)


def place_in_time(w: Working, ctx: RequestContext) -> None:
    """Event time = client time corrected by the batch's clock skew, never later than receipt."""
    w.ts = event_time(w.event, ctx)


# Steps that read only the request, the event's environment and the event's own user agent (a
# server-side sender may name one, see `agent_of`): every event of a request that shares those gets the same
# outcome, so they run once per request and environment, not once per event.
REQUEST_STEPS: tuple[Step, ...] = (
    exclude_ip,
    exclude_user_agent,
    drop_bot,
)
EVENT_STEPS: tuple[Step, ...] = (
    exclude_domain,
    check_tracking_level,
    assign_event_id,
    apply_page_privacy,
    identify_user,
    place_in_time,
)
STEPS: tuple[Step, ...] = (resolve_environment, *REQUEST_STEPS, *EVENT_STEPS)

_NOT_YET = object()


def run_steps(event: Incoming, ctx: RequestContext) -> Working | Drop | Reject:
    """Run every step; the event comes out ready to store, dropped, or rejected."""
    w = Working(event)
    rejected = resolve_environment(w, ctx)
    if rejected is not None:
        return rejected
    # The agent a browserless request's WalkMe event describes decides `drop_bot` too.
    key = (w.env, event.user_agent, described_agent(event) if ctx.agent.browserless else None)
    shared = ctx.shared.get(key, _NOT_YET)
    if shared is _NOT_YET:
        shared = ctx.shared[key] = _first_outcome(REQUEST_STEPS, w, ctx)
    if shared is not None:
        return shared
    outcome = _first_outcome(EVENT_STEPS, w, ctx)
    return w if outcome is None else outcome


def _first_outcome(steps: tuple[Step, ...], w: Working, ctx: RequestContext) -> Drop | Reject | None:
    for step in steps:
        outcome = step(w, ctx)
        if outcome is not None:
            return outcome
    return None


def to_row(w: Working, ctx: RequestContext) -> tuple:
    """The `events` row (a tuple in `EVENT_COLUMNS` order) for an event that passed every step."""
    ev, loc, agent = w.event, ctx.location, agent_of(w.event, ctx)
    # UTF-8 bytes, as sent unless a step changed the event: decoded to text only when indexed, off the
    # request's path (msgspec has already checked the encoding).
    payload = msgspec.json.encode(ev.obj) if ev.modified else ev.raw
    return (
        ctx.project_id,
        w.user_key,
        w.event_id,
        w.ts,
        ev.client_ts if ev.client_ts >= 0 else None,
        ctx.received_at,
        w.env,
        ev.source,
        ev.type,
        ev.name,
        ev.app_type,
        ev.object_id,
        ev.object_name,
        ev.session_hint,
        ev.visit_id,
        ev.anon_id,
        ev.user_id,
        w.id_source,
        ev.url_host,
        ev.url_path,
        ev.title,
        loc.country,
        loc.region,
        loc.city,
        agent.browser,
        agent.browser_version,
        agent.os,
        agent.device_type,
        agent.is_mobile,
        ctx.ip_masked or None,
        ev.user_vars_json,
        ev.screen_width,
        ev.screen_height,
        ev.tz_offset,
        ev.in_iframe,
        ev.lib_version,
        ev.pe_version,
        payload,
    )
