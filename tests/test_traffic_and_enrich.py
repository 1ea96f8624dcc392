"""Traffic-rule matching, IP masking, client IP, geolocation and user-agent parsing."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from usertrail.collect.pipeline import hash_identifier
from usertrail.collect.traffic import (
    InvalidPattern,
    domain_matches,
    ip_matches,
    origin_allowed,
    user_agent_matches,
    validate_ip_pattern,
)
from usertrail.config import Settings
from usertrail.enrich.geo import GeoDatabaseError, GeoLocator, default_database_path
from usertrail.enrich.ip import client_ip, mask_ip
from usertrail.enrich.useragent import agent_from_fields, parse_agent
from usertrail.web.app import build_collector


@pytest.mark.parametrize(
    ("address", "pattern", "expected"),
    [
        ("10.0.3.4", "10.0.3.4", True),
        ("10.0.3.5", "10.0.3.4", False),
        ("10.0.3.4", "10.0.*", True),
        ("10.1.3.4", "10.0.*", False),
        ("192.168.1.77", "192.168.1.*", True),
        ("172.16.9.1", "172.16.0.0/12", True),
        ("172.32.0.1", "172.16.0.0/12", False),
        ("2001:db8::1", "2001:db8::/32", True),
        ("not-an-ip", "10.0.*", False),
    ],
)
def test_ip_patterns(address, pattern, expected):
    assert ip_matches(address, pattern) is expected


def test_invalid_ip_patterns_are_refused():
    for ok in ("10.0.0.1", "10.0.*", "10.0.0.0/8", "::1"):
        validate_ip_pattern(ok)
    for bad in ("10.0.0.300", "ten.*", "10.0.0.0/99"):
        with pytest.raises(InvalidPattern):
            validate_ip_pattern(bad)


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("a.internal.example.com", "*.internal.example.com", True),
        ("internal.example.com", "*.internal.example.com", False),
        ("internal.example.com", "internal.example.com", True),
        ("x.internal.example.com", "internal.example.com", True),
        ("notinternal.example.com", "internal.example.com", False),
        ("APP.Example.com", "app.example.com", True),
    ],
)
def test_domain_patterns(host, pattern, expected):
    assert domain_matches(host, pattern) is expected


def test_user_agent_and_origin_patterns():
    assert user_agent_matches("Mozilla/5.0 Selenium/4", "selenium")
    assert user_agent_matches("Mozilla/5.0 (X11) Foo", "mozilla/5.0 (x11)*")
    assert not user_agent_matches("Mozilla/5.0", "")
    allowed = ["https://app.example.com", "https://*.example.org", "http://localhost:*"]
    assert origin_allowed("https://app.example.com", allowed)
    assert origin_allowed("https://eu.example.org", allowed)
    assert origin_allowed("http://localhost:5173", allowed)
    assert not origin_allowed("https://evil.example.com", allowed)
    assert not origin_allowed("https://app.example.com.evil.net", allowed)


def test_mask_ip():
    assert mask_ip("81.2.69.160") == "81.2.69.0"
    assert mask_ip("2a00:1450:4001:81c::200e") == "2a00:1450:4001::"
    assert mask_ip("::ffff:81.2.69.160") == "81.2.69.0"
    assert mask_ip("garbage") == ""


@given(st.ip_addresses())
def test_masked_ip_keeps_only_the_network(ip):
    masked = ipaddress.ip_address(mask_ip(str(ip)))
    source = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    prefix = 24 if source.version == 4 else 48
    assert masked == ipaddress.ip_network(f"{source}/{prefix}", strict=False).network_address


def test_forwarded_for_only_from_trusted_proxies():
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip("10.1.1.1", "81.2.69.160", proxies) == "81.2.69.160"
    assert client_ip("81.2.69.1", "8.8.8.8", proxies) == "81.2.69.1"  # untrusted peer: header ignored
    # The client itself wrote the left-most hop; only the hop our proxy saw is believed.
    assert client_ip("10.1.1.1", "6.6.6.6, 81.2.69.160", proxies) == "81.2.69.160"
    assert client_ip("10.1.1.1", "81.2.69.160, 10.2.2.2", proxies) == "81.2.69.160"
    assert client_ip("10.1.1.1", "81.2.69.160", []) == "10.1.1.1"


def test_geolocation_offline():
    geo = GeoLocator()
    assert geo.lookup("8.8.8.8").country == "US"
    london = geo.lookup("81.2.69.160")
    assert (london.country, london.city) == ("GB", "London")
    assert london.region
    assert geo.lookup("127.0.0.1").country is None
    assert geo.lookup("10.0.0.1").country is None


_COMPILED, _PURE = GeoLocator(), GeoLocator(mode=maxminddb.MODE_MMAP)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_compiled_and_pure_python_readers_agree(address):
    """The C reader (when the install built it) and the pure-Python one give the same locations."""
    assert _COMPILED.lookup(str(address)) == _PURE.lookup(str(address))


def test_install_builds_the_compiled_reader_where_libmaxminddb_is_installed():
    """scripts/_env.sh installs libmaxminddb-dev and builds maxminddb against it (lookups ~10x faster)."""
    if subprocess.run(["dpkg", "-s", "libmaxminddb-dev"], capture_output=True).returncode != 0:
        pytest.skip("libmaxminddb-dev is not installed: this machine uses the pure-Python reader")
    assert GeoLocator().compiled
    assert not _PURE.compiled


def test_user_agents():
    chrome = parse_agent(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/72.0.3626.121 "
        "Safari/537.36"
    )
    assert (chrome.browser, chrome.browser_version, chrome.os, chrome.device_type) == (
        "Chrome",
        "72.0.3626",
        "Windows",
        "desktop",
    )
    iphone = parse_agent(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.0 Mobile/15E148 Safari/604.1"
    )
    assert iphone.is_mobile and iphone.device_type == "mobile" and iphone.os == "iOS"
    for bot in (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        "curl/8.0.1",
    ):
        assert parse_agent(bot).is_bot, bot
    assert not chrome.is_bot


def test_hashing_matches_walkme_documented_example():
    assert hash_identifier("adam.br", "") == "LxhaMQBuA3cjHQqujqUmW/YDuHkWuCFjsT2uXs7lDQY"
    assert hash_identifier("adam.br", "pepper") != hash_identifier("adam.br", "")


def test_http_libraries_and_no_user_agent_are_browserless():
    for sender in ("", "curl/8.5.0", "python-requests/2.31.0", "python-httpx/0.27.0", "Go-http-client/1.1"):
        assert parse_agent(sender).browserless, sender
    for browser in (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",  # a bot, but a browser's UA
    ):
        assert not parse_agent(browser).browserless, browser
    described = agent_from_fields("Chrome", "72.0.3626.121", "Windows", False)
    assert (described.browser, described.browser_version, described.os, described.device_type) == (
        "Chrome", "72.0.3626.121", "Windows", "desktop"
    )  # fmt: skip
    assert agent_from_fields("Mobile Safari", None, "iOS", True).device_type == "mobile"
    assert agent_from_fields("HeadlessChrome", "120", "Linux", False).is_bot


def test_geoip_db_setting_reads_the_named_file(tmp_path: Path, sqlite_database_url: str):
    """USERTRAIL_GEOIP_DB: a copy of the shipped database is used; an unusable file stops the start with
    a message naming the setting and the file."""
    copy = tmp_path / "newer-city.mmdb"
    shutil.copyfile(default_database_path(), copy)
    settings = Settings.from_env({"USERTRAIL_GEOIP_DB": str(copy), "USERTRAIL_DATABASE_URL": sqlite_database_url})
    collector = build_collector(settings)
    try:
        assert collector.geo.path == str(copy)
        assert (collector.geo.lookup("81.2.69.160").country, collector.geo.lookup("81.2.69.160").city) == (
            "GB", "London"
        )  # fmt: skip
    finally:
        collector.writer.close()
        collector.events.engine.dispose()
    not_a_database = tmp_path / "city.mmdb.txt"
    not_a_database.write_text("not a MaxMind database")
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(copy.read_bytes()[:4096])
    for bad in (tmp_path / "missing.mmdb", not_a_database, truncated, tmp_path):
        settings = Settings.from_env({"USERTRAIL_GEOIP_DB": str(bad), "USERTRAIL_DATABASE_URL": sqlite_database_url})
        with pytest.raises(GeoDatabaseError, match=r"USERTRAIL_GEOIP_DB: cannot open .* as a MaxMind-format") as exc:
            build_collector(settings)
        assert str(bad) in str(exc.value)
