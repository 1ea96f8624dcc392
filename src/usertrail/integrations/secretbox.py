"""Credentials of incoming integrations, sealed at rest with the server's secrets key.

An import that logs in to another system (Salesforce) needs its password or private key in
plain text at run time, so a one-way hash will not do. The database holds only Fernet tokens
(AES-128-CBC + HMAC-SHA256, from `cryptography`); the key lives outside the database:

- `USERTRAIL_SECRETS_KEY`: one or more comma-separated Fernet keys. The first seals; all of them
  open, so a key can be rotated by putting the new one first. Servers on several machines that
  share one PostgreSQL database must all have it.
- otherwise `<data dir>/secrets.key`, created (mode 0600) the first time something is sealed.

A database dump or backup therefore does not reveal the credentials without the key. The API
never returns them (docs/integrations.md, "Salesforce").
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_ENV = "USERTRAIL_SECRETS_KEY"
KEY_FILE = "secrets.key"


class SecretsUnavailable(Exception):
    """Sealed credentials that this server cannot open (no key, or another key)."""


class SecretBox:
    """Seals and opens small JSON objects of credentials."""

    def __init__(self, keys: list[bytes] | None = None, key_file: Path | None = None) -> None:
        self._keys = keys
        self._key_file = key_file
        self._fernet: MultiFernet | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, data_dir: Path, env: dict[str, str] | None = None) -> SecretBox:
        """Keys from `USERTRAIL_SECRETS_KEY`, else the key file in the data folder."""
        raw = (os.environ if env is None else env).get(KEY_ENV, "")
        keys = [k.strip().encode() for k in raw.split(",") if k.strip()]
        if keys:
            return cls(keys=keys)
        return cls(key_file=data_dir / KEY_FILE)

    def _box(self, create: bool) -> MultiFernet:
        with self._lock:
            if self._fernet is None:
                keys = self._keys or self._read_key_file(create)
                try:
                    self._fernet = MultiFernet([Fernet(k) for k in keys])
                except ValueError as exc:
                    raise SecretsUnavailable(f"{KEY_ENV} holds a malformed key: {exc}") from None
            return self._fernet

    def _read_key_file(self, create: bool) -> list[bytes]:
        path = self._key_file
        assert path is not None
        if not path.exists():
            if not create:
                raise SecretsUnavailable(f"no secrets key: set {KEY_ENV} or restore {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # O_EXCL: when two processes race, one writes and both then read the same key
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key() + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
        for _ in range(100):  # the racing writer may not have written yet
            key = path.read_bytes().strip()
            if key:
                return [key]
            time.sleep(0.01)
        raise SecretsUnavailable(f"the secrets key file {path} is empty")

    def seal(self, secrets: dict[str, str]) -> str:
        """The credentials as an opaque token to store."""
        return self._box(create=True).encrypt(msgspec.json.encode(secrets)).decode()

    def open(self, token: str) -> dict[str, str]:
        """The credentials sealed in `token`; raises SecretsUnavailable."""
        try:
            return msgspec.json.decode(self._box(create=False).decrypt(token.encode()))
        except InvalidToken:
            raise SecretsUnavailable(
                f"the stored credentials were sealed with another secrets key ({KEY_ENV} or {KEY_FILE}); "
                "enter them again"
            ) from None
