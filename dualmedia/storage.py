"""Object storage over boto3: the same code against rclone, MinIO and AWS S3.

Only the endpoint and credentials (from Settings) differ between them. Calls retry
with exponential backoff (botocore's "standard" mode), large files go multipart, and
`publish_dir` makes a whole prefix visible atomically through a commit marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dualmedia.settings import Settings, get_settings

COMMIT_MARKER = "_COMMITTED.json"
MB = 1024 * 1024


class StorageError(RuntimeError):
    """An object storage operation failed; the message names the URI."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 URI without a bucket: {uri!r}")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix ('' for the bucket root, else ending in '/')."""
        return f"{self.key.rstrip('/')}/" if self.key else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


ProgressFn = Callable[[int], None]


class ObjectStore:
    """A thin, explicit wrapper over one boto3 S3 client."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        s = self.settings
        self.client = boto3.client(
            "s3",
            endpoint_url=s.s3_endpoint,
            # Unset keys (external S3): boto3's own credential chain.
            aws_access_key_id=s.s3_access_key.get_secret_value() if s.s3_access_key else None,
            aws_secret_access_key=s.s3_secret_key.get_secret_value() if s.s3_secret_key else None,
            region_name=s.s3_region,
            config=Config(
                retries={"max_attempts": s.s3_max_attempts, "mode": "standard"},
                # Path-style addressing works for rclone and MinIO and still works on AWS.
                s3={"addressing_style": "path"},
                connect_timeout=10,
                read_timeout=120,
                # rclone and MinIO reject the newer default CRC checksums on some calls.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=s.multipart_threshold_mb * MB,
            multipart_chunksize=max(8, s.multipart_threshold_mb // 4) * MB,
            max_concurrency=4,
        )

    # ---- buckets -------------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` unless it exists (idempotent)."""
        try:
            self.client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if _status(exc) not in (403, 404):
                raise StorageError(f"s3://{bucket}: cannot check bucket: {_msg(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"s3://{bucket}: cannot check bucket: {_msg(exc)}") from None
        try:
            self.client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"s3://{bucket}: cannot create bucket: {_msg(exc)}") from None

    def list_buckets(self) -> list[str]:
        with _failing_as(f"{self.settings.s3_endpoint}: cannot list buckets"):
            return [b["Name"] for b in self.client.list_buckets().get("Buckets", [])]

    # ---- listing -------------------------------------------------------------------
    def list(self, uri: str | S3Uri) -> Iterator[ObjectInfo]:
        """Objects under a prefix, page by page (never the whole listing in memory)."""
        u = _uri(uri)
        with _failing_as(f"{u}: cannot list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=u.bucket, Prefix=u.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], obj["Size"], obj["ETag"].strip('"'))

    def list_prefixes(self, uri: str | S3Uri) -> list[str]:
        """Immediate sub-folders of a prefix, as names (no trailing slash)."""
        u = _uri(uri)
        names: list[str] = []
        with _failing_as(f"{u}: cannot list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=u.bucket, Prefix=u.prefix, Delimiter="/"
            )
            for page in pages:
                for p in page.get("CommonPrefixes", []):
                    names.append(p["Prefix"][len(u.prefix) :].rstrip("/"))
        return sorted(names)

    def head(self, uri: str | S3Uri) -> ObjectInfo | None:
        """Size and ETag of one object, or None when it does not exist."""
        u = _uri(uri)
        try:
            r = self.client.head_object(Bucket=u.bucket, Key=u.key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StorageError(f"{u}: cannot read metadata: {_msg(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{u}: cannot read metadata: {_msg(exc)}") from None
        return ObjectInfo(u.key, r["ContentLength"], r["ETag"].strip('"'))

    def exists(self, uri: str | S3Uri) -> bool:
        return self.head(uri) is not None

    # ---- single objects ------------------------------------------------------------
    def read_bytes(self, uri: str | S3Uri) -> bytes:
        u = _uri(uri)
        with _failing_as(f"{u}: cannot read"):
            return self.client.get_object(Bucket=u.bucket, Key=u.key)["Body"].read()

    def read_text(self, uri: str | S3Uri) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_bytes(self, uri: str | S3Uri, data: bytes, content_type: str | None = None) -> None:
        """Put one object; a single PUT is atomic: readers see all of it or nothing."""
        u = _uri(uri)
        extra = {"ContentType": content_type} if content_type else {}
        with _failing_as(f"{u}: cannot write"):
            self.client.put_object(Bucket=u.bucket, Key=u.key, Body=data, **extra)

    def write_json(self, uri: str | S3Uri, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        self.write_bytes(uri, data, "application/json")

    def upload_file(self, path: Path, uri: str | S3Uri, progress: ProgressFn | None = None) -> None:
        """Upload one file (multipart above the configured threshold)."""
        u = _uri(uri)
        with _failing_as(f"{path} -> {u}: upload failed"):
            self.client.upload_file(
                str(path), u.bucket, u.key, Config=self.transfer, Callback=progress
            )

    def download_file(
        self, uri: str | S3Uri, path: Path, progress: ProgressFn | None = None
    ) -> Path:
        """Download one object to `path`, atomically (temp file, then rename)."""
        u = _uri(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            with _failing_as(f"{u}: download failed"):
                self.client.download_file(
                    u.bucket, u.key, tmp, Config=self.transfer, Callback=progress
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def delete(self, uri: str | S3Uri) -> None:
        u = _uri(uri)
        with _failing_as(f"{u}: cannot delete"):
            self.client.delete_object(Bucket=u.bucket, Key=u.key)

    def delete_prefix(self, uri: str | S3Uri) -> int:
        """Delete every object under a prefix; returns how many."""
        u = _uri(uri)
        keys = [o.key for o in self.list(u)]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            with _failing_as(f"{u}: cannot delete"):
                self.client.delete_objects(Bucket=u.bucket, Delete={"Objects": chunk})
        return len(keys)

    # ---- folders -------------------------------------------------------------------
    def upload_dir(
        self,
        folder: Path,
        uri: str | S3Uri,
        skip_unchanged: bool = True,
        progress: ProgressFn | None = None,
    ) -> dict[str, int]:
        """Upload a folder tree under a prefix; unchanged files (same size and MD5) are
        skipped, so re-running an upload does no new work. Returns counts."""
        u = _uri(uri)
        folder = Path(folder)
        existing = {o.key: o for o in self.list(u)} if skip_unchanged else {}
        uploaded = skipped = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = u.join(path.relative_to(folder).as_posix())
            have = existing.get(key.key)
            if have is not None and have.size == path.stat().st_size and have.etag == _md5(path):
                skipped += 1
            else:
                self.upload_file(path, key)
                uploaded += 1
            if progress:
                progress(path.stat().st_size)
        return {"uploaded": uploaded, "skipped": skipped}

    def download_dir(self, uri: str | S3Uri, folder: Path) -> list[Path]:
        """Download every object under a prefix into a folder, keeping relative paths."""
        u = _uri(uri)
        paths = []
        for obj in self.list(u):
            rel = obj.key[len(u.prefix) :]
            if rel and not rel.endswith("/"):
                paths.append(self.download_file(S3Uri(u.bucket, obj.key), Path(folder) / rel))
        return paths

    # ---- atomic publication of a prefix --------------------------------------------
    def publish_dir(
        self, folder: Path, uri: str | S3Uri, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Publish a folder under a prefix so that readers see all of it or nothing.

        S3 has no rename, so visibility is decided by a marker: files are written
        first, then one `_COMMITTED.json` object (a single PUT, hence atomic) listing
        every file with its size and ETag. Readers only trust prefixes whose marker
        exists (`is_committed`, `committed_files`). Leftovers of a failed earlier
        attempt are deleted before writing, so a re-run never mixes two attempts.
        """
        u = _uri(uri)
        if self.is_committed(u):
            raise StorageError(f"{u}: already published; delete it first to replace it")
        self.delete_prefix(u)
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel == COMMIT_MARKER:
                continue
            self.upload_file(path, u.join(rel))
            info = self.head(u.join(rel))
            assert info is not None
            files[rel] = {"size": info.size, "etag": info.etag}
        marker = {"files": files, "metadata": metadata or {}}
        self.write_json(u.join(COMMIT_MARKER), marker)
        return marker

    def is_committed(self, uri: str | S3Uri) -> bool:
        return self.exists(_uri(uri).join(COMMIT_MARKER))

    def committed_manifest(self, uri: str | S3Uri) -> dict[str, Any]:
        """The commit marker of a published prefix; StorageError if not published."""
        u = _uri(uri)
        marker = u.join(COMMIT_MARKER)
        if not self.exists(marker):
            raise StorageError(f"{u}: not published (no {COMMIT_MARKER}); it may be incomplete")
        return json.loads(self.read_text(marker))


@contextlib.contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """Turn boto errors into one StorageError that names the URI and the operation."""
    try:
        yield
    except (ClientError, BotoCoreError, boto3.exceptions.S3UploadFailedError) as exc:
        raise StorageError(f"{what}: {_msg(exc)}") from None


def _uri(uri: str | S3Uri) -> S3Uri:
    return uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _msg(exc: Exception) -> str:
    """A short error message; boto3 never puts credentials in these."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return str(exc)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MB), b""):
            digest.update(chunk)
    return digest.hexdigest()
