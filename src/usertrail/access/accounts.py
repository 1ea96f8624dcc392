"""Accounts (installation-wide), their roles per project, passwords (argon2id), sign-in sessions and the
limit on failed sign-ins.

A sign-in session is an opaque random id in a cookie; the database keeps only its SHA-256, so a copy
of the database opens no session. Its CSRF token is derived from the id (a one-way hash), so it is
bound to the session without being stored.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import sqlalchemy as sa

from usertrail.access.permissions import permissions_of
from usertrail.store.database import upsert_add, write_transaction
from usertrail.store.projects import hash_token
from usertrail.store.schema import account_roles, account_sessions, accounts, login_attempts, projects

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SESSION_TTL_S = 12 * 3600
# Failed sign-ins counted in fixed windows; over the limit, every attempt is refused until the window ends.
ATTEMPT_WINDOW_S = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 5
MAX_ATTEMPTS_PER_IP = 30


def _now() -> int:
    return int(time.time() * 1000)


def csrf_token_for(session_id: str) -> str:
    """The CSRF token of a sign-in session: knowing it does not reveal the session id."""
    return hashlib.sha256(b"usertrail-csrf\0" + session_id.encode()).hexdigest()


class InvalidAccount(ValueError):
    """A bad e-mail address, display name, password or role; `path` names the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


class AccountExists(ValueError):
    """An account with this e-mail address exists already."""


class UnknownAccount(LookupError):
    """No account has that id or e-mail address."""


class InvalidCredentials(Exception):
    """Wrong e-mail address or password, or a disabled account (the answer does not say which)."""


class TooManyAttempts(Exception):
    """Too many failed sign-ins for this account or address; `retry_after` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    display_name: str
    disabled: bool
    password_change_required: bool
    has_password: bool
    oidc_linked: bool
    created_at: int
    last_login_at: int | None

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "email": self.email,
            "display_name": self.display_name,
            "disabled": self.disabled,
            "password_change_required": self.password_change_required,
            "single_sign_on": self.oidc_linked,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


@dataclass(frozen=True)
class SignedIn:
    """A new sign-in session: the cookie value (shown once) and its CSRF token."""

    account: Account
    session_id: str
    csrf_token: str
    expires_at: int


def normalize_email(email: str) -> str:
    """The stored form of an address: trimmed, lower-case; refused unless it looks like local@domain."""
    address = email.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address) or len(address) > 254:
        raise InvalidAccount("email", f"{email!r} is not an e-mail address")
    return address


def validate_password(password: str) -> None:
    """At least MIN_PASSWORD characters (long passphrases welcome), at most MAX_PASSWORD."""
    if len(password) < MIN_PASSWORD:
        raise InvalidAccount("password", f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidAccount("password", f"a password has at most {MAX_PASSWORD} characters")


def one_time_password() -> str:
    """A random password to hand to a person once; they must change it at first sign-in."""
    return secrets.token_urlsafe(15)


def _account(row) -> Account:
    return Account(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        disabled=bool(row.disabled),
        password_change_required=bool(row.password_change_required),
        has_password=row.password_hash is not None,
        oidc_linked=row.oidc_subject is not None,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


class AccountStore:
    """Accounts, roles, passwords, sign-in sessions and failed-attempt counters."""

    def __init__(
        self,
        engine: sa.Engine,
        clock: Callable[[], int] | None = None,
        hasher: argon2.PasswordHasher | None = None,
        session_ttl_s: int = SESSION_TTL_S,
    ) -> None:
        self.engine = engine
        self.clock = clock or _now  # ms; tests move it to expire sessions and attempt windows
        # argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile: t=3, m=64 MiB, p=4).
        self.hasher = hasher or argon2.PasswordHasher()
        self.session_ttl_s = session_ttl_s
        self._dummy_hash: str | None = None

    # accounts

    def create(
        self,
        email: str,
        display_name: str | None = None,
        password: str | None = None,
        password_change_required: bool = False,
        oidc: tuple[str, str] | None = None,
    ) -> Account:
        """Create an account; `password` None means it signs in only through single sign-on."""
        address = normalize_email(email)
        name = (display_name or "").strip() or address.split("@")[0]
        if len(name) > 200:
            raise InvalidAccount("display_name", "a display name has at most 200 characters")
        if password is not None:
            validate_password(password)
        password_hash = None if password is None else self.hasher.hash(password)
        with write_transaction(self.engine) as conn:
            if conn.execute(sa.select(accounts.c.id).where(accounts.c.email == address)).first():
                raise AccountExists(f"an account for {address} exists already")
            account_id = conn.execute(
                accounts.insert()
                .values(
                    email=address,
                    display_name=name,
                    password_hash=password_hash,
                    password_change_required=password_change_required,
                    disabled=False,
                    oidc_issuer=oidc[0] if oidc else None,
                    oidc_subject=oidc[1] if oidc else None,
                    created_at=self.clock(),
                    last_login_at=None,
                )
                .returning(accounts.c.id)
            ).scalar_one()
        return self.get(account_id)

    def get(self, account_id: int) -> Account:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise UnknownAccount(account_id)
        return _account(row)

    def by_email(self, email: str) -> Account:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(accounts).where(accounts.c.email == normalize_email(email))).first()
        if row is None:
            raise UnknownAccount(email)
        return _account(row)

    def by_oidc(self, issuer: str, subject: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(accounts).where(accounts.c.oidc_issuer == issuer, accounts.c.oidc_subject == subject)
            ).first()
        return None if row is None else _account(row)

    def link_oidc(self, account_id: int, issuer: str, subject: str) -> None:
        """Tie an account to its identity at the single sign-on provider."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(oidc_issuer=issuer, oidc_subject=subject)
            )

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one()

    def list(self) -> list[tuple[Account, dict[int, str]]]:
        """Every account with its roles by project id."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(accounts).order_by(accounts.c.id)).all()
            grants = conn.execute(sa.select(account_roles)).all()
        roles: dict[int, dict[int, str]] = {}
        for g in grants:
            roles.setdefault(g.account_id, {})[g.project_id] = g.role
        return [(_account(r), roles.get(r.id, {})) for r in rows]

    def set_disabled(self, account_id: int, disabled: bool) -> None:
        """Disable (ending every sign-in session at once) or re-enable an account."""
        with write_transaction(self.engine) as conn:
            if not conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(disabled=disabled)
            ).rowcount:
                raise UnknownAccount(account_id)
            if disabled:
                conn.execute(account_sessions.delete().where(account_sessions.c.account_id == account_id))

    def set_password(self, account_id: int, password: str, change_required: bool = False) -> None:
        """Replace the password and end every sign-in session of the account."""
        validate_password(password)
        password_hash = self.hasher.hash(password)
        with write_transaction(self.engine) as conn:
            updated = conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(password_hash=password_hash, password_change_required=change_required)
            ).rowcount
            if not updated:
                raise UnknownAccount(account_id)
            conn.execute(account_sessions.delete().where(account_sessions.c.account_id == account_id))

    def check_password(self, account_id: int, password: str) -> bool:
        with self.engine.connect() as conn:
            stored = conn.execute(sa.select(accounts.c.password_hash).where(accounts.c.id == account_id)).scalar()
        return self._verify(stored, password)

    # roles

    def set_role(self, account_id: int, project_id: int, role: str | None) -> None:
        """Give the account `role` on the project, or remove it from the project (None)."""
        if role is not None:
            try:
                permissions_of(role)
            except ValueError as exc:
                raise InvalidAccount("role", str(exc)) from None
        with write_transaction(self.engine) as conn:
            if conn.execute(sa.select(projects.c.id).where(projects.c.id == project_id)).first() is None:
                raise InvalidAccount("project", f"no project {project_id}")
            key = (account_roles.c.project_id == project_id) & (account_roles.c.account_id == account_id)
            conn.execute(account_roles.delete().where(key))
            if role is not None:
                conn.execute(
                    account_roles.insert().values(
                        project_id=project_id, account_id=account_id, role=role, granted_at=self.clock()
                    )
                )

    def roles(self, account_id: int) -> dict[int, str]:
        """The account's role on each project it belongs to."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(account_roles.c.project_id, account_roles.c.role).where(
                    account_roles.c.account_id == account_id
                )
            ).all()
        return {r.project_id: r.role for r in rows}

    def role_on(self, account_id: int, project_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(account_roles.c.role).where(
                    account_roles.c.project_id == project_id, account_roles.c.account_id == account_id
                )
            ).scalar()

    def members(self, project_id: int) -> list[tuple[Account, str]]:
        """The accounts with a role on the project."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(accounts, account_roles.c.role)
                .join(account_roles, account_roles.c.account_id == accounts.c.id)
                .where(account_roles.c.project_id == project_id)
                .order_by(accounts.c.email)
            ).all()
        return [(_account(r), r.role) for r in rows]

    # signing in

    def login(self, email: str, password: str, ip_masked: str) -> SignedIn:
        """Check the password and open a sign-in session.

        Each attempt is counted before the (slow) password check, so parallel guesses cannot slip
        past the limit; a success takes its own attempt back and clears the account's failures.
        """
        try:
            address = normalize_email(email)
        except InvalidAccount:
            raise InvalidCredentials() from None
        scopes = (f"email:{address}", f"ip:{ip_masked}")
        limits = (MAX_FAILURES_PER_ACCOUNT, MAX_ATTEMPTS_PER_IP)
        now = self.clock()
        window_ms = ATTEMPT_WINDOW_S * 1000
        window = now - now % window_ms
        with write_transaction(self.engine) as conn:
            # Past windows of every scope go, so addresses sprayed by an attacker do not pile up.
            conn.execute(login_attempts.delete().where(login_attempts.c.window_start < window))
            counts = [self._count_attempt(conn, scope, window) for scope in scopes]
            row = conn.execute(sa.select(accounts).where(accounts.c.email == address)).first()
        if any(count > limit for count, limit in zip(counts, limits, strict=True)):
            raise TooManyAttempts(max(1, math.ceil((window + window_ms - now) / 1000)))
        ok = self._verify(row.password_hash if row is not None else None, password)
        if not ok or row is None or row.disabled:
            raise InvalidCredentials()
        with write_transaction(self.engine) as conn:
            conn.execute(login_attempts.delete().where(login_attempts.c.scope == scopes[0]))
            conn.execute(
                login_attempts.update()
                .where(login_attempts.c.scope == scopes[1], login_attempts.c.window_start == window)
                .values(count=login_attempts.c.count - 1)
            )
            if self.hasher.check_needs_rehash(row.password_hash):
                conn.execute(
                    accounts.update().where(accounts.c.id == row.id).values(password_hash=self.hasher.hash(password))
                )
        return self.start_session(row.id, "password")

    def _count_attempt(self, conn: sa.Connection, scope: str, window: int) -> int:
        stmt = upsert_add(login_attempts, conn.dialect.name, ("scope", "window_start"), "count")
        return conn.execute(
            stmt.values(scope=scope, window_start=window, count=1).returning(login_attempts.c.count)
        ).scalar_one()

    def _verify(self, stored: str | None, password: str) -> bool:
        # An unknown address or a password-less account costs as much as a wrong password,
        # so timing does not tell which addresses have accounts.
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
            stored = self._dummy_hash
            password = password + "\0never"
        try:
            return self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def start_session(self, account_id: int, method: str) -> SignedIn:
        """Open a sign-in session for the account (after a password or single sign-on check)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.session_ttl_s * 1000
        with write_transaction(self.engine) as conn:
            conn.execute(account_sessions.delete().where(account_sessions.c.expires_at <= now))
            conn.execute(
                account_sessions.insert().values(
                    id_hash=hash_token(session_id),
                    account_id=account_id,
                    created_at=now,
                    expires_at=expires,
                    method=method,
                )
            )
            conn.execute(accounts.update().where(accounts.c.id == account_id).values(last_login_at=now))
        return SignedIn(self.get(account_id), session_id, csrf_token_for(session_id), expires)

    def session_account(self, session_id: str) -> Account | None:
        """The account of a live sign-in session, or None (unknown, expired, or account disabled)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(accounts, account_sessions.c.expires_at.label("session_expires_at"))
                .join(account_sessions, account_sessions.c.account_id == accounts.c.id)
                .where(account_sessions.c.id_hash == hash_token(session_id))
            ).first()
        if row is None or row.session_expires_at <= self.clock() or row.disabled:
            return None
        return _account(row)

    def end_session(self, session_id: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(account_sessions.delete().where(account_sessions.c.id_hash == hash_token(session_id)))
