"""Serve ``airflow dags test`` runs from one warmed-up process, each run in a fork of it.

Every ``airflow dags test`` spends about 15 s of CPU before its first task does anything:
importing Airflow, and Cadwyn building the versioned routes of the in-process execution
API on its first request. The suite runs about a hundred of them on two cores. This
program pays that once: it imports the CLI and builds the API's routes (no thread is
started, so forking is safe), then for each request forks a child that runs the very CLI
``airflow dags test`` runs (``airflow.__main__.main``) with the request's environment,
its stdout and stderr in files. Airflow disposes of its database pool in a forked child.

Run through ``scripts/airflow --exec`` with a deployment's environment; Airflow's settings
are read once, so a request whose Airflow settings differ is answered ``stale`` and the
caller runs a subprocess instead (tests/support/dag_tests.py). Protocol: one JSON line in
per run ``{"argv", "env", "stdout", "stderr"}``, answered ``{"pid"}`` then ``{"rc"}``.
"""

from __future__ import annotations

import json
import os
import sys

# The control channel is the original stdout; everything Airflow prints goes elsewhere.
control = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

from airflow.__main__ import main  # noqa: E402
from airflow.cli.commands import dag_command  # noqa: E402,F401  (imported lazily by the CLI)
from airflow.sdk.execution_time.supervisor import in_process_api_server  # noqa: E402

app = in_process_api_server().app
initialize = getattr(app, "_cadwyn_initialize", None)
if callable(initialize):  # otherwise done on the first request, in every run
    initialize()

FROZEN = ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "PYTHONPATH")
settings = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__") or k in FROZEN}


def reply(message: dict[str, object]) -> None:
    control.write(json.dumps(message) + "\n")
    control.flush()


def stale(env: dict[str, str]) -> list[str]:
    """Airflow settings of the request that differ from the ones read at start."""
    asked = {k: v for k, v in env.items() if k.startswith("AIRFLOW__") or k in FROZEN}
    return sorted(k for k in set(asked) | set(settings) if asked.get(k) != settings.get(k))


def run_child(request: dict[str, object]) -> None:
    """In the forked child: become ``airflow ARGV`` with the request's environment."""
    os.setsid()  # a timeout kills the run and everything it started
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    sys.argv = ["airflow", *request["argv"]]  # type: ignore[misc]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


sys.stdout.flush()
sys.stderr.flush()
reply({"ready": True})
for line in sys.stdin:
    request = json.loads(line)
    differing = stale(request["env"])
    if differing:
        reply({"stale": differing})
        continue
    pid = os.fork()
    if pid == 0:
        run_child(request)
    reply({"pid": pid})
    _, status = os.waitpid(pid, 0)
    reply({"rc": os.waitstatus_to_exitcode(status)})
