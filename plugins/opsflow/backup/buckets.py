"""An S3-compatible bucket (MinIO in the real stacks) mirrored into one tar of its objects.

Like ``mc mirror`` but into a single artifact: each object is streamed from ``get_object``
into the tar in chunks (its ``ContentLength`` gives the tar header's size up front) and
hashed on the way, so memory does not grow with object or bucket size. The fingerprint
keeps one sha256 per object key; verification recomputes them from the artifact.

The fingerprint grows with the number of objects (about 100 bytes per key in the
manifest): fine for config and media buckets of up to some 100k objects; beyond that a
separate checksum artifact would be the better home for it.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import IO, Any

from opsflow.backup.context import RunContext
from opsflow.backup.files import (
    HashingReader,
    TarContents,
    compare_digests,
    open_tar_stream,
    single_artifact,
    verify_tar_artifact,
)
from opsflow.backup.manifest import BackupError, SourceBackup, Verification, now_iso
from opsflow.backup.stream import check_artifact
from opsflow.stack.model import BucketSource

# PAX header keys carrying what ``put_object`` needs back besides the bytes.
CONTENT_TYPE = "OPSFLOW.content_type"
META_PREFIX = "OPSFLOW.meta."


def _is_missing(err: Exception) -> bool:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in {"NoSuchKey", "404"}


def dump_bucket(source: BucketSource, client: Any, ctx: RunContext) -> SourceBackup:
    """Stream every object under ``source.prefix`` into ``<name>.objects.tar.zst``.

    ``client`` is a boto3 S3 client. An object deleted between listing and reading is
    skipped (a live bucket changes); it is named in the log and the fingerprint.
    """
    started = now_iso()
    digests: dict[str, str] = {}
    skipped: list[str] = []
    server: dict[str, str] = {}
    total = [0]

    def writer(sink: IO[bytes]) -> None:
        paginator = client.get_paginator("list_objects_v2")
        with open_tar_stream(sink, "w|") as tar:
            for page in paginator.paginate(Bucket=source.bucket, Prefix=source.prefix):
                headers = page.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                server.setdefault("name", str(headers.get("server", "")))
                for entry in page.get("Contents", []):
                    key = entry["Key"]
                    try:
                        response = client.get_object(Bucket=source.bucket, Key=key)
                    except Exception as err:
                        if not _is_missing(err):
                            raise BackupError(
                                f"bucket {source.bucket}: reading {key}: {err}"
                            ) from err
                        ctx.log.info("bucket %s: %s vanished while listing", source.bucket, key)
                        skipped.append(key)
                        continue
                    body = response["Body"]
                    try:
                        info = tarfile.TarInfo(key)
                        info.size = int(response["ContentLength"])
                        info.mode = 0o600
                        modified = response.get("LastModified")
                        info.mtime = int(modified.timestamp()) if modified else 0
                        headers = {CONTENT_TYPE: response.get("ContentType") or ""}
                        for meta_key, value in (response.get("Metadata") or {}).items():
                            headers[META_PREFIX + meta_key] = value
                        info.pax_headers = headers
                        reader = HashingReader(body)
                        try:
                            tar.addfile(info, reader)  # type: ignore[arg-type]
                        except OSError as err:
                            raise BackupError(
                                f"bucket {source.bucket}: object {key}: {err} "
                                f"({reader.size} of {info.size} bytes read)"
                            ) from err
                    finally:
                        body.close()
                    digests[key] = reader.hexdigest()
                    total[0] += info.size

    ctx.log.info("bucket %s: mirroring prefix %r", source.bucket, source.prefix)
    artifact = ctx.pipeline.compress_to_file(
        ctx.staging / f"{source.name}.objects.tar.zst", level=ctx.level, writer=writer
    )
    ctx.log.info("bucket %s: %d objects, %d bytes", source.bucket, len(digests), total[0])
    import botocore

    return SourceBackup(
        name=source.name,
        kind="bucket",
        artifacts=[artifact],
        started_at=started,
        ended_at=now_iso(),
        tool_version=f"botocore {botocore.__version__}",
        server_version=server.get("name", ""),
        fingerprint={
            "bucket": source.bucket,
            "prefix": source.prefix,
            "objects": len(digests),
            "bytes": total[0],
            "skipped": skipped,
            "sha256": digests,
        },
    )


def verify_bucket(backup: SourceBackup, artifact_dir: Path, ctx: RunContext) -> Verification:
    """Object count and every object's sha256 in the artifact must match the fingerprint."""

    def check(contents: TarContents, differences: list[str]) -> dict[str, Any]:
        fingerprint = backup.fingerprint
        compare_digests("object", fingerprint.get("sha256", {}), contents.files, differences)
        expected = fingerprint.get("objects")
        if expected is not None and expected != len(contents.files):
            differences.append(
                f"objects: {len(contents.files)} in the artifact, {expected} in the fingerprint"
            )
        return {"objects": len(contents.files), "bytes": sum(contents.sizes.values())}

    return verify_tar_artifact(backup, artifact_dir, ctx, check)


def restore_bucket(
    backup: SourceBackup, artifact_path: Path, client: Any, bucket: str, ctx: RunContext
) -> dict[str, Any]:
    """Put every archived object back into ``bucket`` under its key (streamed, multipart)."""
    artifact = single_artifact(backup)
    check_artifact(artifact_path, artifact)
    expected: dict[str, str] = backup.fingerprint.get("sha256", {})
    count = [0, 0]

    def reader(stream: IO[bytes]) -> None:
        with open_tar_stream(stream, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                extra: dict[str, Any] = {}
                headers = member.pax_headers
                if headers.get(CONTENT_TYPE):
                    extra["ContentType"] = headers[CONTENT_TYPE]
                metadata = {
                    key[len(META_PREFIX) :]: value
                    for key, value in headers.items()
                    if key.startswith(META_PREFIX)
                }
                if metadata:
                    extra["Metadata"] = metadata
                body = HashingReader(handle)
                client.upload_fileobj(body, bucket, member.name, ExtraArgs=extra or None)
                if body.hexdigest() != expected.get(member.name):
                    raise BackupError(f"restoring {member.name}: sha256 differs from the backup")
                count[0] += 1
                count[1] += body.size

    ctx.log.info("bucket %s: restoring %s", bucket, artifact.name)
    ctx.pipeline.decompress_file(artifact_path, artifact, reader=reader)
    ctx.log.info("bucket %s: restored %d objects, %d bytes", bucket, count[0], count[1])
    return {"objects": count[0], "bytes": count[1]}
