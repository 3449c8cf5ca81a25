"""Bucket mirrors against moto's S3 server: dump, verify, tamper, restore into another bucket."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsflow.backup.buckets import dump_bucket, restore_bucket, verify_bucket
from opsflow.backup.context import RunContext
from opsflow.backup.manifest import SourceBackup
from opsflow.stack.model import BucketSource
from support.backup import consistent_artifact, retar
from support.s3 import S3Server

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test_backup_buckets")
BIG = 9 * 1024 * 1024 + 123  # above boto3's 8 MB multipart threshold


@dataclass
class Seeded:
    bucket: str
    objects: dict[str, bytes]
    content_types: dict[str, str]


def _ctx(tmp_path: Path) -> RunContext:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return RunContext(stack="demo", backup_id="20260101T000000Z-abcdef", staging=staging, log=LOG)


@pytest.fixture(scope="module")
def seeded(s3_server: S3Server) -> Iterator[Seeded]:
    """~50 objects: nested keys, an empty one, a folder marker, a long UTF-8 key, a 9 MB one."""
    bucket = f"media-{secrets.token_hex(4)}"
    s3_server.create_bucket(bucket)
    client = s3_server.client()
    objects: dict[str, bytes] = {}
    for index in range(44):
        objects[f"uploads/2026/{index % 5}/file-{index:03}.txt"] = f"object {index}\n".encode() * (
            index + 1
        )
    objects["uploads/empty.txt"] = b""
    objects["uploads/folder/"] = b""
    objects["top-level.json"] = b'{"a": 1}'
    objects["uploads/" + "ü-long-name-" * 12 + ".bin"] = os.urandom(5000)
    objects["other/keep-out.txt"] = b"not under the prefix used by one test"
    objects["uploads/big/video.bin"] = os.urandom(BIG)
    content_types = {"top-level.json": "application/json"}
    for key, data in objects.items():
        extra: dict[str, Any] = {"ContentType": content_types.get(key, "binary/octet-stream")}
        if key == "top-level.json":
            extra["Metadata"] = {"owner": "api"}
        client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    yield Seeded(bucket, objects, content_types)
    _empty(client, bucket)


def _empty(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=entry["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def dumped(
    seeded: Seeded, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SourceBackup, RunContext]:
    ctx = _ctx(tmp_path_factory.mktemp("bucket-dump"))
    source = BucketSource(name="media", conn_id="demo_s3", bucket=seeded.bucket)
    return dump_bucket(source, s3_server.client(), ctx), ctx


def test_dump_fingerprints_every_object_and_verifies(
    dumped: tuple[SourceBackup, RunContext], seeded: Seeded
) -> None:
    backup, ctx = dumped
    assert backup.kind == "bucket"
    assert [a.name for a in backup.artifacts] == ["media.objects.tar.zst"]
    fingerprint = backup.fingerprint
    assert fingerprint["objects"] == len(seeded.objects) == 50
    assert fingerprint["bytes"] == sum(len(data) for data in seeded.objects.values())
    assert fingerprint["sha256"] == {
        key: hashlib.sha256(data).hexdigest() for key, data in seeded.objects.items()
    }
    verification = verify_bucket(SourceBackup.from_dict(backup.to_dict()), ctx.staging, ctx)
    assert verification.passed, verification.differences
    assert verification.details["objects"] == 50


def test_prefix_limits_the_mirror(seeded: Seeded, s3_server: S3Server, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    source = BucketSource(name="uploads", conn_id="x", bucket=seeded.bucket, prefix="uploads/2026/")
    backup = dump_bucket(source, s3_server.client(), ctx)
    assert sorted(backup.fingerprint["sha256"]) == sorted(
        key for key in seeded.objects if key.startswith("uploads/2026/")
    )
    assert verify_bucket(backup, ctx.staging, ctx).passed


def test_changed_object_in_artifact_is_named(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    backup, original_ctx = dumped
    ctx = _ctx(tmp_path)
    changed = "uploads/2026/3/file-013.txt"
    tampered = retar(original_ctx.staging / backup.artifacts[0].name, changed, b"evil\n")
    copy = SourceBackup.from_dict(backup.to_dict())
    copy.artifacts = [
        consistent_artifact(ctx, ctx.staging / "media.objects.tar.zst", tampered, level=1)
    ]
    verification = verify_bucket(copy, ctx.staging, ctx)
    assert verification.status == "failed"
    assert verification.differences == [f"object checksum differs: {changed}"]


def test_fingerprint_mismatch_names_missing_and_extra_keys(
    dumped: tuple[SourceBackup, RunContext],
) -> None:
    backup, ctx = dumped
    copy = SourceBackup.from_dict(backup.to_dict())
    digests = copy.fingerprint["sha256"]
    digests.pop("top-level.json")
    digests["uploads/ghost.txt"] = "0" * 64
    verification = verify_bucket(copy, ctx.staging, ctx)
    assert verification.status == "failed"
    assert "object missing from the artifact: uploads/ghost.txt" in verification.differences
    assert (
        "object in the artifact but not in the fingerprint: top-level.json"
        in verification.differences
    )


def test_truncated_artifact_fails_verification(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    backup, original_ctx = dumped
    ctx = _ctx(tmp_path)
    good = (original_ctx.staging / backup.artifacts[0].name).read_bytes()
    (ctx.staging / backup.artifacts[0].name).write_bytes(good[: len(good) - 4096])
    verification = verify_bucket(backup, ctx.staging, ctx)
    assert verification.status == "failed"
    assert any("truncated" in line for line in verification.differences), verification.differences


def test_restore_into_another_bucket_gives_equal_objects(
    dumped: tuple[SourceBackup, RunContext], seeded: Seeded, s3_server: S3Server
) -> None:
    backup, ctx = dumped
    client = s3_server.client()
    target = f"restored-{secrets.token_hex(4)}"
    s3_server.create_bucket(target)
    try:
        result = restore_bucket(backup, ctx.staging / backup.artifacts[0].name, client, target, ctx)
        assert result == {
            "objects": len(seeded.objects),
            "bytes": sum(len(data) for data in seeded.objects.values()),
        }
        listed = [
            entry["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=target)
            for entry in page.get("Contents", [])
        ]
        assert sorted(listed) == sorted(seeded.objects)
        for key, data in seeded.objects.items():
            response = client.get_object(Bucket=target, Key=key)
            assert response["Body"].read() == data, key
        head = client.head_object(Bucket=target, Key="top-level.json")
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"owner": "api"}
    finally:
        _empty(client, target)
