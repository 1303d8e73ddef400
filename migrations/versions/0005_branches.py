"""Messages form a tree: a parent link per message and an active leaf per conversation.

A regenerated reply is a second child of its user turn; an edited turn is a second
child of the edited turn's parent. The conversation shows one branch: the path from
its ``leaf_id`` up to a root. Existing conversations were linear, so the backfill links
each message to the one before it by seq and makes the newest message the leaf.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "fk_messages_parent", "messages", "messages", ["parent_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index("ix_messages_parent", "messages", ["conversation_id", "parent_id"])
    op.add_column("conversations", sa.Column("leaf_id", sa.Uuid(), nullable=True))
    op.execute(
        """
        UPDATE messages AS m SET parent_id = p.id
        FROM messages AS p
        WHERE p.conversation_id = m.conversation_id AND p.seq = m.seq - 1
        """
    )
    op.execute(
        """
        UPDATE conversations AS c SET leaf_id = m.id
        FROM messages AS m
        WHERE m.conversation_id = c.id AND m.seq = c.last_seq
        """
    )


def downgrade() -> None:
    op.drop_column("conversations", "leaf_id")
    op.drop_index("ix_messages_parent", table_name="messages")
    op.drop_constraint("fk_messages_parent", "messages", type_="foreignkey")
    op.drop_column("messages", "parent_id")
