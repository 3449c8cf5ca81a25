"""Release 1.0.0: the tasks the api accepts and the workers process."""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tasks (
            id BIGSERIAL PRIMARY KEY,
            queue TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'queued',
            result TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            finished_at TIMESTAMPTZ
        )
        """
    )
    op.execute("CREATE INDEX tasks_status_idx ON tasks (status)")


def downgrade() -> None:
    op.execute("DROP TABLE tasks")
