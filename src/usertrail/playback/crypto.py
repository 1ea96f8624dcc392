"""Keys and encryption of recordings.

- Master key(s): from `USERTRAIL_MASTER_KEY` (base64, comma-separated, the first is current) or the
  `master.key` file in the data folder (one key a line), generated on first start.
- Project key: HKDF-SHA256 of the master key, per project and key version; never stored.
- Data key: random, one per recording, stored only wrapped (AES-256-GCM) under the project key.
  Deleting the wrapped key makes the recording's blobs unreadable.
- Chunk: zstd-compressed JSON, AES-256-GCM under the data key, bound to (project, recording, seq).
- Upload token: (project, user key, recording id) with an HMAC, so a chunk names its recording's
  owner without a database search and only recordings the server approved can receive chunks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_FILE = "master.key"
_WRAP_FORMAT = b"\x01"
_CHUNK_MAGIC = b"UTC1"
_NONCE = 12
_FINGERPRINT = 8


class CryptoError(Exception):
    """A key is missing or a ciphertext does not authenticate (wrong key, tampered data)."""


class BadToken(ValueError):
    """An upload token that is malformed or not signed by this server."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_master_key() -> str:
    """A fresh 256-bit master key, as its base64 text."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_master_keys(text: str) -> list[bytes]:
    """Keys from comma- or newline-separated base64; each must be 32 bytes."""
    keys = []
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except ValueError:
            raise CryptoError("a master key is not valid base64") from None
        if len(key) != 32:
            raise CryptoError(f"a master key must be 32 bytes, got {len(key)}")
        keys.append(key)
    return keys


def load_master_keys(configured: str, data_dir: Path) -> list[bytes]:
    """The configured keys, else those of `<data_dir>/master.key`, generating that file if absent.

    The file is created exclusively, so server processes starting together agree on one key.
    """
    if configured.strip():
        keys = parse_master_keys(configured)
        if not keys:
            raise CryptoError("USERTRAIL_MASTER_KEY is set but holds no key")
        return keys
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(new_master_key() + "\n")
                f.flush()
                os.fsync(f.fileno())
    keys = parse_master_keys(path.read_text())
    if not keys:
        raise CryptoError(f"{path} holds no key")
    return keys


def fingerprint(master: bytes) -> bytes:
    """Names a master key in wrapped keys without revealing it."""
    return hmac.new(master, b"usertrail master key fingerprint", hashlib.sha256).digest()[:_FINGERPRINT]


@dataclass(frozen=True)
class UploadGrant:
    project_id: int
    user_key: str
    recording_id: str


class KeyRing:
    """The master keys (the first is current, the others can still unwrap) and what derives from them."""

    def __init__(self, masters: list[bytes]) -> None:
        if not masters:
            raise CryptoError("no master key")
        self.masters = masters
        self._by_fingerprint = {fingerprint(m): m for m in masters}

    @property
    def current_fingerprint(self) -> bytes:
        return fingerprint(self.masters[0])

    @staticmethod
    def _project_key(master: bytes, project_id: int, version: int) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"usertrail playback",
            info=f"project {project_id} key v{version}".encode(),
        ).derive(master)

    def wrap(self, project_id: int, version: int, recording_id: str, data_key: bytes) -> bytes:
        """The data key sealed under the current master's project key (format, fingerprint, nonce, ciphertext)."""
        master = self.masters[0]
        nonce = secrets.token_bytes(_NONCE)
        sealed = AESGCM(self._project_key(master, project_id, version)).encrypt(
            nonce, data_key, f"{project_id}/{recording_id}".encode()
        )
        return _WRAP_FORMAT + fingerprint(master) + nonce + sealed

    def unwrap(self, project_id: int, version: int, recording_id: str, wrapped: bytes) -> bytes:
        if wrapped[:1] != _WRAP_FORMAT:
            raise CryptoError("unknown wrapped-key format")
        fp = wrapped[1 : 1 + _FINGERPRINT]
        master = self._by_fingerprint.get(fp)
        if master is None:
            raise CryptoError("the data key is wrapped under a master key that is not configured")
        nonce = wrapped[1 + _FINGERPRINT : 1 + _FINGERPRINT + _NONCE]
        try:
            return AESGCM(self._project_key(master, project_id, version)).decrypt(
                nonce, wrapped[1 + _FINGERPRINT + _NONCE :], f"{project_id}/{recording_id}".encode()
            )
        except InvalidTag:
            raise CryptoError("the wrapped data key does not authenticate") from None

    def is_current(self, wrapped: bytes) -> bool:
        """Wrapped under the current master key (key rotation re-wraps the others)."""
        return wrapped[1 : 1 + _FINGERPRINT] == self.current_fingerprint

    def _token_key(self, master: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"usertrail playback", info=b"upload tokens").derive(
            master
        )

    def sign_upload(self, grant: UploadGrant) -> str:
        payload = msgspec.json.encode([grant.project_id, grant.user_key, grant.recording_id])
        mac = hmac.new(self._token_key(self.masters[0]), payload, hashlib.sha256).digest()[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify_upload(self, token: str) -> UploadGrant:
        """The grant a token carries, if any of the configured master keys signed it."""
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:
            raise BadToken("malformed upload token") from None
        for master in self.masters:
            expected = hmac.new(self._token_key(master), payload, hashlib.sha256).digest()[:16]
            if hmac.compare_digest(expected, mac):
                project_id, user_key, recording_id = msgspec.json.decode(payload)
                return UploadGrant(project_id, user_key, recording_id)
        raise BadToken("upload token not signed by this server")


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal_chunk(data_key: bytes, project_id: int, recording_id: str, seq: int, compressed: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    aad = f"{project_id}/{recording_id}/{seq}".encode()
    return _CHUNK_MAGIC + nonce + AESGCM(data_key).encrypt(nonce, compressed, aad)


def open_chunk(data_key: bytes, project_id: int, recording_id: str, seq: int, blob: bytes) -> bytes:
    if blob[:4] != _CHUNK_MAGIC:
        raise CryptoError("not a usertrail chunk")
    nonce = blob[4 : 4 + _NONCE]
    try:
        return AESGCM(data_key).decrypt(nonce, blob[4 + _NONCE :], f"{project_id}/{recording_id}/{seq}".encode())
    except InvalidTag:
        raise CryptoError(f"chunk {seq} of {recording_id} does not authenticate") from None


class KeySource:
    """The key ring of a running server: from configuration, or the key file, re-read when it changes.

    Re-reading lets `usertrail playback rotate-keys --new-master-key` take effect in running
    servers within a second, so they wrap new data keys under the new master key.
    """

    def __init__(self, configured: str, data_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._configured, self._data_dir = configured, data_dir
        self._clock = clock
        self._ring = KeyRing(load_master_keys(configured, data_dir))
        self._stamp = self._file_stamp()
        self._checked = self._clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._configured.strip():
            return None
        stat = (self._data_dir / MASTER_KEY_FILE).stat()
        return (stat.st_mtime_ns, stat.st_size)

    def ring(self, refresh: bool = False) -> KeyRing:
        """The current ring; `refresh` re-reads the key file now (a key this process has not seen yet)."""
        if self._configured.strip() or (not refresh and self._clock() - self._checked < 1.0):
            return self._ring
        self._checked = self._clock()
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._ring, self._stamp = KeyRing(load_master_keys("", self._data_dir)), stamp
        return self._ring
