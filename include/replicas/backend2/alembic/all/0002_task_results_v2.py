"""Release 1.1.0: payloads and results become JSON, tasks count their attempts, and the
status a finished task gets is 'succeeded' (1.0.0's workers wrote 'done').

Schema and data at once: the rows 1.0.0 wrote are converted, and the new CHECK refuses
what a 1.0.0 worker would write, so going back to 1.0.0 needs the pre-upgrade data.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE tasks ALTER COLUMN payload TYPE JSONB USING payload::jsonb")
    op.execute("ALTER TABLE tasks ALTER COLUMN result TYPE JSONB USING result::jsonb")
    op.execute("ALTER TABLE tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    op.execute("UPDATE tasks SET status = 'succeeded', attempts = 1 WHERE status = 'done'")
    op.execute(
        "ALTER TABLE tasks ADD CONSTRAINT tasks_status_check "
        "CHECK (status IN ('queued', 'running', 'succeeded', 'failed'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE tasks DROP CONSTRAINT tasks_status_check")
    op.execute("UPDATE tasks SET status = 'done' WHERE status = 'succeeded'")
    op.execute("ALTER TABLE tasks DROP COLUMN attempts")
    op.execute("ALTER TABLE tasks ALTER COLUMN result TYPE TEXT USING result::text")
    op.execute("ALTER TABLE tasks ALTER COLUMN payload TYPE TEXT USING payload::text")
