"""The fake kubelet: it turns stored pods into running (or failing) pods by writing the
status fields a real kubelet writes, and "runs" Job pods through handlers a test registers.

A pod is never really started; its readiness follows a clock (`ready_delay`) and the failure
mode a test set for its image, which is how the product's gate sees a crash loop, an image
pull failure or a pod that never becomes ready.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from support.fake_kube_rules import FakeKubeError, Obj
from support.fake_kube_store import FakeKubeStore, now_rfc3339

FakeJobHandler = Callable[[list[str], dict[str, str]], tuple[int, str]]
"""(argv of the Job's first container, its environment) -> (exit code, log text)."""

FAILURE_MODES = ("never_ready", "crash_loop", "image_pull", "progress_deadline")


@dataclass(frozen=True)
class FakeImageFailure:
    """How pods of one image reference misbehave."""

    mode: str
    log: str = ""


@dataclass
class _JobRun:
    thread: threading.Thread
    result: tuple[int, str] | None = None
    finished_at: str = ""


@dataclass
class _PodLife:
    created: float
    ip: str
    started_at: str
    ready_since: float | None = None
    ready_changed_at: str = ""
    crashes_logged: int = 0
    run: _JobRun | None = None


def _container_id(seed: str) -> str:
    return f"containerd://{hashlib.sha256(seed.encode()).hexdigest()}"


def fake_image_id(image: str) -> str:
    """`docker-pullable://<repo>@sha256:<sha256 of the reference>`, stable per reference."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)
    if ":" in last[-1]:
        repo = repo[: repo.rfind(":")]
    if "@sha256:" in image:
        return f"docker-pullable://{image}"
    return f"docker-pullable://{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


@dataclass
class FakeKubelet:
    """Writes pod statuses; `available()` tells controllers whether a pod counts as available."""

    store: FakeKubeStore
    ready_delay: float = 0.3
    crash_interval: float = 0.3
    failures: dict[str, FakeImageFailure] = field(default_factory=dict)
    job_handlers: list[tuple[str, FakeJobHandler]] = field(default_factory=list)
    _pods: dict[str, _PodLife] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ips: int = 0

    def sync(self) -> None:
        now = time.monotonic()
        seen = set()
        for pod in self.store.list("pods"):
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            with self._lock:
                life = self._pods.get(uid)
                if life is None:
                    self._ips += 1
                    ip = f"10.244.{self._ips // 250}.{self._ips % 250 + 2}"
                    life = self._pods[uid] = _PodLife(now, ip, now_rfc3339())
            status = self._status(pod, life, now)
            if status != pod.get("status"):
                meta = pod["metadata"]
                # A pod deleted since the list is a 404 here: the next tick forgets it.
                with contextlib.suppress(FakeKubeError):
                    self.store.put_status("pods", meta["namespace"], meta["name"], status)
        with self._lock:
            for uid in [uid for uid in self._pods if uid not in seen]:
                del self._pods[uid]

    def available(self, pod: Obj, min_ready_seconds: int = 0) -> bool:
        """Ready for at least minReadySeconds, the real definition of an available pod."""
        with self._lock:
            life = self._pods.get(pod["metadata"]["uid"])
            since = life.ready_since if life else None
        return since is not None and time.monotonic() - since >= min_ready_seconds

    def _failure(self, image: str) -> FakeImageFailure | None:
        return self.failures.get(image)

    def _status(self, pod: Obj, life: _PodLife, now: float) -> Obj:
        spec, meta = pod.get("spec", {}), pod["metadata"]
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return dict(pod["status"])
        if spec.get("restartPolicy", "Always") != "Always":
            return self._job_status(pod, life)
        elapsed = now - life.created
        statuses = [self._long_running(pod, c, life, elapsed) for c in spec.get("containers", [])]
        started = any(s.get("started") or s.get("restartCount") for s in statuses)
        ready = bool(statuses) and all(s["ready"] for s in statuses)
        with self._lock:
            if ready and life.ready_since is None:
                life.ready_since, life.ready_changed_at = now, now_rfc3339()
            elif not ready and life.ready_since is not None:
                life.ready_since, life.ready_changed_at = None, now_rfc3339()
        unready = [s["name"] for s in statuses if not s["ready"]]
        return self._pod_status(
            meta, life, "Running" if started else "Pending", statuses, ready, unready
        )

    def _long_running(self, pod: Obj, container: Obj, life: _PodLife, elapsed: float) -> Obj:
        image, name = str(container.get("image", "")), str(container["name"])
        meta = pod["metadata"]
        failure = self._failure(image)
        status: Obj = {
            "name": name,
            "image": image,
            "imageID": fake_image_id(image),
            "containerID": _container_id(meta["uid"] + name),
            "restartCount": 0,
            "lastState": {},
            "ready": False,
            "started": True,
            "state": {"running": {"startedAt": life.started_at}},
        }
        mode = failure.mode if failure else ""
        if mode == "image_pull":
            reason = "ErrImagePull" if elapsed < self.crash_interval else "ImagePullBackOff"
            message = (
                f"rpc error: code = NotFound desc = failed to pull and unpack image "
                f'"{image}": not found'
            )
            if reason == "ImagePullBackOff":
                message = f'Back-off pulling image "{image}": ErrImagePull: {message}'
            status.update(
                imageID="", started=False, state={"waiting": {"reason": reason, "message": message}}
            )
            status.pop("containerID")
        elif mode == "crash_loop":
            crashes = int(elapsed / self.crash_interval)
            if crashes:
                text = (
                    failure.log if failure and failure.log else f"fake: {name} exited with code 1"
                )
                with self._lock:
                    new_lines = crashes - life.crashes_logged
                    life.crashes_logged = crashes
                for _ in range(new_lines):
                    self.store.append_pod_log(
                        meta["namespace"], meta["name"], name, text.rstrip("\n") + "\n"
                    )
                status.update(
                    restartCount=crashes,
                    started=False,
                    state={
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off 10s restarting failed container={name} "
                            f"pod={meta['name']}_{meta['namespace']}({meta['uid']})",
                        }
                    },
                    lastState={
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": life.started_at,
                            "finishedAt": now_rfc3339(),
                            "containerID": status["containerID"],
                        }
                    },
                )
        elif mode not in ("never_ready", "progress_deadline"):
            status["ready"] = elapsed >= self.ready_delay
        return status

    def _pod_status(
        self,
        meta: Obj,
        life: _PodLife,
        phase: str,
        statuses: list[Obj],
        ready: bool,
        unready: list[str],
        reason: str = "ContainersNotReady",
    ) -> Obj:
        created = meta.get("creationTimestamp", life.started_at)
        changed = life.ready_changed_at or created

        def condition(kind: str, ok: bool, stamp: str = created) -> Obj:
            found: Obj = {
                "type": kind,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": stamp,
            }
            if not ok:
                found["reason"] = reason
                if reason == "ContainersNotReady":
                    found["message"] = f"containers with unready status: [{' '.join(unready)}]"
            return found

        status: Obj = {
            "phase": phase,
            "conditions": [
                condition("PodReadyToStartContainers", True),
                condition("Initialized", True),
                condition("Ready", ready, changed),
                condition("ContainersReady", ready, changed),
                condition("PodScheduled", True),
            ],
            "hostIP": "10.0.0.10",
            "hostIPs": [{"ip": "10.0.0.10"}],
            "podIP": life.ip,
            "podIPs": [{"ip": life.ip}],
            "startTime": created,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        }
        return status

    # ------------------------------------------------------------ Job pods

    def _job_status(self, pod: Obj, life: _PodLife) -> Obj:
        meta, containers = pod["metadata"], pod["spec"]["containers"]
        first = containers[0]
        image = str(first.get("image", ""))
        failure = self._failure(image)
        if failure and failure.mode == "image_pull":
            return self._pod_status(
                meta,
                life,
                "Pending",
                [self._long_running(pod, c, life, 1e9) for c in containers],
                False,
                [c["name"] for c in containers],
            )
        with self._lock:
            if life.run is None:
                life.run = self._start_run(pod, first, failure)
            run = life.run
        base: Obj = {
            "name": first["name"],
            "image": image,
            "imageID": fake_image_id(image),
            "containerID": f"containerd://{hashlib.sha256(meta['uid'].encode()).hexdigest()}",
            "restartCount": 0,
            "lastState": {},
            "ready": False,
        }
        if run.result is None:
            base.update(ready=True, started=True, state={"running": {"startedAt": life.started_at}})
            return self._pod_status(meta, life, "Running", [base], True, [])
        code, log = run.result
        self.store.set_pod_log(meta["namespace"], meta["name"], first["name"], log)
        base.update(
            started=False,
            state={
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": life.started_at,
                    "finishedAt": run.finished_at,
                    "containerID": base["containerID"],
                }
            },
        )
        return self._pod_status(
            meta,
            life,
            "Succeeded" if code == 0 else "Failed",
            [base],
            False,
            [],
            reason="PodCompleted",
        )

    def _start_run(self, pod: Obj, container: Obj, failure: FakeImageFailure | None) -> _JobRun:
        argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
        env = self._environment(pod["metadata"]["namespace"], container)
        handler = self._handler(pod, str(container.get("image", "")))
        if failure is not None and failure.mode == "crash_loop":
            text = failure.log or f"fake: {container['name']} exited with code 1"

            def handler(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
                return 1, text

        run = _JobRun(threading.Thread(target=lambda: None))

        def target() -> None:
            try:
                result = handler(argv, env)
            except Exception:
                result = (1, traceback.format_exc())
            run.finished_at = now_rfc3339()
            run.result = result

        run.thread = threading.Thread(target=target, name="fake-kube-job", daemon=True)
        run.thread.start()
        return run

    def _handler(self, pod: Obj, image: str) -> FakeJobHandler:
        job = (pod["metadata"].get("labels") or {}).get("job-name", "")
        for match, handler in reversed(self.job_handlers):
            if match in (image, job):
                return handler
        return lambda argv, env: (0, "")

    def _environment(self, namespace: str, container: Obj) -> dict[str, str]:
        """The container's environment as the kubelet resolves it, ConfigMap and Secret
        references included (a missing one resolves to nothing here, not a pod error)."""

        def source(kind: str, name: str) -> dict[str, str]:
            found = self.store.get(kind, namespace, name) or {}
            data: dict[str, Any] = found.get("data") or {}
            if kind == "secrets":
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
            return {k: str(v) for k, v in data.items()}

        env: dict[str, str] = {}
        for ref in container.get("envFrom", []):
            if "configMapRef" in ref:
                env.update(source("configmaps", ref["configMapRef"]["name"]))
            if "secretRef" in ref:
                env.update(source("secrets", ref["secretRef"]["name"]))
        for item in container.get("env", []):
            value_from = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                env[item["name"]] = source("secrets", ref["name"]).get(ref["key"], "")
            elif "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                env[item["name"]] = source("configmaps", ref["name"]).get(ref["key"], "")
        return env
