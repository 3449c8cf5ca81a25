"""Release 1.3.0-broken-migration, first step: succeeds and stays applied."""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_log (
            id BIGSERIAL PRIMARY KEY,
            action TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("INSERT INTO audit_log (action) VALUES ('schema 0003 applied')")


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
