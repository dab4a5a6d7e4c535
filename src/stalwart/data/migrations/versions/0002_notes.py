"""notes and their tags

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stalwart.data.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_notes_account_id_accounts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notes"),
    )
    op.create_index("ix_notes_owner_created", "notes", ["account_id", "created_at", "id"])
    op.create_table(
        "note_tags",
        sa.Column("note_id", sa.String(36), nullable=False),
        sa.Column("tag", sa.String(50), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["note_id"], ["notes.id"], name="fk_note_tags_note_id_notes", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_note_tags_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("note_id", "tag", name="pk_note_tags"),
    )
    op.create_index("ix_note_tags_owner_tag", "note_tags", ["account_id", "tag"])


def downgrade() -> None:
    op.drop_index("ix_note_tags_owner_tag", table_name="note_tags")
    op.drop_table("note_tags")
    op.drop_index("ix_notes_owner_created", table_name="notes")
    op.drop_table("notes")
