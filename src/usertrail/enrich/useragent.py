"""Browser, OS and device from the User-Agent header, and whether it is a bot."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import ua_parser

# Device families and agent families that ua-parser's rules give to automated clients.
_BOT_DEVICE_FAMILIES = {"Spider"}
# HTTP client libraries: a server sending events, not a browser. They count as bots too.
_HTTP_LIBRARIES = r"curl/|wget/|python-requests|httpx|go-http-client"
_HTTP_LIBRARY = re.compile(_HTTP_LIBRARIES, re.IGNORECASE)
_HEADLESS = re.compile(
    r"headless|phantomjs|selenium|webdriver|puppeteer|playwright|electron.*automation|"
    r"\b(bot|crawler|spider|crawl|slurp|scraper)\b|" + _HTTP_LIBRARIES,
    re.IGNORECASE,
)
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS"}
_TABLETS = re.compile(r"ipad|tablet|kindle|silk|playbook|sm-t\d", re.IGNORECASE)


@dataclass(frozen=True)
class Agent:
    browser: str | None
    browser_version: str | None
    os: str | None
    device_type: str  # "desktop", "mobile", "tablet" or "bot"
    is_mobile: bool
    is_bot: bool
    # No browser sent the request: no User-Agent, or an HTTP library's. A WalkMe event's own
    # `env.*` then says more about the browser than the request does (collect/pipeline.py).
    browserless: bool = False


@lru_cache(maxsize=16_384)
def parse_agent(user_agent: str) -> Agent:
    """Parse a User-Agent string; results are cached because real traffic repeats a few thousand strings."""
    if not user_agent:
        return Agent(None, None, None, "desktop", False, False, browserless=True)
    result = ua_parser.parse(user_agent)
    agent, os_, device = result.user_agent, result.os, result.device
    browser = agent.family if agent and agent.family != "Other" else None
    version = ".".join(p for p in (agent.major, agent.minor, agent.patch) if p) if agent else None
    os_name = os_.family if os_ and os_.family != "Other" else None
    is_bot = bool(device and device.family in _BOT_DEVICE_FAMILIES) or bool(_HEADLESS.search(user_agent))
    is_tablet = bool(_TABLETS.search(user_agent))
    is_mobile = not is_tablet and (os_name in _MOBILE_OS or "Mobile" in user_agent)
    if is_bot:
        device_type = "bot"
    elif is_tablet:
        device_type = "tablet"
    elif is_mobile:
        device_type = "mobile"
    else:
        device_type = "desktop"
    browserless = bool(_HTTP_LIBRARY.search(user_agent))
    return Agent(browser, version or None, os_name, device_type, is_mobile, is_bot, browserless)


@lru_cache(maxsize=4_096)
def agent_from_fields(browser: str | None, version: str | None, os_name: str | None, mobile: bool | None) -> Agent:
    """The browser as a WalkMe event describes itself (`env.browser`, `env.os`, `env.mobile`).

    WalkMe says only mobile or not, so tablets count as mobile; a headless or automation browser
    naming itself is still a bot.
    """
    is_bot = bool(browser and _HEADLESS.search(browser))
    is_mobile = bool(mobile)
    device_type = "bot" if is_bot else "mobile" if is_mobile else "desktop"
    return Agent(browser or None, version or None, os_name or None, device_type, is_mobile, is_bot)
