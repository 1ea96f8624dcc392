"""Assets of recorded pages: found in the rrweb events, fetched by the server, stored by content hash.

rrweb inlines same-origin stylesheets into its snapshots but keeps images, fonts and cross-origin
stylesheets as URLs, which a replay cannot load (its CSP allows only our server) and which may
change or vanish later. So:

1. At chunk intake, `asset_urls` lists the absolute http(s) URLs of stylesheets (`<link
   rel=stylesheet|icon|preload href>`), images (`src`, `srcset`, `poster`) and CSS `url(…)`s (style
   attributes, `<style>` text, inlined stylesheets, `@font-face`) in the full snapshots and DOM
   mutations, and `AssetStore.note` records them for the recording as `pending`.
2. `AssetStore.process_pending` (a server loop) resolves them: a URL fresh in the project's cache
   is taken from there; otherwise it is fetched through `fetch.SafeFetcher` (the project's domains
   only, never private addresses, size and time limits). A stylesheet's own `url()`s and `@import`s
   are fetched too and rewritten to the stored copies. The bytes are stored once per project under
   their SHA-256; the recording keeps URL → hash as it was when it was recorded.
3. The replay (`rewrite_chunk`) points the recorded URLs at `/api/projects/{p}/playback/assets/{sha}`.

Assets are per project: deleting a project's last recording that uses an asset lets clean-up
(`delete_unused`) remove it, and no project can learn what another project's pages loaded. They are
stored as fetched, not encrypted: the server fetched them without cookies, so they are what the site
serves to anyone, not what an end user saw in private.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin

import httpx
import msgspec
import sqlalchemy as sa

from usertrail.collect.traffic import domain_matches, origin_allowed
from usertrail.playback.blobs import BlobNotFound, BlobStore
from usertrail.playback.chunks import FULL_SNAPSHOT, INCREMENTAL, MUTATION, Chunk
from usertrail.playback.fetch import FetchRefused, SafeFetcher
from usertrail.project_settings import EnvironmentSettings
from usertrail.store.database import insert_ignore, write_transaction
from usertrail.store.schema import playback_asset_urls, playback_assets, playback_recording_assets

log = logging.getLogger(__name__)

MAX_ASSETS_PER_RECORDING = 500
MAX_URL_LENGTH = 2048
MAX_CSS_REFERENCES = 100  # per stylesheet
MAX_CSS_DEPTH = 2  # a stylesheet's @import's @imports, no further
EXPORT_BUDGET = 30 * 1024 * 1024  # bytes of embedded assets one export file may carry (as base64)
OK_REFRESH_MS = 24 * 3_600_000  # a stored URL is fetched again after a day (the site may have changed)
FAILED_RETRY_MS = 3_600_000
STYLESHEET = "text/css"
SERVED_TYPES = {
    STYLESHEET,
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
    "font/woff",
    "font/woff2",
    "font/ttf",
    "font/otf",
    "font/sfnt",
    "font/collection",
    "application/font-woff",
    "application/font-woff2",
    "application/x-font-woff",
    "application/x-font-ttf",
    "application/x-font-otf",
    "application/vnd.ms-fontobject",
}
# When a server names no useful type, the URL's extension decides (only among SERVED_TYPES).
_BY_EXTENSION = {
    ".css": STYLESHEET,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
}
_VAGUE_TYPES = {"", "application/octet-stream", "text/plain", "binary/octet-stream"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_LINK_RELS = {"stylesheet", "icon", "preload", "apple-touch-icon"}
_SRC_TAGS = {"img", "input", "source", "image"}  # not scripts, frames or media: never fetched


def served_path(project_id: int, sha256: str) -> str:
    """Where the replay loads a stored asset from."""
    return f"/api/projects/{project_id}/playback/assets/{sha256}"


def is_sha256(text: str) -> bool:
    return _SHA256.fullmatch(text) is not None


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def _now() -> int:
    return int(time.time() * 1000)


# --- finding and rewriting URLs in rrweb events ------------------------------------------------------

UrlMap = Callable[[str], str | None]  # a URL → its replacement, or None to keep it


def _absolute(url: str) -> str | None:
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or not url.lower().startswith(("http://", "https://")):
        return None
    return url


def _map_css(css: str, fn: UrlMap, base: str | None = None) -> str:
    """`css` with each url() and @import target replaced by `fn` (resolved against `base` when given)."""

    def replace(match: re.Match) -> str:
        raw = next((g for g in match.groups() if g is not None), "")
        url = _absolute(urljoin(base, raw) if base else raw)
        new = fn(url) if url is not None else None
        if new is None:
            return match.group(0)
        return f'url("{new}")' if match.re is _CSS_URL else f'@import "{new}"'

    return _CSS_IMPORT.sub(replace, _CSS_URL.sub(replace, css))


def _map_srcset(srcset: str, fn: UrlMap) -> str:
    parts = []
    for candidate in srcset.split(","):
        pieces = candidate.strip().split(None, 1)
        if pieces:
            url = _absolute(pieces[0])
            new = fn(url) if url is not None else None
            if new is not None:
                pieces[0] = new
        parts.append(" ".join(pieces))
    return ", ".join(parts)


def _map_attributes(attributes: dict, tag: str | None, fn: UrlMap) -> None:
    """Rewrite (or, with a collecting `fn`, visit) the asset URLs among one element's attributes."""
    for name in ("style", "_cssText"):
        if isinstance(attributes.get(name), str):
            attributes[name] = _map_css(attributes[name], fn)
    if isinstance(attributes.get("srcset"), str):
        attributes["srcset"] = _map_srcset(attributes["srcset"], fn)
    names = ["background", "poster"]
    if tag == "link":
        rel = attributes.get("rel")
        names = ["href"] if isinstance(rel, str) and _LINK_RELS & set(rel.lower().split()) else []
    elif tag is None or tag in _SRC_TAGS:
        # An attribute mutation does not name its element: a `src` there may be a script's, which the
        # type check refuses before its body is read.
        names.append("src")
    for name in names:
        value = attributes.get(name)
        url = _absolute(value) if isinstance(value, str) else None
        new = fn(url) if url is not None else None
        if new is not None:
            attributes[name] = new


def _map_node(node: object, fn: UrlMap) -> None:
    stack = [node]  # iterative: a DOM can be deeper than Python's recursion limit
    while stack:
        current = stack.pop()
        if not isinstance(current, dict):
            continue
        attributes = current.get("attributes")
        if current.get("type") == 2 and isinstance(attributes, dict):
            _map_attributes(attributes, str(current.get("tagName", "")).lower(), fn)
        elif current.get("type") == 3 and current.get("isStyle") and isinstance(current.get("textContent"), str):
            current["textContent"] = _map_css(current["textContent"], fn)
        children = current.get("childNodes")
        if isinstance(children, list):
            stack.extend(children)


def map_events(events: list, fn: UrlMap) -> None:
    """Apply `fn` to every asset URL of full snapshots and DOM mutations, in place."""
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            continue
        data = event["data"]
        if event.get("type") == FULL_SNAPSHOT:
            _map_node(data.get("node"), fn)
        elif event.get("type") == INCREMENTAL and data.get("source") == MUTATION:
            for added in data.get("adds") or []:
                if isinstance(added, dict):
                    _map_node(added.get("node"), fn)
            for change in data.get("attributes") or []:
                if isinstance(change, dict) and isinstance(change.get("attributes"), dict):
                    _map_attributes(change["attributes"], None, fn)


def asset_urls(chunk: Chunk) -> list[str]:
    """The asset URLs a checked chunk names, in order, each once."""
    if b"http" not in chunk.raw:
        return []
    found: dict[str, None] = {}

    def collect(url: str) -> None:
        found.setdefault(url)

    map_events([{"type": e.type, "data": e.data} for e in chunk.events], lambda url: collect(url))
    return list(found)


def rewrite_chunk(raw_chunk: bytes, replacements: dict[str, str]) -> bytes:
    """The chunk with every URL in `replacements` replaced; unchanged bytes when none occurs in it."""
    if not replacements or not any(url.encode() in raw_chunk for url in replacements):
        return raw_chunk
    events = msgspec.json.decode(raw_chunk)
    map_events(events, replacements.get)
    return msgspec.json.encode(events)


# --- the store ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What a URL resolved to: `ok` with the stored asset's hash, or `refused`/`failed` with the reason."""

    status: str
    sha256: str | None = None
    reason: str | None = None


def host_rule(settings: EnvironmentSettings) -> Callable[[httpx.URL], bool]:
    """The project's domains for assets: the environment's allowed origins and `playback.asset_domains`.

    A bare `*` among the allowed origins (any page may send events) does not open fetches to any host.
    """
    origins = [o for o in settings.allowed_origins if o.strip() != "*"]
    domains = settings.playback.asset_domains

    def allowed(url: httpx.URL) -> bool:
        origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        return origin_allowed(origin, origins) or any(domain_matches(url.host, d) for d in domains)

    return allowed


def content_type_of(url: str, announced: str) -> str:
    """The type an asset is served with; FetchRefused for anything but a stylesheet, image or font."""
    if announced in SERVED_TYPES:
        return announced
    if announced in _VAGUE_TYPES:
        path = httpx.URL(url).path.lower()
        for extension, media_type in _BY_EXTENSION.items():
            if path.endswith(extension):
                return media_type
    raise FetchRefused("refused", f"content type {announced or 'none'!r} is not a stylesheet, image or font")


class AssetStore:
    """Records each recording's asset URLs, fetches and stores them, and serves them to the replay."""

    def __init__(
        self,
        engine: sa.Engine,
        blobs: BlobStore,
        fetcher: SafeFetcher,
        settings_for: Callable[[int, str], EnvironmentSettings | None],
        clock: Callable[[], int] = _now,
    ) -> None:
        self.engine, self.blobs, self.fetcher = engine, blobs, fetcher
        self.settings_for, self.clock = settings_for, clock

    # --- intake ---------------------------------------------------------------------------------

    def note(self, project_id: int, user_key: str, recording_id: str, env: str, urls: list[str]) -> int:
        """Record a chunk's asset URLs for the recording (pending); returns how many were new."""
        if not urls:
            return 0
        t = playback_recording_assets
        where = (t.c.project_id == project_id, t.c.user_key == user_key, t.c.recording_id == recording_id)
        now = self.clock()
        with write_transaction(self.engine) as conn:
            known = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar_one()
            room = max(0, MAX_ASSETS_PER_RECORDING - known)
            rows = [
                {
                    "project_id": project_id,
                    "user_key": user_key,
                    "recording_id": recording_id,
                    "url_hash": _url_hash(url),
                    "url": url,
                    "env": env,
                    "status": "pending",
                    "sha256": None,
                    "reason": None,
                    "created_at": now,
                }
                for url in urls[:room]
            ]
            new = 0
            for row in rows:
                new += conn.execute(insert_ignore(t, conn.dialect.name).values(**row)).rowcount
        return new

    # --- the fetch step -------------------------------------------------------------------------

    def process_pending(self, limit: int = 50) -> int:
        """Resolve up to `limit` pending recording assets (oldest first); returns how many were done."""
        t = playback_recording_assets
        with self.engine.connect() as conn:
            pending = conn.execute(
                sa.select(t.c.project_id, t.c.user_key, t.c.recording_id, t.c.url_hash, t.c.url, t.c.env)
                .where(t.c.status == "pending")
                .order_by(t.c.created_at)
                .limit(limit)
            ).all()
        for row in pending:
            result = self.resolve(row.project_id, row.env, row.url)
            with write_transaction(self.engine) as conn:
                conn.execute(
                    t.update()
                    .where(
                        t.c.project_id == row.project_id,
                        t.c.user_key == row.user_key,
                        t.c.recording_id == row.recording_id,
                        t.c.url_hash == row.url_hash,
                        t.c.status == "pending",
                    )
                    .values(status=result.status, sha256=result.sha256, reason=result.reason)
                )
        return len(pending)

    def resolve(self, project_id: int, env: str, url: str, depth: int = 0) -> Resolved:
        """The stored asset for `url`: from the project's cache while fresh, else fetched now."""
        u = playback_asset_urls
        key = _url_hash(url)
        now = self.clock()
        with self.engine.connect() as conn:
            cached = conn.execute(sa.select(u).where(u.c.project_id == project_id, u.c.url_hash == key)).first()
        if cached is not None:
            fresh_for = OK_REFRESH_MS if cached.status == "ok" else FAILED_RETRY_MS
            if now - cached.fetched_at < fresh_for and (cached.status != "ok" or self._exists(project_id, cached)):
                return Resolved(cached.status, cached.sha256, cached.reason)
        result = self._fetch(project_id, env, url, depth)
        with write_transaction(self.engine) as conn:
            conn.execute(u.delete().where(u.c.project_id == project_id, u.c.url_hash == key))
            conn.execute(
                u.insert().values(
                    project_id=project_id,
                    url_hash=key,
                    url=url,
                    status=result.status,
                    sha256=result.sha256,
                    reason=result.reason,
                    fetched_at=now,
                )
            )
        return result

    def _exists(self, project_id: int, cached) -> bool:
        a = playback_assets
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(a.c.sha256).where(a.c.project_id == project_id, a.c.sha256 == cached.sha256)
                ).first()
                is not None
            )

    def _fetch(self, project_id: int, env: str, url: str, depth: int) -> Resolved:
        settings = self.settings_for(project_id, env)
        if settings is None:
            return Resolved("refused", reason=f"environment {env!r} no longer exists")
        try:
            fetched = self.fetcher.fetch(urldefrag(url).url, host_rule(settings), content_type_of)
        except FetchRefused as exc:
            return Resolved(exc.status, reason=exc.reason)
        body, refs, media_type = fetched.body, [], fetched.content_type
        if media_type == STYLESHEET:
            body, refs = self._stylesheet(project_id, env, fetched.url, body, depth)
        sha = hashlib.sha256(body).hexdigest()
        self._store(project_id, sha, media_type, body, refs)
        return Resolved("ok", sha)

    def _stylesheet(self, project_id: int, env: str, url: str, body: bytes, depth: int) -> tuple[bytes, list[str]]:
        """The stylesheet with its url()s and @imports pointing at stored copies, and those copies' hashes.

        The copies are named relative to the stylesheet (`url("<sha256>")`): served from
        `…/playback/assets/<its hash>`, the stylesheet finds them next to itself.
        """
        css = body.decode("utf-8", errors="replace")
        refs: dict[str, None] = {}
        budget = [MAX_CSS_REFERENCES]

        def store_ref(ref: str) -> str | None:
            if depth >= MAX_CSS_DEPTH or budget[0] <= 0:
                return None
            budget[0] -= 1
            result = self.resolve(project_id, env, ref, depth + 1)
            if result.status != "ok" or result.sha256 is None:
                return None
            refs.setdefault(result.sha256)
            return result.sha256

        rewritten = _map_css(css, store_ref, base=url)
        return rewritten.encode(), list(refs)

    def _store(self, project_id: int, sha: str, media_type: str, body: bytes, refs: list[str]) -> None:
        """Put the bytes under their hash once per project (a lost race writes the same bytes)."""
        a = playback_assets
        with self.engine.connect() as conn:
            known = conn.execute(sa.select(a.c.sha256).where(a.c.project_id == project_id, a.c.sha256 == sha)).first()
        if known is not None:
            return
        self.blobs.put(_blob_key(project_id, sha), body)
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert_ignore(a, conn.dialect.name).values(
                    project_id=project_id,
                    sha256=sha,
                    content_type=media_type,
                    size=len(body),
                    refs=msgspec.json.encode(refs).decode(),
                    created_at=self.clock(),
                )
            )

    # --- reads ----------------------------------------------------------------------------------

    def replacements(self, row) -> dict[str, str]:
        """The recording's stored asset URLs → where the replay loads them from."""
        t = playback_recording_assets
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.url, t.c.sha256).where(
                    t.c.project_id == row.project_id,
                    t.c.user_key == row.user_key,
                    t.c.recording_id == row.recording_id,
                    t.c.status == "ok",
                )
            ).all()
        return {url: served_path(row.project_id, sha) for url, sha in found}

    def embedded(self, row, budget: int = EXPORT_BUDGET) -> tuple[dict[str, str], int]:
        """The recording's stored asset URLs → `data:` URIs of the stored bytes, for an export file that
        loads nothing; a stylesheet's own references are embedded in it too. Assets that would take the
        file past `budget` bytes are left out (their URLs stay as recorded, which the export's CSP blocks);
        the second value counts them."""
        t, a = playback_recording_assets, playback_assets
        with self.engine.connect() as conn:
            wanted = conn.execute(
                sa.select(t.c.url, t.c.sha256)
                .where(
                    t.c.project_id == row.project_id,
                    t.c.user_key == row.user_key,
                    t.c.recording_id == row.recording_id,
                    t.c.status == "ok",
                )
                .order_by(t.c.created_at, t.c.url)
            ).all()
            stored = {
                r.sha256: r
                for r in conn.execute(
                    sa.select(a.c.sha256, a.c.content_type, a.c.refs).where(a.c.project_id == row.project_id)
                )
            }
        uris: dict[str, str | None] = {}
        left = [budget]

        def uri(sha: str, seen: frozenset[str] = frozenset()) -> str | None:
            if sha in uris:
                return uris[sha]
            asset = stored.get(sha)
            if asset is None or sha in seen:
                return None
            try:
                body = self.blobs.get(_blob_key(row.project_id, sha))
            except BlobNotFound:
                return None
            if asset.content_type == STYLESHEET:
                # Its references are named relative to it (`url("<sha256>")`, `@import "<sha256>"`).
                for ref in msgspec.json.decode(asset.refs):
                    inner = uri(ref, seen | {sha})
                    if inner is not None:
                        body = body.replace(f'"{ref}"'.encode(), f'"{inner}"'.encode())
            encoded = f"data:{asset.content_type};base64,{base64.b64encode(body).decode()}"
            if len(encoded) > left[0]:
                uris[sha] = None
                return None
            left[0] -= len(encoded)
            uris[sha] = encoded
            return encoded

        out = {url: found for url, sha in wanted if (found := uri(sha)) is not None}
        return out, len(wanted) - len(out)

    def listing(self, row) -> list[dict]:
        """The recording's asset URLs with their status, hash and reason (for the API)."""
        t = playback_recording_assets
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.url, t.c.status, t.c.sha256, t.c.reason)
                .where(
                    t.c.project_id == row.project_id,
                    t.c.user_key == row.user_key,
                    t.c.recording_id == row.recording_id,
                )
                .order_by(t.c.created_at, t.c.url)
            ).all()
        return [{"url": r.url, "status": r.status, "sha256": r.sha256, "reason": r.reason} for r in found]

    def get(self, project_id: int, sha: str) -> tuple[str, bytes] | None:
        """A stored asset's type and bytes, or None."""
        a = playback_assets
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(a.c.content_type).where(a.c.project_id == project_id, a.c.sha256 == sha)
            ).first()
        if found is None:
            return None
        try:
            return found.content_type, self.blobs.get(_blob_key(project_id, sha))
        except BlobNotFound:
            return None

    # --- clean-up -------------------------------------------------------------------------------

    def delete_unused(self, project_id: int, created_before_ms: int) -> int:
        """Delete the project's assets no recording uses any more (directly or through a kept stylesheet).

        Only assets stored before `created_before_ms` go, so one fetched for a recording whose
        asset row is being written right now is not taken away under it.
        """
        a, t, u = playback_assets, playback_recording_assets, playback_asset_urls
        with self.engine.connect() as conn:
            assets = {r.sha256: r for r in conn.execute(sa.select(a).where(a.c.project_id == project_id))}
            used = set(
                conn.execute(
                    sa.select(t.c.sha256).where(t.c.project_id == project_id, t.c.sha256.is_not(None)).distinct()
                ).scalars()
            )
        live, todo = set(), list(used)
        while todo:
            sha = todo.pop()
            if sha in live or sha not in assets:
                continue
            live.add(sha)
            todo.extend(msgspec.json.decode(assets[sha].refs))
        unused = [sha for sha, r in assets.items() if sha not in live and r.created_at < created_before_ms]
        for sha in unused:
            with write_transaction(self.engine) as conn:
                conn.execute(u.delete().where(u.c.project_id == project_id, u.c.sha256 == sha))
                conn.execute(a.delete().where(a.c.project_id == project_id, a.c.sha256 == sha))
            self.blobs.delete(_blob_key(project_id, sha))
        return len(unused)


def _blob_key(project_id: int, sha: str) -> str:
    return f"assets/{project_id}/{sha[:2]}/{sha}"
