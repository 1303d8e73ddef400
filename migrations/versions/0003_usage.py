"""Token usage per user per day (quotas), and a per-user quota override.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )
    # NULL: the DAILY_TOKEN_QUOTA setting applies; 0: no quota for this user.
    op.add_column("users", sa.Column("daily_token_quota", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "daily_token_quota")
    op.drop_table("usage_daily")
