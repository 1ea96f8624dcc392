"""A site's asset server for the playback asset tests: files with their types, on 127.0.0.1, in a thread.

Besides plain files it has a path that never answers (`/hang`, until the server stops), one that sends
more than it announces nothing about (`/endless`: chunked, no length), and redirects (`/go?to=URL`).
It records every request's path and Host header.
"""

from __future__ import annotations

import http.server
import threading
from urllib.parse import parse_qs, urlsplit


class AssetSite:
    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.stopping = threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                site.requests.append((self.path, self.headers.get("Host", "")))
                path = urlsplit(self.path).path
                if path == "/hang":
                    site.stopping.wait()
                    return
                if path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    piece = b"x" * 65536
                    while not site.stopping.is_set():
                        try:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        except OSError:
                            return
                    return
                if path == "/go":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                found = site.files.get(path)
                content_type, body = found if found else ("text/html", b"<title>Not found</title>")
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def __enter__(self) -> AssetSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: the site is gone (its port refuses connections)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
