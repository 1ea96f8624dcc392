"""Realistic simulated traffic, sent through the real HTTP API.

Several hundred end users over several weeks: page changes, WalkMe Walk-Thru plays, steps and
completions, widget opens and searches, ShoutOut plays/clicks/closes, launcher clicks, surveys
and heartbeats, in WalkMe's wire format, plus native identify calls carrying analytics
properties. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import msgspec

DAY_MS = 86_400_000

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 "
    "Edg/124.0.2478.51",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
]
# Public addresses in different countries, so the demo shows geolocation (the server must trust
# the demo's X-Forwarded-For, which `usertrail serve --demo` arranges for 127.0.0.1 only).
IPS = [
    "8.8.8.8",
    "81.2.69.160",
    "2.16.6.1",
    "5.62.60.1",
    "31.13.64.1",
    "41.203.64.1",
    "45.112.0.1",
    "58.96.0.1",
    "62.109.0.1",
    "77.88.8.8",
    "89.160.20.112",
    "91.198.174.192",
    "103.21.244.1",
    "104.16.0.1",
    "130.89.0.1",
    "151.101.1.69",
    "177.0.0.1",
    "185.60.216.35",
    "190.0.0.1",
    "193.0.14.129",
    "200.160.2.3",
    "210.140.0.1",
]
PAGES = [
    ("/", "Home - ShopMe"),
    ("/products", "Products - ShopMe"),
    ("/product/pink-alligator/", "Pink Alligator - ShopMe"),
    ("/cart", "Cart - ShopMe"),
    ("/checkout", "Checkout - ShopMe"),
    ("/account", "My account - ShopMe"),
    ("/settings/billing", "Billing - ShopMe"),
    ("/reports", "Reports - ShopMe"),
    ("/help", "Help - ShopMe"),
]
WALKTHRUS = [(124909, "Log in", 4), (124910, "Create your first report", 6), (124911, "Set up billing", 5)]
SHOUTOUTS = [(5001, "New: dark mode"), (5002, "Upgrade to VIP")]
LAUNCHERS = [(7001, "Need help?"), (7002, "Start tour")]
SURVEYS = [(9001, "How are we doing?")]
ROLES = ["admin", "analyst", "sales", "support", "engineer"]
PLANS = ["free", "pro", "VIP"]
HOST = "shopme.example.com"


@dataclass
class SimUser:
    eu_id: str
    identified: bool
    ip: str
    user_agent: str
    first_day: float
    lifetime_days: float
    sessions_per_week: float
    name: str
    role: str
    plan: str


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def make_users(rng: random.Random, count: int, weeks: int) -> list[SimUser]:
    users = []
    for i in range(count):
        identified = rng.random() < 0.7
        users.append(
            SimUser(
                eu_id=f"user-{i:05d}" if identified else _guid(rng),
                identified=identified,
                ip=rng.choice(IPS),
                user_agent=rng.choice(USER_AGENTS),
                first_day=rng.uniform(0, weeks * 7 - 1),
                lifetime_days=rng.expovariate(1 / 20) if rng.random() > 0.25 else 0.0,
                sessions_per_week=rng.uniform(0.5, 6),
                name=f"Demo User {i}",
                role=rng.choice(ROLES),
                plan=rng.choices(PLANS, weights=[6, 3, 1])[0],
            )
        )
    return users


def _event(user: SimUser, session: str, visit: str, ts: int, type_: str, path_title, data: dict | None = None) -> dict:
    path, title = path_title
    browser = user.user_agent.split(")")[-1].strip().split(" ")[-1].split("/")
    return {
        "time": ts,
        "type": type_,
        "data": data or {},
        "sId": session,
        "wm": {
            "uId": "3210be7ad82f403298f7c4da065ec657",
            "euId": user.eu_id,
            "euIdSource": "Identifier" if user.identified else "Cache",
            "permId": -1,
            "env": 0,
            "interactionGuid": session,
            "platform": 1,
            "userVars": {
                "name": user.name if user.identified else "",
                "role": user.role,
                "type": user.plan,
                "status": "active",
                "info": "",
            },
        },
        "env": {
            "browser": {"name": browser[0], "version": browser[-1]},
            "os": {"name": "iOS" if "iPhone" in user.user_agent else "Windows"},
            "mobile": "iPhone" in user.user_agent,
            "screen": {"height": 900, "width": 1440},
            "timezone": -120,
        },
        "ctx": {
            "location": {"protocol": "https:", "hostname": HOST, "pathname": path},
            "isIframe": False,
            "visitId": visit,
            "title": title,
        },
        "visions": {"sId": session},
        "version": {"lib": "20190306-123518-32b80d9f", "pe": "5.0.0"},
    }


def _session_events(rng: random.Random, user: SimUser, start: int) -> list[dict]:
    session, visit = _guid(rng), uuid.UUID(int=rng.getrandbits(128)).hex
    ts = start
    page = rng.choice(PAGES)
    events = [_event(user, session, visit, ts, "pageChange", page)]

    def later(lo: int = 2, hi: int = 90) -> int:
        nonlocal ts
        ts += rng.randint(lo, hi) * 1000
        return ts

    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.3:
            page = rng.choice(PAGES)
            events.append(_event(user, session, visit, later(), "pageChange", page))
        elif roll < 0.5:
            oid, name, steps = rng.choice(WALKTHRUS)
            pid = f"{ts}-{oid}-{_guid(rng)}"
            base = {
                "type": "wt",
                "oId": oid,
                "oName": name,
                "pId": pid,
                "pInit": {"type": rng.choice([1, 3, 6])},
            }
            events.append(_event(user, session, visit, later(), "play", page, base))
            reached = steps if rng.random() < 0.55 else rng.randint(1, steps - 1)
            for step in range(1, reached + 1):
                events.append(
                    _event(
                        user,
                        session,
                        visit,
                        later(3, 20),
                        "play",
                        page,
                        {
                            "type": "step",
                            "oId": oid * 100 + step,
                            "oName": f"{name} · step {step}",
                            "pId": pid,
                            "owId": oid,
                            "owType": "wt",
                        },
                    )
                )
            if reached == steps:
                events.append(_event(user, session, visit, later(1, 5), "complete", page, base))
        elif roll < 0.65:
            events.append(_event(user, session, visit, later(), "open", page, {"type": "player", "pInit": {"type": 1}}))
            if rng.random() < 0.4:
                events.append(
                    _event(
                        user,
                        session,
                        visit,
                        later(2, 15),
                        "search",
                        page,
                        {"type": "widgetSearch", "oName": rng.choice(["billing", "export", "invite"])},
                    )
                )
        elif roll < 0.8:
            oid, name = rng.choice(SHOUTOUTS)
            data = {"type": "shoutout", "oId": oid, "oName": name}
            events.append(_event(user, session, visit, later(), "play", page, data))
            events.append(_event(user, session, visit, later(1, 10), rng.choice(["click", "close"]), page, data))
        elif roll < 0.9:
            oid, name = rng.choice(LAUNCHERS)
            events.append(
                _event(
                    user,
                    session,
                    visit,
                    later(),
                    "click",
                    page,
                    {"type": "launcher", "oId": oid, "oName": name},
                )
            )
        else:
            oid, name = SURVEYS[0]
            data = {"type": "survey", "oId": oid, "oName": name}
            events.append(_event(user, session, visit, later(), "play", page, data))
            if rng.random() < 0.5:
                events.append(_event(user, session, visit, later(5, 40), "submitted", page, data))
    events.append(_event(user, session, visit, later(30, 120), "sessionPing", page, {"type": "none"}))
    return events


def generate(seed: int, users: int, weeks: int, now_ms: int) -> Iterator[tuple[SimUser, list[dict]]]:
    """Each simulated user with all their events, in time order, ending before `now_ms`."""
    rng = random.Random(seed)
    start = now_ms - weeks * 7 * DAY_MS
    for user in make_users(rng, users, weeks):
        day = user.first_day
        last_day = min(weeks * 7, user.first_day + user.lifetime_days)
        events: list[dict] = []
        while day <= last_day:
            session_start = start + int(day * DAY_MS) + rng.randint(8 * 3600, 18 * 3600) * 1000
            if session_start < now_ms - 3_600_000:
                events.extend(_session_events(rng, user, session_start))
            day += rng.expovariate(user.sessions_per_week / 7)
        yield user, [e for e in events if e["time"] < now_ms]


def _walkme_body(events: list[dict]) -> bytes:
    header = {"_static": True, "Wm-Client-Timestamp": int(time.time() * 1000)}
    return b"\n".join(msgspec.json.encode(x) for x in [header, *events])


def send(
    base_url: str,
    write_key: str,
    users: int = 300,
    weeks: int = 4,
    seed: int = 7,
    on_user: Callable[[int], None] | None = None,
) -> dict:
    """Send the simulated traffic; returns counts. `on_user` is called after each user (progress)."""
    now_ms = int(time.time() * 1000)
    totals = {"users": 0, "events": 0, "requests": 0, "failed_requests": 0}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for user, events in generate(seed, users, weeks, now_ms):
            headers = {
                "User-Agent": user.user_agent,
                "X-Forwarded-For": user.ip,
                "Content-Type": "text/plain",
            }
            for i in range(0, len(events), 50):
                chunk = events[i : i + 50]
                response = client.post(f"/event/tell?key={write_key}", content=_walkme_body(chunk), headers=headers)
                totals["requests"] += 1
                totals["events"] += len(chunk)
                if response.status_code != 200:
                    totals["failed_requests"] += 1
            if user.identified and events:
                identify = {
                    "batch": [
                        {
                            "type": "identify",
                            "userId": user.eu_id,
                            "anonymousId": user.eu_id,
                            "traits": {
                                "name": user.name,
                                "role": user.role,
                                "type": user.plan,
                                "status": "active",
                            },
                            "timestamp": events[-1]["time"],
                            "messageId": f"demo-identify-{user.eu_id}",
                        }
                    ],
                    "sentAt": int(time.time() * 1000),
                }
                response = client.post(f"/v1/batch?key={write_key}", json=identify, headers=headers)
                totals["requests"] += 1
                totals["events"] += 1
                if response.status_code != 200:
                    totals["failed_requests"] += 1
            totals["users"] += 1
            if on_user:
                on_user(1)
    return totals
