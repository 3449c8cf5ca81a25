"""Release 1.3.0-broken-migration, step 1 of 2 (applies and commits): a task event log,
filled from the tasks there are."""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE task_events (
            id BIGSERIAL PRIMARY KEY,
            task_id BIGINT NOT NULL REFERENCES tasks (id),
            event TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL
        )
        """
    )
    op.execute(
        "INSERT INTO task_events (task_id, event, at) SELECT id, 'created', created_at FROM tasks"
    )


def downgrade() -> None:
    op.execute("DROP TABLE task_events")
