"""Backup destinations against a real filesystem and moto's real S3 HTTP server.

The S3 fault is real too: a TCP proxy on 127.0.0.1 sits between boto3 and moto and cuts
connections mid-upload, so the store sees what it would see from a dying endpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsflow.backup.manifest import (
    MANIFEST_NAME,
    Artifact,
    BackupError,
    Manifest,
    Verification,
    new_backup_id,
    utcnow,
)
from opsflow.backup.retention import plan_retention
from opsflow.backup.stores import LocalStore, S3Store, staging_dir
from opsflow.backup.stream import ArtifactCorrupt, file_digest
from support.backup import ListLog, demo_manifest, flip_byte
from support.s3 import CuttingProxy, S3Server
from support.services import service_unavailable

pytestmark = pytest.mark.integration

MB = 1 << 20


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = min(left, 4 * MB)
            handle.write(os.urandom(chunk))
            left -= chunk


def make_backup(
    directory: Path, sizes: dict[str, int], *, days_ago: float = 0, verified: bool = True
) -> Manifest:
    """Artifacts of random bytes in ``directory`` and the manifest describing them."""
    started = utcnow() - timedelta(days=days_ago)
    backup_id = new_backup_id(started, uuid.uuid4().hex)
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for name, size in sizes.items():
        write_random(directory / name, size)
        artifacts.append(Artifact(name, *file_digest(directory / name)))
    run_id = f"scheduled__{started.isoformat()}"
    return demo_manifest(backup_id, started, run_id, artifacts, "passed" if verified else None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ==================================================================================== local


def staged(root: Path, sizes: dict[str, int], **kwargs: Any) -> tuple[Path, Manifest]:
    scratch = root.with_name(f"{root.name}-scratch")
    manifest = make_backup(scratch, sizes, **kwargs)
    staging = staging_dir(root, manifest.backup_id)
    for name in sizes:
        (scratch / name).rename(staging / name)
    return staging, manifest


def test_local_publish_layout_modes_and_list(tmp_path: Path) -> None:
    root = tmp_path / "backups" / "demo"
    log = ListLog()
    staging, manifest = staged(root, {"app_db.dump.zst": 300_000, "cache.rdb.zst": 1000})
    assert staging == root / ".staging" / manifest.backup_id
    assert {mode(root), mode(root / ".staging"), mode(staging)} == {0o700}

    record = LocalStore(root).publish(staging, manifest, log)

    final = root / manifest.backup_id
    assert record == {"path": str(final), "status": "published"}
    assert not staging.exists()
    assert mode(final) == 0o700
    assert sorted(p.name for p in final.iterdir()) == [
        "app_db.dump.zst", "cache.rdb.zst", MANIFEST_NAME,
    ]  # fmt: skip
    assert {mode(p) for p in final.iterdir()} == {0o600}
    listed = LocalStore(root).list_manifests()
    assert [m.backup_id for m in listed] == [manifest.backup_id]
    assert listed[0].status == "verified"
    assert listed[0].destinations["local"]["status"] == "published"
    assert listed[0].sources[0].artifacts == manifest.sources[0].artifacts
    assert (
        LocalStore(root).artifact_path(manifest.backup_id, "cache.rdb.zst").stat().st_size == 1000
    )
    assert "published" in log.text()


def test_local_publish_refuses_a_corrupt_artifact_and_a_second_publish(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = LocalStore(root)
    staging, manifest = staged(root, {"app_db.dump.zst": 50_000})
    artifact = staging / "app_db.dump.zst"
    data = artifact.read_bytes()
    artifact.write_bytes(flip_byte(data, 1234))
    with pytest.raises(
        ArtifactCorrupt, match=r"local store: refusing to publish .*app_db\.dump\.zst"
    ):
        store.publish(staging, manifest, ListLog())
    assert not (root / manifest.backup_id).exists()
    assert store.list_manifests() == []

    artifact.write_bytes(data)
    store.publish(staging, manifest, ListLog())
    again = staging_dir(root, manifest.backup_id)
    (again / "app_db.dump.zst").write_bytes(data)
    with pytest.raises(BackupError, match="already published"):
        store.publish(again, manifest, ListLog())


def test_local_publish_replaces_a_final_dir_left_without_manifest(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    staging, manifest = staged(root, {"app_db.dump.zst": 2000})
    leftover = root / manifest.backup_id
    leftover.mkdir(mode=0o700)
    (leftover / "app_db.dump.zst").write_bytes(b"half of an earlier attempt")
    log = ListLog()
    LocalStore(root).publish(staging, manifest, log)
    assert (leftover / "app_db.dump.zst").stat().st_size == 2000
    assert "replacing" in log.text()


def test_local_list_skips_partial_and_damaged_backups(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = LocalStore(root)
    good_staging, good = staged(root, {"app_db.dump.zst": 100}, days_ago=1)
    store.publish(good_staging, good, ListLog())
    damaged_staging, damaged = staged(root, {"app_db.dump.zst": 100})
    store.publish(damaged_staging, damaged, ListLog())
    (root / damaged.backup_id / MANIFEST_NAME).write_text('{"format": 1, "backup_id"')
    partial = root / new_backup_id(utcnow(), "partial")
    partial.mkdir()
    (partial / "app_db.dump.zst").write_bytes(b"x")
    (root / "lost+found").mkdir()

    log = ListLog()
    assert [m.backup_id for m in store.list_manifests(log)] == [good.backup_id]
    assert f"skipping {root / damaged.backup_id / MANIFEST_NAME}: unreadable manifest" in log.text()
    assert LocalStore(tmp_path / "nothing-here").list_manifests() == []


def test_local_delete_removes_the_manifest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "backups"
    store = LocalStore(root)
    first_staging, first = staged(root, {"app_db.dump.zst": 100})
    store.publish(first_staging, first, ListLog())
    second_staging, second = staged(root, {"app_db.dump.zst": 100})
    store.publish(second_staging, second, ListLog())

    store.delete(first.backup_id)
    assert not (root / first.backup_id).exists()

    # A delete interrupted after its first step leaves an unlisted partial, swept later.
    def interrupted(path: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", interrupted)
        with pytest.raises(BackupError, match=f"local store: deleting {root / second.backup_id}"):
            store.delete(second.backup_id)
    assert (root / second.backup_id / "app_db.dump.zst").exists()
    assert store.list_manifests() == []
    assert store.sweep_partials(timedelta(0), set(), dry_run=False) == [
        str(root / second.backup_id)
    ]
    store.delete(second.backup_id)  # deleting what is gone is fine


def test_local_sweep_partials(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    store = LocalStore(root)
    published_staging, published = staged(root, {"a.zst": 10}, days_ago=3)
    store.publish(published_staging, published, ListLog())
    old = time.time() - 13 * 3600

    def partial(parent: Path, run: str, age: float | None) -> Path:
        path = parent / new_backup_id(utcnow(), run)
        path.mkdir(parents=True)
        (path / "a.zst").write_bytes(b"x")
        if age is not None:
            for entry in (path / "a.zst", path):
                os.utime(entry, (age, age))
        return path

    old_final = partial(root, "old-final", old)
    old_staging = partial(root / ".staging", "old-staging", old)
    recent = partial(root / ".staging", "recent", None)
    kept = partial(root / ".staging", "in-progress", old)
    # Old directory, but a file in it was written a moment ago: still running.
    touched = partial(root / ".staging", "touched", old)
    os.utime(touched / "a.zst", None)
    os.utime(root / published.backup_id, (old, old))

    expected = sorted([str(old_final), str(old_staging)])
    dry = store.sweep_partials(timedelta(hours=12), {kept.name}, dry_run=True)
    assert sorted(dry) == expected
    assert old_final.exists() and old_staging.exists()
    assert sorted(store.sweep_partials(timedelta(hours=12), {kept.name}, dry_run=False)) == expected
    assert not old_final.exists() and not old_staging.exists()
    assert recent.exists() and kept.exists() and touched.exists()
    assert [m.backup_id for m in store.list_manifests()] == [published.backup_id]


def test_local_disk_full_is_named(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        service_unavailable(f"a small tmpfs (mount failed: {result.stderr.strip()})")
    try:
        root = mount / "backups"
        staging, manifest = staged(root, {"app_db.dump.zst": 600_000})
        with contextlib.suppress(OSError):
            write_random(mount / "filler", 2 * MB)
        with pytest.raises(BackupError, match=r"local store: writing .*manifest\.json.*disk full"):
            LocalStore(root).publish(staging, manifest, ListLog())
        assert LocalStore(root).list_manifests() == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ======================================================================================= S3


@dataclass
class S3Env:
    server: S3Server
    bucket: str
    proxy: CuttingProxy

    def store(self, *, via_proxy: bool = False, prefix: str = "backups") -> S3Store:
        conn_id = "opsflow_test_s3_proxy" if via_proxy else "opsflow_test_s3"
        return S3Store(conn_id=conn_id, bucket=self.bucket, prefix=prefix, stack="demo")

    def object_keys(self, prefix: str = "") -> list[str]:
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    bucket = f"opsflow-stores-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    proxy = CuttingProxy(upstream_port=int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    port = proxy.start()
    monkeypatch.setenv("AIRFLOW_CONN_OPSFLOW_TEST_S3", s3_server.connection())
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPSFLOW_TEST_S3_PROXY", s3_server.connection(f"http://127.0.0.1:{port}")
    )
    try:
        yield S3Env(s3_server, bucket, proxy)
    finally:
        proxy.close()


def test_s3_publish_multipart_sse_list_fetch(s3: S3Env, tmp_path: Path) -> None:
    store = s3.store()
    manifest = make_backup(tmp_path / "src", {"app_db.dump.zst": 40 * MB, "cache.rdb.zst": 5000})
    log = ListLog()
    started = time.monotonic()
    record = store.publish(tmp_path / "src", manifest, log)
    seconds = time.monotonic() - started

    prefix = f"backups/demo/{manifest.backup_id}/"
    assert record["status"] == "verified" and record["bucket"] == s3.bucket
    assert record["prefix"] == prefix and 0 < record["seconds"] <= seconds
    assert s3.object_keys() == [
        f"{prefix}app_db.dump.zst",
        f"{prefix}cache.rdb.zst",
        f"{prefix}{MANIFEST_NAME}",
    ]
    client = s3.server.client()
    for key in s3.object_keys():
        head = client.head_object(Bucket=s3.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
    big = client.head_object(Bucket=s3.bucket, Key=f"{prefix}app_db.dump.zst")
    assert re.fullmatch(r'"[0-9a-f]{32}-3"', big["ETag"]), big["ETag"]  # 16+16+8 MB parts
    small = client.head_object(Bucket=s3.bucket, Key=f"{prefix}cache.rdb.zst")
    assert "-" not in small["ETag"]
    assert re.search(
        r"uploaded app_db\.dump\.zst \(41943040 bytes in [0-9.]+ s, [0-9.]+ MB/s\)", log.text()
    )

    listed = store.list_manifests()
    assert [m.backup_id for m in listed] == [manifest.backup_id]
    assert listed[0].destinations["s3"] == record and listed[0].status == "verified"

    artifact = manifest.sources[0].artifacts[0]
    fetched = store.fetch_artifact(manifest.backup_id, artifact, tmp_path)
    assert fetched == tmp_path / "app_db.dump.zst" and mode(fetched) == 0o600
    assert file_digest(fetched) == (artifact.size, artifact.sha256)

    with pytest.raises(BackupError, match="already published"):
        store.publish(tmp_path / "src", manifest, ListLog())


def test_s3_check_catches_a_changed_object_and_missing_encryption(
    s3: S3Env, tmp_path: Path
) -> None:
    store = s3.store()
    manifest = make_backup(tmp_path / "src", {"app_db.dump.zst": 100_000})
    store.publish(tmp_path / "src", manifest, ListLog())
    artifact = manifest.sources[0].artifacts[0]
    key = store.key(manifest.backup_id, artifact.name)
    client = s3.server.client()

    store.check_object(manifest.backup_id, artifact)
    changed = flip_byte((tmp_path / "src" / artifact.name).read_bytes(), 500, 0x01)
    client.put_object(Bucket=s3.bucket, Key=key, Body=changed, ServerSideEncryption="AES256")
    with pytest.raises(ArtifactCorrupt, match=f"s3 store: s3://{s3.bucket}/{key} has sha256"):
        store.check_object(manifest.backup_id, artifact)
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.fetch_artifact(manifest.backup_id, artifact, tmp_path)
    assert not (tmp_path / artifact.name).exists()

    client.put_object(Bucket=s3.bucket, Key=key, Body=changed[:-10], ServerSideEncryption="AES256")
    with pytest.raises(ArtifactCorrupt, match="99990 bytes but the manifest says 100000"):
        store.check_object(manifest.backup_id, artifact)

    original = (tmp_path / "src" / artifact.name).read_bytes()
    client.put_object(Bucket=s3.bucket, Key=key, Body=original)  # no SSE
    with pytest.raises(BackupError, match="not encrypted as asked"):
        store.check_object(manifest.backup_id, artifact)


def test_s3_publish_with_a_mismatching_file_publishes_no_manifest(
    s3: S3Env, tmp_path: Path
) -> None:
    store = s3.store()
    manifest = make_backup(tmp_path / "src", {"app_db.dump.zst": 20_000})
    write_random(tmp_path / "src" / "app_db.dump.zst", 20_000)  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match=r"app_db\.dump\.zst has sha256"):
        store.publish(tmp_path / "src", manifest, ListLog())
    assert f"backups/demo/{manifest.backup_id}/{MANIFEST_NAME}" not in s3.object_keys()
    assert store.list_manifests() == []


def test_s3_update_delete_order_and_sweep(s3: S3Env, tmp_path: Path) -> None:
    store = s3.store(via_proxy=True, prefix="offsite/")
    first = make_backup(
        tmp_path / "a", {"app_db.dump.zst": 1000, "cache.rdb.zst": 10}, days_ago=2, verified=False
    )
    store.publish(tmp_path / "a", first, ListLog())
    second = make_backup(tmp_path / "b", {"app_db.dump.zst": 1000}, days_ago=1)
    store.publish(tmp_path / "b", second, ListLog())
    assert [m.status for m in store.list_manifests()] == ["unverified", "verified"]

    first.sources[0].verification = Verification(status="failed", differences=["table t: 1 row"])
    store.update_manifest(first)
    assert [m.status for m in store.list_manifests()] == ["failed", "verified"]
    ghost = make_backup(tmp_path / "c", {"x.zst": 1})
    with pytest.raises(BackupError, match="no published backup"):
        store.update_manifest(ghost)

    s3.proxy.requests.clear()
    store.delete(first.backup_id)
    deleting = [r for r in s3.proxy.requests if r.startswith(("DELETE", "POST"))]
    assert deleting[0] == f"DELETE /{s3.bucket}/offsite/demo/{first.backup_id}/{MANIFEST_NAME}"
    assert deleting[1].startswith(f"POST /{s3.bucket}?delete")
    assert s3.object_keys(f"offsite/demo/{first.backup_id}/") == []

    # Interrupted between its two steps: no longer listed, and swept later.
    s3.proxy.cut_requests = re.compile(rb"^POST .*\?delete")
    with pytest.raises(BackupError, match=f"s3 store: deleting s3://{s3.bucket}/offsite/demo/"):
        store.delete(second.backup_id)
    s3.proxy.cut_requests = None
    assert store.list_manifests() == []
    assert s3.object_keys(f"offsite/demo/{second.backup_id}/") == [
        f"offsite/demo/{second.backup_id}/app_db.dump.zst"
    ]
    assert store.sweep_partials(timedelta(hours=1), set(), dry_run=False) == []
    expected = [f"s3://{s3.bucket}/offsite/demo/{second.backup_id}/"]
    assert store.sweep_partials(timedelta(0), {second.backup_id}, dry_run=False) == []
    assert store.sweep_partials(timedelta(0), set(), dry_run=True) == expected
    assert s3.object_keys(f"offsite/demo/{second.backup_id}/") != []
    assert store.sweep_partials(timedelta(0), set(), dry_run=False) == expected
    assert s3.object_keys() == []


def test_s3_endpoint_failing_mid_upload(s3: S3Env, tmp_path: Path) -> None:
    store = s3.store(via_proxy=True)
    good = make_backup(tmp_path / "good", {"app_db.dump.zst": 2 * MB}, days_ago=10)
    store.publish(tmp_path / "good", good, ListLog())  # pass-through
    good_keys = s3.object_keys(f"backups/demo/{good.backup_id}/")
    assert len(good_keys) == 2

    s3.proxy.limit = s3.proxy.sent + 5 * MB
    bad = make_backup(tmp_path / "bad", {"app_db.dump.zst": 40 * MB})
    started = time.monotonic()
    with pytest.raises(BackupError) as caught:
        S3Store("opsflow_test_s3_proxy", s3.bucket, "backups", "demo").publish(
            tmp_path / "bad", bad, ListLog()
        )
    elapsed = time.monotonic() - started
    message = str(caught.value)
    logging.getLogger(__name__).info("mid-upload failure after %.1f s: %s", elapsed, message)
    assert message.startswith(
        f"s3 store: uploading app_db.dump.zst to s3://{s3.bucket}/backups/demo/{bad.backup_id}/"
        "app_db.dump.zst failed: "
    ), message
    assert s3.proxy.cuts >= 1
    assert elapsed < 30

    direct = s3.store()
    assert f"backups/demo/{bad.backup_id}/{MANIFEST_NAME}" not in s3.object_keys()
    listed = direct.list_manifests()
    assert [m.backup_id for m in listed] == [good.backup_id]
    assert s3.object_keys(f"backups/demo/{good.backup_id}/") == good_keys
    direct.check_object(good.backup_id, good.sources[0].artifacts[0])

    # Retention afterwards keeps the good one (10 days old, but the newest verified).
    plan = plan_retention(listed, datetime.now(UTC), keep_days=7, keep_last_verified=3)
    assert plan.keep == {good.backup_id: "newest verified"} and plan.delete == []

    # The abandoned multipart upload is swept later; the good backup stays.
    swept = direct.sweep_partials(timedelta(0), set(), dry_run=False)
    assert any(bad.backup_id in line for line in swept), swept
    client = s3.server.client()
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert s3.object_keys() == good_keys
