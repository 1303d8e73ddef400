"""Which schema library validates client frames: msgspec or pydantic, measured side by side.

Run: ``python -m load.bench_codec`` (or ``make bench-codec``). Prints µs per decode of
representative frames for each library and the ratio, in one run on one machine.
Encoding is orjson in both cases; the cost of building the dict differs, so it is timed too.
"""

from __future__ import annotations

import timeit
import uuid
from typing import Annotated, Literal

import orjson
import pydantic

from protocol import codec
from protocol.messages import Delta

CONV = str(uuid.uuid4())
FRAMES = [
    orjson.dumps({"type": "send", "id": "c-1", "conversation_id": CONV, "text": "hello " * 20}),
    orjson.dumps({"type": "ping", "id": "p-1"}),
    orjson.dumps({"type": "join", "conversation_id": CONV, "after_seq": 41}),
    orjson.dumps({"type": "input", "conversation_id": CONV, "input_id": "i1", "text": "so I"}),
]


class PSend(pydantic.BaseModel):
    type: Literal["send"]
    id: str
    conversation_id: uuid.UUID
    text: Annotated[str, pydantic.Field(pattern=r"^[^\x00]*$")]
    assistant_id: uuid.UUID | None = None


class PPing(pydantic.BaseModel):
    type: Literal["ping"]
    id: str | None = None


class PJoin(pydantic.BaseModel):
    type: Literal["join"]
    id: str | None = None
    conversation_id: uuid.UUID | None = None
    after_seq: int | None = None


class PInput(pydantic.BaseModel):
    type: Literal["input"]
    id: str | None = None
    conversation_id: uuid.UUID
    input_id: str
    text: str
    final: bool = False


_padapter: pydantic.TypeAdapter[PSend | PPing | PJoin | PInput] = pydantic.TypeAdapter(
    Annotated[PSend | PPing | PJoin | PInput, pydantic.Field(discriminator="type")]
)


class PDelta(pydantic.BaseModel):
    type: Literal["delta"] = "delta"
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    offset: int
    text: str


def _per_call_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    n = 20_000
    print(f"{'':24}{'msgspec':>10}{'pydantic':>10}{'pydantic/msgspec':>18}")
    for frame in FRAMES:
        ms = _per_call_us(lambda f=frame: codec.decode_client(f), n)
        pd = _per_call_us(lambda f=frame: _padapter.validate_json(f), n)
        name = orjson.loads(frame)["type"] + " (µs)"
        print(f"{'decode ' + name:24}{ms:10.2f}{pd:10.2f}{pd / ms:17.1f}x")
    conv, turn = uuid.uuid4(), uuid.uuid4()
    md = Delta(conversation_id=conv, turn_id=turn, offset=10, text=" token")
    pdl = PDelta(conversation_id=conv, turn_id=turn, offset=10, text=" token")
    me = _per_call_us(lambda: codec.encode(md), n)
    pe = _per_call_us(lambda: orjson.dumps(pdl.model_dump(mode="json")), n)
    print(f"{'encode delta (µs)':24}{me:10.2f}{pe:10.2f}{pe / me:17.1f}x")


if __name__ == "__main__":
    main()
