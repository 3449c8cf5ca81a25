"""A restored file (Redis's ``dump.rdb``) written into a Kubernetes stack's claim by a pod
that mounts it (``kubernetes_claim_pods.py``) and receives the bytes through a port-forward,
the way backups reach the database pods: no exec, no copy of the data in the API server.

The receiver writes a temporary file beside the target, checks its size and SHA-256 against
what was sent, gives it the owner and mode of the file it replaces (the directory's owner
and 0600 when there is none) and renames it over the target, then syncs the directory: the
same rules as the restore into a host directory (``backup/redis.py``).
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes_claim_pods import MOUNT, REPORT_MARK, ClaimPods
from opsflow.runtimes.kubernetes_forward import forwarded
from opsflow.runtimes.process import LineLogger

ROLE = "restore"
PORT = 7070
READY = b"ready\n"
CHUNK = 1 << 20
CONNECT_FOR = 60.0
HELLO_WAIT = 5.0
ANSWER_WAIT = 300.0  # the receiver syncs the file before it answers
# Runs in the pod as ``python3 -c RECEIVER MOUNT NAME SIZE SHA256 PORT``.
RECEIVER = f"""\\
import hashlib, json, os, socket, sys
mount, name, size, digest, port = sys.argv[1:6]
size = int(size)
server = socket.create_server(("", int(port)))
server.settimeout(600)
conn, _ = server.accept()
conn.sendall({READY!r})
target = os.path.join(mount, name)
tmp = os.path.join(mount, "." + name + ".restore-" + str(os.getpid()))
seen, got = hashlib.sha256(), 0
with open(tmp, "wb") as out:
    while got < size:
        chunk = conn.recv(min(1 << 20, size - got))
        if not chunk:
            break
        out.write(chunk)
        seen.update(chunk)
        got += len(chunk)
    out.flush()
    os.fsync(out.fileno())
aof = [n for n in ("appendonlydir", "appendonly.aof") if os.path.exists(os.path.join(mount, n))]
report = {{"file": target, "bytes": got, "aof": aof}}
try:
    if got != size or seen.hexdigest() != digest:
        raise OSError(f"received {{got}} of {{size}} bytes, sha256 {{seen.hexdigest()}}")
    try:
        st = os.stat(target)
        uid, gid, mode = st.st_uid, st.st_gid, st.st_mode & 0o7777
    except FileNotFoundError:
        st = os.stat(mount)
        uid, gid, mode = st.st_uid, st.st_gid, 0o600
    if (os.stat(tmp).st_uid, os.stat(tmp).st_gid) != (uid, gid):
        os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, target)
    fd = os.open(mount, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    report["owner"] = [uid, gid]
except OSError as error:
    report["error"] = str(error)
    if os.path.exists(tmp):
        os.unlink(tmp)
print("{REPORT_MARK}" + json.dumps(report), flush=True)
conn.sendall(b"error\\n" if "error" in report else b"ok\\n")
conn.close()
sys.exit(1 if "error" in report else 0)
"""


def _digest(path: Path) -> str:
    seen = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            seen.update(chunk)
    return seen.hexdigest()


def _send(port: int, source: Path, ended: Callable[[], bool]) -> bytes:
    """Send ``source`` once the receiver said it is ready; its answer (``ok``/``error``,
    empty when the pod ``ended`` first). The forward accepts before the receiver listens,
    so a connection that closes without the ready line is tried again."""
    deadline = time.monotonic() + CONNECT_FOR
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=HELLO_WAIT) as conn:
            try:
                hello = conn.recv(len(READY))
            except TimeoutError:
                hello = b""
            if hello == READY:
                conn.settimeout(ANSWER_WAIT)
                with source.open("rb") as handle:
                    while chunk := handle.read(CHUNK):
                        conn.sendall(chunk)
                # No half-close: a port-forward ends both ways at once; the receiver
                # knows the size and answers when it has it all.
                return conn.recv(64)
        if ended():
            return b""
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"the receiver did not answer within {CONNECT_FOR:.0f}s")
        time.sleep(1.0)


def put_file(
    pods: ClaimPods, client: Any, claim: str, name: str, source: Path, log: LineLogger
) -> dict[str, Any]:
    """Replace ``name`` at the root of ``claim`` with ``source``; the receiver's report."""
    size = source.stat().st_size
    args = [MOUNT, name, str(size), _digest(source), str(PORT)]
    with pods.started(ROLE, claim, RECEIVER, args, log, port=PORT) as pod:
        pods.wait(pod, log, running=True)
        with forwarded(client, pods.namespace, pod, PORT) as port:
            answer = _send(port, source, lambda: pods.ended(pod))
        report = pods.report(pod, log)
    if "error" in report or answer.strip() != b"ok":
        raise RuntimeFailure(
            f"writing {name} into claim {claim} failed: {report.get('error') or answer!r}"
        )
    log.info("wrote %s (%d bytes) into claim %s through pod %s", name, size, claim, pod)
    if report.get("aof"):
        log.info("claim %s also holds %s: a server with appendonly yes loads that, not %s",
                 claim, ", ".join(report["aof"]), name)  # fmt: skip
    return report
