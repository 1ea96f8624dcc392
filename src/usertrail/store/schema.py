"""The one schema, for SQLite and PostgreSQL alike (and Citus later).

Rules kept from the start (see docs/architecture.md and shared/research/citus-constraints.md):
- every row carries `project_id`;
- per-end-user tables carry `user_key`, the future distribution column, and every primary key
  or unique index on them includes it;
- no triggers, no database-generated composite keys: ids are made by the application.
Small per-project tables (projects, environments, api_keys) are reference tables under Citus.
"""

from __future__ import annotations

import sqlalchemy as sa

# End-user keys (and event ids) are identifiers: on PostgreSQL they compare byte-wise (`COLLATE "C"`),
# as SQLite and Python compare them, and B-tree inserts and probes skip the locale's strcoll.
KEY_TEXT = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # WalkMe's account GUID (`wm.uId`): lets an unmodified WalkMe recorder post without our key.
    sa.Column("walkme_account_id", sa.Text, nullable=True, unique=True),
)

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "name"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # "write" or "admin"
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    # Write keys are public (they sit in every page); admin tokens are only ever stored hashed.
    sa.Column("display", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "key_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("event_id", KEY_TEXT, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),  # event time, ms, corrected for clock skew
    sa.Column("client_ts", sa.BigInteger, nullable=True),  # as the client sent it
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # "walkme" or "native"
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("app_type", sa.Text, nullable=True),
    sa.Column("object_id", sa.Text, nullable=True),
    sa.Column("object_name", sa.Text, nullable=True),
    sa.Column("session_hint", sa.Text, nullable=True),
    sa.Column("visit_id", sa.Text, nullable=True),
    sa.Column("anon_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("id_source", sa.Text, nullable=False),
    sa.Column("url_host", sa.Text, nullable=True),
    sa.Column("url_path", sa.Text, nullable=True),
    sa.Column("title", sa.Text, nullable=True),
    sa.Column("country", sa.Text, nullable=True),
    sa.Column("region", sa.Text, nullable=True),
    sa.Column("city", sa.Text, nullable=True),
    sa.Column("browser", sa.Text, nullable=True),
    sa.Column("browser_version", sa.Text, nullable=True),
    sa.Column("os", sa.Text, nullable=True),
    sa.Column("device_type", sa.Text, nullable=True),
    sa.Column("is_mobile", sa.Boolean, nullable=True),
    sa.Column("ip_masked", sa.Text, nullable=True),
    # Analytics properties (name, role, type, status, info) the event carried, JSON; NULL if none.
    sa.Column("user_vars", sa.Text, nullable=True),
    # What the client said of its screen and page (WalkMe `env.screen`, `env.timezone`, `ctx.isIframe`;
    # native `context.screen`, `context.timezone`) and WalkMe's recorder versions (`version.lib`, `.pe`).
    # The time zone is JavaScript's getTimezoneOffset(): minutes behind UTC (-120 is UTC+2).
    sa.Column("screen_width", sa.Integer, nullable=True),
    sa.Column("screen_height", sa.Integer, nullable=True),
    sa.Column("tz_offset", sa.Integer, nullable=True),
    sa.Column("in_iframe", sa.Boolean, nullable=True),
    sa.Column("lib_version", sa.Text, nullable=True),
    sa.Column("pe_version", sa.Text, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),  # the event exactly as kept, JSON
    # The event's kind and which value columns are set, for the full rebuild's scan (sessions/traits.py);
    # set by the indexer, NULL for rows stored before it was (the scan computes those).
    sa.Column("traits", sa.SmallInteger, nullable=True),
    # Doubles as the de-duplication key: a re-sent event hits the same (project, user, event_id).
    sa.PrimaryKeyConstraint("project_id", "user_key", "event_id"),
)
sa.Index(None, events.c.project_id, events.c.user_key, events.c.ts)

# Accepted requests waiting to be indexed into `events` (collect/indexer.py): a request is answered once
# its row here is durable; the indexer moves it into `events` and the side tables in one transaction that
# also deletes the row. `record` is the request's `IngestRecord`, msgpack (store/journal.py).
ingest_journal = sa.Table(
    "ingest_journal",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", KEY_TEXT, nullable=False),  # time-ordered: "<received ms>-<random>"
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, ingest_journal.c.id)

# SQLite keeps the journal in a file of its own (store/journal.py): a row of that file whose records the
# indexer has stored is marked here, in the transaction that stored them, until it is deleted from the
# file. A crash between the two leaves the mark, and the row is deleted, not stored twice. PostgreSQL's
# journal is `ingest_journal` above, whose rows leave in that transaction itself: nothing is marked.
journal_indexed = sa.Table(
    "journal_indexed",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", KEY_TEXT, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "id"),
    sqlite_with_rowid=False,  # the row is its key (migration 0031)
)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered: "<received ms>-<random>"
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("env", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),  # the code: invalid, limit_exceeded, unknown_environment
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("batch_index", sa.Integer, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),  # the raw event text as it arrived
    sa.Column("context", sa.Text, nullable=False),  # JSON: request facts needed to re-process it
    sa.Column("status", sa.Text, nullable=False),  # "pending", "reprocessed" or "discarded"
    sa.Column("resolved_at", sa.BigInteger, nullable=True),
    sa.Column("message", sa.Text, nullable=True),  # the reason in words, as answered (NULL: kept before 0033)
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, rejected_events.c.project_id, rejected_events.c.status, rejected_events.c.id)

drop_counts = sa.Table(
    "drop_counts",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("day", sa.Text, nullable=False),  # UTC, YYYY-MM-DD
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "env", "day", "reason"),
)

security_log = sa.Table(
    "security_log",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("ip", sa.Text, nullable=False),  # the full client IP: kept only here, briefly
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, security_log.c.ts)

# --- derived state: sessions, identity, the End User Object (recomputable from events) -------

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),  # the owner: identified user, or the anonymous id
    sa.Column("start_ts", sa.BigInteger, nullable=False),
    sa.Column("end_ts", sa.BigInteger, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("interaction_count", sa.Integer, nullable=False),
    sa.Column("page_views", sa.Integer, nullable=False),
    sa.Column("is_empty", sa.Boolean, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # "open" or "closed"
    sa.Column("closed_at", sa.BigInteger, nullable=True),  # server time of the close
    sa.Column("client_session_ids", sa.Text, nullable=False),  # JSON list of client sIds seen
    sa.Column("entry_path", sa.Text, nullable=True),
    sa.Column("exit_path", sa.Text, nullable=True),
    sa.Column("country", sa.Text, nullable=True),
    sa.Column("region", sa.Text, nullable=True),
    sa.Column("city", sa.Text, nullable=True),
    sa.Column("browser", sa.Text, nullable=True),
    sa.Column("browser_version", sa.Text, nullable=True),
    sa.Column("os", sa.Text, nullable=True),
    sa.Column("device_type", sa.Text, nullable=True),
    sa.Column("user_vars", sa.Text, nullable=True),  # latest analytics property values in the session, JSON
    sa.PrimaryKeyConstraint("project_id", "user_key", "start_ts"),
)
sa.Index(None, sessions.c.project_id, sessions.c.status, sessions.c.end_ts)

end_users = sa.Table(
    "end_users",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("total_sessions", sa.Integer, nullable=False),
    sa.Column("avg_session_duration_ms", sa.Float, nullable=False),
    sa.Column("total_session_duration_ms", sa.BigInteger, nullable=False),
    sa.Column("avg_time_between_sessions_ms", sa.Float, nullable=True),
    sa.Column("country", sa.Text, nullable=True),
    sa.Column("region", sa.Text, nullable=True),
    sa.Column("city", sa.Text, nullable=True),
    sa.Column("browser_name", sa.Text, nullable=True),
    sa.Column("browser_version", sa.Text, nullable=True),
    sa.Column("analytics_properties", sa.Text, nullable=True),  # JSON {name: value} from closed sessions
    sa.Column("updated_at", sa.BigInteger, nullable=False),  # server time of the last session close applied
    sa.PrimaryKeyConstraint("project_id", "user_key"),
)
sa.Index(None, end_users.c.project_id, end_users.c.last_seen)
# "Signed up in the last N days" (First seen ranges): 8.2 s → 12 ms at 1M users (bench/segments.py).
sa.Index(None, end_users.c.project_id, end_users.c.first_seen)
# The user list sorts by any standard attribute (web/users_api.py): each sort column is read in
# (value, key) order from an index, so every page costs the same at 200,000 users (bench/users_page.py).
for _column in (
    "total_sessions",
    "avg_session_duration_ms",
    "total_session_duration_ms",
    "avg_time_between_sessions_ms",
    "country",
    "region",
    "city",
    "browser_name",
    "browser_version",
):
    sa.Index(None, end_users.c.project_id, end_users.c[_column], end_users.c.user_key)
# Session-count and recency rules together ("Total sessions = 1 and Last seen more than 14 days
# ago"): one range of a covering index instead of a row lookup per user (bench/segments.py).
sa.Index(None, end_users.c.project_id, end_users.c.total_sessions, end_users.c.last_seen, end_users.c.first_seen)

# Users whose sessions must be recomputed from `since_ts` on (new events, due closes).
pending_users = sa.Table(
    "pending_users",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("since_ts", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),  # bumped by every new mark: a claim is done only if unchanged
    sa.Column("claimed_until", sa.BigInteger, nullable=True),
    sa.Column("claim", sa.Text, nullable=True),
    # Server times of the latest and the first mark (0 = due now): the processor waits for a burst
    # of activity to settle before recomputing, but never defers a user past a bound.
    sa.Column("marked_at", sa.BigInteger, nullable=True),
    sa.Column("first_marked_at", sa.BigInteger, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "user_key"),
)
# Oldest work first: sessions waiting to close (marked from their start) before fresh activity.
sa.Index(None, pending_users.c.since_ts)

# Candidate links from an anonymous key to an identified key; the earliest link owns the anonymous key.
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),  # the anonymous key
    sa.Column("person_key", KEY_TEXT, nullable=False),  # the identified key
    sa.Column("link_ts", sa.BigInteger, nullable=False),
    sa.Column("link_event_id", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "person_key"),
    sqlite_with_rowid=False,  # the row is (mostly) its key: one B-tree, not two (migration 0031)
)
sa.Index(None, identity_links.c.project_id, identity_links.c.person_key)

# Which keys used which client session id (WalkMe sId, snippet sessionId): stitches a login.
session_hints = sa.Table(
    "session_hints",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("session_hint", sa.Text, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("first_ts", sa.BigInteger, nullable=False),
    sa.Column("first_event_id", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "session_hint", "user_key"),
    sqlite_with_rowid=False,  # the row is (mostly) its key: one B-tree, not two (migration 0031)
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "id"),
)

# --- custom attributes (issue 4) --------------------------------------------------------------

attribute_registry = sa.Table(
    "attribute_registry",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("name", sa.Text, nullable=False),  # case-sensitive
    sa.Column("type", sa.Text, nullable=False),  # "string", "number", "date" (YYYY-MM-DD) or "boolean"
    sa.Column("integrations", sa.Text, nullable=False),  # JSON list of the sources that write it
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("slot", sa.Text, nullable=False),  # its column in `custom_attributes`: tN (string, date) or nN
    sa.PrimaryKeyConstraint("project_id", "name"),
    sa.UniqueConstraint("project_id", "slot"),
)

# One row per end user with a value in any slot (values of users not seen yet wait here too:
# pre-provisioning). Each registered attribute owns one slot of its kind for good (attributes are
# never removed): strings and dates (`YYYY-MM-DD`, which orders as text) in a text slot `tN`,
# numbers and booleans (1.0 / 0.0) in a number slot `nN`. The cap of 100 attributes bounds each
# kind to 100 slots. A CSV row is one row here (and one history row) instead of one per value, and
# any number of segment rules on custom attributes read one row per user.
SLOTS_PER_KIND = 100
custom_attributes = sa.Table(
    "custom_attributes",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    *(sa.Column(f"t{i}", sa.Text, nullable=True) for i in range(SLOTS_PER_KIND)),
    *(sa.Column(f"n{i}", sa.Float, nullable=True) for i in range(SLOTS_PER_KIND)),
    # Each value's source and time, grouped by write: JSON [[source, time, [slot, …]], …].
    sa.Column("stamps", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key"),
)

# The change history: one row per end user and write, holding that write's changes as JSON
# {slot: [old, new]} (typed JSON values; null = not set).
attribute_changes = sa.Table(
    "attribute_changes",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("changed_at", sa.BigInteger, nullable=False),
    sa.Column("changes", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "id"),
)
# "Changed to V within the last N days": the rows of the last N days of the project.
sa.Index(None, attribute_changes.c.project_id, attribute_changes.c.changed_at)

# --- incoming integrations: the End User Update API and the integration log (issue 4) ---------
# Credentials carry their project id (`uc_<project>_…`, `uat_<project>_…`), so every lookup is by
# (project_id, …) and these tables can be distributed by project_id under Citus.

integration_clients = sa.Table(
    "integration_clients",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),  # the integration's name: the `source` of what it writes
    sa.Column("secret_hash", sa.Text, nullable=False),  # SHA-256 of the client secret (shown once)
    sa.Column("user_id_property", sa.Text, nullable=False),  # dotted path to the end-user id in a record
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of {payload, name, type}
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "client_id"),
)

integration_tokens = sa.Table(
    "integration_tokens",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False),  # SHA-256 of the access token
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),  # space-separated
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "token_hash"),
)

# One row per update call: its result (retrievable by request id) and its idempotency key.
integration_requests = sa.Table(
    "integration_requests",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),  # time-ordered: "<ms>-<random>"
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=True),
    sa.Column("body_hash", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # "processing" (claimed) or "done"
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("result", sa.Text, nullable=True),  # JSON, once done
    sa.PrimaryKeyConstraint("project_id", "request_id"),
)
sa.Index(
    None,
    integration_requests.c.project_id,
    integration_requests.c.client_id,
    integration_requests.c.idempotency_key,
    unique=True,
)

# Fixed-window request counters per client, shared by every server process.
integration_rate_limits = sa.Table(
    "integration_rate_limits",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("window_start", sa.BigInteger, nullable=False),  # ms
    sa.Column("count", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "client_id", "window_start"),
)

# What every incoming integration did: update calls, imports, credential changes.
integration_log = sa.Table(
    "integration_log",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered: "<ms>-<random>"
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("integration", sa.Text, nullable=False),  # the integration's name (its attribute source)
    sa.Column("integration_id", sa.Text, nullable=True),  # e.g. the API client id
    sa.Column("kind", sa.Text, nullable=False),  # e.g. "update", "token.issue", "client.create"
    sa.Column("records", sa.Integer, nullable=False),  # received
    sa.Column("applied", sa.Integer, nullable=False),  # records with at least one value applied
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("errors", sa.Text, nullable=False),  # JSON: the first errors
    sa.Column("request_id", sa.Text, nullable=True),
    sa.Column("details", sa.Text, nullable=False),  # JSON object
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, integration_log.c.project_id, integration_log.c.integration, integration_log.c.id)

# --- segments (issue 5) ------------------------------------------------------------------------

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # "seg_<hex>"
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("rules", sa.Text, nullable=False),  # JSON rule tree, as validated (docs/segments.md)
    sa.Column("client_visible", sa.Boolean, nullable=False),  # the snippet may ask about it
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("refreshed_at", sa.BigInteger, nullable=True),  # last full membership refresh
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, segments.c.project_id, segments.c.name, unique=True)

# Current members of saved segments; per end user, so it shards with the End User Object.
segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("segment_id", sa.Text, nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "segment_id"),
)
sa.Index(None, segment_members.c.project_id, segment_members.c.segment_id, segment_members.c.user_key)

# Who entered or left a saved segment, and when: membership history.
segment_changes = sa.Table(
    "segment_changes",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered
    sa.Column("segment_id", sa.Text, nullable=False),
    sa.Column("change", sa.Text, nullable=False),  # "entered" or "left"
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "id"),
)
sa.Index(None, segment_changes.c.project_id, segment_changes.c.segment_id, segment_changes.c.ts)
# --- Session Playback (issue 6): recordings, their chunks, per-project quota and key version ----
# Chunk contents live in a blob store (playback/blobs.py), compressed and encrypted; only metadata
# and the wrapped per-recording data key are here. Deleting the row destroys the key.

playback_projects = sa.Table(
    "playback_projects",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("key_version", sa.Integer, nullable=False),  # version of the project key new data keys are wrapped in
    sa.Column("quota", sa.Integer, nullable=False),  # recorded sessions per month
    sa.Column("quota_anchor", sa.BigInteger, nullable=False),  # activation / last quota update: day of the reset
    sa.Column("period_start", sa.BigInteger, nullable=False),  # start of the period `used` counts
    sa.Column("used", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id"),
)

playback_recordings = sa.Table(
    "playback_recordings",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("recording_id", sa.Text, nullable=False),  # random, "rec_…"
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("session_hint", sa.Text, nullable=True),  # the snippet's session id
    sa.Column("started_at", sa.BigInteger, nullable=False),  # server time of the start decision
    sa.Column("last_chunk_at", sa.BigInteger, nullable=True),  # server time of the last new chunk
    sa.Column("first_ts", sa.BigInteger, nullable=True),  # first / last rrweb event time (client clock)
    sa.Column("last_ts", sa.BigInteger, nullable=True),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("raw_bytes", sa.BigInteger, nullable=False),  # JSON as recorded
    sa.Column("stored_bytes", sa.BigInteger, nullable=False),  # compressed + encrypted, in the blob store
    sa.Column("urls", sa.Text, nullable=False),  # JSON list of page URLs, in order of first visit
    sa.Column("browser", sa.Text, nullable=True),
    sa.Column("counted", sa.Boolean, nullable=False),  # charged to the quota
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),  # data key, AES-GCM under the project key
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "recording_id"),
)
sa.Index(None, playback_recordings.c.project_id, playback_recordings.c.started_at)
sa.Index(None, playback_recordings.c.project_id, playback_recordings.c.recording_id)

playback_chunks = sa.Table(
    "playback_chunks",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("recording_id", sa.Text, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("blob_key", sa.Text, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("raw_bytes", sa.Integer, nullable=False),
    sa.Column("stored_bytes", sa.Integer, nullable=False),
    sa.Column("first_ts", sa.BigInteger, nullable=True),
    sa.Column("last_ts", sa.BigInteger, nullable=True),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    # Doubles as the idempotency key: a re-sent chunk hits the same (recording, seq).
    sa.PrimaryKeyConstraint("project_id", "user_key", "recording_id", "seq"),
)
# --- Salesforce import (issue 4) ------------------------------------------------------------------
# One row per configured Salesforce source; credentials are sealed with the server's secrets key
# (integrations/secretbox.py). `lease_until`/`lease_owner` keep two processes from running one source
# at once; `watermark` is the SystemModstamp up to which records have been imported.

salesforce_sources = sa.Table(
    "salesforce_sources",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),  # "sf_<project>_<hex>"
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("login_url", sa.Text, nullable=False),
    sa.Column("api_version", sa.Text, nullable=False),
    sa.Column("auth_flow", sa.Text, nullable=False),  # "password" (SOAP login) or "jwt" (JWT bearer)
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("consumer_key", sa.Text, nullable=True),
    sa.Column("audience", sa.Text, nullable=True),
    sa.Column("secrets", sa.Text, nullable=False),  # Fernet token of the JSON secrets
    sa.Column("object", sa.Text, nullable=False),
    sa.Column("match_field", sa.Text, nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of {field, name, type}
    sa.Column("interval_s", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("watermark", sa.Text, nullable=True),  # SOQL dateTime, e.g. 2026-11-20T10:00:00Z
    sa.Column("next_run_at", sa.BigInteger, nullable=False),
    sa.Column("lease_until", sa.BigInteger, nullable=True),
    sa.Column("lease_owner", sa.Text, nullable=True),  # the run holding the lease
    sa.Column("last_run_id", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "source_id"),
)
sa.Index(None, salesforce_sources.c.next_run_at)

salesforce_runs = sa.Table(
    "salesforce_runs",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),  # time-ordered: "<ms>-<random>"
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),  # "schedule", "api" or "cli"
    sa.Column("status", sa.Text, nullable=False),  # "running", "done" or "failed"
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("query", sa.Text, nullable=True),  # the SOQL sent
    sa.Column("pages", sa.Integer, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("records_applied", sa.Integer, nullable=False),
    sa.Column("values_applied", sa.Integer, nullable=False),
    sa.Column("values_changed", sa.Integer, nullable=False),
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("errors", sa.Text, nullable=False),  # JSON: per-record errors (the first 1,000)
    sa.Column("error", sa.Text, nullable=True),  # JSON: why the run failed as a whole
    sa.Column("watermark_before", sa.Text, nullable=True),
    sa.Column("watermark_after", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "run_id"),
)
sa.Index(None, salesforce_runs.c.project_id, salesforce_runs.c.source_id, salesforce_runs.c.run_id)
# --- SCIM 2.0 provisioning from identity providers (issue 4, docs/scim.md) ----------------------
# Per-project directory tables, distributed by project_id under Citus: a SCIM user is addressed by
# its SCIM id, and its unique keys (userName, the end-user key it maps to) are unique per project.

scim_settings = sa.Table(
    "scim_settings",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=True),  # SHA-256 of the bearer token (shown once); NULL = revoked
    sa.Column("token_created_at", sa.BigInteger, nullable=True),
    sa.Column("user_id_attribute", sa.Text, nullable=False),  # SCIM path of the usertrail end-user id
    sa.Column("mapping", sa.Text, nullable=False),  # JSON list of {path, name, type}
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id"),
)

scim_users = sa.Table(
    "scim_users",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("scim_id", sa.Text, nullable=False),
    sa.Column("user_name", sa.Text, nullable=False),
    sa.Column("user_name_key", sa.Text, nullable=False),  # userName as SCIM compares it (case-insensitive)
    sa.Column("external_id", sa.Text, nullable=True),
    sa.Column("user_key", KEY_TEXT, nullable=False),  # the end user it writes attributes to: u:<id>
    sa.Column("active", sa.Boolean, nullable=True),
    sa.Column("resource", sa.Text, nullable=False),  # the provisioned resource, JSON (no id, meta or password)
    sa.Column("version", sa.Integer, nullable=False),  # the ETag: W/"<version>"
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "scim_id"),
)
sa.Index(None, scim_users.c.project_id, scim_users.c.user_name_key, unique=True)
sa.Index(None, scim_users.c.project_id, scim_users.c.user_key, unique=True)
sa.Index(None, scim_users.c.project_id, scim_users.c.external_id)
sa.Index(None, scim_users.c.project_id, scim_users.c.created_at, scim_users.c.scim_id)
# --- CSV and S3 imports (issue 4) -------------------------------------------------------------
# Per-project tables (distributed by project_id under Citus): every key begins with project_id.

# One row per import of one file (a CSV upload, a CLI import, or one S3 object of a run).
import_jobs = sa.Table(
    "import_jobs",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered: "<ms>-<random>"
    sa.Column("integration", sa.Text, nullable=False),  # "csv" or "s3"
    sa.Column("source_id", sa.Text, nullable=True),  # the S3 source
    sa.Column("run_id", sa.Text, nullable=True),  # the S3 run
    sa.Column("file_name", sa.Text, nullable=False),  # upload name, CLI path or S3 key
    sa.Column("etag", sa.Text, nullable=True),  # S3 objects
    sa.Column("sha256", sa.Text, nullable=False),  # of the file's bytes
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("mapping", sa.Text, nullable=False),  # JSON: dialect, id column, columns with names and types
    sa.Column("mapping_hash", sa.Text, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # queued, running, done, failed, skipped, interrupted
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("rows_applied", sa.Integer, nullable=False),
    sa.Column("rows_failed", sa.Integer, nullable=False),
    sa.Column("values_applied", sa.BigInteger, nullable=False),
    sa.Column("values_changed", sa.BigInteger, nullable=False),
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("bytes_read", sa.BigInteger, nullable=False),
    sa.Column("registered", sa.Text, nullable=False),  # JSON list of attribute names it registered
    sa.Column("message", sa.Text, nullable=True),  # why it failed, was skipped or interrupted
    sa.Column("duplicate_of", sa.Text, nullable=True),  # the earlier job with the same file and mapping
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=True),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),  # heartbeat while running
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, import_jobs.c.project_id, import_jobs.c.sha256)

# The row-level error report of a job (line, column, reason), downloadable as CSV.
import_errors = sa.Table(
    "import_errors",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),  # 1 is the header
    sa.Column("column_name", sa.Text, nullable=True),  # the CSV column; null for the whole row
    sa.Column("reason", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "job_id", "seq"),
)

# A configured Amazon S3 (or S3-compatible) source of CSV files, imported on an interval.
s3_sources = sa.Table(
    "s3_sources",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # "s3_<hex>"
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("pattern", sa.Text, nullable=False),  # glob on the key after the prefix
    sa.Column("endpoint_url", sa.Text, nullable=True),
    sa.Column("region", sa.Text, nullable=False),
    sa.Column("access_key_id", sa.Text, nullable=True),  # null: boto3's default credential chain
    sa.Column("secret_access_key", sa.Text, nullable=True),  # never listed (masked on read)
    sa.Column("mapping", sa.Text, nullable=False),  # JSON: {id_column, columns}
    sa.Column("interval_s", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("next_run_at", sa.BigInteger, nullable=False),
    sa.Column("running_since", sa.BigInteger, nullable=True),  # claim held by the process running it
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, s3_sources.c.project_id, s3_sources.c.name, unique=True)

# Which object versions (by ETag) a source has imported.
s3_objects = sa.Table(
    "s3_objects",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("imported_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "source_id", "key"),
)

# One row per run of a source: what it found, imported and skipped, and what failed.
s3_runs = sa.Table(
    "s3_runs",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered: "<ms>-<random>"
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False),  # "schedule", "api" or "cli"
    sa.Column("status", sa.Text, nullable=False),  # running, done, failed
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("objects_listed", sa.Integer, nullable=False),  # matching the pattern
    sa.Column("objects_imported", sa.Integer, nullable=False),
    sa.Column("objects_skipped", sa.Integer, nullable=False),  # same ETag as already imported
    sa.Column("objects_failed", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("rows_applied", sa.Integer, nullable=False),
    sa.Column("rows_failed", sa.Integer, nullable=False),
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("errors", sa.Text, nullable=False),  # JSON: the first errors
    sa.Column("message", sa.Text, nullable=True),  # why the run failed as a whole
    sa.PrimaryKeyConstraint("project_id", "id"),
)
sa.Index(None, s3_runs.c.project_id, s3_runs.c.source_id, s3_runs.c.id)
# --- access: accounts, sign-in sessions, the playback activity log (issues 6 and 7) -----------
# Accounts are installation-wide (one person, roles on several projects), so `accounts`,
# `account_sessions`, `login_attempts` and `oidc_states` carry no project_id: they are small
# reference tables under Citus. Roles and the activity log are per project.

INSTALLATION_TABLES = frozenset({"projects", "accounts", "account_sessions", "login_attempts", "oidc_states"})

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.Text, nullable=False, unique=True),  # lower-cased
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=True),  # argon2id (PHC string); NULL: single sign-on only
    sa.Column("password_change_required", sa.Boolean, nullable=False),  # set for one-time passwords
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("oidc_issuer", sa.Text, nullable=True),
    sa.Column("oidc_subject", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_login_at", sa.BigInteger, nullable=True),
)
sa.Index(None, accounts.c.oidc_issuer, accounts.c.oidc_subject, unique=True)

account_roles = sa.Table(
    "account_roles",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("role", sa.Text, nullable=False),  # see access/permissions.py
    sa.Column("granted_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "account_id"),
)
sa.Index(None, account_roles.c.account_id)

account_sessions = sa.Table(
    "account_sessions",
    metadata,
    sa.Column("id_hash", sa.Text, nullable=False),  # SHA-256 of the cookie's random id
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("method", sa.Text, nullable=False),  # "password" or "oidc"
    sa.PrimaryKeyConstraint("id_hash"),
)
sa.Index(None, account_sessions.c.account_id)

# Fixed-window counters of sign-in attempts, by account (e-mail) and by masked client IP.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("scope", sa.Text, nullable=False),  # "email:<address>" or "ip:<masked ip>"
    sa.Column("window_start", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("scope", "window_start"),
)

# Single sign-on round trips in flight (shared by every server process); used once.
oidc_states = sa.Table(
    "oidc_states",
    metadata,
    sa.Column("state_hash", sa.Text, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("code_verifier", sa.Text, nullable=False),
    sa.Column("next_path", sa.Text, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("state_hash"),
)

# Who viewed, deleted or exported which recording. Append-only and hash-chained per project:
# nothing in the application updates or deletes these rows (retention does not touch them).
activity_log = sa.Table(
    "activity_log",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),  # 1, 2, 3, … per project, no gaps
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("actor_kind", sa.Text, nullable=False),  # "account" or "token"
    sa.Column("actor_id", sa.Text, nullable=False),  # account id, or the admin token's key id
    sa.Column("actor_email", sa.Text, nullable=True),
    sa.Column("action", sa.Text, nullable=False),  # "view", "delete" or "export"
    sa.Column("recording_id", sa.Text, nullable=False),
    sa.Column("ip_masked", sa.Text, nullable=False),  # never a full IP
    sa.Column("user_agent", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),  # SHA-256 of the canonical entry and prev_hash
    sa.PrimaryKeyConstraint("project_id", "seq"),
)
sa.Index(None, activity_log.c.project_id, activity_log.c.recording_id)
sa.Index(None, activity_log.c.project_id, activity_log.c.ts)

# The overview (reports/overview.py): activity per day reads closed sessions by start time from this
# index alone; top pages read page views through a partial index that other events never enter. The
# queries repeat PAGE_VIEWS_WHERE word for word, because SQLite uses a partial index only for a query
# whose WHERE contains the index's condition (as literals, not parameters); 0016 holds the same text.
PAGE_VIEWS_WHERE = "type IN ('page', 'pageChange', 'pageView', 'pageview')"
sa.Index(
    "ix_sessions_overview",
    sessions.c.project_id,
    sessions.c.start_ts,
    sessions.c.status,
    sessions.c.is_empty,
    sessions.c.user_key,
    sessions.c.event_count,
)
sa.Index(
    "ix_events_page_views",
    events.c.project_id,
    events.c.ts,
    sqlite_where=sa.text(PAGE_VIEWS_WHERE),
    postgresql_where=sa.text(PAGE_VIEWS_WHERE),
)

# Per-project retention periods; NULL: the installation's default (USERTRAIL_*_RETENTION_DAYS).
retention_settings = sa.Table(
    "retention_settings",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("user_days", sa.Integer, nullable=True),  # delete end users with no session for this long
    sa.Column("playback_days", sa.Integer, nullable=True),  # delete recordings started this long ago
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id"),
)
# --- Session Playback assets (issue 6) -------------------------------------------------------------
# Stylesheets, fonts and images of recorded pages, fetched by the server and stored once per project
# by content hash (blob `assets/<project>/<sha256>`). `refs` lists the assets a stylesheet points at
# (its url()s and @imports were rewritten to them), so clean-up keeps what a kept stylesheet needs.
playback_assets = sa.Table(
    "playback_assets",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("refs", sa.Text, nullable=False),  # JSON list of sha256
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "sha256"),
)

# The project's cache of what each asset URL held when it was last fetched (or why it was not), so a
# URL is fetched once per refresh period however many recordings use it.
playback_asset_urls = sa.Table(
    "playback_asset_urls",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("url_hash", sa.Text, nullable=False),  # SHA-256 of the URL
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # "ok", "refused" or "failed"
    sa.Column("sha256", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("fetched_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "url_hash"),
)

# Each recording's asset URLs and the content they had when it was recorded: "pending" until the
# fetch step resolves them, then "ok" (sha256), "refused" or "failed" (reason).
playback_recording_assets = sa.Table(
    "playback_recording_assets",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("recording_id", sa.Text, nullable=False),
    sa.Column("url_hash", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "recording_id", "url_hash"),
)
sa.Index(None, playback_recording_assets.c.status, playback_recording_assets.c.created_at)
sa.Index(None, playback_recording_assets.c.project_id, playback_recording_assets.c.recording_id)
# Engagement reports' daily rollup (reports/rollup.py, docs/reports.md): per end-user key, UTC day and
# WalkMe item (or widget event), how many events, the latest one and the latest name. Written in the
# ingest transaction for new events only; reports read whole days here and partial days from `events`.
# `kind`: "play", "done" (a completion; `detail` is its play instance), "open", "search" (`detail`: the
# term) or "search_unnamed". Widget rows have app_type and object_id "". "play_total" and "done_total"
# rows (user_key "") sum an item's plays / completion events of the day over every key. The key leads with what reports
# scan (project, kind, day) and includes user_key (the Citus distribution column); on SQLite the table is
# clustered on it (WITHOUT ROWID), so a report reads one contiguous range.
report_days = sa.Table(
    "report_days",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("day", sa.Integer, nullable=False),  # ts // 86,400,000 (UTC)
    sa.Column("app_type", sa.Text, nullable=False),
    sa.Column("object_id", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("last_ts", sa.BigInteger, nullable=False),
    sa.Column("name_ts", sa.BigInteger, nullable=True),  # the latest event that had a name, and that name
    sa.Column("name", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "kind", "day", "app_type", "object_id", "detail", "user_key"),
    sqlite_with_rowid=False,
)
# Keys per item in user order: distinct users are counted in one pass, and a key is found by a seek.
sa.Index(
    None,
    report_days.c.project_id,
    report_days.c.kind,
    report_days.c.app_type,
    report_days.c.object_id,
    report_days.c.user_key,
    report_days.c.day,
)
# Completions in play-instance order: the items report counts distinct instances (`detail`) per item
# without sorting them (0.54 s → 0.24 s at 200,000 users). Only completion rows pay for it at ingest;
# SQLite uses a partial index only for a query whose WHERE repeats this text as a literal.
REPORT_DONE_WHERE = "kind = 'done'"
sa.Index(
    "ix_report_days_done_instances",
    report_days.c.project_id,
    report_days.c.app_type,
    report_days.c.object_id,
    report_days.c.detail,
    report_days.c.day,
    report_days.c.last_ts,
    sqlite_where=sa.text(REPORT_DONE_WHERE),
    postgresql_where=sa.text(REPORT_DONE_WHERE),
)

# Every step play of a Walk-Thru or Smart Walk-Thru with its flow (`data.owId`, else the flow in `data.pId`)
# taken out of the payload at ingest, so a funnel reads one flow's steps by index instead of parsing events.
report_steps = sa.Table(
    "report_steps",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("app_type", sa.Text, nullable=False),  # the step's: "step" or "bizFlowStep"
    sa.Column("flow_id", sa.Text, nullable=False),
    sa.Column("step_id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("name", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "user_key", "event_id"),
)
sa.Index(None, report_steps.c.project_id, report_steps.c.app_type, report_steps.c.flow_id, report_steps.c.ts)

# Partial days of a report range are read from the events themselves, through an index holding only
# the events the items and widget reports count (tests/test_report_rollup.py derives the same text from
# reports.engagement), so page views, clicks and pings cost ingest nothing here. SQLite uses a partial
# index only for a query whose WHERE repeats its condition as literals; 0020 holds the same text.
REPORT_EVENTS_WHERE = (
    "(app_type IN ('bizFlow', 'launcher', 'player', 'resource', 'shoutout', 'survey', 'widgetSearch', 'wt')"
    " OR type = 'search')"
)
sa.Index(
    "ix_events_report_events",
    events.c.project_id,
    events.c.ts,
    sqlite_where=sa.text(REPORT_EVENTS_WHERE),
    postgresql_where=sa.text(REPORT_EVENTS_WHERE),
)

# --- the user list's search and analytics-property sort (issue 7) -----------------------------
# Both are derived from `end_users` in the same transaction that writes it (store/user_index.py), so
# the list never reads every user of a project for a search or for a sort by an analytics property.
# Search words compare by code point on both engines (PostgreSQL: collation "C"), so a prefix is one
# index range whatever the server's locale.
WORD_TEXT = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
user_words = sa.Table(
    "user_words",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("word", WORD_TEXT, nullable=False),  # case-folded, from the key, location, browser, properties
    sa.PrimaryKeyConstraint("project_id", "user_key", "word"),
    sqlite_with_rowid=False,  # the row is (mostly) its key: one B-tree, not two (migration 0031)
)
sa.Index(None, user_words.c.project_id, user_words.c.word, user_words.c.user_key)

# One row per end user and analytics property (`end_users.analytics_properties`), its value as text.
user_properties = sa.Table(
    "user_properties",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "name"),
    sqlite_with_rowid=False,  # the row is (mostly) its key: one B-tree, not two (migration 0031)
)
sa.Index(
    None, user_properties.c.project_id, user_properties.c.name, user_properties.c.value, user_properties.c.user_key
)

# Changes to the rows segment counts read (`end_users`, `custom_attributes`), so the column-wise
# counter (segments/columns.py) can bring its in-memory copy up to date in any process: every
# writer of those tables calls store/changes.py in its transaction. `version` is bumped by each
# such transaction; the row lock held from the bump to the commit makes versions follow commit
# order, so a reader that sees version V has seen every change numbered ≤ V. A reference table
# under Citus (one small row per project).
user_change_state = sa.Table(
    "user_change_state",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("rebuilt_version", sa.BigInteger, nullable=False),  # the last change of every user at once
    sa.Column("pruned_version", sa.BigInteger, nullable=False),  # `user_changes` holds the changes after it
    sa.Column("checkpoint_version", sa.BigInteger, nullable=False),  # what the next prune may remove up to
)

# Which users a version changed (one row per user and version; pruned hourly after a delay).
user_changes = sa.Table(
    "user_changes",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", KEY_TEXT, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "version"),
)
sa.Index(None, user_changes.c.project_id, user_changes.c.version)
