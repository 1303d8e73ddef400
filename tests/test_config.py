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
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)
