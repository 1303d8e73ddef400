"""A thinking budget per assistant, for its complex turns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: the THINKING_BUDGET setting applies; 0: no thinking; -1: the model decides.
    op.add_column("assistants", sa.Column("thinking_budget", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("assistants", "thinking_budget")
