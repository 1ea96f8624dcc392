"""Session Playback benchmark: stored bytes per recorded minute, and chunk ingest throughput.

    .venv/bin/python bench/playback.py                 # 60 s of browsing, then 2,000 chunk uploads
    .venv/bin/python bench/playback.py --seconds 20 --uploads 500   # smoke run

1. Size: Debian's Chromium (Playwright) browses a shop-like page (60 product cards, a form) with
   the real snippet for `--seconds`: pointer moves with pauses, clicks that change the DOM, typing
   at ~5 keys/s, wheel scrolls, one navigation to a second page. Chunks leave every 5 s (the
   default). From the server's tables: raw rrweb JSON and stored bytes (zstd + AES-GCM) per minute,
   plus what one zstd-19 blob of the whole recording would take, for comparison.
2. Ingest: the recorded chunks (decrypted through the API) are uploaded again, gzip-compressed as
   the browser sends them, to fresh recordings by `--concurrency` parallel clients: chunks/s, MB/s.

The server runs as its own uvicorn process on SQLite in a temporary folder. Results are printed
and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
import zstandard

from usertrail.config import Settings
from usertrail.store.database import create_engine, migrate
from usertrail.store.projects import ProjectStore
from usertrail.testing.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


def shop_page(base_url: str, write_key: str, title: str) -> str:
    cards = "".join(
        f'<div class="card" id="p{i}"><img alt="" width="80" height="60"><h3>Product {i}</h3>'
        f"<p>Sturdy item number {i}, ships in {i % 5 + 1} days.</p><span class=price>{9 + i}.99 €</span>"
        f'<button class="add" onclick="add({i})">Add to cart</button></div>'
        for i in range(60)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>
 body {{ font-family: sans-serif; margin: 0 }} header {{ position: sticky; top: 0; background: #234; color: #fff;
 padding: 8px }} .grid {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; padding: 12px }}
 .card {{ border: 1px solid #ccc; padding: 8px }} .card.hot {{ border-color: #c36 }}
 form {{ padding: 12px }} input, textarea {{ display: block; margin: 4px 0 }}
</style>
<script async src="{base_url}/snippet.js" data-key="{write_key}" data-env="production"></script>
</head><body><header>Shop <span id="cart">Cart (0)</span> <a id="next" href="/checkout">Checkout</a></header>
<form><input id="search" placeholder="Search"><input id="email" type="email"><textarea id="note"></textarea></form>
<ul id="items"></ul><div class="grid">{cards}</div>
<script>
 var n = 0;
 function add(i) {{
   n += 1; document.getElementById('cart').textContent = 'Cart (' + n + ')';
   var li = document.createElement('li'); li.textContent = 'Added product ' + i;
   document.getElementById('items').appendChild(li);
   document.getElementById('p' + i).classList.toggle('hot');
 }}
</script></body></html>"""


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "uvicorn", "usertrail.web.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(log_path.read_text()[-3000:])
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def browse(base_url: str, write_key: str, seconds: float) -> None:
    """Realistic activity for `seconds`: moves, pauses, clicks, typing, scrolling, one navigation."""
    import http.server
    import random
    import threading

    from playwright.sync_api import sync_playwright

    pages = {
        "/shop": shop_page(base_url, write_key, "Shop"),
        "/checkout": shop_page(base_url, write_key, "Checkout"),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{site.server_address[1]}"
    rng = random.Random(7)
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-agent={CHROME_UA}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(origin + "/shop")
        page.wait_for_function("window.rrwebRecord && sessionStorage.getItem('ut_pb')", timeout=15_000)
        deadline = time.monotonic() + seconds
        navigated = False
        while time.monotonic() < deadline:
            action = rng.random()
            if action < 0.35:
                page.mouse.move(rng.randint(0, 1200), rng.randint(0, 780), steps=rng.randint(5, 25))
            elif action < 0.55:
                buttons = page.locator("button.add:visible")
                count = buttons.count()
                if count:
                    buttons.nth(rng.randrange(count)).click()
            elif action < 0.7:
                page.click("#search" if rng.random() < 0.7 else "#note")
                page.keyboard.type(rng.choice(["shoes", "red jacket", "gift card", "return policy"]), delay=200)
            elif action < 0.85:
                page.mouse.wheel(0, rng.choice([-400, 300, 500, 800]))
            if not navigated and time.monotonic() > deadline - seconds / 2:
                page.click("#next")
                page.wait_for_function("window.rrwebRecord && sessionStorage.getItem('ut_pb')", timeout=15_000)
                navigated = True
            page.wait_for_timeout(rng.randint(300, 1500))  # a person reads and thinks between actions
        page.goto("about:blank")  # the last chunk leaves by beacon
        page.wait_for_timeout(1500)
        browser.close()
    site.shutdown()


async def upload(base_url: str, write_key: str, chunks: list[bytes], uploads: int, concurrency: int) -> dict:
    """Upload `uploads` gzip chunks to fresh recordings, `concurrency` at a time; throughput."""
    bodies = [gzip.compress(c) for c in chunks]
    headers = {"User-Agent": CHROME_UA, "Content-Type": "text/plain"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        recordings = []
        for i in range(max(1, uploads // len(bodies))):
            body = json.dumps({"url": "https://shop.example.com/", "anonymousId": f"b{i}", "sessionId": f"s{i}"})
            answer = (await client.post("/v1/playback/start", params={"key": write_key}, content=body)).json()
            recordings.append(answer["token"])
        jobs = [(token, seq) for token in recordings for seq in range(len(bodies))][:uploads]
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                token, seq = queue.get_nowait()
                params = {"key": write_key, "token": token, "seq": str(seq), "enc": "gzip"}
                response = await client.post("/v1/playback/chunks", params=params, content=bodies[seq])
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    raw = sum(len(chunks[seq]) for _, seq in jobs)
    wire = sum(len(bodies[seq]) for _, seq in jobs)
    return {
        "uploads": len(jobs),
        "failures": failures,
        "seconds": round(elapsed, 2),
        "chunks_per_s": round(len(jobs) / elapsed, 1),
        "raw_mb_per_s": round(raw / elapsed / 1e6, 2),
        "wire_mb_per_s": round(wire / elapsed / 1e6, 2),
        "avg_raw_chunk_bytes": raw // len(jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="how long the browser is used")
    parser.add_argument("--uploads", type=int, default=2000, help="chunks uploaded in the ingest part")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--zstd-level", type=int, default=9, help="USERTRAIL_PLAYBACK_ZSTD_LEVEL of the server")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="usertrail-bench-playback-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, playback_zstd_level=options.zstd_level, process_sessions=False)
        engine = create_engine(settings.resolved_database_url)
        migrate(engine)
        projects = ProjectStore(engine)
        new = projects.create("bench")
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = projects.environments(new.project.id)["production"]
        env.tracking_level = type(env.tracking_level)("playback")
        env.playback.global_capture = True
        env.allowed_origins = ["http://127.0.0.1:*"]
        projects.save_environment(new.project.id, "production", env)
        server = start_server(port, settings.to_env(), data / "server.log")
        try:
            browse(base_url, new.write_key, options.seconds)
            time.sleep(1)
            with engine.connect() as conn:
                rec = conn.execute(sa.text("SELECT * FROM playback_recordings")).one()
            admin = {"Authorization": f"Bearer {new.admin_token}"}
            path = f"/api/projects/{new.project.id}/playback/recordings/{rec.recording_id}/events"
            events = httpx.get(base_url + path, headers=admin, timeout=60).json()
            with engine.connect() as conn:
                chunk_rows = conn.execute(
                    sa.text("SELECT seq, raw_bytes, stored_bytes FROM playback_chunks ORDER BY seq")
                ).all()
            minutes = (rec.last_ts - rec.first_ts) / 60_000
            whole = json.dumps(events, separators=(",", ":")).encode()
            size = {
                "recorded_minutes": round(minutes, 2),
                "events": rec.event_count,
                "chunks": rec.chunk_count,
                "raw_kb_per_min": round(rec.raw_bytes / 1000 / minutes, 1),
                "stored_kb_per_min": round(rec.stored_bytes / 1000 / minutes, 1),
                "one_zstd19_blob_kb_per_min": round(
                    len(zstandard.ZstdCompressor(level=19).compress(whole)) / 1000 / minutes, 1
                ),
                "zstd_level": options.zstd_level,
            }
            print("size:", json.dumps(size, indent=1))
            # Re-slice the recorded stream into the recorded chunks' sizes, for re-upload.
            chunks, i = [], 0
            for row in chunk_rows:
                part, size_left = [], row.raw_bytes
                while i < len(events) and size_left > 0:
                    text = json.dumps(events[i], separators=(",", ":"))
                    part.append(text)
                    size_left -= len(text) + 1
                    i += 1
                if part:
                    chunks.append(("[" + ",".join(part) + "]").encode())
            ingest = asyncio.run(upload(base_url, new.write_key, chunks, options.uploads, options.concurrency))
            print("ingest:", json.dumps(ingest, indent=1))
        finally:
            stop_server(server)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"playback-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"size": size, "ingest": ingest, "options": vars(options)}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
