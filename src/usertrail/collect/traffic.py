"""Matching of traffic rules: IP patterns, domain patterns, user-agent patterns and allowed origins."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from functools import lru_cache


class InvalidPattern(ValueError):
    """A traffic-rule pattern that can never match anything."""


def ip_matches(address: str, pattern: str) -> bool:
    """True when `address` matches a single IP, a `*` wildcard (`10.0.*`) or a CIDR (`10.0.0.0/8`)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    pattern = pattern.strip()
    if "/" in pattern:
        try:
            return ip in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    if "*" in pattern:
        return _wildcard_ip(pattern).fullmatch(str(ip)) is not None
    try:
        return ip == ipaddress.ip_address(pattern)
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def _wildcard_ip(pattern: str) -> re.Pattern:
    # "10.0.*" covers 10.0.x.y: a trailing star spans the remaining octets.
    parts = [re.escape(p) if p != "*" else r"[0-9a-fA-F:.]+" for p in pattern.split("*")]
    return re.compile(r"[0-9a-fA-F:.]+".join(parts) if len(parts) > 1 else parts[0])


def validate_ip_pattern(pattern: str) -> None:
    """Raise InvalidPattern for an entry of the excluded-IPs list that is not IP, wildcard or CIDR."""
    p = pattern.strip()
    try:
        if "/" in p:
            ipaddress.ip_network(p, strict=False)
        elif "*" in p:
            if not re.fullmatch(r"[0-9a-fA-F:.*]+", p):
                raise ValueError
        else:
            ipaddress.ip_address(p)
    except ValueError:
        raise InvalidPattern(f"{pattern!r} is not an IP address, a `*` wildcard or a CIDR range") from None


def domain_matches(hostname: str, pattern: str) -> bool:
    """`example.com` matches that host and its subdomains; `*.example.com` only the subdomains."""
    host = hostname.lower().rstrip(".")
    pattern = pattern.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    if "*" in pattern:
        return fnmatch.fnmatchcase(host, pattern)
    return host == pattern or host.endswith("." + pattern)


def user_agent_matches(user_agent: str, pattern: str) -> bool:
    """Case-insensitive: a plain pattern is a substring, one with `*` is a glob over the whole string."""
    ua, pat = user_agent.lower(), pattern.strip().lower()
    if not pat:
        return False
    return fnmatch.fnmatchcase(ua, pat) if "*" in pat else pat in ua


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Origins such as `https://app.example.com`, `https://*.example.com` or `http://localhost:*`."""
    origin = origin.strip().lower().rstrip("/")
    for pattern in allowed:
        pat = pattern.strip().lower().rstrip("/")
        if pat == "*" or origin == pat or ("*" in pat and fnmatch.fnmatchcase(origin, pat)):
            return True
    return False
