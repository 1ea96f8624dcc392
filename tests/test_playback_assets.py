"""Session Playback assets: URLs found in recordings, the fetch guard, storage by content hash, serving.

The guard's tests fetch from a real HTTP server on 127.0.0.1 (tests/asset_site.py); names other than
127.0.0.1 go through an injected resolver, so no test depends on DNS or leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from PIL import Image

from usertrail.playback.assets import asset_urls, rewrite_chunk
from usertrail.playback.chunks import parse
from usertrail.playback.fetch import FetchRefused, SafeFetcher, address_refusal
from usertrail.testing.postgres import free_port

from asset_site import AssetSite
from conftest import LiveServer
from playback_helpers import configure, send_chunk, start

DAY_MS = 86_400_000


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, "PNG")
    return out.getvalue()


def snapshot(href: str, nodes: list[dict], ts: int = 1_700_000_000_000) -> list[dict]:
    """Meta and a full snapshot whose <head> holds `nodes` (rrweb's serialized form)."""
    head = {"type": 2, "id": 3, "tagName": "head", "attributes": {}, "childNodes": nodes}
    html = {"type": 2, "id": 2, "tagName": "html", "attributes": {}, "childNodes": [head]}
    return [
        {"type": 4, "data": {"href": href, "width": 800, "height": 600}, "timestamp": ts},
        {
            "type": 2,
            "data": {"node": {"type": 0, "id": 1, "childNodes": [html]}, "initialOffset": {"left": 0, "top": 0}},
            "timestamp": ts + 1,
        },
    ]


def element(node_id: int, tag: str, **attributes) -> dict:
    return {"type": 2, "id": node_id, "tagName": tag, "attributes": attributes, "childNodes": []}


def style_text(node_id: int, css: str) -> dict:
    text = {"type": 3, "id": node_id + 1, "textContent": css, "isStyle": True}
    return {"type": 2, "id": node_id, "tagName": "style", "attributes": {}, "childNodes": [text]}


# --- finding and rewriting URLs --------------------------------------------------------------------


def test_asset_urls_in_snapshots_and_mutations():
    nodes = [
        element(10, "link", rel="stylesheet", href="https://cdn.example.com/site.css"),
        element(11, "link", rel="canonical", href="https://app.example.com/canonical"),
        element(12, "a", href="https://app.example.com/next"),
        element(13, "script", src="https://cdn.example.com/app.js"),
        element(14, "img", src="https://cdn.example.com/logo.png", srcset="https://cdn.example.com/a.png 1x, b.png 2x"),
        element(15, "div", style="background: url('https://cdn.example.com/bg.jpg') no-repeat"),
        style_text(16, '@font-face { src: url("https://fonts.example.com/f.woff2") } .x { background: url(data:x) }'),
        element(18, "link", _cssText="@import 'https://cdn.example.com/more.css'; a { cursor: url(/relative.cur) }"),
    ]
    events = snapshot("https://app.example.com/", nodes)
    events.append(
        {
            "type": 3,
            "data": {
                "source": 0,
                "texts": [],
                "removes": [],
                "adds": [{"parentId": 3, "node": element(30, "img", src="https://cdn.example.com/added.gif")}],
                "attributes": [{"id": 14, "attributes": {"src": "https://cdn.example.com/changed.png", "href": "x"}}],
            },
            "timestamp": 1_700_000_000_100,
        }
    )
    chunk = parse(json.dumps(events).encode(), inputs_allowed=True)
    assert sorted(asset_urls(chunk)) == [
        "https://cdn.example.com/a.png",
        "https://cdn.example.com/added.gif",
        "https://cdn.example.com/bg.jpg",
        "https://cdn.example.com/changed.png",
        "https://cdn.example.com/logo.png",
        "https://cdn.example.com/more.css",
        "https://cdn.example.com/site.css",
        "https://fonts.example.com/f.woff2",
    ]


def test_rewrite_points_recorded_urls_at_stored_copies():
    nodes = [
        element(10, "link", rel="stylesheet", href="https://cdn.example.com/site.css"),
        element(11, "img", src="https://cdn.example.com/logo.png", srcset="https://cdn.example.com/logo.png 2x"),
        style_text(12, "body { background: url(https://cdn.example.com/logo.png) }"),
        element(14, "img", src="https://cdn.example.com/not-stored.png"),
    ]
    raw = json.dumps(snapshot("https://app.example.com/", nodes)).encode()
    new = {
        "https://cdn.example.com/site.css": "/api/projects/1/playback/assets/" + "a" * 64,
        "https://cdn.example.com/logo.png": "/api/projects/1/playback/assets/" + "b" * 64,
    }
    head = json.loads(rewrite_chunk(raw, new))[1]["data"]["node"]["childNodes"][0]["childNodes"][0]["childNodes"]
    assert head[0]["attributes"]["href"] == new["https://cdn.example.com/site.css"]
    assert head[1]["attributes"] == {
        "src": new["https://cdn.example.com/logo.png"],
        "srcset": f"{new['https://cdn.example.com/logo.png']} 2x",
    }
    assert (
        head[2]["childNodes"][0]["textContent"]
        == f'body {{ background: url("{new["https://cdn.example.com/logo.png"]}") }}'
    )
    assert head[3]["attributes"]["src"] == "https://cdn.example.com/not-stored.png"
    assert rewrite_chunk(raw, {"https://elsewhere.example/x.css": "/x"}) is raw  # nothing to do: the same bytes


# --- the fetch guard ---------------------------------------------------------------------------------


@pytest.fixture
def asset_site() -> Iterator[AssetSite]:
    with AssetSite() as site:
        yield site


def anywhere(url: httpx.URL) -> bool:
    return True


def keep_type(url: str, announced: str) -> str:
    if announced == "text/html":
        raise FetchRefused("refused", "not an asset")
    return announced


@pytest.mark.parametrize(
    ("address", "refused_by_default", "refused_in_tests"),
    [
        ("93.184.216.34", False, False),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.1.2.3", True, False),
        ("192.168.0.7", True, False),
        ("100.64.0.1", True, False),
        ("::ffff:127.0.0.1", True, False),
        ("169.254.169.254", True, True),
        ("fe80::1", True, True),
        ("224.0.0.1", True, True),
        ("0.0.0.0", True, True),
        ("240.0.0.1", True, True),
    ],
)
def test_which_addresses_are_refused(address, refused_by_default, refused_in_tests):
    assert (address_refusal(address, allow_private=False) is not None) == refused_by_default
    assert (address_refusal(address, allow_private=True) is not None) == refused_in_tests


def test_loopback_and_private_addresses_are_refused(asset_site):
    asset_site.files["/a.css"] = ("text/css", b"a{}")
    fetcher = SafeFetcher(allow_private=False)
    with pytest.raises(FetchRefused, match="loopback or private") as refused:
        fetcher.fetch(asset_site.url("/a.css"), anywhere, keep_type)
    assert refused.value.status == "refused"
    names = {"cdn.example.com": ["10.1.2.3"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"]}
    fetcher = SafeFetcher(allow_private=False, resolver=lambda host, port: names[host])
    for host in names:
        with pytest.raises(FetchRefused, match="loopback or private"):
            fetcher.fetch(f"http://{host}:{asset_site.port}/a.css", anywhere, keep_type)
    # The test setting opens loopback and private ranges, never link-local (cloud metadata services).
    metadata = SafeFetcher(allow_private=True, resolver=lambda host, port: ["169.254.169.254"])
    with pytest.raises(FetchRefused, match="link-local"):
        metadata.fetch("http://metadata.example.com/latest/", anywhere, keep_type)
    assert asset_site.requests == []


def test_the_connection_goes_to_the_checked_address(asset_site):
    """The name is resolved once and checked; the request goes to that address with the name as Host."""
    asset_site.files["/a.css"] = ("text/css", b"a { color: red }")
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    fetched = SafeFetcher(allow_private=True, resolver=resolver).fetch(
        f"http://cdn.example.test:{asset_site.port}/a.css", anywhere, keep_type
    )
    assert fetched.body == b"a { color: red }" and fetched.content_type == "text/css"
    assert lookups == ["cdn.example.test"]
    assert asset_site.requests == [("/a.css", f"cdn.example.test:{asset_site.port}")]


def test_domains_schemes_and_types_are_checked(asset_site):
    asset_site.files["/page"] = ("text/html", b"<p>hi</p>")
    fetcher = SafeFetcher(allow_private=True)
    with pytest.raises(FetchRefused, match="not one of the project's domains"):
        fetcher.fetch(asset_site.url("/a.css"), lambda url: url.host == "cdn.example.com", keep_type)
    for url in ("ftp://127.0.0.1/a.css", "file:///etc/passwd", "javascript:alert(1)", "http:///nohost"):
        with pytest.raises(FetchRefused, match=r"only http and https|not a valid URL"):
            fetcher.fetch(url, anywhere, keep_type)
    with pytest.raises(FetchRefused, match="not an asset"):
        fetcher.fetch(asset_site.url("/page"), anywhere, keep_type)
    assert asset_site.paths() == ["/page"]


def test_redirects_are_checked_like_the_first_url(asset_site):
    asset_site.files["/a.css"] = ("text/css", b"a{}")
    only_127 = SafeFetcher(allow_private=True)
    elsewhere = f"http://localhost:{asset_site.port}/a.css"
    with pytest.raises(FetchRefused, match="localhost is not one of the project's domains"):
        only_127.fetch(asset_site.url(f"/go?to={elsewhere}"), lambda url: url.host == "127.0.0.1", keep_type)
    assert only_127.fetch(asset_site.url("/go?to=/a.css"), anywhere, keep_type).body == b"a{}"
    loop = asset_site.url("/go?to=/go%3Fto%3D/go%253Fto%253D/go%25253Fto%25253D/a.css")
    with pytest.raises(FetchRefused, match="more than 2 redirects"):
        SafeFetcher(allow_private=True, max_redirects=2).fetch(loop, anywhere, keep_type)


def test_size_and_time_limits(asset_site):
    asset_site.files["/big.png"] = ("image/png", b"x" * 2000)
    small = SafeFetcher(allow_private=True, max_bytes=1000)
    with pytest.raises(FetchRefused, match=r"larger than 1000 bytes \(2000\)"):
        small.fetch(asset_site.url("/big.png"), anywhere, keep_type)
    with pytest.raises(FetchRefused, match=r"larger than 1000 bytes$"):
        small.fetch(asset_site.url("/endless"), anywhere, keep_type)  # no length announced: counted while read
    with pytest.raises(FetchRefused, match=r"no answer within 0\.3 s") as late:
        SafeFetcher(allow_private=True, timeout_s=0.3).fetch(asset_site.url("/hang"), anywhere, keep_type)
    assert late.value.status == "failed"
    # A body that keeps coming is cut off by the deadline of the whole fetch (the clock is the test's).
    ticks = iter(range(100))
    slow = SafeFetcher(allow_private=True, max_bytes=10**9, timeout_s=5, clock=lambda: next(ticks))
    with pytest.raises(FetchRefused, match="not complete within 5 s"):
        slow.fetch(asset_site.url("/endless"), anywhere, keep_type)


# --- through the server, on both engines --------------------------------------------------------------


def asset_server(make_server, site: AssetSite, **overrides) -> LiveServer:
    live = make_server(**{"playback_assets_allow_private": True, "playback_asset_interval_s": 3600, **overrides})
    response = configure(
        live,
        {"tracking_level": "playback", "playback": {"global_capture": True, "asset_domains": ["127.0.0.1"]}},
    )
    assert response.status_code == 200, response.text
    return live


def record(live: LiveServer, events: list[dict], anonymous_id: str) -> str:
    answer = start(live, anonymousId=anonymous_id, sessionId=f"s-{anonymous_id}")
    assert answer["record"] is True, answer
    response = send_chunk(live, answer["token"], 0, events)
    assert response.status_code == 200, response.text
    return answer["recording_id"]


def page_with_assets(site: AssetSite) -> list[dict]:
    return snapshot(
        "https://app.example.com/",
        [
            element(10, "link", rel="stylesheet", href=site.url("/style.css")),
            element(11, "img", src=site.url("/logo.png")),
            element(12, "img", src="https://elsewhere.example/tracker.png"),
            element(13, "a", href=site.url("/next")),
        ],
    )


def listing(live: LiveServer, rid: str) -> dict[str, dict]:
    with live.admin() as admin:
        response = admin.get(f"/api/projects/{live.project.project.id}/playback/recordings/{rid}/assets")
    assert response.status_code == 200, response.text
    return {item["url"]: item for item in response.json()["items"]}


def stored_sha(live: LiveServer, rid: str, url: str) -> str:
    return listing(live, rid)[url]["sha256"]


def test_assets_are_fetched_stored_once_and_served(make_server, asset_site):
    font, logo, bg = b"wOF2 font bytes", png((10, 120, 30)), png((200, 0, 0))
    asset_site.files["/fonts/f.woff2"] = ("font/woff2", font)
    asset_site.files["/logo.png"] = ("image/png", logo)
    asset_site.files["/img/bg.png"] = ("application/octet-stream", bg)  # the extension decides
    css_v1 = b'@font-face { font-family: F; src: url("fonts/f.woff2") } body { background: url(img/bg.png) }'
    asset_site.files["/style.css"] = ("text/css; charset=utf-8", css_v1)
    live = asset_server(make_server, asset_site)
    pid = live.project.project.id
    assets = live.app.state.playback.assets

    first = record(live, page_with_assets(asset_site), "anon-1")
    assert all(item["status"] == "pending" for item in listing(live, first).values())
    assert assets.process_pending() == 3
    items = listing(live, first)
    assert set(items) == {
        asset_site.url("/style.css"),
        asset_site.url("/logo.png"),
        "https://elsewhere.example/tracker.png",
    }
    assert items["https://elsewhere.example/tracker.png"]["status"] == "refused"
    assert "not one of the project's domains" in items["https://elsewhere.example/tracker.png"]["reason"]
    assert items[asset_site.url("/logo.png")]["sha256"] == hashlib.sha256(logo).hexdigest()

    font_sha, bg_sha = hashlib.sha256(font).hexdigest(), hashlib.sha256(bg).hexdigest()
    css_sha = items[asset_site.url("/style.css")]["sha256"]
    with live.admin() as admin:
        css = admin.get(f"/api/projects/{pid}/playback/assets/{css_sha}")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        # The stylesheet's own references point at stored copies, next to it.
        assert (
            css.text
            == f'@font-face {{ font-family: F; src: url("{font_sha}") }} body {{ background: url("{bg_sha}") }}'
        )
        assert hashlib.sha256(css.content).hexdigest() == css_sha
        assert (
            css.headers["x-content-type-options"] == "nosniff" and "sandbox" in css.headers["content-security-policy"]
        )
        served_font = admin.get(f"/api/projects/{pid}/playback/assets/{font_sha}")
        assert served_font.content == font and served_font.headers["content-type"] == "font/woff2"
        assert admin.get(f"/api/projects/{pid}/playback/assets/{bg_sha}").headers["content-type"] == "image/png"
        assert admin.get(f"/api/projects/{pid}/playback/assets/{'0' * 64}").status_code == 404
        assert admin.get(f"/api/projects/{pid}/playback/assets/NOT-A-HASH").json()["path"] == "sha256"
        # The player's stream has the recorded URLs pointing at the stored copies.
        lines = admin.get(f"/api/projects/{pid}/playback/recordings/{first}/events", params={"format": "chunks"})
        head = json.loads(lines.text.splitlines()[0])[1]["data"]["node"]["childNodes"][0]["childNodes"][0]
        hrefs = [n["attributes"].get("href") or n["attributes"].get("src") for n in head["childNodes"]]
        assert hrefs == [
            f"/api/projects/{pid}/playback/assets/{css_sha}",
            f"/api/projects/{pid}/playback/assets/{hashlib.sha256(logo).hexdigest()}",
            "https://elsewhere.example/tracker.png",
            asset_site.url("/next"),
        ]
    with live.client() as anonymous:
        assert anonymous.get(f"/api/projects/{pid}/playback/assets/{font_sha}").status_code == 401

    # Another recording of the same page: nothing is fetched again, nothing is stored twice.
    fetched_before = len(asset_site.requests)
    second = record(live, page_with_assets(asset_site), "anon-2")
    assets.process_pending()
    assert len(asset_site.requests) == fetched_before
    assert stored_sha(live, second, asset_site.url("/style.css")) == css_sha
    assert live.scalar("SELECT count(*) FROM playback_assets") == 4

    # The site changes its stylesheet; a day later a new recording gets the new one, the old keeps its own.
    asset_site.files["/style.css"] = ("text/css", b"body { background: #000 }")
    now = assets.clock()
    assets.clock = lambda: now + DAY_MS + 1
    third = record(live, page_with_assets(asset_site), "anon-3")
    assets.process_pending()
    assert (
        stored_sha(live, third, asset_site.url("/style.css"))
        == hashlib.sha256(b"body { background: #000 }").hexdigest()
    )
    assert stored_sha(live, first, asset_site.url("/style.css")) == css_sha

    # Clean-up removes what no recording uses any more (and what only a removed stylesheet used).
    with live.admin() as admin:
        for rid in (first, second):
            assert admin.delete(f"/api/projects/{pid}/playback/recordings/{rid}").status_code == 200
    assert assets.delete_unused(pid, now + 2 * DAY_MS) == 3  # the old stylesheet, its font and background
    assert live.scalar("SELECT count(*) FROM playback_assets") == 2
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{pid}/playback/assets/{font_sha}").status_code == 404
    blobs = [p for p in (Path(live.settings.data_dir) / "playback" / "assets").rglob("*") if p.is_file()]
    assert len(blobs) == 2


def test_asset_domains_setting_is_checked(make_server):
    live = make_server()
    response = configure(live, {"playback": {"asset_domains": ["cdn.example.com", "bad domain"]}})
    assert response.status_code == 400
    assert response.json()["path"] == "$.playback.asset_domains[1]"


def test_without_the_test_setting_loopback_is_refused(make_server, asset_site):
    asset_site.files["/style.css"] = ("text/css", b"a{}")
    live = asset_server(make_server, asset_site, playback_assets_allow_private=False)
    rid = record(live, page_with_assets(asset_site), "anon-1")
    live.app.state.playback.assets.process_pending()
    item = listing(live, rid)[asset_site.url("/style.css")]
    assert item["status"] == "refused" and "loopback or private" in item["reason"]
    assert asset_site.requests == []


@pytest.fixture
def s3_endpoint(monkeypatch) -> Iterator[str]:
    """An S3 service (moto, in server mode) on 127.0.0.1 with an empty bucket `recordings`."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="recordings")
    yield url
    server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_assets_in_the_s3_engine(make_server, asset_site, s3_endpoint):
    logo = png((1, 2, 3))
    asset_site.files["/logo.png"] = ("image/png", logo)
    live = asset_server(make_server, asset_site, playback_store="s3://recordings/ut", s3_endpoint_url=s3_endpoint)
    rid = record(live, page_with_assets(asset_site), "anon-1")
    live.app.state.playback.assets.process_pending()
    sha = stored_sha(live, rid, asset_site.url("/logo.png"))
    key = f"ut/assets/{live.project.project.id}/{sha[:2]}/{sha}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.get_object(Bucket="recordings", Key=key)["Body"].read() == logo
    with live.admin() as admin:
        assert admin.get(f"/api/projects/{live.project.project.id}/playback/assets/{sha}").content == logo
        admin.delete(f"/api/projects/{live.project.project.id}/playback/recordings/{rid}")
    live.app.state.playback.assets.delete_unused(live.project.project.id, live.app.state.playback.assets.clock() + 1)
    assert s3.list_objects_v2(Bucket="recordings", Prefix="ut/assets/").get("KeyCount") == 0


def test_the_export_embeds_the_stored_copies(make_server, asset_site):
    font, logo = b"wOF2 font bytes", png((10, 120, 30))
    asset_site.files["/fonts/f.woff2"] = ("font/woff2", font)
    asset_site.files["/logo.png"] = ("image/png", logo)
    asset_site.files["/style.css"] = ("text/css", b'@font-face { font-family: F; src: url("fonts/f.woff2") }')
    live = asset_server(make_server, asset_site)
    pid = live.project.project.id
    rid = record(live, page_with_assets(asset_site), "anon-1")
    live.app.state.playback.assets.process_pending()
    with live.admin() as admin:
        html = admin.get(f"/api/projects/{pid}/playback/recordings/{rid}/export").text
    events = json.loads(re.search(r'<script type="application/json" id="ut-events">(.*?)</script>', html, re.S)[1])
    head = events[1]["data"]["node"]["childNodes"][0]["childNodes"][0]["childNodes"]
    css_uri, logo_uri, tracker, link = (n["attributes"].get("href") or n["attributes"].get("src") for n in head)
    assert logo_uri == "data:image/png;base64," + base64.b64encode(logo).decode()
    font_uri = "data:font/woff2;base64," + base64.b64encode(font).decode()
    css = b'@font-face { font-family: F; src: url("' + font_uri.encode() + b'") }'
    assert css_uri == "data:text/css;base64," + base64.b64encode(css).decode()
    # A refused asset keeps its URL (the export's CSP loads nothing from anywhere); links are not assets.
    assert (tracker, link) == ("https://elsewhere.example/tracker.png", asset_site.url("/next"))
    assert "<dt>stored assets embedded</dt><dd>2</dd>" in html

    # Over the size limit, assets are left out and the file says how many.
    assets = live.app.state.playback.assets
    row = live.app.state.playback.store.find(pid, rid)
    assert assets.embedded(row, budget=len(logo_uri) - 1) == ({}, 2)
