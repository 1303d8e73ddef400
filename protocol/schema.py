"""The machine-readable spec: JSON Schema (2020-12) generated from protocol.messages.

``python -m protocol.schema --write`` regenerates ``protocol/schema.json``; a test fails
when the checked-in file is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson

from protocol.errors import CLOSE_CODES, RETRYABLE
from protocol.messages import PROTOCOL_VERSION, ClientMessage, ServerMessage

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def _clean_descriptions(node: Any) -> Any:
    """Docstrings with their indentation removed, whatever msgspec does with them.

    msgspec 0.23 strips the indentation of a docstring's later lines; older versions
    kept it. The checked-in schema must not depend on which one rendered it.
    """
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v)
            if k == "description" and isinstance(v, str)
            else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def build() -> dict[str, Any]:
    (client, server), defs = msgspec.json.schema_components([ClientMessage, ServerMessage])
    defs = _clean_descriptions(defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Chat protocol v{PROTOCOL_VERSION}",
        "description": "WebSocket endpoint /ws; JSON text frames, one object per frame.",
        "x-protocol-version": PROTOCOL_VERSION,
        "x-client-to-server": client,
        "x-server-to-client": server,
        "x-error-codes": {code.value: {"retryable": r} for code, r in RETRYABLE.items()},
        "x-close-codes": {
            str(code.value): {
                "name": code.name.lower(),
                "meaning": i.meaning,
                "reconnect": i.reconnect,
            }
            for code, i in CLOSE_CODES.items()
        },
        "$defs": defs,
    }


def render() -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        SCHEMA_PATH.write_bytes(render())
        print(f"wrote {SCHEMA_PATH}")
    else:
        sys.stdout.buffer.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
