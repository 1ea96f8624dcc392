"""Server configuration: one object, read from `USERTRAIL_*` environment variables.

Worker processes started by uvicorn re-read the same environment, so the CLI passes its
flags down by setting these variables before it starts the workers.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

# How uvicorn must serve the app. The client address comes from enrich/ip.py, which believes
# X-Forwarded-For only from the configured trusted proxies; uvicorn's own rewrite (on by default)
# would believe it from any local process, faking IPs and geolocation. Its access log would print
# every full client IP, which usertrail keeps only in the security log.
UVICORN_OPTIONS = {"proxy_headers": False, "access_log": False}


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Limits:
    """Hard limits on what one collection request may carry; documented in docs/collection.md."""

    max_body_bytes: int = 1_048_576
    max_events_per_batch: int = 500
    max_properties_per_event: int = 200
    max_string_length: int = 8_192
    max_depth: int = 8


@dataclass(frozen=True)
class Settings:
    """Process-wide settings. Per-project behaviour lives in the project's environment settings."""

    data_dir: Path = Path("usertrail-data")
    database_url: str = ""
    geoip_db: str = ""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    security_log_retention_days: int = 7
    # End users with no session for this long are deleted (WalkMe: six months).
    user_retention_days: int = 183
    # Run the session processor inside the server (off only for tests that drive it by hand).
    process_sessions: bool = True
    # "full" runs the whole pipeline; "decode_only" parses and answers without enrichment or
    # storage, which the ingest benchmark uses to measure the HTTP + decode ceiling.
    ingest_mode: str = "full"
    # Extra time a group-commit batch waits for more requests before committing.
    commit_delay_ms: float = 0.0
    # The session processor recomputes a user once their events have paused this long (ms), or at
    # the latest a minute after the first new event; 0 recomputes at once (tests drive it by hand).
    session_settle_ms: int = 5_000
    # How long the session loop rests when a round found nothing to do: with the settle time and a
    # round's own work, sessions close well within the minute the spec allows.
    session_interval_s: float = 10.0
    # Where a server worker's ingest journal is indexed (collect/indexer_process.py): "process", in
    # processes of their own at a lower CPU priority (nice `indexer_nice`), run by one of the workers;
    # "thread", a thread in every worker. An app built with explicit settings (tests) uses a thread.
    indexer: str = "process"
    indexer_nice: int = 10
    # Indexer processes per data folder; 0: one on SQLite (one writer at a time), two on PostgreSQL
    # (whose indexers store side by side; more on a machine with more cores).
    indexer_processes: int = 0
    # While collection is saturated, indexing waits up to this long (collect/indexer_process.py).
    index_delay_s: float = 30.0
    # Events the ingest journal may hold before collection answers 503 (retry later); 0: no bound. Answers
    # no longer wait for indexing, so under an overload that lasts, this bounds the journal's disk and the
    # delay before events show (collect/indexer.py).
    max_backlog_events: int = 5_000_000
    # Users a session-loop round recomputes in one transaction. On SQLite that transaction holds the
    # only write lock, so smaller rounds let ingest in between (docs/benchmarks.md, steady state).
    session_batch: int = 1000
    # Session Playback (docs/playback.md). Master key(s): base64, comma-separated, the first is
    # current; empty = the `master.key` file in the data folder, made on first start.
    master_key: str = ""
    # Where recording chunks go: "" = `playback/` in the data folder; "s3://bucket/prefix" = S3.
    playback_store: str = ""
    s3_endpoint_url: str = ""
    playback_retention_days: int = 365
    playback_chunk_interval_ms: int = 5_000
    playback_max_chunk_bytes: int = 2 * 1_048_576  # as sent (compressed)
    playback_max_chunk_raw_bytes: int = 32 * 1_048_576  # decompressed JSON
    playback_max_recording_bytes: int = 256 * 1_048_576  # decompressed, all chunks
    playback_zstd_level: int = 9
    # Asset fetching may reach loopback/private addresses (tests only).
    playback_assets_allow_private: bool = False
    # Server-side fetches of recorded pages' assets (docs/playback.md#assets): size and time limits,
    # and how often each server process looks for assets to fetch.
    playback_asset_max_bytes: int = 5 * 1_048_576
    playback_asset_timeout_s: float = 10.0
    playback_asset_interval_s: float = 2.0
    # How often the server looks for Salesforce sources whose interval has passed.
    salesforce_tick_s: float = 30.0
    # How often the server looks for S3 sources due to run (each source has its own interval).
    s3_poll_interval_s: float = 30.0
    # Sign-in cookies carry `Secure` when this is on, or whenever the request came over https.
    secure_cookies: bool = False
    session_ttl_hours: float = 12.0
    # OpenID Connect single sign-on (docs/accounts.md); off while oidc_issuer is empty.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_allowed_domains: tuple[str, ...] = ()  # e-mail domains allowed to sign in; empty: any
    oidc_default_role: str = ""  # role given to new single sign-on accounts on oidc_default_project
    oidc_default_project: int = 0
    oidc_redirect_url: str = ""  # default: <server>/api/auth/oidc/callback
    # How long each server process keeps the snippet's answer to "which client-visible segments am I in?".
    client_segments_cache_s: float = 60.0
    # Memory each server process may give the column-wise segment counter (segments/columns.py); 0: count in SQL.
    segment_columns_mb: int = 512

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'usertrail.db').resolve()}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from `USERTRAIL_*` variables (missing ones take the defaults)."""
        env = dict(os.environ if env is None else env)
        limits = Limits(
            **{
                name: int(env[f"USERTRAIL_LIMIT_{name.upper()}"])
                for name in Limits.__dataclass_fields__
                if f"USERTRAIL_LIMIT_{name.upper()}" in env
            }
        )
        proxies = tuple(
            ipaddress.ip_network(p.strip(), strict=False)
            for p in env.get("USERTRAIL_TRUSTED_PROXIES", "").split(",")
            if p.strip()
        )
        return cls(
            data_dir=Path(env.get("USERTRAIL_DATA_DIR", "usertrail-data")),
            database_url=env.get("USERTRAIL_DATABASE_URL", ""),
            geoip_db=env.get("USERTRAIL_GEOIP_DB", ""),
            trusted_proxies=proxies,
            limits=limits,
            security_log_retention_days=int(env.get("USERTRAIL_SECURITY_LOG_RETENTION_DAYS", "7")),
            user_retention_days=int(env.get("USERTRAIL_USER_RETENTION_DAYS", "183")),
            process_sessions=env.get("USERTRAIL_PROCESS_SESSIONS", "1") != "0",
            ingest_mode=env.get("USERTRAIL_INGEST_MODE", "full"),
            commit_delay_ms=float(env.get("USERTRAIL_COMMIT_DELAY_MS", "0")),
            session_settle_ms=int(env.get("USERTRAIL_SESSION_SETTLE_MS", "5000")),
            session_interval_s=float(env.get("USERTRAIL_SESSION_INTERVAL_S", "10")),
            indexer=_choice(env, "USERTRAIL_INDEXER", "process", ("process", "thread")),
            indexer_nice=int(env.get("USERTRAIL_INDEXER_NICE", "10")),
            indexer_processes=int(env.get("USERTRAIL_INDEXER_PROCESSES", "0")),
            index_delay_s=float(env.get("USERTRAIL_INDEX_DELAY_S", "30")),
            max_backlog_events=int(env.get("USERTRAIL_MAX_BACKLOG_EVENTS", "5000000")),
            session_batch=int(env.get("USERTRAIL_SESSION_BATCH", "1000")),
            master_key=env.get("USERTRAIL_MASTER_KEY", ""),
            playback_store=env.get("USERTRAIL_PLAYBACK_STORE", ""),
            s3_endpoint_url=env.get("USERTRAIL_S3_ENDPOINT_URL", ""),
            playback_retention_days=int(env.get("USERTRAIL_PLAYBACK_RETENTION_DAYS", "365")),
            playback_chunk_interval_ms=int(env.get("USERTRAIL_PLAYBACK_CHUNK_INTERVAL_MS", "5000")),
            playback_max_chunk_bytes=int(env.get("USERTRAIL_PLAYBACK_MAX_CHUNK_BYTES", str(2 * 1_048_576))),
            playback_max_chunk_raw_bytes=int(env.get("USERTRAIL_PLAYBACK_MAX_CHUNK_RAW_BYTES", str(32 * 1_048_576))),
            playback_max_recording_bytes=int(env.get("USERTRAIL_PLAYBACK_MAX_RECORDING_BYTES", str(256 * 1_048_576))),
            playback_zstd_level=int(env.get("USERTRAIL_PLAYBACK_ZSTD_LEVEL", "9")),
            playback_assets_allow_private=env.get("USERTRAIL_PLAYBACK_ASSETS_ALLOW_PRIVATE", "0") == "1",
            playback_asset_max_bytes=int(env.get("USERTRAIL_PLAYBACK_ASSET_MAX_BYTES", str(5 * 1_048_576))),
            playback_asset_timeout_s=float(env.get("USERTRAIL_PLAYBACK_ASSET_TIMEOUT_S", "10")),
            playback_asset_interval_s=float(env.get("USERTRAIL_PLAYBACK_ASSET_INTERVAL_S", "2")),
            salesforce_tick_s=float(env.get("USERTRAIL_SALESFORCE_TICK_S", "30")),
            s3_poll_interval_s=float(env.get("USERTRAIL_S3_POLL_INTERVAL_S", "30")),
            secure_cookies=env.get("USERTRAIL_SECURE_COOKIES", "0") == "1",
            session_ttl_hours=float(env.get("USERTRAIL_SESSION_TTL_HOURS", "12")),
            oidc_issuer=env.get("USERTRAIL_OIDC_ISSUER", ""),
            oidc_client_id=env.get("USERTRAIL_OIDC_CLIENT_ID", ""),
            oidc_client_secret=env.get("USERTRAIL_OIDC_CLIENT_SECRET", ""),
            oidc_allowed_domains=tuple(
                d.strip().lower() for d in env.get("USERTRAIL_OIDC_ALLOWED_DOMAINS", "").split(",") if d.strip()
            ),
            oidc_default_role=env.get("USERTRAIL_OIDC_DEFAULT_ROLE", ""),
            oidc_default_project=int(env.get("USERTRAIL_OIDC_DEFAULT_PROJECT", "0")),
            oidc_redirect_url=env.get("USERTRAIL_OIDC_REDIRECT_URL", ""),
            client_segments_cache_s=float(env.get("USERTRAIL_CLIENT_SEGMENTS_CACHE_S", "60")),
            segment_columns_mb=int(env.get("USERTRAIL_SEGMENT_COLUMNS_MB", "512")),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a worker process."""
        env = {
            "USERTRAIL_DATA_DIR": str(self.data_dir),
            "USERTRAIL_DATABASE_URL": self.database_url,
            "USERTRAIL_GEOIP_DB": self.geoip_db,
            "USERTRAIL_TRUSTED_PROXIES": ",".join(str(p) for p in self.trusted_proxies),
            "USERTRAIL_SECURITY_LOG_RETENTION_DAYS": str(self.security_log_retention_days),
            "USERTRAIL_USER_RETENTION_DAYS": str(self.user_retention_days),
            "USERTRAIL_PROCESS_SESSIONS": "1" if self.process_sessions else "0",
            "USERTRAIL_INGEST_MODE": self.ingest_mode,
            "USERTRAIL_COMMIT_DELAY_MS": str(self.commit_delay_ms),
            "USERTRAIL_SESSION_SETTLE_MS": str(self.session_settle_ms),
            "USERTRAIL_SESSION_INTERVAL_S": str(self.session_interval_s),
            "USERTRAIL_INDEXER": self.indexer,
            "USERTRAIL_INDEXER_NICE": str(self.indexer_nice),
            "USERTRAIL_INDEXER_PROCESSES": str(self.indexer_processes),
            "USERTRAIL_INDEX_DELAY_S": str(self.index_delay_s),
            "USERTRAIL_MAX_BACKLOG_EVENTS": str(self.max_backlog_events),
            "USERTRAIL_SESSION_BATCH": str(self.session_batch),
            "USERTRAIL_MASTER_KEY": self.master_key,
            "USERTRAIL_PLAYBACK_STORE": self.playback_store,
            "USERTRAIL_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "USERTRAIL_PLAYBACK_RETENTION_DAYS": str(self.playback_retention_days),
            "USERTRAIL_PLAYBACK_CHUNK_INTERVAL_MS": str(self.playback_chunk_interval_ms),
            "USERTRAIL_PLAYBACK_MAX_CHUNK_BYTES": str(self.playback_max_chunk_bytes),
            "USERTRAIL_PLAYBACK_MAX_CHUNK_RAW_BYTES": str(self.playback_max_chunk_raw_bytes),
            "USERTRAIL_PLAYBACK_MAX_RECORDING_BYTES": str(self.playback_max_recording_bytes),
            "USERTRAIL_PLAYBACK_ZSTD_LEVEL": str(self.playback_zstd_level),
            "USERTRAIL_PLAYBACK_ASSETS_ALLOW_PRIVATE": "1" if self.playback_assets_allow_private else "0",
            "USERTRAIL_PLAYBACK_ASSET_MAX_BYTES": str(self.playback_asset_max_bytes),
            "USERTRAIL_PLAYBACK_ASSET_TIMEOUT_S": str(self.playback_asset_timeout_s),
            "USERTRAIL_PLAYBACK_ASSET_INTERVAL_S": str(self.playback_asset_interval_s),
            "USERTRAIL_SALESFORCE_TICK_S": str(self.salesforce_tick_s),
            "USERTRAIL_S3_POLL_INTERVAL_S": str(self.s3_poll_interval_s),
            "USERTRAIL_SECURE_COOKIES": "1" if self.secure_cookies else "0",
            "USERTRAIL_SESSION_TTL_HOURS": str(self.session_ttl_hours),
            "USERTRAIL_OIDC_ISSUER": self.oidc_issuer,
            "USERTRAIL_OIDC_CLIENT_ID": self.oidc_client_id,
            "USERTRAIL_OIDC_CLIENT_SECRET": self.oidc_client_secret,
            "USERTRAIL_OIDC_ALLOWED_DOMAINS": ",".join(self.oidc_allowed_domains),
            "USERTRAIL_OIDC_DEFAULT_ROLE": self.oidc_default_role,
            "USERTRAIL_OIDC_DEFAULT_PROJECT": str(self.oidc_default_project),
            "USERTRAIL_OIDC_REDIRECT_URL": self.oidc_redirect_url,
            "USERTRAIL_CLIENT_SEGMENTS_CACHE_S": str(self.client_segments_cache_s),
            "USERTRAIL_SEGMENT_COLUMNS_MB": str(self.segment_columns_mb),
        }
        for name in Limits.__dataclass_fields__:
            env[f"USERTRAIL_LIMIT_{name.upper()}"] = str(getattr(self.limits, name))
        return env
