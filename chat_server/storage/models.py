"""SQLAlchemy 2 models. The schema itself is created only by Alembic (migrations/)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIM = 1024


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _uuid_pk()
    external_id: Mapped[str] = mapped_column(String(200), unique=True)  # JWT ``sub``
    created_at: Mapped[datetime] = _created()
    # Tokens a day; None: the DAILY_TOKEN_QUOTA setting, 0: unlimited (``quota`` command).
    daily_token_quota: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class UsageDaily(Base):
    """A user's model tokens of one (UTC) day, added with each reply's final write."""

    __tablename__ = "usage_daily"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class Assistant(Base):
    __tablename__ = "assistants"

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    default_model: Mapped[str] = mapped_column(String(100))
    # Used instead of default_model for turns the router judges complex; None: no switch.
    complex_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Thinking tokens for its complex turns (0 off, -1 the model decides); None: the
    # THINKING_BUDGET setting.
    thinking_budget: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (Index("ix_assistants_owner", "owner_id"),)


class Tool(Base):
    """A function an assistant can call: a webhook of the owner's backend, signed with
    ``secret``; its arguments are described by ``parameters`` (a JSON Schema)."""

    __tablename__ = "tools"

    id: Mapped[uuid.UUID] = _uuid_pk()
    assistant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    timeout_ms: Mapped[int] = mapped_column(Integer)
    idempotent: Mapped[bool] = mapped_column(Boolean)  # retried on a failure if True
    max_result_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("assistant_id", "name", name="uq_tools_assistant_name"),
        Index("ix_tools_owner", "owner_id"),
    )


class Skill(Base):
    """What an assistant is good at. ``embedding`` is of ``description``; searches are
    exact cosine scans of one owner's rows (see migration 0002 for why)."""

    __tablename__ = "skills"

    id: Mapped[uuid.UUID] = _uuid_pk()
    assistant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assistants.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), nullable=True)
    embedder: Mapped[str | None] = mapped_column(String(100), nullable=True)
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        Index("ix_skills_assistant", "assistant_id"),
        Index("ix_skills_owner", "owner_id"),
    )


class SkillExample(Base):
    """Text that belongs to a skill: a phrase of its description (``source``
    description), or a turn learned from feedback on a misroute (``source`` feedback)."""

    __tablename__ = "skill_examples"

    id: Mapped[uuid.UUID] = _uuid_pk()
    skill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("skills.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))  # description | feedback
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM), nullable=True)
    embedder: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        Index("ix_skill_examples_owner", "owner_id"),
        Index("ix_skill_examples_skill", "skill_id"),
    )


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    default_assistant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("assistants.id", ondelete="SET NULL"), nullable=True
    )
    # The last seq handed out; bumped under the row lock in the storing transaction.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # The newest message of the branch shown (messages form a tree: regenerate, edit);
    # None before the first turn. Not a foreign key: it only points, never owns.
    leaf_id: Mapped[uuid.UUID | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (Index("ix_conversations_owner", "owner_id", "updated_at"),)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = _uuid_pk()
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reply_to: Mapped[uuid.UUID | None] = mapped_column(nullable=True)
    # The message before this one on its branch: a reply's user turn, a turn's previous
    # reply; None for the first turn (and for an edit of it). Siblings are alternatives.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE", name="fk_messages_parent"), nullable=True
    )
    assistant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("assistants.id", ondelete="SET NULL"), nullable=True
    )
    # model, route decision, usage, finish_reason, error: written once per reply.
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        UniqueConstraint("conversation_id", "client_id", name="uq_messages_conversation_client"),
        CheckConstraint("role in ('user', 'assistant')", name="ck_messages_role"),
        CheckConstraint(
            "status in ('complete', 'streaming', 'interrupted', 'error')",
            name="ck_messages_status",
        ),
        Index("ix_messages_parent", "conversation_id", "parent_id"),
        Index(
            "ix_messages_streaming",
            "conversation_id",
            postgresql_where=sql_text("status = 'streaming'"),
        ),
    )
