"""A raw dataset in object storage: its spec, its batches, their manifests and media.

Trust and faults at this boundary:

- A media path may only name the dataset's own bucket, or a bucket listed in the setting
  `media_buckets` (`DUALMEDIA_MEDIA_BUCKETS`); anything else is refused before any request
  is made (`MediaNotAllowed`), so a manifest cannot copy objects the platform's keys can
  read elsewhere (MLflow artifacts, other datasets) into a snapshot.
- Only an object that does not exist (`NoSuchKey`, 404) is the record's fault
  (`MediaMissing`). Any other storage failure is retried with backoff and then stops the
  step (`MediaUnavailable`): an S3 blip must never quarantine good records for good.
- Manifest lines are split in one pass over the stream (linear in its size) and bounded
  (`manifest_max_line_bytes`): a longer line is yielded as a `LineTooLong` marker holding
  only its first bytes, never the whole line.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError

from dualmedia.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    ContractError,
    DatasetSpec,
    RejectReason,
    parse_dataset_spec,
)
from dualmedia.storage import ObjectStore, S3Uri, StorageError

READ_CHUNK = 64 * 1024  # bytes read from the manifest stream per call
SHOWN_BYTES = 1024  # how much of an over-long line is kept (for the quarantine record)
FETCH_ATTEMPTS = 4  # per media object, on top of botocore's own retries of each call
FETCH_BACKOFF_S = 0.5  # doubled after each failed attempt
# Error codes that say "try again later", not "this record is bad".
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "ThrottledException",
    }
)


class MediaMissing(Exception):
    """The object a manifest names does not exist: the record's fault, a quarantine reason."""


class MediaNotAllowed(MediaMissing):
    """The media URI names a bucket this dataset may not read from; nothing was requested.

    A subclass of MediaMissing so that a caller that only knows MediaMissing still
    quarantines the record (never reads the object); callers that know it use `reason`.
    """

    reason = RejectReason.MEDIA_BUCKET_NOT_ALLOWED


class MediaTooLarge(Exception):
    """The object is bigger than the configured bound; it was not downloaded."""


class MediaUnavailable(StorageError):
    """Object storage failed (unreachable, erroring, access denied) after retries.

    Not the record's fault: the step stops with this error instead of quarantining."""


class LineTooLong(bytes):
    """An over-long manifest line: the bytes are its first SHOWN_BYTES only.

    `length` is the whole line's size in bytes, `limit` the bound it broke.
    """

    length: int
    limit: int

    def __new__(cls, shown: bytes, length: int, limit: int) -> LineTooLong:
        self = super().__new__(cls, shown)
        self.length = length
        self.limit = limit
        return self

    @property
    def reason(self) -> RejectReason:
        return RejectReason.MANIFEST_LINE_TOO_LONG

    def message(self, line_no: int) -> str:
        return (
            f"line {line_no}: the line is {self.length} bytes long; the bound is {self.limit} "
            "bytes (setting manifest_max_line_bytes, DUALMEDIA_MANIFEST_MAX_LINE_BYTES)"
        )


def split_lines(
    read: Callable[[int], bytes], max_line_bytes: int, chunk_size: int = READ_CHUNK
) -> Iterator[bytes]:
    """The lines of a byte stream (without line ends), in one pass.

    `read(n)` returns up to n bytes (b"" at the end). Each byte is searched for a newline
    once and copied at most once, so the cost is linear in the stream's size; botocore's
    `iter_lines` instead re-joins and re-splits the pending part of a line with every 1 KB
    chunk, which is quadratic in the length of one line. A line longer than
    `max_line_bytes` is not assembled: the rest of it is skipped and a `LineTooLong`
    holding its first bytes is yielded in its place. A trailing CR (CRLF files) is dropped.
    """
    parts: list[bytes] = []  # pieces of the current line (bounded by max_line_bytes)
    size = 0  # bytes of the current line so far (also past the bound)
    shown = b""  # first bytes of the current line, once it is known to be too long
    too_long = False

    def finish() -> bytes:
        if too_long:
            return LineTooLong(shown, size, max_line_bytes)
        line = b"".join(parts)
        return line[:-1] if line.endswith(b"\r") else line

    while chunk := read(chunk_size):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long and size + len(piece) > max_line_bytes:
                too_long = True
                shown = _head([*parts, piece], SHOWN_BYTES)
                parts = []
            elif not too_long:
                parts.append(piece)
            size += len(piece)
            if end < 0:
                break
            yield finish()
            parts, size, shown, too_long = [], 0, b"", False
            start = end + 1
    if size:
        yield finish()


def _head(parts: list[bytes], n: int) -> bytes:
    """The first n bytes of the concatenation of `parts`, without joining all of them."""
    out, size = [], 0
    for part in parts:
        if size >= n:
            break
        out.append(part[: n - size])
        size += len(out[-1])
    return b"".join(out)


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
        settings = store.settings
        # The dataset's own bucket, plus the ones the settings allow (never the lake or
        # MLflow's artifacts unless someone lists them on purpose).
        self.media_buckets = frozenset({self.uri.bucket, *settings.media_buckets})
        self.max_line_bytes = settings.manifest_max_line_bytes

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
        """The manifest's lines as raw bytes, streamed in one linear pass (blank lines are
        yielded as b""; the caller numbers them 1..). A line over the bound is a
        `LineTooLong` marker (see `split_lines`)."""
        uri = batch.uri.join(MANIFEST_FILE)
        try:
            body = self.store.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
            try:
                yield from split_lines(body.read, self.max_line_bytes)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{uri}: cannot read manifest: {exc}") from None

    def media_uri(self, batch: Batch, path: str) -> S3Uri:
        """Where a manifest's media path points: relative to the batch, or an s3:// URI in
        an allowed bucket (MediaNotAllowed otherwise)."""
        if path.startswith("s3://"):
            try:
                uri = S3Uri.parse(path)
            except ValueError as exc:
                raise MediaMissing(str(exc)) from None
            self.check_bucket(uri)
            return uri
        clean = posixpath.normpath(path.lstrip("/"))
        if clean.startswith(".."):
            raise MediaMissing(f"path {path!r} leaves its batch folder")
        return batch.uri.join(clean)

    def check_bucket(self, uri: S3Uri) -> None:
        if uri.bucket not in self.media_buckets:
            allowed = ", ".join(sorted(self.media_buckets))
            raise MediaNotAllowed(
                f"{uri} is in bucket {uri.bucket!r}, which this dataset may not read media "
                f"from (allowed: {allowed}; more can be listed in DUALMEDIA_MEDIA_BUCKETS)"
            )

    def fetch(self, uri: S3Uri, max_bytes: int) -> bytes:
        """Download one media object.

        MediaMissing when it does not exist, MediaNotAllowed outside the allowed buckets,
        MediaTooLarge over `max_bytes`; MediaUnavailable (the step fails, nothing is
        quarantined) when storage keeps failing after FETCH_ATTEMPTS with backoff, or
        refuses access."""
        self.check_bucket(uri)
        problem = ""
        for attempt in range(FETCH_ATTEMPTS):
            if attempt:
                time.sleep(FETCH_BACKOFF_S * 2 ** (attempt - 1))
            try:
                return self._fetch_once(uri, max_bytes)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code == "NoSuchKey" or (status == 404 and code in ("", "404", "NotFound")):
                    raise MediaMissing(f"{uri} does not exist") from None
                problem = f"{code or status}: {error.get('Message', '')}".rstrip(": ")
                if not (status >= 500 or status == 429 or code in TRANSIENT_CODES):
                    raise MediaUnavailable(
                        f"{uri}: object storage refused the read ({problem}); ingestion "
                        "stopped instead of quarantining the record (check the bucket and "
                        "the S3 credentials, then run the step again)"
                    ) from None
            except BotoCoreError as exc:  # unreachable, timed out, connection cut mid-body
                problem = str(exc)
        raise MediaUnavailable(
            f"{uri}: object storage did not answer after {FETCH_ATTEMPTS} attempts "
            f"({problem}); ingestion stopped, nothing was quarantined: run the step again "
            "once storage is back"
        )

    def _fetch_once(self, uri: S3Uri, max_bytes: int) -> bytes:
        response = self.store.client.get_object(Bucket=uri.bucket, Key=uri.key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise MediaTooLarge(f"{uri} is {size} bytes; the bound is {max_bytes}")
            data = body.read(max_bytes + 1)  # never more than the bound, whatever the header
            if len(data) > max_bytes:
                raise MediaTooLarge(f"{uri} is over {max_bytes} bytes, the bound")
            if size and len(data) != size:  # the connection ended early: try again
                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=size)
            return data
        finally:
            body.close()
