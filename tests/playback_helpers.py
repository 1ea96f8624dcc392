"""Shared by the playback tests: switch an environment to playback, start recordings, send chunks."""

from __future__ import annotations

import gzip
import json

import httpx

from conftest import LiveServer

FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_7_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_3) AppleWebKit/537.75.14 (KHTML, like Gecko) "
    "Version/7.0.3 Safari/537.75.14"
)
SAFARI_8_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/600.8.9 (KHTML, like Gecko) "
    "Version/8.0.8 Safari/600.8.9"
)
SAFARI_12_0_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/12.0 Safari/605.1.15"
)
SAFARI_12_1_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/12.1 Safari/605.1.15"
)
SAFARI_17_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
EDGE_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80"
)
# EdgeHTML, before Edge moved to Chromium: no globalThis.
EDGE_18_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582"
)
CHROME_70_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/70.0.3538.110 Safari/537.36"
)
FIREFOX_64_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:64.0) Gecko/20100101 Firefox/64.0"
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)


def configure(live: LiveServer, settings: dict, env: str = "production") -> httpx.Response:
    with live.admin() as admin:
        return admin.patch(f"/api/projects/{live.project.project.id}/environments/{env}", json=settings)


def enable_playback(live: LiveServer, **playback) -> None:
    """Playback level, and by default global capture, on the production environment."""
    response = configure(live, {"tracking_level": "playback", "playback": {"global_capture": True, **playback}})
    assert response.status_code == 200, response.text


def start(live: LiveServer, headers: dict | None = None, **body) -> dict:
    payload = {"url": "https://app.example.com/home", "anonymousId": "anon-1", "sessionId": "s-1", **body}
    with live.client(headers=headers or {}) as client:
        response = client.post(
            "/v1/playback/start", params={"key": live.project.write_key}, content=json.dumps(payload)
        )
    assert response.status_code == 200, response.text
    return response.json()


def events_at(ts: int, href: str = "https://app.example.com/home", typed: str = "*****") -> list[dict]:
    """A small but well-formed rrweb stream: Meta, FullSnapshot with one input, then incremental events."""
    return [
        {"type": 4, "data": {"href": href, "width": 1280, "height": 720}, "timestamp": ts},
        {
            "type": 2,
            "data": {
                "node": {
                    "type": 0,
                    "id": 1,
                    "childNodes": [
                        {
                            "type": 2,
                            "id": 2,
                            "tagName": "input",
                            "attributes": {"type": "text", "value": typed},
                            "childNodes": [],
                        }
                    ],
                },
                "initialOffset": {"left": 0, "top": 0},
            },
            "timestamp": ts + 1,
        },
        {
            "type": 3,
            "data": {"source": 1, "positions": [{"x": 10, "y": 20, "id": 2, "timeOffset": 0}]},
            "timestamp": ts + 50,
        },
        {"type": 3, "data": {"source": 5, "text": "*****", "isChecked": False, "id": 2}, "timestamp": ts + 90},
    ]


def send_chunk(
    live: LiveServer,
    token: str,
    seq: int,
    events: list | bytes,
    enc: str = "gzip",
    headers: dict | None = None,
) -> httpx.Response:
    raw = events if isinstance(events, bytes) else json.dumps(events).encode()
    body = gzip.compress(raw) if enc == "gzip" else raw
    with live.client(headers=headers or {}) as client:
        return client.post(
            "/v1/playback/chunks",
            params={"key": live.project.write_key, "token": token, "seq": str(seq), "enc": enc},
            content=body,
        )


def recording_events(live: LiveServer, recording_id: str, fmt: str = "json") -> list:
    with live.admin() as admin:
        response = admin.get(
            f"/api/projects/{live.project.project.id}/playback/recordings/{recording_id}/events", params={"format": fmt}
        )
    assert response.status_code == 200, response.text
    if fmt == "ndjson":
        return [json.loads(line) for line in response.text.splitlines()]
    return response.json()
