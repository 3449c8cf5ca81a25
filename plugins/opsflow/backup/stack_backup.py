"""One stack's backups as a whole: which sources, where they go, how each is dumped,
verified, published, restored and pruned.

This is the layer the operators (and the upgrade's rollback) call. It keeps the Airflow
specifics to two seams, both imported lazily: connections become :class:`Endpoint` values,
and S3 clients come from the amazon provider's hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import (
    BackupError,
    Manifest,
    SourceBackup,
    Verification,
    utcnow,
)
from opsflow.connections import Endpoint
from opsflow.connections import endpoint as connection_endpoint
from opsflow.paths import state_dir
from opsflow.runtimes.base import Runtime, RuntimeFailure
from opsflow.runtimes.process import LineLogger
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import (
    CONFIG_SOURCE,
    BucketSource,
    PostgresSource,
    RedisSource,
    Stack,
)

# Interrupted backups (no manifest) older than this are swept by the retention step; a
# running backup is never that old without having published.
PARTIAL_SWEEP_AGE = timedelta(hours=12)

Source = PostgresSource | RedisSource | BucketSource


def s3_client(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


@dataclass
class StackBackups:
    stack: Stack
    stacks_dir: Path | None = None
    # The release the stack runs, for resolving its compose model. Databases and caches
    # are pinned, not versioned, so any valid version resolves their images and volumes.
    release: str = "current"
    # Seams for tests and benchmarks that run without Airflow connections.
    resolve: Callable[[str], Endpoint] = field(default=connection_endpoint)
    bucket_client: Callable[[str], Any] = field(default=s3_client)

    # ------------------------------------------------------------------ layout

    @property
    def local_root(self) -> Path | None:
        return Path(self.stack.backup.local_dir) if self.stack.backup.local_dir else None

    @property
    def staging_root(self) -> Path:
        """Same filesystem as the local copies (publishing is a rename), else the state dir."""
        return self.local_root or state_dir() / self.stack.name / "backup-staging"

    def staging(self, backup_id: str) -> Path:
        from opsflow.backup.stores import staging_dir

        return staging_dir(self.staging_root, backup_id)

    def source_names(self) -> list[str]:
        backup = self.stack.backup
        return [source.name for source in backup.database_sources] + [CONFIG_SOURCE]

    def source(self, name: str) -> Source | None:
        """The stack file's source of that name; ``None`` for the config files."""
        for source in self.stack.backup.database_sources:
            if source.name == name:
                return source
        if name == CONFIG_SOURCE:
            return None
        raise BackupError(f"stack {self.stack.name} has no backup source {name!r}")

    def stores(self) -> list[Any]:
        """Destinations in publishing order: local first (fast, then read by the upload)."""
        from opsflow.backup.stores import LocalStore, S3Store

        backup = self.stack.backup
        stores: list[Any] = []
        if self.local_root:
            stores.append(LocalStore(self.local_root))
        if backup.s3:
            stores.append(
                S3Store(
                    conn_id=backup.s3.conn_id,
                    bucket=backup.s3.bucket,
                    prefix=backup.s3.prefix,
                    stack=self.stack.name,
                    sse=backup.s3.sse,
                    kms_key_id=backup.s3.kms_key_id,
                )
            )
        return stores

    def primary_store(self) -> Any:
        return self.stores()[0]

    def context(self, backup_id: str, log: LineLogger, staging: Path | None = None) -> RunContext:
        return RunContext(
            stack=self.stack.name,
            backup_id=backup_id,
            staging=staging or self.staging(backup_id),
            log=log,
            level=self.stack.backup.compression_level,
        )

    # ------------------------------------------------------------------ runtime facts

    @property
    def runtime(self) -> Runtime:
        return runtime_for(self.stack, self.stacks_dir)

    def service_image(self, service: str | None) -> str | None:
        if service is None:
            return None
        return self.runtime.service_image(service, self.release)

    def config_paths(self) -> list[tuple[str, Path]]:
        """The stack file and the release's config files, by archive name."""
        from opsflow.stack.loader import stack_path

        stack_file = stack_path(self.stack.name, self.stacks_dir)
        return [(f"stack/{self.stack.name}.yaml", stack_file), *self.runtime.config_paths()]

    # ------------------------------------------------------------------ dump / verify

    def dump(self, name: str, ctx: RunContext) -> SourceBackup:
        source = self.source(name)
        if isinstance(source, PostgresSource):
            from opsflow.backup.postgres.dump import dump_postgres

            with self.runtime.reach(source.service, self.resolve(source.conn_id)) as endpoint:
                return dump_postgres(source, endpoint, ctx)
        if isinstance(source, RedisSource):
            from opsflow.backup.redis import dump_redis

            with self.runtime.reach(source.service, self.resolve(source.conn_id)) as endpoint:
                return dump_redis(source, endpoint, ctx)
        if isinstance(source, BucketSource):
            from opsflow.backup.buckets import dump_bucket

            return dump_bucket(source, self.bucket_client(source.conn_id), ctx)
        from opsflow.backup.files import dump_files

        return dump_files(self.config_paths(), ctx, name=CONFIG_SOURCE)

    def verify(self, backup: SourceBackup, artifact_dir: Path, ctx: RunContext) -> Verification:
        source = self.source(backup.name)
        if isinstance(source, PostgresSource):
            from opsflow.backup.postgres.verify import verify_postgres

            image = source.verify_image or self.service_image(source.service)
            if not image:
                raise BackupError(
                    f"{source.name}: no image for the scratch server "
                    "(set verify_image or service in the stack file)"
                )
            return verify_postgres(
                backup, artifact_dir, image, ctx, client_bin_dir=source.client_bin_dir
            )
        if isinstance(source, RedisSource):
            from opsflow.backup.redis import verify_redis

            image = source.verify_image or self.service_image(source.service)
            return verify_redis(backup, artifact_dir, image, ctx)
        if isinstance(source, BucketSource):
            from opsflow.backup.buckets import verify_bucket

            return verify_bucket(backup, artifact_dir, ctx)
        from opsflow.backup.files import verify_files

        return verify_files(backup, artifact_dir, ctx)

    # ------------------------------------------------------------------ publish / list

    def publish(self, manifest: Manifest, staging: Path, log: LineLogger) -> list[str]:
        """Publish to every destination; returns the problems (empty when all went well).

        The local copy goes first and stays published when the upload fails: it is a good
        backup, and its manifest is rewritten to record that the offsite copy is missing.
        """
        stores = self.stores()
        problems: list[str] = []
        artifacts_at = staging
        for store in stores:
            if store.is_published(manifest.backup_id):
                # A retried publish: this destination has it already, manifest and all.
                manifest.destinations.setdefault(store.label, {"status": "published"})
            else:
                try:
                    manifest.destinations[store.label] = store.publish(artifacts_at, manifest, log)
                except BackupError as err:
                    manifest.destinations[store.label] = {"status": "failed", "error": str(err)}
                    problems.append(f"{store.label}: {err}")
                    continue
            if store.label == "local":
                artifacts_at = Path(store.root) / manifest.backup_id
        local_ok = manifest.destinations.get("local", {}).get("status") == "published"
        if local_ok and len(stores) > 1:
            stores[0].update_manifest(manifest)
        return problems

    def manifests(self, log: LineLogger | None = None) -> list[Manifest]:
        """Published backups of the primary destination, oldest first."""
        return list(self.primary_store().list_manifests(log))

    def find(self, backup_id: str, log: LineLogger | None = None) -> tuple[Any, Manifest]:
        """The store holding ``backup_id`` (``latest`` = newest usable) and its manifest."""
        for store in self.stores():
            found = [m for m in store.list_manifests(log) if m.status != "failed"]
            if backup_id == "latest" and found:
                return store, found[-1]
            for manifest in found:
                if manifest.backup_id == backup_id:
                    return store, manifest
        raise BackupError(
            f"no usable backup {backup_id!r} of {self.stack.name} in "
            + ", ".join(store.label for store in self.stores())
        )

    def artifact_dir(self, store: Any, manifest: Manifest, staging: Path) -> Path:
        """A directory with the backup's artifacts: in place locally, downloaded from S3."""
        if store.label == "local":
            return Path(store.root) / manifest.backup_id
        self.staging(staging.name)
        for source in manifest.sources:
            for artifact in source.artifacts:
                store.fetch_artifact(manifest.backup_id, artifact, staging)
        return staging

    # ------------------------------------------------------------------ retention

    def retention(self, now: datetime, dry_run: bool, keep: set[str], log: LineLogger) -> list[str]:
        """Apply retention to each destination; returns the lines for the run summary."""
        from opsflow.backup.retention import plan_retention

        policy = self.stack.backup.retention
        lines: list[str] = []
        for store in self.stores():
            days = policy.local_days if store.label == "local" else policy.offsite_days
            plan = plan_retention(store.list_manifests(log), now, days, policy.keep_last_verified)
            if not dry_run:
                for backup_id in plan.delete:
                    store.delete(backup_id)
            lines += [f"{store.label}: {line}" for line in plan.lines(dry_run)]
            swept = store.sweep_partials(PARTIAL_SWEEP_AGE, keep, dry_run)
            verb = "would delete" if dry_run else "deleted"
            lines += [f"{store.label}: {verb} interrupted backup {name}" for name in swept]
        return lines

    def freshness(self, now: datetime | None = None) -> list[str]:
        from opsflow.backup.retention import check_freshness

        return check_freshness(
            self.manifests(), self.source_names(), now or utcnow(), self.stack.backup.max_age
        )

    # ------------------------------------------------------------------ whole backups

    def take_backup(
        self,
        names: list[str],
        backup_id: str,
        trigger: str,
        run_id: str,
        log: LineLogger,
        *,
        verify: bool,
    ) -> Manifest:
        """Dump (and optionally verify) ``names`` and publish, in one call.

        For backups taken inside another workflow (before a restore or an upgrade); the
        nightly DAG runs the same steps as separate tasks. Staging is removed either way.
        """
        import shutil

        ctx = self.context(backup_id, log)
        started = utcnow().isoformat()
        try:
            sources = []
            for name in names:
                dumped = self.dump(name, ctx)
                if verify:
                    dumped.verification = self.verify(dumped, ctx.staging, ctx)
                    if not dumped.verification.passed:
                        raise BackupError(
                            f"verification of {name} failed: "
                            + "; ".join(dumped.verification.differences[:5])
                        )
                sources.append(dumped)
            manifest = Manifest(
                backup_id=backup_id,
                stack=self.stack.name,
                trigger=trigger,
                run_id=run_id,
                started_at=started,
                ended_at=utcnow().isoformat(),
                sources=sources,
                compression={"algorithm": "zstd", "level": self.stack.backup.compression_level},
            )
            problems = self.publish(manifest, ctx.staging, log)
            if problems:
                raise BackupError("; ".join(problems))
            return manifest
        finally:
            ctx.pipeline.terminate()
            shutil.rmtree(ctx.staging, ignore_errors=True)

    # ------------------------------------------------------------------ restore support

    def restore(
        self,
        saved: SourceBackup,
        artifact: Path,
        ctx: RunContext,
        target_database: str | None = None,
    ) -> Any:
        """Put one checked artifact back into the live source (or a PostgreSQL copy)."""
        source = self.source(saved.name)
        if isinstance(source, PostgresSource):
            from opsflow.backup.postgres.restore import restore_postgres

            database = target_database or source.database
            with self.runtime.reach(source.service, self.resolve(source.conn_id)) as endpoint:
                return restore_postgres(
                    saved, artifact, endpoint, database, ctx, client_bin_dir=source.client_bin_dir
                )
        if isinstance(source, RedisSource):
            from opsflow.backup.redis import restore_redis

            with self.redis_data_dir(source, ctx.log) as data_dir:
                return restore_redis(saved, artifact, data_dir, ctx)
        if isinstance(source, BucketSource):
            from opsflow.backup.buckets import restore_bucket

            client = self.bucket_client(source.conn_id)
            return restore_bucket(saved, artifact, client, source.bucket, ctx)
        raise BackupError(f"{saved.name}: not a restorable source")

    def writers(self, names: list[str]) -> list[str]:
        """Services to stop while ``names`` are restored: the stack's writers, and the
        Redis servers whose RDB file is replaced."""
        services = [service.name for service in self.stack.services if service.writes_data]
        for name in names:
            source = self.source(name)
            if isinstance(source, RedisSource) and source.service:
                services.append(source.service)
        return list(dict.fromkeys(services))

    def switch_services(self, action: str, services: list[str], log: LineLogger) -> list[str]:
        """Stop or start ``services``; stopping returns only those that were running."""
        runtime = self.runtime
        if action == "stop":
            services = runtime.running_services(services)
            if services:
                runtime.run("stop", self.release, log, services=services, timeout=300)
        else:
            runtime.run("resume", self.release, log, services=services, timeout=300)
        return services

    @contextlib.contextmanager
    def redis_data_dir(self, source: RedisSource, log: LineLogger) -> Iterator[Path]:
        """The directory to write the Redis service's ``dump.rdb`` into, for the block
        (the runtime puts it in the service's ``/data``)."""
        if not source.service:
            raise BackupError(f"{source.name}: restoring Redis needs the stack's service")
        try:
            with self.runtime.data_dir_to_write(source.service, "/data", self.release, log) as d:
                yield d
        except RuntimeFailure as error:
            raise BackupError(f"{source.name}: {error}") from None
