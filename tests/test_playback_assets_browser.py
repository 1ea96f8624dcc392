"""Assets in a real Chromium: a page whose stylesheet and image come from another origin is recorded by
the real snippet; the server fetches and stores them; the site then changes and goes away, and the
replay still looks as recorded, from the stored copies.

The stylesheet is cross-origin on purpose: rrweb inlines same-origin stylesheets into its snapshot,
but can only keep the URL of a cross-origin one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from usertrail.web.snippet import snippet_tag

from asset_site import AssetSite
from browser import PageServer, wait_until
from conftest import CHROME_UA, LiveServer
from playback_helpers import configure, recording_events
from replay_helpers import PASSWORD, add_account

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOUR_MS = 3_600_000
CSS = (
    b"body { background: rgb(10, 120, 30); margin: 0 } h1 { color: rgb(200, 0, 0) }"
    b" .bg { background: url(img/tile.png); height: 40px }"
)


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def live(make_server) -> LiveServer:
    server = make_server(
        playback_chunk_interval_ms=HOUR_MS, playback_assets_allow_private=True, playback_asset_interval_s=3600
    )
    add_account(server, "vic@example.com", "viewer")
    return server


def test_the_replay_uses_the_stored_stylesheet_after_the_site_changed_and_went_away(live, browser, tmp_path: Path):
    pid = live.project.project.id
    with PageServer() as site, AssetSite() as cdn:
        cdn.files["/site.css"] = ("text/css", CSS)
        cdn.files["/img/tile.png"] = ("image/png", png((0, 0, 255)))
        cdn.files["/logo.png"] = ("image/png", png((255, 255, 0)))
        response = configure(
            live,
            {
                "allowed_origins": [site.origin],
                "tracking_level": "playback",
                "playback": {"global_capture": True, "asset_domains": ["127.0.0.1"]},
            },
        )
        assert response.status_code == 200, response.text
        site.pages["/shop"] = (
            '<!doctype html><html><head><meta charset="utf-8"><title>Shop</title>'
            f'<link rel="stylesheet" href="{cdn.url("/site.css")}">'
            f"{snippet_tag(live.base_url, live.project.write_key)}</head><body>"
            f'<h1 id="title">Styled by the CDN</h1><div class="bg" id="tiles"></div>'
            f'<img id="logo" src="{cdn.url("/logo.png")}" width="8" height="8"></body></html>'
        )
        page = browser.new_context(user_agent=CHROME_UA).new_page()
        with page.expect_response(lambda r: "/v1/playback/start" in r.url) as started:
            page.goto(site.url("/shop"))
        rid = started.value.json()["recording_id"]
        page.wait_for_function("() => window.rrwebRecord && sessionStorage.getItem('ut_pb')")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(10, 120, 30)"

        def snapshot_stored() -> bool:
            page.evaluate("usertrail.flush()")
            return any(e["type"] == 2 for e in recording_events(live, rid))

        wait_until(snapshot_stored, "the full snapshot on the server", timeout=20)
        page.context.close()
        assets = live.app.state.playback.assets
        while assets.process_pending():
            pass
        # The site changes its stylesheet, then goes away altogether.
        cdn.files["/site.css"] = ("text/css", b"body { background: rgb(0, 0, 0) }")
        cdn.stop()

    with live.admin() as admin:
        items = admin.get(f"/api/projects/{pid}/playback/recordings/{rid}/assets").json()["items"]
    by_url = {item["url"]: item for item in items}
    assert by_url[cdn.url("/site.css")]["status"] == "ok", items
    css_sha = by_url[cdn.url("/site.css")]["sha256"]
    logo_sha = hashlib.sha256(png((255, 255, 0))).hexdigest()
    assert by_url[cdn.url("/logo.png")]["sha256"] == logo_sha

    viewer = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000})
    login = viewer.request.post(
        f"{live.base_url}/api/auth/login", data={"email": "vic@example.com", "password": PASSWORD}
    )
    assert login.status == 200, login.text()
    app = viewer.new_page()
    blocked: list[str] = []
    app.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    app.goto(f"{live.base_url}/app/projects/{pid}/recordings/{rid}")
    app.wait_for_selector("#replay[data-first-frame-ms][data-loaded]", state="attached", timeout=20_000)
    inner = app.frame_locator("#replay-frame").frame_locator(".replayer-wrapper iframe")
    link = inner.locator("link[rel=stylesheet]")
    assert link.get_attribute("href") == f"/api/projects/{pid}/playback/assets/{css_sha}"

    def styled() -> str:
        return inner.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")

    # The stored stylesheet, as recorded: not the site's new one (and the site is gone anyway).
    wait_until(lambda: styled() == "rgb(10, 120, 30)", "the stored stylesheet applied in the replay", timeout=20)
    assert inner.locator("#title").evaluate("h => getComputedStyle(h).color") == "rgb(200, 0, 0)"
    # Its background image came through the stored stylesheet, the <img> from its own stored copy.
    tile = inner.locator("#tiles").evaluate("d => getComputedStyle(d).backgroundImage")
    assert f"/api/projects/{pid}/playback/assets/" in tile, tile
    wait_until(lambda: inner.locator("#logo").evaluate("i => i.complete && i.naturalWidth") == 8, "the stored logo")
    assert inner.locator("#logo").get_attribute("src") == f"/api/projects/{pid}/playback/assets/{logo_sha}"
    assert not blocked, blocked
    viewer.close()

    # The export carries the stored copies itself: opened offline from disk it looks the same.
    with live.admin() as admin:
        exported = admin.get(f"/api/projects/{pid}/playback/recordings/{rid}/export")
    assert exported.status_code == 200
    saved = tmp_path / "export.html"
    saved.write_bytes(exported.content)
    offline = browser.new_context(user_agent=CHROME_UA, viewport={"width": 1400, "height": 1000}, offline=True)
    requests: list[str] = []
    offline.on("request", lambda r: requests.append(r.url))
    file_page = offline.new_page()
    file_page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    file_page.goto(saved.as_uri())
    file_page.wait_for_selector("html[data-ready]", state="attached")
    file_page.evaluate("usertrailExport.player.goto(1000, false)")
    exported_page = file_page.frame_locator(".replayer-wrapper iframe")
    wait_until(
        lambda: (
            exported_page.locator("body").evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(10, 120, 30)"
        ),
        "the embedded stylesheet applied in the exported replay",
        timeout=20,
    )
    assert exported_page.locator("#title").evaluate("h => getComputedStyle(h).color") == "rgb(200, 0, 0)"
    tile = exported_page.locator("#tiles").evaluate("d => getComputedStyle(d).backgroundImage")
    assert tile.startswith('url("data:image/png;base64,'), tile
    wait_until(
        lambda: exported_page.locator("#logo").evaluate("i => i.complete && i.naturalWidth") == 8,
        "the embedded logo",
    )
    assert requests == [saved.as_uri()] and not blocked, (requests, blocked)
    offline.close()
