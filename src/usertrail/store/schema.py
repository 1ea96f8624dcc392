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
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
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
    sa.Column("payload", sa.Text, nullable=False),  # the event exactly as kept, JSON
    # Doubles as the de-duplication key: a re-sent event hits the same (project, user, event_id).
    sa.PrimaryKeyConstraint("project_id", "user_key", "event_id"),
)
sa.Index(None, events.c.project_id, events.c.user_key, events.c.ts)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered: "<received ms>-<random>"
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("env", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("batch_index", sa.Integer, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),  # the raw event text as it arrived
    sa.Column("context", sa.Text, nullable=False),  # JSON: request facts needed to re-process it
    sa.Column("status", sa.Text, nullable=False),  # "pending", "reprocessed" or "discarded"
    sa.Column("resolved_at", sa.BigInteger, nullable=True),
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
    sa.Column("user_key", sa.Text, nullable=False),  # the owner: identified user, or the anonymous id
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
    sa.Column("user_key", sa.Text, nullable=False),
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

# Users whose sessions must be recomputed from `since_ts` on (new events, due closes).
pending_users = sa.Table(
    "pending_users",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("since_ts", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),  # bumped by every new mark: a claim is done only if unchanged
    sa.Column("claimed_until", sa.BigInteger, nullable=True),
    sa.Column("claim", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "user_key"),
)
# Oldest work first: sessions waiting to close (marked from their start) before fresh activity.
sa.Index(None, pending_users.c.since_ts)

# Candidate links from an anonymous key to an identified key; the earliest link owns the anonymous key.
identity_links = sa.Table(
    "identity_links",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),  # the anonymous key
    sa.Column("person_key", sa.Text, nullable=False),  # the identified key
    sa.Column("link_ts", sa.BigInteger, nullable=False),
    sa.Column("link_event_id", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "person_key"),
)
sa.Index(None, identity_links.c.project_id, identity_links.c.person_key)

# Which keys used which client session id (WalkMe sId, snippet sessionId): stitches a login.
session_hints = sa.Table(
    "session_hints",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("session_hint", sa.Text, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("first_ts", sa.BigInteger, nullable=False),
    sa.Column("first_event_id", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "session_hint", "user_key"),
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
    sa.PrimaryKeyConstraint("project_id", "name"),
)

user_attributes = sa.Table(
    "user_attributes",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Text, nullable=False),  # JSON of the typed value
    sa.Column("value_num", sa.Float, nullable=True),  # numbers, for comparisons in SQL
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "name"),
)
sa.Index(None, user_attributes.c.project_id, user_attributes.c.name, user_attributes.c.value)

attribute_history = sa.Table(
    "attribute_history",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("id", sa.Text, nullable=False),  # time-ordered
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("old_value", sa.Text, nullable=True),
    sa.Column("new_value", sa.Text, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("changed_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_key", "id"),
)
sa.Index(None, attribute_history.c.project_id, attribute_history.c.name, attribute_history.c.changed_at)

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
