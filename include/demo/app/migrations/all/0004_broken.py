"""Release 1.3.0-broken-migration, second step: fails half-way on purpose.

It creates a table and copies rows, then runs invalid SQL. Its transaction rolls back,
0003 stays applied, and ``alembic upgrade head`` exits non-zero: a half-migrated database.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE item_tags (item_id BIGINT NOT NULL, tag TEXT NOT NULL)")
    op.execute("INSERT INTO item_tags (item_id, tag) SELECT id, 'legacy' FROM items")
    # The bug this release ships: a column that does not exist.
    op.execute("UPDATE items SET category = 'legacy'")


def downgrade() -> None:
    op.execute("DROP TABLE item_tags")
