"""The demo stack's releases and its ledger as the upgrade, rollback and crash tests see
them: a helper module of the end-to-end tier, imported by those test modules."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.demo import DEMO_DIR, DemoDeployment


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


ENV_FILE = DEMO_DIR / ".env"


@dataclass
class Upgrades:
    deployment: DemoDeployment
    stack_file: Path
    backups: Path

    @property
    def state(self) -> Path:
        return Path(self.deployment.env["OPSFLOW_STATE_DIR"]) / "demo"

    def upgrade(
        self, version: str, *env: dict[str, str], logical_date: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.deployment.dags_test(
            {"version": version}, *env, dag_id="demo__upgrade", logical_date=logical_date
        )

    def upgrade_conf(self, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.deployment.dags_test(conf, dag_id="demo__upgrade")

    def entries(self) -> list[dict[str, Any]]:
        """The ledger as plain JSON lines, folded by entry id (newest line wins)."""
        path = self.state / "ledger.jsonl"
        folded: dict[str, dict[str, Any]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            folded[entry["entry_id"]] = entry
        return list(folded.values())

    def current(self) -> str | None:
        done = [
            e
            for e in self.entries()
            if e["action"] in ("deploy", "upgrade", "rollback") and e["outcome"] == "succeeded"
        ]
        return max(done, key=lambda e: e["ended_at"])["version"] if done else None

    def last(self, action: str) -> dict[str, Any]:
        return max((e for e in self.entries() if e["action"] == action), key=started)

    def lock_free(self) -> bool:
        return not (self.state / "lock.json").exists()

    def serving(self, version: str) -> bool:
        try:
            return self.deployment.get("/version")[1].get("version") == version and (
                self.deployment.get("/health/ready")[0] == 200
            )
        except OSError:
            return False

    def arrive_at(self, version: str) -> None:
        """Make ``version`` the current, healthy release, rebuilding from scratch if needed."""
        if self.current() == version and self.serving(version) and self.lock_free():
            return
        (self.state / "lock.json").unlink(missing_ok=True)
        self.deployment.compose("down", "--volumes", "--remove-orphans")
        for step in dict.fromkeys(["1.0.0", version]):
            result = self.deployment.dags_test({"version": step})
            assert result.returncode == 0, out_of(result)[-4000:]
        assert self.serving(version)


def started(entry: dict[str, Any]) -> str:
    return str(entry["started_at"])


@contextmanager
def upgrade_stack(deployment: DemoDeployment, backups: Path) -> Iterator[Upgrades]:
    """The e2e stack file with backups in ``backups``; the stack file and the demo .env are
    put back afterwards. Each test module wraps it in its own module-scoped fixture."""
    stack_file = deployment.stacks / "demo.yaml"
    original_stack, original_env = stack_file.read_text(), ENV_FILE.read_bytes()
    data = yaml.safe_load(original_stack)
    data["backup"]["local_dir"] = str(backups)
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield Upgrades(deployment, stack_file, backups)
    finally:
        stack_file.write_text(original_stack)
        ENV_FILE.write_bytes(original_env)
