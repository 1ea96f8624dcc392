"""Replay benchmark: time to first frame of a 30-minute recording in the player page (target < 1 s).

    .venv/bin/python bench/replay.py                   # 30 minutes, 6 pages, 7 page loads
    .venv/bin/python bench/replay.py --minutes 5 --runs 3   # smoke run

1. A synthetic recording (usertrail.testing.recordings: six shop pages of 60 product cards, one full
   snapshot each, and ~11 incremental events a second: batched mouse moves, clicks that add list
   items, scrolls) is uploaded through the real chunk API, 5 s per chunk, as the snippet sends it. It
   is stored compressed and encrypted like any recording.
2. Debian's Chromium (Playwright) signs in as a viewer and opens the player page `--runs` times, each
   in a fresh page of one browser context (the first with an empty cache, the rest with the player's
   static files cached, as a user's second recording would be). Measured in the page, from the
   navigation's start (performance.now()): the first chunk received and the whole recording fetched
   (the decrypting events stream, one chunk a line; the player starts on the first full snapshot and
   takes the rest while it already shows it), and the first frame shown (the replay iframe holds the
   rebuilt page). The frame's own steps (first chunk parsed, player built) are reported too.

The server runs as its own uvicorn process on SQLite in a temporary folder (one worker). Results are
printed and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from usertrail.access.accounts import AccountStore
from usertrail.config import Settings
from usertrail.store.database import create_engine, migrate
from usertrail.store.projects import ProjectStore
from usertrail.testing.postgres import free_port
from usertrail.testing.recordings import chunks_of, synthetic_recording

sys.path.insert(0, str(Path(__file__).resolve().parent))
from playback import CHROME_UA, RESULTS_DIR, start_server, stop_server

PASSWORD = "bench password, long enough"


def upload(base_url: str, write_key: str, events: list[dict]) -> tuple[str, dict]:
    """The recording through /v1/playback/start and /v1/playback/chunks (gzip); its id and sizes."""
    chunks = chunks_of(events)
    raw = wire = 0
    headers = {"User-Agent": CHROME_UA, "Content-Type": "text/plain"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        start = {"url": "https://shop.example.com/page/1", "anonymousId": "bench", "sessionId": "s-bench"}
        answer = client.post("/v1/playback/start", params={"key": write_key}, content=json.dumps(start)).json()
        started = time.perf_counter()
        for seq, chunk in enumerate(chunks):
            body = json.dumps(chunk, separators=(",", ":")).encode()
            packed = gzip.compress(body)
            raw, wire = raw + len(body), wire + len(packed)
            params = {"key": write_key, "token": answer["token"], "seq": str(seq), "enc": "gzip"}
            response = client.post("/v1/playback/chunks", params=params, content=packed)
            response.raise_for_status()
        seconds = time.perf_counter() - started
    sizes = {
        "events": len(events),
        "chunks": len(chunks),
        "raw_mb": round(raw / 1e6, 2),
        "gzip_mb": round(wire / 1e6, 2),
        "upload_s": round(seconds, 1),
    }
    return answer["recording_id"], sizes


def measure(base_url: str, project_id: int, recording_id: str, runs: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-agent={CHROME_UA}"]
    url = f"{base_url}/app/projects/{project_id}/recordings/{recording_id}"
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        login = context.request.post(
            f"{base_url}/api/auth/login", data={"email": "viewer@example.com", "password": PASSWORD}
        )
        assert login.status == 200, login.text()
        for _ in range(runs):
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#replay[data-first-frame-ms][data-loaded]", state="attached", timeout=60_000)
            root = page.locator("#replay")
            frame = json.loads(root.get_attribute("data-frame-timings"))
            frame_origin = page.evaluate(
                "() => document.getElementById('replay-frame').contentWindow.performance.timeOrigin"
                " - performance.timeOrigin"
            )
            results.append(
                {
                    "first_frame_ms": int(root.get_attribute("data-first-frame-ms")),
                    "first_chunk_ms": int(root.get_attribute("data-first-chunk-ms")),
                    "events_fetched_ms": int(root.get_attribute("data-fetched-ms")),
                    "first_chunk_parse_ms": round(frame["parsed"] - frame["received"]),
                    "player_built_ms": round(frame["built"] - frame["parsed"]),
                    "frame_received_ms": round(frame["received"] + frame_origin),
                    "events": int(root.get_attribute("data-events")),
                    "bytes": int(root.get_attribute("data-fetched-bytes")),
                }
            )
            page.close()
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="length of the synthetic recording")
    parser.add_argument("--pages", type=int, default=6, help="page changes (full snapshots) in it")
    parser.add_argument("--runs", type=int, default=7, help="page loads measured")
    options = parser.parse_args()

    events = synthetic_recording(int(time.time() * 1000) - int(options.minutes * 60_000), options.minutes,
                                 pages=options.pages)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="usertrail-bench-replay-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, process_sessions=False)
        engine = create_engine(settings.resolved_database_url)
        migrate(engine)
        projects = ProjectStore(engine)
        new = projects.create("bench")
        env = projects.environments(new.project.id)["production"]
        env.tracking_level = type(env.tracking_level)("playback")
        env.playback.global_capture = True
        projects.save_environment(new.project.id, "production", env)
        accounts = AccountStore(engine)
        viewer = accounts.create("viewer@example.com", None, PASSWORD)
        accounts.set_role(viewer.id, new.project.id, "viewer")
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = start_server(port, settings.to_env(), data / "server.log")
        try:
            recording_id, sizes = upload(base_url, new.write_key, events)
            print("recording:", json.dumps(sizes))
            runs = measure(base_url, new.project.id, recording_id, options.runs)
        finally:
            stop_server(server)
    for run in runs:
        print("run:", json.dumps(run))
    warm = [r["first_frame_ms"] for r in runs[1:]] or [runs[0]["first_frame_ms"]]
    summary = {
        "cold_first_frame_ms": runs[0]["first_frame_ms"],
        "warm_first_frame_ms_median": statistics.median(warm),
        "warm_first_frame_ms_max": max(warm),
        "first_chunk_ms_median": statistics.median(r["first_chunk_ms"] for r in runs),
        "events_fetched_ms_median": statistics.median(r["events_fetched_ms"] for r in runs),
        "target_ms": 1000,
    }
    print("summary:", json.dumps(summary, indent=1))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({"recording": sizes, "runs": runs, "summary": summary, "options": vars(options)}, indent=1)
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
