"""Blob storage for recording chunks: a local folder (default) or S3.

Keys are relative paths such as `recordings/3/rec_…/00000007-ab12cd`. Blobs are written whole
and never changed; a chunk's row in the database is committed only after its blob is durable.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class BlobNotFound(LookupError):
    """No blob under that key."""


class BlobStore(Protocol):
    """The three operations playback needs from a storage engine."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` durably under `key` (replacing any blob there)."""

    def get(self, key: str) -> bytes:
        """The blob under `key`; raises BlobNotFound."""

    def delete(self, key: str) -> None:
        """Delete one blob (no error if it is missing)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under the folder-like `prefix` (ending in `/`); returns how many."""


class LocalBlobStore:
    """Files under a root folder; a write goes to a temporary file, is fsynced, then renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("the local store deletes whole folders: the prefix must end with `/`")
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        removed = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return removed


class S3BlobStore:
    """Objects in an S3 bucket (AWS or any S3-compatible service) under a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def delete_prefix(self, prefix: str) -> int:
        removed = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                removed += len(keys)
        return removed


def open_blob_store(location: str, data_dir: Path, s3_endpoint_url: str = "") -> BlobStore:
    """`""` → `<data_dir>/playback`; `s3://bucket/prefix` → S3; any other text → that folder."""
    if not location:
        return LocalBlobStore(data_dir / "playback")
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("USERTRAIL_PLAYBACK_STORE s3:// needs a bucket name")
        return S3BlobStore(parsed.netloc, parsed.path, s3_endpoint_url)
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(Path(parsed.path if parsed.scheme == "file" else location))
    raise ValueError(f"USERTRAIL_PLAYBACK_STORE must be a folder or s3://bucket/prefix, not {location!r}")
