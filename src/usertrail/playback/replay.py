"""Replaying recordings: the WalkMe events of a recording's timeline, the Content-Security-Policies that
keep recorded pages inert, and the self-contained export file.

A recording is whatever its page (or anyone holding its upload token) sent, so the replay treats it
as hostile content. It is replayed by rrweb-player inside an iframe that is sandboxed without
`allow-same-origin` (an opaque origin: no cookies, no access to the app) and whose CSP lets no script
run but the player's own files and opens no connection; rrweb rebuilds the page in a further iframe
of its own, sandboxed without `allow-scripts`, which inherits that CSP.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa

from usertrail.store.schema import events

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
PLAYER_JS = STATIC / "vendor" / "rrweb-player" / "rrweb-player.min.js"
PLAYER_CSS = STATIC / "vendor" / "rrweb-player" / "style.min.css"
EXPORT_JS = STATIC / "app" / "export-player.js"
MAX_WALKME_MARKERS = 1000

# The replay frame (`/app/replay-frame`): scripts only from our own files (the player bundle and its
# driver); inline styles because rrweb rebuilds the recorded page's <style> elements and style
# attributes, and the player positions its own elements with style attributes; images and fonts only
# from our server or embedded in the recording (data:, blob:), so a replay never contacts the
# recorded site or anyone a crafted recording names; no connections at all (the events arrive by
# postMessage from the page around it); framed only by our own pages.
FRAME_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; media-src 'self' data: blob:; connect-src 'none'; frame-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
# The app's own pages: no inline script or style at all, JSON only to our own API, frames only ours.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class WalkMeMarker:
    """A WalkMe event of the recording's end user while it was recorded: a marker on the timeline."""

    ts: int  # the client's clock, as rrweb's timestamps
    type: str
    app_type: str | None
    item: str | None

    @property
    def label(self) -> str:
        what = " ".join(p for p in (self.app_type, self.item and f"“{self.item}”") if p)
        return f"{self.type} {what}".strip()


def walkme_markers(engine: sa.Engine, row, limit: int = MAX_WALKME_MARKERS) -> list[WalkMeMarker]:
    """The WalkMe events the recording's end-user key sent between its first and last event, in time order."""
    if row.first_ts is None or row.last_ts is None:
        return []
    e = events
    when = sa.func.coalesce(e.c.client_ts, e.c.ts)
    query = (
        sa.select(when.label("ts"), e.c.type, e.c.app_type, e.c.object_name)
        .where(
            e.c.project_id == row.project_id,
            e.c.user_key == row.user_key,
            e.c.source == "walkme",
            when >= row.first_ts,
            when <= row.last_ts,
        )
        .order_by(when, e.c.event_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [WalkMeMarker(r.ts, r.type, r.app_type, r.object_name) for r in conn.execute(query)]


def _script_hash(source: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source).digest()).decode() + "'"


def escape_json_for_script(data: bytes) -> bytes:
    """JSON made safe inside a <script type="application/json"> element.

    `<` only occurs inside JSON strings, where `\\u003c` means the same; without it no `</script>` or
    `<!--` in a recorded page can end the element early.
    """
    return data.replace(b"<", b"\\u003c")


class ExportPage:
    """One self-contained HTML file: the player, its stylesheet, the driver script and the events, inlined.

    The file carries its own CSP (a meta element): only the two inline scripts, by hash, may run; no
    connection, no remote image or font. Opened from disk it plays without a network.
    """

    @cached_property
    def _parts(self) -> tuple[bytes, bytes, bytes, str]:
        player, driver = PLAYER_JS.read_bytes(), EXPORT_JS.read_bytes()
        for name, source in (("player", player), ("driver", driver)):
            if b"</script" in source.lower() or b"<!--" in source:
                raise ValueError(f"the {name} script cannot be inlined as it is")
        csp = (
            f"default-src 'none'; script-src {_script_hash(player)} {_script_hash(driver)}; "
            "style-src 'unsafe-inline' data:; img-src data: blob:; font-src data:; media-src data: blob:; "
            "base-uri 'none'; form-action 'none'"
        )
        return player, driver, PLAYER_CSS.read_bytes(), csp

    @property
    def csp(self) -> str:
        return self._parts[3]

    def render(self, meta: dict, event_chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The file, in pieces. `meta` is shown as facts (its `recording` names the file); `event_chunks`
        are JSON arrays of rrweb events, joined into one array."""
        player, driver, css, csp = self._parts
        title = f"Recording {meta['recording']}"
        facts = "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in meta.items() if v not in (None, "")
        )
        yield (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{html.escape(title)}</title><style>"
        ).encode()
        yield css
        yield (
            b"body{font-family:system-ui,sans-serif;margin:16px;color:#222}"
            b"dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}"
            b"dt{color:#666}dd{margin:0}</style></head><body>"
        )
        yield f"<h1>{html.escape(title)}</h1><dl>{facts}</dl>".encode()
        yield b'<div id="player"></div><script type="application/json" id="ut-events">['
        first = True
        for raw in event_chunks:
            inner = raw.strip()[1:-1].strip()
            if inner:
                yield escape_json_for_script(inner if first else b"," + inner)
                first = False
        yield b"]</script><script>"
        yield player
        yield b"</script><script>"
        yield driver
        yield b"</script></body></html>"
