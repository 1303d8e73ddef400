"""Router: skill examples (phrases of the description, and turns learned from
feedback), the embedder behind every vector,
a model for complex turns per assistant, and per-user exact search.

Each user's team holds tens to hundreds of vectors, and every search is filtered to
one user. An HNSW index over everyone's vectors with that filter is approximate and
can return too few rows after filtering (pgvector 0.6 has no iterative scans), while an
exact cosine scan of one user's rows, found through a btree on the owner, is exact and
takes microseconds. So the owner gets the index, and the HNSW index goes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_skills_embedding", table_name="skills")
    # 1024 dimensions: hashed character n-grams collide far less than in 256 (routing
    # accuracy 0.63 → 0.79 on tests/data/routing.jsonl). Old vectors are dropped; the
    # server re-embeds every row with a NULL embedder when it starts.
    op.execute("UPDATE skills SET embedding = NULL")
    op.alter_column(
        "skills", "embedding", type_=Vector(1024), postgresql_using="embedding::vector(1024)"
    )
    op.add_column("assistants", sa.Column("complex_model", sa.String(100), nullable=True))
    op.add_column("skills", sa.Column("owner_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE skills SET owner_id = a.owner_id FROM assistants a WHERE a.id = skills.assistant_id"
    )
    op.alter_column("skills", "owner_id", nullable=False)
    op.create_foreign_key(
        "fk_skills_owner", "skills", "users", ["owner_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index("ix_skills_owner", "skills", ["owner_id"])
    op.add_column("skills", sa.Column("embedder", sa.String(100), nullable=True))
    op.create_table(
        "skill_examples",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "skill_id", sa.Uuid(), sa.ForeignKey("skills.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "owner_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("embedding", Vector(1024), nullable=True),
        sa.Column("embedder", sa.String(100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index("ix_skill_examples_owner", "skill_examples", ["owner_id"])
    op.create_index("ix_skill_examples_skill", "skill_examples", ["skill_id"])


def downgrade() -> None:
    op.drop_table("skill_examples")
    op.drop_column("skills", "embedder")
    op.drop_index("ix_skills_owner", table_name="skills")
    op.drop_constraint("fk_skills_owner", "skills", type_="foreignkey")
    op.drop_column("skills", "owner_id")
    op.drop_column("assistants", "complex_model")
    op.execute("UPDATE skills SET embedding = NULL")
    op.alter_column(
        "skills", "embedding", type_=Vector(256), postgresql_using="embedding::vector(256)"
    )
    op.create_index(
        "ix_skills_embedding",
        "skills",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
