"""A failed command is summed up by the first error it printed, scrubbed and bounded.

Migration tools end with a generic line ("Deploy failed", a traceback's footer) while the
cause (``column "x" of relation "y" contains null values``) comes earlier; the summary line
is what the step record and the alert carry, so it must name the cause and no secret.
Every test runs a real child process through the runner.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException

from opsflow.notifiers.message import error_first_line
from opsflow.operators.runtime_step import RuntimeStepOperator
from opsflow.operators.steps import StepRecord, first_line
from opsflow.runtimes.compose import ComposeProject
from opsflow.runtimes.process import CommandFailed, ProcessRunner, is_error_line
from opsflow.stack.loader import parse_stack

LOG = logging.getLogger("test.failure_causes")
CAUSE = 'psycopg.errors.NotNullViolation: column "x" of relation "y" contains null values'
# What a migration tool prints when a step fails: progress, a traceback, a generic footer.
MIGRATION = f"""
import sys
print("INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.")
print("INFO  [alembic.runtime.migration] Running upgrade 0003 -> 0004, require x")
print("Traceback (most recent call last):")
print('  File "/app/migrations/versions/0004.py", line 12, in upgrade')
print('    op.execute("ALTER TABLE y ALTER COLUMN x SET NOT NULL")')
print({CAUSE!r})
for i in range(60):
    print("  noise", i)
print("")
print("Deploy failed")
sys.exit(2)
"""


def failure(script: str, runner: ProcessRunner | None = None) -> CommandFailed:
    with pytest.raises(CommandFailed) as failed:
        (runner or ProcessRunner(log=LOG)).run([sys.executable, "-c", script])
    return failed.value


def test_the_summary_names_the_first_error_line_not_the_last_line() -> None:
    failed = failure(MIGRATION)
    seconds = failed.result.seconds
    assert failed.summary == f"exited with 2 after {seconds:.1f}s: {CAUSE}"
    # The error line scrolled out of the kept tail; it was caught while streaming.
    assert CAUSE not in failed.result.tail
    assert failed.result.tail[-1] == "Deploy failed"


def test_without_an_error_line_the_last_non_empty_line_is_the_cause() -> None:
    failed = failure("import sys\nprint('step 1 ok')\nprint('Deploy failed')\nprint()\nsys.exit(3)")
    assert failed.summary == f"exited with 3 after {failed.result.seconds:.1f}s: Deploy failed"


def test_passwords_in_the_error_line_are_masked() -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("Kn0wn-t0-A1rfl0w-xyz")  # e.g. a connection password fetched by the task
    script = (
        "import sys\n"
        "print('connecting to postgresql://app:Hunter2-pw@db:5432/app')\n"
        "print('sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection to "
        "postgresql://app:Hunter2-pw@db:5432/app failed: PASSWORD: Hunter2-pw, "
        "password=Hunter2-pw, Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc, "
        "api key Kn0wn-t0-A1rfl0w-xyz')\n"
        "sys.exit(1)\n"
    )
    failed = failure(script)
    assert failed.summary == (
        f"exited with 1 after {failed.result.seconds:.1f}s: "
        "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection to "
        "postgresql://***@db:5432/app failed: PASSWORD: ***, password=***, "
        "Authorization: Bearer ***, api key ***"
    )
    message = str(failed)
    assert "Hunter2-pw" not in message
    assert "Kn0wn-t0-A1rfl0w-xyz" not in message


def test_prose_about_credentials_is_left_alone() -> None:
    line = "FATAL:  password authentication failed for user app; invalid token received"
    failed = failure(f"import sys\nprint({line!r})\nsys.exit(1)")
    assert failed.summary == f"exited with 1 after {failed.result.seconds:.1f}s: {line}"


def test_a_long_error_line_is_bounded_after_scrubbing() -> None:
    line = "ERROR:  " + "y" * 500 + " password=" + "s" * 40
    failed = failure(f"import sys\nprint({line!r})\nprint('Deploy failed')\nsys.exit(1)")
    cause = failed.summary.split(": ", 1)[1]
    assert cause == "ERROR:  " + "y" * 209 + "..."
    assert len(cause) == 220


@pytest.mark.parametrize(
    "line",
    [
        'ERROR:  column "x" of relation "y" contains null values',
        "ERROR [alembic.util.messaging] Can't locate revision identified by '0005'",
        '2026-01-02 03:04:05.678 UTC [42] ERROR:  relation "items" does not exist',
        'FATAL:  password authentication failed for user "app"',
        "error: failed to push some refs",
        "Error response from daemon: No such container: api",
        "FAILED: Can't locate revision identified by '0005'",
        'psycopg2.errors.UndefinedColumn: column "category" of relation "items" does not exist',
        "sqlalchemy.exc.IntegrityError: (psycopg.errors.NotNullViolation) null value",
        "ValueError: invalid literal for int() with base 10: 'x'",
        "panic: runtime error: index out of range [3] with length 3",
        'time="2026-01-02T03:04:05Z" level=error msg="migration 7 failed"',
        "api-1  | ERROR: boom",
    ],
)
def test_error_lines_are_recognised(line: str) -> None:
    assert is_error_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        '  File "/app/x.py", line 3, in <module>',
        "    raise ValueError('x')",
        "INFO  [alembic.runtime.migration] Running upgrade 0003 -> 0004, add error codes",
        "The above exception was the direct cause of the following exception:",
        "Deploy failed",
        "0 errors, 2 warnings",
        "ERROR_COUNT=0",
    ],
)
def test_other_lines_are_not_error_lines(line: str) -> None:
    assert not is_error_line(line)


def test_the_migrate_step_record_and_alert_carry_the_cause(tmp_path: Path) -> None:
    """The runtime step's exception: its first line becomes the record detail and the alert."""
    stack = parse_stack(
        {
            "name": "shop",
            "runtime": {"kind": "compose", "project": "opsflow-shop", "working_dir": str(tmp_path)},
            "services": [{"name": "api", "build": {"context": "."}}],
            "migration": {"tool": "alembic", "service": "api", "command": ["alembic"]},
        },
        tmp_path / "shop.yaml",
    )
    operator = RuntimeStepOperator(
        task_id="migrate", stack_name="shop", step="migrate", version="1.3.0"
    )
    record = StepRecord(step="migrate", version="1.3.0")
    with pytest.raises(AirflowException) as raised:
        operator._run(
            ComposeProject.for_stack(stack, tmp_path), [sys.executable, "-c", MIGRATION], record
        )
    detail = first_line(str(raised.value))
    seconds = detail.split(" after ", 1)[1].split("s:", 1)[0]
    assert detail == f"migrate of shop 1.3.0 failed: exited with 2 after {seconds}s: {CAUSE}"
    assert error_first_line(raised.value) == f"AirflowException: {detail}"
