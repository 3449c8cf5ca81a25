"""Release 1.1.0: the worker records one event per cycle."""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE worker_events (
            id BIGSERIAL PRIMARY KEY,
            worker TEXT NOT NULL,
            note TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX worker_events_created_at ON worker_events (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE worker_events")
