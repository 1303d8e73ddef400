"""logs.py: one summary line per turn, the same facts in text and JSON, and never a
token, a secret or message text in any line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import jwt
import orjson
import pytest

from chat_server.logs import JsonFormatter, TextFormatter
from protocol.errors import CloseCode
from protocol.messages import Ack, Send, TurnEnd
from tests.replicas import start_replicas, stop_replicas
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user

SECRET = "0123456789abcdef0123456789abcdef"


def record(**fields: object) -> logging.LogRecord:
    entry = logging.makeLogRecord({"name": "chat_server.turns", "msg": "turn", "levelno": 20})
    entry.levelname = "INFO"
    entry.fields = fields
    return entry


def test_text_and_json_carry_the_same_fields() -> None:
    entry = record(model="gemini-2.5-flash", ttft_ms=12, why="a b", error=None)
    text = TextFormatter().format(entry)
    assert text.endswith("chat_server.turns: turn model=gemini-2.5-flash ttft_ms=12 why='a b'")
    parsed = orjson.loads(JsonFormatter().format(entry))
    assert parsed["event"] == "turn"
    assert parsed["level"] == "info"
    assert (parsed["model"], parsed["ttft_ms"], parsed["why"]) == ("gemini-2.5-flash", 12, "a b")
    assert "error" not in parsed  # None is left out in both formats


def turn_lines(output: str, fmt: str) -> list[dict[str, str]]:
    if fmt == "json":
        entries = [orjson.loads(line) for line in output.splitlines()]  # every line is JSON
        return [e for e in entries if e["event"] == "turn"]
    found = []
    for line in output.splitlines():
        if " chat_server.turns: turn " in line:
            pairs = line.split(" chat_server.turns: turn ", 1)[1]
            found.append(dict(re.findall(r"(\w+)=(\S+)", pairs)))
    return found


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_turn_logs_one_summary_line_without_token_or_text(
    fmt: str, database_url: str, simulator: RunningServer, tmp_path: Path
) -> None:
    user = new_user()
    token = jwt.encode({"sub": user, "exp": 4_000_000_000}, SECRET, algorithm="HS256")
    (replica,) = start_replicas(
        1,
        tmp_path,
        DATABASE_URL=database_url,
        GEMINI_BASE_URL=simulator.http,
        GEMINI_API_KEY="AIza-not-a-real-key-0123",
        JWT_SECRET=SECRET,
        LOG_FORMAT=fmt,
    )
    try:
        # A client that puts its token in the URL must not find it in the log either.
        client = await Client.connect(f"{replica.ws}?access_token={token}")
        await client.hello(token=token)
        cid = await client.create()
        text = "my confidential plan " + directive(tokens=12)
        await client.send(Send(id="s1", conversation_id=cid, text=text))
        await client.expect(Ack)
        end, _ = await client.until(TurnEnd)
        await client.close()
        # Invalid UTF-8 in a text frame, before hello: 1007, and no traceback in the log.
        rude = await Client.connect(replica.ws)
        await rude.ws.send(b"\xff\xfe not utf-8", text=True)
        assert await rude.closed_with() == CloseCode.INVALID_PAYLOAD
    finally:
        stop_replicas([replica])
    output = replica.output()
    (line,) = turn_lines(output, fmt)
    assert line["conversation"] == str(cid)
    assert line["turn"] == str(end.turn_id)
    assert line["model"] == end.message.model
    assert line["finish"] == "stop"
    assert line["route"] in ("default", "fallback", "skill", "explicit")
    assert int(line["output_tokens"]) > 0
    assert int(line["ttft_ms"]) <= int(line["duration_ms"])
    for leaked in (token, SECRET, "AIza-not-a-real-key-0123", "confidential", end.message.text):
        assert leaked not in output
    assert "Traceback" not in output
    assert "UTF-8" not in output
