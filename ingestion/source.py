"""A raw dataset in object storage: its spec, its batches, their manifests and media."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from dualmedia.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    ContractError,
    DatasetSpec,
    parse_dataset_spec,
)
from dualmedia.storage import ObjectStore, S3Uri, StorageError


class MediaMissing(Exception):
    """The object a manifest names does not exist (or cannot be reached)."""


class MediaTooLarge(Exception):
    """The object is bigger than the configured bound; it was not downloaded."""


@dataclass(frozen=True)
class Batch:
    name: str
    uri: S3Uri
    fingerprint: str  # hash of every object's key, size and ETag under the batch


class DatasetSource:
    """Reads one dataset prefix (`s3://raw/<dataset>`) as the contract lays it out."""

    def __init__(self, store: ObjectStore, uri: str) -> None:
        self.store = store
        self.uri = S3Uri.parse(uri.rstrip("/"))
        if not self.uri.key:
            raise ContractError(f"{uri}: give a dataset prefix, e.g. s3://{self.uri.bucket}/name")

    def spec_text(self) -> str:
        """The raw `dataset.yaml`; ContractError when missing (nothing else is read then)."""
        spec_uri = self.uri.join(DATASET_FILE)
        if not self.store.exists(spec_uri):
            raise ContractError(
                f"{spec_uri}: missing; every dataset needs a {DATASET_FILE} declaring its "
                "modalities and labels (see README, 'the dataset contract')"
            )
        return self.store.read_text(spec_uri)

    def spec(self) -> DatasetSpec:
        return parse_dataset_spec(self.spec_text(), where=str(self.uri.join(DATASET_FILE)))

    def batches(self) -> list[Batch]:
        """Every batch (sub-folder with a manifest), each with a content fingerprint."""
        found = []
        for name in self.store.list_prefixes(self.uri):
            batch_uri = self.uri.join(name)
            digest = hashlib.sha256()
            has_manifest = False
            for obj in self.store.list(batch_uri):
                rel = obj.key[len(batch_uri.prefix) :]
                has_manifest |= rel == MANIFEST_FILE
                digest.update(f"{rel}\0{obj.size}\0{obj.etag}\n".encode())
            if has_manifest:
                found.append(Batch(name, batch_uri, digest.hexdigest()[:16]))
        return found

    def manifest_lines(self, batch: Batch) -> Iterator[bytes]:
        """The manifest's lines as raw bytes, streamed (blank lines skipped, numbered 1..)."""
        uri = batch.uri.join(MANIFEST_FILE)
        try:
            body = self.store.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
            yield from body.iter_lines(keepends=False)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{uri}: cannot read manifest: {exc}") from None

    def media_uri(self, batch: Batch, path: str) -> S3Uri:
        """Where a manifest's media path points: relative to the batch, or an s3:// URI."""
        if path.startswith("s3://"):
            return S3Uri.parse(path)
        clean = posixpath.normpath(path.lstrip("/"))
        if clean.startswith(".."):
            raise MediaMissing(f"path {path!r} leaves its batch folder")
        return batch.uri.join(clean)

    def fetch(self, uri: S3Uri, max_bytes: int) -> bytes:
        """Download one media object; MediaMissing / MediaTooLarge when it can't be used."""
        try:
            response = self.store.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise MediaMissing(f"{uri} does not exist") from None
            raise MediaMissing(f"{uri} cannot be read ({code})") from None
        except BotoCoreError as exc:
            raise MediaMissing(f"{uri} cannot be read ({exc})") from None
        size = int(response.get("ContentLength", 0))
        if size > max_bytes:
            response["Body"].close()
            raise MediaTooLarge(f"{uri} is {size} bytes; the bound is {max_bytes}")
        return response["Body"].read()
