"""Where finished backups live: a local directory and/or an S3 bucket.

Both stores publish the same way: artifacts first, checked against the manifest, and the
manifest last. Whatever has no manifest is an interrupted backup: never listed, restored or
counted by retention, and swept once it is old enough. Deleting removes the manifest
first, so a half-deleted backup is just another interrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from opsflow.backup.manifest import (
    MANIFEST_NAME,
    Artifact,
    BackupError,
    Manifest,
    check_backup_id,
    utcnow,
)
from opsflow.backup.stream import ArtifactCorrupt, check_artifact
from opsflow.paths import fsync_dir, make_private_dirs, write_atomic
from opsflow.runtimes.process import LineLogger

STAGING = ".staging"
FILE_MODE = 0o600
DIR_MODE = 0o700
MB = 1 << 20
# Managed transfers: parts of 16 MB, at most 4 in flight, so an upload or download holds
# about 64 MB whatever the artifact's size.
PART_SIZE = 16 * MB
CONCURRENCY = 4
PROGRESS_EVERY = 15.0
_fallback_log = logging.getLogger(__name__)


def _is_backup_id(name: str) -> bool:
    try:
        check_backup_id(name)
    except BackupError:
        return False
    return True


def _artifacts(manifest: Manifest) -> list[Artifact]:
    """Every artifact of the manifest; names are plain file names (they become paths/keys)."""
    found: list[Artifact] = []
    for source in manifest.sources:
        for artifact in source.artifacts:
            name = artifact.name
            if not name or "/" in name or name.startswith(".") or name == MANIFEST_NAME:
                raise BackupError(f"backup {manifest.backup_id}: bad artifact name {name!r}")
            found.append(artifact)
    return found


def _os_error(store: str, action: str, path: object, err: OSError) -> BackupError:
    if err.errno == errno.ENOSPC:
        why = "disk full"
    elif err.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    else:
        why = err.strerror or str(err)
    return BackupError(f"{store} store: {action} {path}: {why}")


def staging_dir(root: Path, backup_id: str) -> Path:
    """``<root>/.staging/<backup_id>``: same filesystem as the published copies."""
    path = root / STAGING / check_backup_id(backup_id)
    try:
        make_private_dirs(path)
        (root / STAGING).chmod(DIR_MODE)
        path.chmod(DIR_MODE)
    except OSError as err:
        raise _os_error("local", "creating staging directory", path, err) from err
    return path


def _newest_mtime(path: Path) -> float:
    """A directory's own mtime misses writes into existing files: look at the entries too."""
    newest = path.stat().st_mtime
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            newest = max(newest, entry.lstat().st_mtime)
    return newest


class LocalStore:
    """``<root>/<backup_id>/`` with the artifacts and ``manifest.json`` (files 0600, dirs 0700)."""

    label = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def backup_dir(self, backup_id: str) -> Path:
        return self.root / check_backup_id(backup_id)

    def artifact_path(self, backup_id: str, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise BackupError(f"local store: bad artifact name {name!r}")
        return self.backup_dir(backup_id) / name

    # ------------------------------------------------------------------ publish

    def is_published(self, backup_id: str) -> bool:
        return (self.backup_dir(backup_id) / MANIFEST_NAME).exists()

    def publish(self, staging: Path, manifest: Manifest, log: LineLogger) -> dict[str, Any]:
        """Check the staged artifacts, move them into place, then write the manifest."""
        final = self.backup_dir(manifest.backup_id)
        if self.is_published(manifest.backup_id):
            raise BackupError(
                f"local store: backup {manifest.backup_id} is already published at {final}; "
                "refusing to overwrite it"
            )
        artifacts = _artifacts(manifest)
        for artifact in artifacts:
            try:
                check_artifact(staging / artifact.name, artifact)
            except ArtifactCorrupt as err:
                raise ArtifactCorrupt(
                    f"local store: refusing to publish {manifest.backup_id}: {err}"
                ) from err
        try:
            listed = {artifact.name for artifact in artifacts}
            for entry in staging.iterdir():
                if entry.name not in listed:
                    log.info("local store: %s is not in the manifest (kept as is)", entry.name)
                entry.chmod(DIR_MODE if entry.is_dir() else FILE_MODE)
            staging.chmod(DIR_MODE)
            make_private_dirs(self.root)
            if final.exists():
                log.info("local store: replacing %s left by an earlier attempt", final)
                shutil.rmtree(final)
            staging.rename(final)
            fsync_dir(self.root)
        except OSError as err:
            raise _os_error("local", "publishing", final, err) from err
        record: dict[str, Any] = {"path": str(final), "status": "published"}
        manifest.destinations[self.label] = record
        self._write_manifest(final, manifest)
        log.info(
            "local store: published %s (%d artifacts, %d bytes) at %s",
            manifest.backup_id, len(artifacts), sum(a.size for a in artifacts), final,
        )  # fmt: skip
        return record

    def _write_manifest(self, final: Path, manifest: Manifest) -> None:
        path = final / MANIFEST_NAME
        try:
            write_atomic(path, manifest.to_json().encode(), FILE_MODE)
        except OSError as err:
            raise _os_error("local", "writing", path, err) from err
        except BackupError as err:  # write_atomic's disk-full message
            raise BackupError(f"local store: writing {path}: {err}") from err

    def update_manifest(self, manifest: Manifest) -> None:
        """Rewrite an existing backup's manifest (a later verification changed its result)."""
        final = self.backup_dir(manifest.backup_id)
        if not (final / MANIFEST_NAME).is_file():
            raise BackupError(f"local store: no published backup at {final} to update")
        self._write_manifest(final, manifest)

    # ------------------------------------------------------------------ list / delete

    def list_manifests(self, log: LineLogger | None = None) -> list[Manifest]:
        logger: LineLogger = log or _fallback_log
        if not self.root.is_dir():
            return []
        try:
            names = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        except OSError as err:
            raise _os_error("local", "listing", self.root, err) from err
        found: list[Manifest] = []
        for name in names:
            path = self.root / name / MANIFEST_NAME
            if not _is_backup_id(name) or not path.exists():
                continue
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except (OSError, BackupError) as err:
                logger.info("local store: skipping %s: %s", path, err)
                continue
            if manifest.backup_id != name:
                logger.info(
                    "local store: skipping %s: it names backup %s", path, manifest.backup_id
                )
                continue
            found.append(manifest)
        return found

    def delete(self, backup_id: str) -> None:
        final = self.backup_dir(backup_id)
        try:
            (final / MANIFEST_NAME).unlink(missing_ok=True)
            if final.exists():
                fsync_dir(final)
                shutil.rmtree(final)
        except OSError as err:
            raise _os_error("local", "deleting", final, err) from err

    def sweep_partials(self, older_than: timedelta, keep: set[str], dry_run: bool) -> list[str]:
        """Remove interrupted backups (no manifest) last touched before ``older_than``."""
        cutoff = time.time() - older_than.total_seconds()
        swept: list[str] = []
        for parent in (self.root, self.root / STAGING):
            if not parent.is_dir():
                continue
            try:
                entries = sorted(parent.iterdir())
                for entry in entries:
                    if not entry.is_dir() or not _is_backup_id(entry.name):
                        continue
                    if entry.name in keep or (entry / MANIFEST_NAME).exists():
                        continue
                    if _newest_mtime(entry) >= cutoff:
                        continue
                    swept.append(str(entry))
                    if not dry_run:
                        shutil.rmtree(entry)
            except OSError as err:
                raise _os_error("local", "sweeping", parent, err) from err
        return swept


# ====================================================================================== S3


@dataclass
class _Progress:
    """boto3 calls back from its worker threads; log at most every 15 s."""

    log: LineLogger
    what: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            now = time.monotonic()
            if now - self.last < PROGRESS_EVERY:
                return
            self.last = now
            done = self.done
        self.log.info(
            "s3 store: %s: %.1f of %.1f MB (%.1f MB/s)",
            self.what, done / 1e6, self.total / 1e6, done / max(now - self.started, 1e-6) / 1e6,
        )  # fmt: skip


@dataclass
class _Listed:
    keys: list[str] = field(default_factory=list)
    newest: datetime | None = None
    has_manifest: bool = False


class S3Store:
    """``s3://<bucket>/<prefix><stack>/<backup_id>/<artifact>``, every object encrypted."""

    label = "s3"
    # Bounded retries and timeouts: a dead endpoint must fail the task in seconds, not hang
    # for minutes; the whole task is retried by Airflow, and botocore's standard mode still
    # rides out a throttled or reset request or two. A connection's own config_kwargs win.
    TOTAL_ATTEMPTS = 3
    CONNECT_TIMEOUT = 10
    READ_TIMEOUT = 60

    def __init__(
        self,
        conn_id: str,
        bucket: str,
        prefix: str,
        stack: str,
        sse: str = "AES256",
        kms_key_id: str | None = None,
    ) -> None:
        if sse not in ("AES256", "aws:kms"):
            raise BackupError(f"s3 store: unsupported server-side encryption {sse!r}")
        self.conn_id = conn_id
        self.bucket = bucket
        # "backups" and "backups/" both mean the folder backups/.
        self.prefix = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        self.stack = stack
        self.sse = sse
        self.kms_key_id = kms_key_id
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.stack_prefix})"

    @property
    def stack_prefix(self) -> str:
        return f"{self.prefix}{self.stack}/"

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.stack_prefix}{check_backup_id(backup_id)}/"

    def key(self, backup_id: str, name: str) -> str:
        return f"{self.backup_prefix(backup_id)}{name}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from botocore.config import Config

            hook = S3Hook(aws_conn_id=self.conn_id)
            ours = Config(
                retries={"total_max_attempts": self.TOTAL_ATTEMPTS, "mode": "standard"},
                connect_timeout=self.CONNECT_TIMEOUT,
                read_timeout=self.READ_TIMEOUT,
            )
            self._client = hook.get_client_type(config=ours.merge(hook.config))
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=CONCURRENCY,
        )

    def _sse_args(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    # ------------------------------------------------------------------ publish

    def is_published(self, backup_id: str) -> bool:
        manifest_key = self.key(backup_id, MANIFEST_NAME)
        try:
            return self._exists(manifest_key)
        except Exception as err:
            raise BackupError(
                f"s3 store: checking {self.url(manifest_key)} failed: {_cause(err)}"
            ) from err

    def publish(self, staging: Path, manifest: Manifest, log: LineLogger) -> dict[str, Any]:
        """Upload the artifacts, check each against the manifest, then put the manifest."""
        started = time.monotonic()
        backup_id = manifest.backup_id
        manifest_key = self.key(backup_id, MANIFEST_NAME)
        artifacts = _artifacts(manifest)
        if self.is_published(backup_id):
            raise BackupError(
                f"s3 store: backup {backup_id} is already published at "
                f"{self.url(manifest_key)}; refusing to overwrite it"
            )
        for artifact in artifacts:
            self._upload(staging / artifact.name, backup_id, artifact, log)
        for artifact in artifacts:
            self.check_object(backup_id, artifact)
        record: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": self.backup_prefix(backup_id),
            "status": "verified",
            "seconds": round(time.monotonic() - started, 3),
        }
        manifest.destinations[self.label] = record
        self._put_manifest(manifest)
        log.info(
            "s3 store: published %s (%d artifacts checked) at %s in %.1f s",
            backup_id, len(artifacts), self.url(self.backup_prefix(backup_id)), record["seconds"],
        )  # fmt: skip
        return record

    def _upload(self, path: Path, backup_id: str, artifact: Artifact, log: LineLogger) -> None:
        key = self.key(backup_id, artifact.name)
        where = f"uploading {artifact.name} to {self.url(key)}"
        if not path.is_file():
            raise BackupError(f"s3 store: {where}: {path} is missing")
        size = path.stat().st_size
        if size != artifact.size:
            raise ArtifactCorrupt(
                f"s3 store: {where}: {path} has {size} bytes but the manifest says {artifact.size}"
            )
        progress = _Progress(log, artifact.name, size)
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs=self._sse_args(),
                Config=self._transfer_config(),
                Callback=progress,
            )
        except Exception as err:
            raise BackupError(f"s3 store: {where} failed: {_cause(err)}") from err
        seconds = max(time.monotonic() - progress.started, 1e-6)
        log.info(
            "s3 store: uploaded %s (%d bytes in %.1f s, %.1f MB/s)",
            artifact.name, size, seconds, size / seconds / 1e6,
        )  # fmt: skip

    def check_object(self, backup_id: str, artifact: Artifact) -> None:
        """The offsite copy must be the manifest's artifact: size, encryption, sha256."""
        key = self.key(backup_id, artifact.name)
        url = self.url(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            size = int(head["ContentLength"])
            encryption = head.get("ServerSideEncryption")
            if size != artifact.size:
                raise ArtifactCorrupt(
                    f"s3 store: {url} has {size} bytes but the manifest says {artifact.size}"
                )
            if encryption != self.sse:
                raise BackupError(
                    f"s3 store: {url} is not encrypted as asked "
                    f"(ServerSideEncryption {encryption!r}, expected {self.sse!r})"
                )
            digest = hashlib.sha256()
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(MB):
                    digest.update(chunk)
            finally:
                body.close()
        except BackupError:
            raise
        except Exception as err:
            raise BackupError(f"s3 store: checking {url} failed: {_cause(err)}") from err
        if digest.hexdigest() != artifact.sha256:
            raise ArtifactCorrupt(
                f"s3 store: {url} has sha256 {digest.hexdigest()} "
                f"but the manifest says {artifact.sha256}"
            )

    def _put_manifest(self, manifest: Manifest) -> None:
        key = self.key(manifest.backup_id, MANIFEST_NAME)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=manifest.to_json().encode(),
                ContentType="application/json",
                **self._sse_args(),
            )
        except Exception as err:
            raise BackupError(f"s3 store: writing {self.url(key)} failed: {_cause(err)}") from err

    def update_manifest(self, manifest: Manifest) -> None:
        key = self.key(manifest.backup_id, MANIFEST_NAME)
        try:
            exists = self._exists(key)
        except Exception as err:
            raise BackupError(f"s3 store: checking {self.url(key)}: {_cause(err)}") from err
        if not exists:
            raise BackupError(f"s3 store: no published backup at {self.url(key)} to update")
        self._put_manifest(manifest)

    # ------------------------------------------------------------------ list / fetch / delete

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])
        except Exception as err:
            raise BackupError(
                f"s3 store: listing {self.url(prefix)} failed: {_cause(err)}"
            ) from err

    def _backups(self) -> dict[str, _Listed]:
        found: dict[str, _Listed] = {}
        for obj in self._list(self.stack_prefix):
            key = str(obj["Key"])
            backup_id, sep, name = key[len(self.stack_prefix) :].partition("/")
            if not sep or not _is_backup_id(backup_id):
                continue
            listed = found.setdefault(backup_id, _Listed())
            listed.keys.append(key)
            modified: datetime = obj["LastModified"]
            listed.newest = modified if listed.newest is None else max(listed.newest, modified)
            if name == MANIFEST_NAME:
                listed.has_manifest = True
        return found

    def list_manifests(self, log: LineLogger | None = None) -> list[Manifest]:
        logger: LineLogger = log or _fallback_log
        found: list[Manifest] = []
        for backup_id, listed in sorted(self._backups().items()):
            if not listed.has_manifest:
                continue
            key = self.key(backup_id, MANIFEST_NAME)
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                manifest = Manifest.from_json(body.read())
            except Exception as err:
                logger.info("s3 store: skipping %s: %s", self.url(key), _cause(err))
                continue
            if manifest.backup_id != backup_id:
                logger.info(
                    "s3 store: skipping %s: it names backup %s", self.url(key), manifest.backup_id
                )
                continue
            found.append(manifest)
        return found

    def fetch_artifact(self, backup_id: str, artifact: Artifact, dest_dir: Path) -> Path:
        """Download into ``dest_dir`` and check it; a bad copy never keeps its real name."""
        key = self.key(backup_id, artifact.name)
        dest = dest_dir / artifact.name
        tmp = dest_dir / f".{artifact.name}.part"
        try:
            tmp.unlink(missing_ok=True)
            self.client.download_file(self.bucket, key, str(tmp), Config=self._transfer_config())
            tmp.chmod(FILE_MODE)
            check_artifact(tmp, artifact)
            tmp.replace(dest)
        except ArtifactCorrupt as err:
            tmp.unlink(missing_ok=True)
            raise ArtifactCorrupt(f"s3 store: {self.url(key)}: {err}") from err
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _os_error("s3", f"downloading {self.url(key)} to", dest, err) from err
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise BackupError(
                f"s3 store: downloading {self.url(key)} failed: {_cause(err)}"
            ) from err
        return dest

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except Exception as err:
                raise BackupError(
                    f"s3 store: deleting {self.url(batch[0])} and others failed: {_cause(err)}"
                ) from err
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise BackupError(
                    f"s3 store: deleting {self.url(first.get('Key', '?'))} failed: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def delete(self, backup_id: str) -> None:
        manifest_key = self.key(backup_id, MANIFEST_NAME)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=manifest_key)
        except Exception as err:
            raise BackupError(
                f"s3 store: deleting {self.url(manifest_key)} failed: {_cause(err)}"
            ) from err
        rest = [obj["Key"] for obj in self._list(self.backup_prefix(backup_id))]
        if rest:
            self._delete_keys(rest)

    def sweep_partials(self, older_than: timedelta, keep: set[str], dry_run: bool) -> list[str]:
        """Interrupted uploads: prefixes without a manifest, and stale multipart uploads."""
        cutoff = utcnow() - older_than
        swept: list[str] = []
        backups = self._backups()
        for backup_id, listed in sorted(backups.items()):
            if listed.has_manifest or backup_id in keep:
                continue
            if listed.newest is None or listed.newest >= cutoff:
                continue
            swept.append(self.url(self.backup_prefix(backup_id)))
            if not dry_run:
                self._delete_keys(listed.keys)
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            uploads = [
                upload
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.stack_prefix)
                for upload in page.get("Uploads", [])
            ]
            for upload in uploads:
                key = str(upload["Key"])
                backup_id = key[len(self.stack_prefix) :].partition("/")[0]
                if backup_id in keep or upload["Initiated"] >= cutoff:
                    continue
                swept.append(f"{self.url(key)} (incomplete multipart upload)")
                if not dry_run:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                    )
        except Exception as err:
            raise BackupError(
                f"s3 store: sweeping multipart uploads under {self.url(self.stack_prefix)} "
                f"failed: {_cause(err)}"
            ) from err
        return swept


def _cause(err: BaseException) -> str:
    """The innermost useful message: boto3's transfer errors wrap the botocore one."""
    text = str(err) or type(err).__name__
    inner = err.__cause__ or err.__context__
    if inner is not None and str(inner) and str(inner) not in text:
        text = f"{text} ({inner})"
    return text
