"""Config file backups: tar through zstd and sha256, verified and restored, in tmp_path only."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from opsflow.backup.context import RunContext
from opsflow.backup.files import dump_files, restore_files, verify_files
from opsflow.backup.manifest import BackupError, SourceBackup
from opsflow.backup.stream import ArtifactCorrupt
from opsflow.stack.safety import ALLOWED_ROOTS_ENV
from support.backup import consistent_artifact, flip_byte, retar

LOG = logging.getLogger("test_backup_files")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    staging = tmp_path / "staging"
    staging.mkdir()
    return RunContext(stack="demo", backup_id="20260101T000000Z-abcdef", staging=staging, log=LOG)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A stack's config: compose file, env file (a secret), stack file, a config dir."""
    root = tmp_path / "host"
    (root / "app" / "conf.d" / "nested").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "outside" / "big.bin").write_bytes(os.urandom(200_000))
    (root / "app" / "docker-compose.yml").write_text("services:\n  api: {image: demo}\n")
    env = root / "app" / ".env"
    env.write_text("POSTGRES_PASSWORD=s3cret\n")
    env.chmod(0o600)
    (root / "demo.yaml").write_text("name: demo\n")
    (root / "app" / "conf.d" / "a.conf").write_text("a = 1\n")
    (root / "app" / "conf.d" / "nested" / "b.conf").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "app" / "conf.d" / "empty.conf").write_bytes(b"")
    # A link inside the config dir to a directory outside it: stored as a link, not followed.
    (root / "app" / "conf.d" / "shared").symlink_to(root / "outside")
    (root / "app" / "current.conf").symlink_to("conf.d/a.conf")
    return {
        "compose": root / "app" / "docker-compose.yml",
        "env": env,
        "stack": root / "demo.yaml",
        "confdir": root / "app" / "conf.d",
        "link": root / "app" / "current.conf",
    }


def paths_of(tree: dict[str, Path]) -> list[tuple[str, Path]]:
    return [
        ("compose/docker-compose.yml", tree["compose"]),
        ("compose/.env", tree["env"]),
        ("stack/demo.yaml", tree["stack"]),
        ("config/conf.d", tree["confdir"]),
        ("config/current.conf", tree["link"]),
    ]


def test_round_trip_fingerprint_verify_and_restore(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path
) -> None:
    backup = dump_files(paths_of(tree), ctx)

    artifact = ctx.staging / "config.files.tar.zst"
    assert [a.name for a in backup.artifacts] == [artifact.name]
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600
    assert not list(ctx.staging.glob(".*")), "no temporary file left"
    files = backup.fingerprint["files"]
    assert files == {
        "compose/docker-compose.yml": sha256(tree["compose"].read_bytes()),
        "compose/.env": sha256(tree["env"].read_bytes()),
        "stack/demo.yaml": sha256(tree["stack"].read_bytes()),
        "config/conf.d/a.conf": sha256(b"a = 1\n"),
        "config/conf.d/empty.conf": sha256(b""),
        "config/conf.d/nested/b.conf": sha256((tree["confdir"] / "nested/b.conf").read_bytes()),
    }
    assert backup.fingerprint["count"] == 6
    assert backup.fingerprint["symlinks"] == {
        "config/conf.d/shared": str(tree["confdir"].parent.parent / "outside"),
        "config/current.conf": "conf.d/a.conf",
    }

    # The manifest round trip keeps everything verification needs.
    restored_backup = SourceBackup.from_dict(backup.to_dict())
    verification = verify_files(restored_backup, ctx.staging, ctx)
    assert verification.passed, verification.differences
    assert verification.details == {"files": 6, "symlinks": 2}

    out = tmp_path / "restored"
    result = restore_files(
        backup,
        artifact,
        {"compose/.env": out / "env", "config/conf.d": out / "conf.d"},
        ctx,
    )
    assert result["files"] == 5  # .env, a, empty, nested/b and the link "shared"
    assert (out / "env").read_bytes() == tree["env"].read_bytes()
    assert stat.S_IMODE((out / "env").stat().st_mode) == 0o600
    for name in ("a.conf", "empty.conf", "nested/b.conf"):
        assert (out / "conf.d" / name).read_bytes() == (tree["confdir"] / name).read_bytes()
    assert (out / "conf.d" / "shared").readlink() == (tree["confdir"].parent.parent / "outside")
    assert not (out / "docker-compose.yml").exists(), "only the named members are restored"
    assert not list(out.rglob(".*restore-*")), "no temporary file left"


def test_symlinks_are_stored_not_followed(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path
) -> None:
    link = tmp_path / "link-to-outside"
    link.symlink_to(tree["confdir"].parent.parent / "outside")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "does-not-exist")
    backup = dump_files([("cfg/outside", link), ("cfg/dangling", dangling)], ctx, name="links")

    assert backup.fingerprint["files"] == {}, "the 200 kB file behind the link is not archived"
    assert backup.fingerprint["symlinks"] == {
        "cfg/outside": str(tree["confdir"].parent.parent / "outside"),
        "cfg/dangling": str(tmp_path / "does-not-exist"),
    }
    assert backup.artifacts[0].size < 2000
    assert verify_files(backup, ctx.staging, ctx).passed

    target = tmp_path / "restored-link"
    target.write_text("an old regular file the link replaces")
    restore_files(backup, ctx.staging / "links.files.tar.zst", {"cfg/outside": target}, ctx)
    assert target.is_symlink()
    assert target.readlink() == tree["confdir"].parent.parent / "outside"


def test_missing_path_is_named_and_leaves_nothing(tree: dict[str, Path], ctx: RunContext) -> None:
    missing = tree["stack"].parent / "nowhere.yaml"
    with pytest.raises(BackupError, match=r"config/extra.yaml: .*nowhere\.yaml does not exist"):
        dump_files([*paths_of(tree), ("config/extra.yaml", missing)], ctx)
    assert list(ctx.staging.iterdir()) == []


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "", "./x"])
def test_archive_names_must_be_plain_relative_paths(
    tree: dict[str, Path], ctx: RunContext, bad: str
) -> None:
    with pytest.raises(BackupError, match="plain relative path"):
        dump_files([(bad, tree["stack"])], ctx)


def test_duplicate_archive_name_is_refused(tree: dict[str, Path], ctx: RunContext) -> None:
    with pytest.raises(BackupError, match="given twice"):
        dump_files([("x", tree["stack"]), ("x", tree["compose"])], ctx)


def test_restore_replaces_atomically_and_keeps_owner_and_mode(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path
) -> None:
    backup = dump_files(paths_of(tree), ctx)
    artifact = ctx.staging / backup.artifacts[0].name
    target = tmp_path / "live" / "docker-compose.yml"
    target.parent.mkdir()
    target.write_text("services: {} # changed by an upgrade\n")
    target.chmod(0o640)
    before = target.stat()

    restore_files(backup, artifact, {"compose/docker-compose.yml": target}, ctx)

    after = target.stat()
    assert target.read_bytes() == tree["compose"].read_bytes()
    assert after.st_ino != before.st_ino, "written under a temporary name and renamed"
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(tree["compose"].stat().st_mode)
    assert sorted(p.name for p in target.parent.iterdir()) == ["docker-compose.yml"]


def test_restore_refuses_unknown_names_and_a_corrupt_artifact(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path
) -> None:
    backup = dump_files(paths_of(tree), ctx)
    artifact = ctx.staging / backup.artifacts[0].name
    target = tmp_path / "env"
    with pytest.raises(BackupError, match="has no file compose/nope"):
        restore_files(backup, artifact, {"compose/nope": target}, ctx)

    artifact.write_bytes(flip_byte(artifact.read_bytes()))
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        restore_files(backup, artifact, {"compose/.env": target}, ctx)
    assert not target.exists(), "nothing written from a corrupt artifact"


def test_tampered_content_names_the_file(tree: dict[str, Path], ctx: RunContext) -> None:
    backup = dump_files(paths_of(tree), ctx)
    artifact = ctx.staging / backup.artifacts[0].name
    tampered = retar(artifact, "config/conf.d/a.conf", b"a = 2\n")
    # A consistent artifact (its own sha256 matches) whose content is not what was dumped.
    backup.artifacts = [consistent_artifact(ctx, artifact, tampered, level=1)]
    verification = verify_files(backup, ctx.staging, ctx)
    assert not verification.passed
    assert verification.differences == ["file checksum differs: config/conf.d/a.conf"]


def test_flipped_byte_and_truncation_fail_verification(
    tree: dict[str, Path], ctx: RunContext
) -> None:
    backup = dump_files(paths_of(tree), ctx)
    artifact = ctx.staging / backup.artifacts[0].name
    good = artifact.read_bytes()

    artifact.write_bytes(flip_byte(good, len(good) // 3, 0x01))
    verification = verify_files(backup, ctx.staging, ctx)
    assert verification.status == "failed"
    assert any(
        "sha256" in line and "config.files.tar.zst" in line for line in verification.differences
    )

    artifact.write_bytes(good[: len(good) // 2])
    verification = verify_files(backup, ctx.staging, ctx)
    assert verification.status == "failed"
    assert any("truncated" in line for line in verification.differences)

    artifact.write_bytes(good)
    assert verify_files(backup, ctx.staging, ctx).passed


def test_missing_artifact_fails_verification(tree: dict[str, Path], ctx: RunContext) -> None:
    backup = dump_files(paths_of(tree), ctx)
    (ctx.staging / backup.artifacts[0].name).unlink()
    verification = verify_files(backup, ctx.staging, ctx)
    assert verification.status == "failed"
    assert verification.differences == [
        f"artifact config.files.tar.zst: missing at {ctx.staging / 'config.files.tar.zst'}"
    ]


# ---------------------------------------------------------------------------------- system paths


@pytest.mark.parametrize("secret", ["/etc/shadow", "/root/.ssh/id_rsa", "/etc/passwd"])
def test_system_files_are_never_archived(
    ctx: RunContext, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    with pytest.raises(BackupError, match=r"config file config/secret: refused: .*system dir"):
        dump_files([("config/secret", Path(secret))], ctx)
    assert list(ctx.staging.iterdir()) == []


def test_a_config_dir_that_became_a_link_into_a_system_dir_is_refused(
    tree: dict[str, Path], ctx: RunContext, system_victim: Path
) -> None:
    (system_victim / "app.conf").write_text("secret = 1\n")
    conf = tree["confdir"].parent / "etc"
    conf.symlink_to(system_victim, target_is_directory=True)

    with pytest.raises(BackupError, match=rf"resolves to {system_victim}/app.conf, which lies"):
        dump_files([("config/app.conf", conf / "app.conf")], ctx)
    assert list(ctx.staging.iterdir()) == []


def test_restore_never_writes_through_a_link_into_a_system_dir(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path, system_victim: Path
) -> None:
    backup = dump_files(paths_of(tree), ctx)
    out = tmp_path / "restored"
    out.symlink_to(system_victim, target_is_directory=True)

    with pytest.raises(BackupError, match=r"restore of compose/.env: refused: .*system dir"):
        restore_files(
            backup, ctx.staging / "config.files.tar.zst", {"compose/.env": out / "env"}, ctx
        )
    assert list(system_victim.iterdir()) == []


def test_restore_checks_each_member_below_a_restored_dir(
    tree: dict[str, Path], ctx: RunContext, tmp_path: Path, system_victim: Path
) -> None:
    backup = dump_files(paths_of(tree), ctx)
    out = tmp_path / "restored"
    out.mkdir()
    (out / "nested").symlink_to(system_victim, target_is_directory=True)

    with pytest.raises(BackupError, match=r"restore of config/conf.d/nested/b.conf: refused"):
        restore_files(backup, ctx.staging / "config.files.tar.zst", {"config/conf.d": out}, ctx)
    assert list(system_victim.iterdir()) == []
