"""Release 1.3.0-broken-migration, step 2 of 2 (fails): the bug this release ships fills a
column no revision created. Its own transaction rolls back (the duration_ms column with
it); 0003 stays applied and `alembic upgrade head` exits 1: a half-migrated database."""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE tasks ADD COLUMN duration_ms INTEGER")
    op.execute("UPDATE tasks SET category = queue")


def downgrade() -> None:
    op.execute("ALTER TABLE tasks DROP COLUMN duration_ms")
