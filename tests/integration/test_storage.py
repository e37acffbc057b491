"""The object storage layer against a real S3 server (rclone serve s3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualmedia.settings import Settings
from dualmedia.storage import COMMIT_MARKER, ObjectStore, S3Uri, StorageError

pytestmark = pytest.mark.integration


@pytest.fixture
def store(s3_settings: Settings) -> ObjectStore:
    return ObjectStore(s3_settings)


def test_uri_parsing() -> None:
    u = S3Uri.parse("s3://bucket/a/b/")
    assert (u.bucket, u.key, u.prefix) == ("bucket", "a/b/", "a/b/")
    assert str(u.join("c", "/d.txt")) == "s3://bucket/a/b/c/d.txt"
    assert S3Uri.parse("s3://bucket").prefix == ""
    with pytest.raises(ValueError, match="not an s3"):
        S3Uri.parse("/local/path")


def test_stack_created_the_buckets(store: ObjectStore, s3_settings: Settings) -> None:
    buckets = set(store.list_buckets())
    assert {
        s3_settings.raw_bucket,
        s3_settings.lake_bucket,
        s3_settings.artifacts_bucket,
    } <= buckets


def test_put_get_head_delete(store: ObjectStore) -> None:
    store.ensure_bucket("t-basic")
    store.ensure_bucket("t-basic")  # idempotent
    store.write_bytes("s3://t-basic/x/y.bin", b"hello")
    assert store.read_bytes("s3://t-basic/x/y.bin") == b"hello"
    info = store.head("s3://t-basic/x/y.bin")
    assert info is not None and info.size == 5
    assert store.head("s3://t-basic/nope") is None
    store.delete("s3://t-basic/x/y.bin")
    assert not store.exists("s3://t-basic/x/y.bin")
    with pytest.raises(StorageError, match="s3://t-basic/nope"):
        store.read_bytes("s3://t-basic/nope")


def test_listing_paginates(store: ObjectStore) -> None:
    store.ensure_bucket("t-page")
    for i in range(1105):  # more than one 1000-key page
        store.write_bytes(f"s3://t-page/p/{i:05d}", b"")
    keys = [o.key for o in store.list("s3://t-page/p")]
    assert len(keys) == 1105
    assert keys[0] == "p/00000" and keys[-1] == "p/01104"
    assert store.delete_prefix("s3://t-page/p") == 1105
    assert list(store.list("s3://t-page/p")) == []


def test_folder_round_trip_and_skip_unchanged(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(1000))
    store.ensure_bucket("t-dir")
    assert store.upload_dir(src, "s3://t-dir/ds") == {"uploaded": 2, "skipped": 0}
    assert store.upload_dir(src, "s3://t-dir/ds") == {"uploaded": 0, "skipped": 2}
    (src / "top.txt").write_text("changed")
    assert store.upload_dir(src, "s3://t-dir/ds") == {"uploaded": 1, "skipped": 1}
    assert store.list_prefixes("s3://t-dir/ds") == ["a"]
    dst = tmp_path / "dst"
    store.download_dir("s3://t-dir/ds", dst)
    assert (dst / "top.txt").read_text() == "changed"
    assert (dst / "a" / "b" / "deep.bin").read_bytes() == (
        src / "a" / "b" / "deep.bin"
    ).read_bytes()


def test_multipart_upload_of_a_large_file(s3_settings: Settings, tmp_path: Path) -> None:
    small_threshold = s3_settings.model_copy(update={"multipart_threshold_mb": 5})
    store = ObjectStore(small_threshold)
    big = tmp_path / "big.bin"
    payload = os.urandom(13 * 1024 * 1024)
    big.write_bytes(payload)
    store.ensure_bucket("t-mp")
    parts: list[int] = []
    store.client.meta.events.register(
        "before-call.s3.UploadPart", lambda params, **_: parts.append(1)
    )
    store.upload_file(big, "s3://t-mp/big.bin")
    assert len(parts) >= 2  # went multipart, in several parts
    info = store.head("s3://t-mp/big.bin")
    assert info is not None and info.size == len(payload)
    store.download_file("s3://t-mp/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload


def test_publish_is_all_or_nothing(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "snap"
    src.mkdir()
    for i in range(3):
        (src / f"part-{i}.parquet").write_bytes(b"x" * (i + 1))
    store.ensure_bucket("t-pub")
    target = "s3://t-pub/snapshots/abc"
    # A crashed earlier attempt left a stray file and no marker: not visible.
    store.write_bytes(f"{target}/stray-from-crash", b"junk")
    assert not store.is_committed(target)
    with pytest.raises(StorageError, match="not published"):
        store.committed_manifest(target)
    marker = store.publish_dir(src, target, metadata={"rows": 3})
    assert sorted(marker["files"]) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert store.committed_manifest(target)["metadata"] == {"rows": 3}
    keys = sorted(o.key.rsplit("/", 1)[1] for o in store.list(target))
    assert keys == [COMMIT_MARKER, "part-0.parquet", "part-1.parquet", "part-2.parquet"]
    with pytest.raises(StorageError, match="already published"):
        store.publish_dir(src, target)


def test_retries_then_clear_error_when_server_is_down(tmp_path: Path) -> None:
    from tests.conftest import free_port

    s = Settings(_env_file=None, home=tmp_path, s3_port=free_port(), s3_max_attempts=2)
    store = ObjectStore(s)
    with pytest.raises(StorageError) as info:
        store.read_bytes("s3://nowhere/key")
    assert "s3://nowhere/key" in str(info.value)
    assert "Could not connect" in str(info.value)
    assert "dualmedia-secret" not in str(info.value)


def test_errors_do_not_leak_credentials(s3_settings: Settings) -> None:
    wrong = s3_settings.model_copy(update={})
    wrong_store = ObjectStore(
        Settings(
            _env_file=None,
            home=s3_settings.home,
            s3_port=s3_settings.s3_port,
            s3_secret_key="wrong-secret-zz",
            s3_max_attempts=1,
        )
    )
    with pytest.raises(StorageError) as info:
        wrong_store.read_bytes(f"s3://{wrong.raw_bucket}/anything")
    assert "wrong-secret-zz" not in str(info.value)
    assert f"s3://{wrong.raw_bucket}/anything" in str(info.value)
