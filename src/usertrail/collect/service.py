"""The collector: from one HTTP request's body and headers to durable rows and a result.

Order: size limit → decode → project (key, or WalkMe account id) → origin → request facts
(client IP, geolocation, user agent, masked IP) → `pipeline.STEPS` per event → one group commit into
the ingest journal, after which the request is answered; the indexer stores the events in bulk.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import msgspec

from usertrail.collect.indexer import Indexer
from usertrail.collect.pipeline import Drop, Reject, RequestContext, run_steps, to_row
from usertrail.collect.traffic import origin_allowed
from usertrail.collect.wire import (
    DecodedBatch,
    Incoming,
    Invalid,
    WireError,
    decode_native,
    decode_walkme,
)
from usertrail.collect.writer import GroupCommitWriter
from usertrail.config import Settings
from usertrail.enrich.geo import GeoLocator, Location
from usertrail.enrich.idp import IdTokens
from usertrail.enrich.ip import client_ip, mask_ip
from usertrail.enrich.useragent import parse_agent
from usertrail.project_settings import EnvironmentSettings
from usertrail.store.events import EventStore, IngestRecord, time_id
from usertrail.store.journal import Packed
from usertrail.store.projects import ADMIN, WRITE, KeyGrant, ProjectStore

WALKME = "walkme"
NATIVE = "native"


# What a refused request is told to wait: about what two worker processes index in the meantime.
_RETRY_AFTER_S = 5


class CollectError(Exception):
    """The request as a whole is refused; `status` is the HTTP status to answer."""

    def __init__(self, status: int, path: str, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.path, self.reason = status, path, reason
        self.retry_after_s = retry_after_s


@dataclass
class RequestFacts:
    """What the web layer hands over about one collection request."""

    body: bytes
    content_type: str
    peer: str | None
    forwarded_for: str | None
    user_agent: str
    origin: str | None
    key: str | None
    path: str


@dataclass
class CollectResult:
    project_id: int | None = None
    received: int = 0
    accepted: int = 0  # durable in the journal; a re-sent event is recognised when it is indexed
    dropped: Counter = field(default_factory=Counter)
    errors: list[dict] = field(default_factory=list)
    allowed_origin: str | None = None

    def as_json(self) -> dict:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "dropped": dict(self.dropped),
            "rejected": len(self.errors),
            "errors": self.errors,
        }


class _TtlCache:
    """A tiny time-bounded cache: settings changes reach every worker within `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict = {}

    def get(self, key, load):
        hit = self._items.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        self._items[key] = (now + self.ttl, value)
        return value

    def clear(self) -> None:
        self._items.clear()


class Collector:
    """Turns collection requests into stored events, drops and rejections."""

    def __init__(
        self,
        settings: Settings,
        projects: ProjectStore,
        events: EventStore,
        geo: GeoLocator,
        writer: GroupCommitWriter,
        indexer: Indexer,
    ) -> None:
        self.settings = settings
        self.projects = projects
        self.events = events
        self.geo = geo
        self.writer = writer
        self.indexer = indexer
        self.id_tokens = IdTokens()
        self._grants = _TtlCache(10.0)
        self._environments = _TtlCache(5.0)
        self._accounts = _TtlCache(10.0)

    def forget_cached_settings(self) -> None:
        """Make the next request read settings afresh (after a change made in this process)."""
        self._environments.clear()
        self._grants.clear()

    def environments(self, project_id: int) -> dict[str, EnvironmentSettings]:
        return self._environments.get(project_id, lambda: self.projects.environments(project_id))

    async def collect(self, facts: RequestFacts, wire_format: str) -> CollectResult:
        """Validate, enrich and durably journal one request's events."""
        self.indexer.arrived()  # while requests queue, indexing waits (collect/indexer.py)
        try:
            return await self._collect(facts, wire_format)
        finally:
            self.indexer.left()

    async def _collect(self, facts: RequestFacts, wire_format: str) -> CollectResult:
        limits = self.settings.limits
        if len(facts.body) > limits.max_body_bytes:
            raise CollectError(413, "$", f"body of {len(facts.body)} bytes exceeds {limits.max_body_bytes}")
        if self.indexer.full():
            raise CollectError(
                503,
                "$",
                f"the ingest journal holds {self.indexer.backlog_events} events not yet indexed (bound: "
                f"USERTRAIL_MAX_BACKLOG_EVENTS={self.indexer.max_backlog}); nothing of this request was kept, "
                "send it again later",
                retry_after_s=_RETRY_AFTER_S,
            )
        grant = self._grant(facts.key) if facts.key else None
        try:
            batch = (
                decode_walkme(facts.body, facts.content_type, limits)
                if wire_format == WALKME
                else decode_native(facts.body, limits)
            )
        except WireError as exc:
            if grant is not None:
                await self._keep_unreadable(grant.project_id, facts, wire_format, exc)
            raise CollectError(400, exc.path, exc.reason) from None
        if self.settings.ingest_mode == "decode_only":
            return CollectResult(received=len(batch.events))
        verified = await self._verify_id_tokens(batch, grant)
        result, packed = self._enrich(batch, facts, wire_format, grant, verified)
        # The decoded events die now, on this thread, not after the journal's commit (see `_enrich`).
        del batch
        await self.writer.write(packed)
        return result

    async def _verify_id_tokens(self, batch: DecodedBatch, grant: KeyGrant | None) -> dict:
        """The outcome of each ID token the request's events carry, against the project's `idp` settings
        (enrich/idp.py): fetching the provider's keys is awaited here, so the steps only look it up."""
        tokens = [e.id_token for e in batch.events if isinstance(e, Incoming) and e.id_token is not None]
        if not tokens:
            return {}
        if grant is None and batch.write_key:
            grant = self._grant(batch.write_key)
        if grant is None:
            return {}  # refused in `_enrich`
        settings = [s.uuid for s in self.environments(grant.project_id).values()]
        return await self.id_tokens.verify_all(tokens, settings)

    def _enrich(
        self,
        batch: DecodedBatch,
        facts: RequestFacts,
        wire_format: str,
        grant: KeyGrant | None,
        verified: dict,
    ) -> tuple[CollectResult, Packed]:
        """The request's answer and its journal record, packed (msgpack) here rather than by the writer.

        A request waits for the journal's group commit (milliseconds, with dozens of others). Its decoded
        events and rows, kept alive for that wait and freed by the writer thread, left the allocator's free
        lists cold: in a PostgreSQL full cell `_PyObject_Malloc` took 11% of the event loop's CPU against 5%
        once the record is packed here and the rest freed at once (docs/benchmarks.md, Ingest, session 25).
        """
        if grant is None and batch.write_key:
            grant = self._grant(batch.write_key)
        project_id = grant.project_id if grant else self._project_by_account(batch)
        if project_id is None:
            raise CollectError(401, "key", "a valid write key is required (query `key`, header X-Usertrail-Key)")
        environments = self.environments(project_id)
        result = CollectResult(project_id=project_id, received=len(batch.events))
        if facts.origin:
            allowed = [o for s in environments.values() for o in s.allowed_origins]
            if not origin_allowed(facts.origin, allowed):
                raise CollectError(403, "Origin", f"origin {facts.origin} is not allowed for this project")
            result.allowed_origin = facts.origin
        ctx = self._context(project_id, environments, facts, batch)
        ctx.id_tokens = verified
        record = self._process(batch, ctx, wire_format, result)
        record.security = {
            "project_id": project_id,
            "id": time_id(ctx.received_at),
            "ts": ctx.received_at,
            "ip": ctx.ip,
            "user_agent": facts.user_agent[:1000],
            "path": facts.path,
            "events": len(batch.events),
            "status": 400 if result.errors else 200,
        }
        result.accepted = len(record.events)
        return result, record.pack()

    def _grant(self, key: str) -> KeyGrant | None:
        grant = self._grants.get(("key", key), lambda: self.projects.authenticate(key))
        if grant is None or grant.kind not in (WRITE, ADMIN):
            raise CollectError(401, "key", "unknown or expired key")
        return grant

    def _project_by_account(self, batch: DecodedBatch) -> int | None:
        """A request without a key goes to the project of its events' WalkMe account (`wm.uId`). A WalkMe
        recorder sends one account's events; a request mixing accounts is refused whole, or one account's
        events would be stored in another's project."""
        accounts = [e for e in batch.events if isinstance(e, Incoming) and e.account_id]
        if not accounts:
            return None
        account = accounts[0].account_id
        other = next((e for e in accounts if e.account_id != account), None)
        if other is not None:
            raise CollectError(
                400,
                "$.wm.uId",
                f"the event at index {other.index} names WalkMe account {other.account_id!r}, the one at index "
                f"{accounts[0].index} {account!r}: a request without a write key carries one account's events",
            )
        project = self._accounts.get(account, lambda: self.projects.by_walkme_account(account))
        return project.id if project else None

    def _context(
        self,
        project_id: int,
        environments: dict[str, EnvironmentSettings],
        facts: RequestFacts,
        batch: DecodedBatch,
    ) -> RequestContext:
        received_at = int(time.time() * 1000)
        ip = client_ip(facts.peer, facts.forwarded_for, self.settings.trusted_proxies)
        return RequestContext(
            project_id=project_id,
            environments=environments,
            received_at=received_at,
            skew_ms=received_at - batch.sent_at if batch.sent_at is not None else 0,
            ip=ip,
            ip_masked=mask_ip(ip),
            location=self.geo.lookup(ip),
            agent=parse_agent(facts.user_agent),
            user_agent=facts.user_agent,
        )

    def _process(
        self, batch: DecodedBatch, ctx: RequestContext, wire_format: str, result: CollectResult
    ) -> IngestRecord:
        record = IngestRecord(project_id=ctx.project_id)
        for item in batch.events:
            if isinstance(item, Invalid):
                self._reject(
                    record,
                    result,
                    ctx,
                    wire_format,
                    item.index,
                    item.raw,
                    item.kind,
                    item.path,
                    item.reason,
                    env=batch.env_name,
                )
                continue
            if item.env_name is None and batch.env_name is not None:
                item.env_name = batch.env_name
            outcome = run_steps(item, ctx)
            if isinstance(outcome, Drop):
                env = item.env_name or _env_name_for(item, ctx) or ""
                record.drops[(env, outcome.reason.value)] += 1
                result.dropped[outcome.reason.value] += 1
            elif isinstance(outcome, Reject):
                self._reject(
                    record,
                    result,
                    ctx,
                    wire_format,
                    item.index,
                    item.raw,
                    outcome.reason.value,
                    outcome.path,
                    outcome.message,
                    env=item.env_name,
                )
            else:
                record.events.append(to_row(outcome, ctx))
        return record

    def _reject(
        self,
        record: IngestRecord,
        result: CollectResult,
        ctx: RequestContext,
        wire_format: str,
        index: int,
        raw: bytes,
        reason: str,
        path: str,
        message: str,
        env: str | None = None,
    ) -> None:
        result.errors.append({"index": index, "path": path, "reason": message, "code": reason})
        record.rejected.append(
            {
                "project_id": ctx.project_id,
                "id": time_id(ctx.received_at),
                "received_at": ctx.received_at,
                "env": env,
                "source": wire_format,
                "reason": reason,
                "path": path,
                "batch_index": index,
                "payload": raw.decode("utf-8", errors="replace"),
                "message": message,
                "context": msgspec.json.encode(_stored_context(ctx, env)).decode(),
                "status": "pending",
                "resolved_at": None,
            }
        )

    async def _keep_unreadable(self, project_id: int, facts: RequestFacts, wire_format: str, exc: WireError) -> None:
        """A body that cannot be read at all is still kept, whole, in the rejected store."""
        received_at = int(time.time() * 1000)
        ip = client_ip(facts.peer, facts.forwarded_for, self.settings.trusted_proxies)
        ctx = RequestContext(
            project_id,
            {},
            received_at,
            0,
            ip,
            mask_ip(ip),
            self.geo.lookup(ip),
            parse_agent(facts.user_agent),
            facts.user_agent,
        )
        record = IngestRecord(project_id=project_id)
        self._reject(record, CollectResult(), ctx, wire_format, -1, facts.body, "invalid", exc.path, exc.reason)
        await self.writer.write(record.pack())

    def reprocess(self, project_id: int, ids: list[str], replacement: dict[str, str] | None = None) -> list[dict]:
        """Run rejected events through the pipeline again (after a settings fix, or with a corrected payload).

        Returns one result per id: stored, dropped (with reason) or still rejected (with reason). A whole
        body that could not be read (index -1) is read again as the batch it is: if it now reads, its
        result is `stored` with the `batch` tally (stored, dropped, rejected: each kept as a new row).
        """
        replacement = replacement or {}
        rows = self.events.rejected_by_ids(project_id, ids)
        environments = self.projects.environments(project_id)
        results, done = [], []
        record = IngestRecord(project_id=project_id)
        for row in rows:
            stored_ctx = msgspec.json.decode(row.context)
            raw = replacement.get(row.id, row.payload).encode()
            ctx = RequestContext(
                project_id=project_id,
                environments=environments,
                received_at=stored_ctx["received_at"],
                skew_ms=stored_ctx.get("skew_ms", 0),
                ip=None,
                ip_masked=stored_ctx.get("ip_masked", ""),
                location=Location(stored_ctx.get("country"), stored_ctx.get("region"), stored_ctx.get("city")),
                agent=parse_agent(stored_ctx.get("user_agent", "")),
                user_agent=stored_ctx.get("user_agent", ""),
            )
            if row.batch_index == -1:
                results.append(self._reprocess_body(row.id, row.source, raw, ctx, record))
                if results[-1]["status"] == "stored":
                    done.append(row.id)
                continue
            item = self._decode_one(row.source, raw, row.batch_index or 0)
            if isinstance(item, Invalid):
                results.append({"id": row.id, "status": "rejected", "path": item.path, "reason": item.reason})
                continue
            if item.env_name is None:
                item.env_name = stored_ctx.get("env_name") or row.env
            outcome = run_steps(item, ctx)
            if isinstance(outcome, Reject):
                results.append({"id": row.id, "status": "rejected", "path": outcome.path, "reason": outcome.message})
                continue
            if isinstance(outcome, Drop):
                record.drops[(item.env_name or "", outcome.reason.value)] += 1
                results.append({"id": row.id, "status": "dropped", "reason": outcome.reason.value})
            else:
                record.events.append(to_row(outcome, ctx))
                results.append({"id": row.id, "status": "stored"})
            done.append(row.id)
        self.events.write_many([record])
        self.events.resolve_rejected(project_id, done, "reprocessed")
        return results

    def _reprocess_body(self, id_: str, source: str, raw: bytes, ctx: RequestContext, record: IngestRecord) -> dict:
        """A whole body kept by `_keep_unreadable`, run as the request it was into `record`. The events-per-
        request cap is lifted: it bounds what one request may cost the server, not an admin's re-run of
        what was already accepted into the rejected store."""
        limits = replace(self.settings.limits, max_events_per_batch=sys.maxsize)
        try:
            batch = decode_walkme(raw, "application/json", limits) if source == WALKME else decode_native(raw, limits)
        except WireError as exc:
            return {"id": id_, "status": "rejected", "path": exc.path, "reason": exc.reason}
        if batch.sent_at is not None:
            ctx.skew_ms = ctx.received_at - batch.sent_at
        result = CollectResult()
        again = self._process(batch, ctx, source, result)
        record.events += again.events
        record.rejected += again.rejected
        record.drops.update(again.drops)
        tally = {"stored": len(again.events), "dropped": sum(result.dropped.values()), "rejected": len(again.rejected)}
        return {"id": id_, "status": "stored", "batch": tally}

    def _decode_one(self, source: str, raw: bytes, index: int) -> Incoming | Invalid:
        limits = self.settings.limits
        try:
            if source == WALKME:
                batch = decode_walkme(raw, "application/json", limits)
            else:
                batch = decode_native(raw, limits)
        except WireError as exc:
            return Invalid(index, raw, exc.path, exc.reason)
        if len(batch.events) != 1:
            return Invalid(index, raw, "$", "a re-processed payload must hold exactly one event")
        item = batch.events[0]
        if isinstance(item, Incoming) and batch.env_name and item.env_name is None:
            item.env_name = batch.env_name
        return item


def _env_name_for(item: Incoming, ctx: RequestContext) -> str | None:
    if item.source == WALKME:
        return next((n for n, s in ctx.environments.items() if s.walkme_env == item.env_code), None)
    return item.env_name or "production"


def _stored_context(ctx: RequestContext, env: str | None) -> dict:
    """What re-processing needs about the request, without the full IP."""
    return {
        "received_at": ctx.received_at,
        "skew_ms": ctx.skew_ms,
        "ip_masked": ctx.ip_masked,
        "country": ctx.location.country,
        "region": ctx.location.region,
        "city": ctx.location.city,
        "user_agent": ctx.user_agent,
        "env_name": env,
    }
