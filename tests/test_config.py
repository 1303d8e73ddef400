"""config.py: the environment is read once, strictly, into a frozen object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chat_server.config import ConfigError, Settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_url is None
    assert settings.uses_simulator
    assert settings.data_dir == Path(".data")


def test_values_are_parsed_and_secrets_are_masked() -> None:
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "DATABASE_URL": "postgresql://u:hunter2@db/chat",
            "GEMINI_API_KEY": "AIza-secret",
            "ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "LLM_STALL_S": "2.5",
            "SIM_TTFT_MS": "0",
        }
    )
    assert settings.port == 9000
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.llm_stall_s == 2.5
    assert settings.sim_ttft_ms == 0
    assert not settings.uses_simulator
    assert "hunter2" not in repr(settings)
    assert "AIza-secret" not in repr(settings)
    assert settings.database_url is not None
    assert settings.database_url.value.endswith("@db/chat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"MAX_TEXT_CHARS": "0"}, "MAX_TEXT_CHARS"),
        ({"OUTBOX_FRAMES": "-5"}, "OUTBOX_FRAMES"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"PORT": "99999"}, "PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://h"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://h:99999"}, "REDIS_URL"),
        ({"ALLOWED_ORIGINS": "app.example"}, "ALLOWED_ORIGINS"),
        ({"STARTUP_WAIT_S": "-1"}, "STARTUP_WAIT_S"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "PORT": "99999",
                "LOG_LEVEL": "loud",
                "DATABASE_URL": "mysql://chat:hunter2@db/chat",
                "REDIS_URL": "http://cache:6379",
                "GEMINI_BASE_URL": "localhost:8001",
                "LLM_STALL_S": "nan",
            }
        )
    problems = caught.value.problems
    assert [p.split("=")[0] for p in problems] == [
        "PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "GEMINI_BASE_URL",
        "LLM_STALL_S",
        "LOG_LEVEL",
    ]
    assert all("\n" not in p for p in problems)
    assert "hunter2" not in str(caught.value)
    assert "mysql://chat:***@db/chat" in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "postgresql://postgres:@/postgres?host=/tmp/pg"},  # a unix socket
        {"DATABASE_URL": "postgres://u:p@db:5432/chat", "REDIS_URL": "rediss://cache:6380/1"},
        {"REDIS_URL": "unix:///run/redis.sock", "LOG_FORMAT": "JSON", "LOG_LEVEL": "DEBUG"},
        {"ALLOWED_ORIGINS": "https://a.example, http://localhost:5173"},
    ],
)
def test_usual_values_are_accepted(env: dict[str, str]) -> None:
    Settings.from_env(env)
