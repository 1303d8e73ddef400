"""Settings, read once from the environment into a frozen object.

Every tunable has its default and meaning here; README's configuration table lists
the same variables. Tests build ``Settings`` directly instead of patching globals.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A variable is set to something the server cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never shows up in a repr or a log line."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('********')"

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"  # HOST
    port: int = 8000  # PORT
    # DATABASE_URL: postgresql:// URL; unset → embedded Postgres in DATA_DIR/pg.
    database_url: Secret | None = None
    data_dir: Path = Path(".data")  # DATA_DIR
    # REDIS_URL: redis:// URL shared by replicas; unset → single node, in-memory bus.
    redis_url: Secret | None = None
    lease_ms: int = 5000  # LEASE_MS: a generation whose replica stops renewing this long ends
    drain_timeout_s: float = 60.0  # DRAIN_TIMEOUT_S: SIGTERM waits this long for replies
    # GEMINI_API_KEY: unset → replies come from the built-in Gemini simulator.
    gemini_api_key: Secret | None = None
    # GEMINI_BASE_URL: unset → Google's endpoint with a key, the built-in simulator without.
    gemini_base_url: str | None = None
    gemini_model: str = "gemini-2.5-flash"  # GEMINI_MODEL: model of new assistants
    gemini_attempts: int = 3  # GEMINI_ATTEMPTS: tries per request before the first token
    llm_stall_s: float = 30.0  # LLM_STALL_S: no chunk for this long ends a reply with error
    max_output_tokens: int = 2048  # MAX_OUTPUT_TOKENS
    history_messages: int = 20  # HISTORY_MESSAGES: past messages sent to the model
    history_tokens: int = 6000  # HISTORY_TOKENS: ... and at most this many (estimated) tokens
    # EMBEDDER: hashing (offline) | gemini; default gemini with GEMINI_API_KEY, else hashing.
    embedder: str = "hashing"
    gemini_embed_model: str = "gemini-embedding-001"  # GEMINI_EMBED_MODEL
    # JWT_SECRET: HS256 key for ``hello.token``; unset → dev mode (token = user id).
    jwt_secret: Secret | None = None
    allowed_origins: tuple[str, ...] = ()  # ALLOWED_ORIGINS: comma list; empty → any
    max_frame_bytes: int = 64 * 1024  # MAX_FRAME_BYTES: larger frames close with 1009
    max_text_chars: int = 16_000  # MAX_TEXT_CHARS: longest user turn
    outbox_frames: int = 1024  # OUTBOX_FRAMES: queued frames before closing as slow (4000)
    heartbeat_ms: int = 25_000  # HEARTBEAT_MS: client pings this often; 2x silence → 4001
    hello_timeout_s: float = 10.0  # HELLO_TIMEOUT_S: time for the first frame (4002)
    replay_limit: int = 1000  # REPLAY_LIMIT: most events replayed on join (else recovered:false)
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    log_level: str = "info"  # LOG_LEVEL
    # SIM_TTFT_MS / SIM_TOKENS_PER_S: the built-in simulator's pace.
    sim_ttft_ms: int = 300
    sim_tokens_per_s: float = 40.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()

        def secret(name: str) -> Secret | None:
            value = env.get(name, "").strip()
            return Secret(value) if value else None

        def num(name: str, default: float, kind: type = int, minimum: float = 1) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
            return float(value) if kind is float else int(value)

        embedder = env.get("EMBEDDER") or ("gemini" if secret("GEMINI_API_KEY") else "hashing")
        if embedder not in ("hashing", "gemini"):
            raise ConfigError(f"EMBEDDER must be hashing or gemini, got {embedder!r}")
        jwt_secret = secret("JWT_SECRET")
        if jwt_secret is not None and len(jwt_secret.value.encode()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 bytes (RFC 7518 section 3.2)")
        return cls(
            host=env.get("HOST", d.host),
            port=int(num("PORT", d.port, minimum=0)),
            database_url=secret("DATABASE_URL"),
            data_dir=Path(env.get("DATA_DIR", str(d.data_dir))),
            redis_url=secret("REDIS_URL"),
            lease_ms=int(num("LEASE_MS", d.lease_ms, minimum=100)),
            drain_timeout_s=num("DRAIN_TIMEOUT_S", d.drain_timeout_s, float, minimum=0),
            gemini_api_key=secret("GEMINI_API_KEY"),
            gemini_base_url=env.get("GEMINI_BASE_URL") or None,
            gemini_model=env.get("GEMINI_MODEL", d.gemini_model),
            gemini_attempts=int(num("GEMINI_ATTEMPTS", d.gemini_attempts)),
            llm_stall_s=num("LLM_STALL_S", d.llm_stall_s, float),
            max_output_tokens=int(num("MAX_OUTPUT_TOKENS", d.max_output_tokens)),
            history_messages=int(num("HISTORY_MESSAGES", d.history_messages)),
            history_tokens=int(num("HISTORY_TOKENS", d.history_tokens)),
            embedder=embedder,
            gemini_embed_model=env.get("GEMINI_EMBED_MODEL", d.gemini_embed_model),
            jwt_secret=jwt_secret,
            allowed_origins=tuple(
                o.strip() for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip()
            ),
            max_frame_bytes=int(num("MAX_FRAME_BYTES", d.max_frame_bytes)),
            max_text_chars=int(num("MAX_TEXT_CHARS", d.max_text_chars)),
            outbox_frames=int(num("OUTBOX_FRAMES", d.outbox_frames)),
            heartbeat_ms=int(num("HEARTBEAT_MS", d.heartbeat_ms)),
            hello_timeout_s=num("HELLO_TIMEOUT_S", d.hello_timeout_s, float),
            replay_limit=int(num("REPLAY_LIMIT", d.replay_limit)),
            node_id=env.get("NODE_ID") or d.node_id,
            log_level=env.get("LOG_LEVEL", d.log_level).lower(),
            sim_ttft_ms=int(num("SIM_TTFT_MS", d.sim_ttft_ms, minimum=0)),
            sim_tokens_per_s=num("SIM_TOKENS_PER_S", d.sim_tokens_per_s, float),
        )

    @property
    def uses_simulator(self) -> bool:
        return self.gemini_api_key is None
