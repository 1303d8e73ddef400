"""The ``voice`` scenario: simulated voice front-ends stream partial transcripts, send
the final one, and talk over every other reply (barge-in with ``heard_chars``).

Half the sessions prepare turns from partials (``early_routing``), half don't, in the
same run against the same server, so the two latency rows compare like with like.
Reports: final input → first delta, final input → ack, barge-in → turn_end, and
acknowledged turns missing from the conversation history afterwards (must be 0).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from load.client import ProtocolClient, count_lost
from load.report import Report
from load.runner import Shard, run_clients
from protocol.messages import (
    Ack,
    Cancel,
    Delta,
    Error,
    Input,
    InterruptOn,
    Join,
    Joined,
    SessionOptions,
    TurnEnd,
    TurnStart,
    Welcome,
)

WORDS = "could you move my three o'clock with the design team to tomorrow morning".split()


@dataclass(frozen=True)
class Params:
    sessions: int = 20
    turns: int = 4
    partials: int = 3  # partial transcripts before each final one
    partial_gap_ms: int = 80  # speech pace between partials
    ttft_ms: int = 50  # simulator: time to first token (sent as a [[sim]] directive)
    tps: float = 200.0  # simulator: tokens per second
    tokens: int = 30  # simulator: reply length
    chunk: int = 1  # simulator: tokens per streamed chunk (google-genai parses each one)
    barge_in_every: int = 2  # every Nth turn is talked over after two deltas
    duration_s: float = 120.0  # hard bound for the whole run
    directive: bool = True  # add [[sim ...]] pacing (only the simulator understands it)


async def setup(urls: list[str], params: Params, pids: list[int]) -> dict[str, Any]:
    return {}


async def run(ctx: Shard) -> None:
    urls, params, report = ctx.urls, ctx.params, ctx.report
    deadline = time.monotonic() + params.duration_s
    sim = (
        f" [[sim ttft_ms={params.ttft_ms} tps={params.tps} tokens={params.tokens}"
        f" chunk={params.chunk}]]"
        if params.directive
        else ""
    )

    async def session(i: int) -> None:
        early = i % 2 == 0
        label = "early routing" if early else "no early routing"
        client = await ProtocolClient.connect(urls[i % len(urls)])
        try:
            options = SessionOptions(early_routing=early, interrupt_on=InterruptOn.NEVER)
            welcome = await client.say_hello(f"load-voice-{uuid.uuid4().hex[:10]}", options)
            if not isinstance(welcome, Welcome):
                report.errors[f"hello:{type(welcome).__name__}"] += 1
                return
            await client.send(Join(create={}))  # type: ignore[arg-type]
            joined = await client.recv()
            if not isinstance(joined, Joined):
                report.errors[f"join:{type(joined).__name__}"] += 1
                return
            cid = joined.conversation.id
            acked: set[str] = set()
            for k in range(params.turns):
                if time.monotonic() > deadline:
                    report.counts["stopped_by_deadline"] += 1
                    break
                input_id = f"u{k}"
                for p in range(1, params.partials + 1):
                    words = " ".join(WORDS[: p * len(WORDS) // (params.partials + 1)])
                    await client.send(Input(conversation_id=cid, input_id=input_id, text=words))
                    await asyncio.sleep(params.partial_gap_ms / 1000)
                sent = time.perf_counter()
                text = " ".join(WORDS) + sim
                await client.send(
                    Input(conversation_id=cid, input_id=input_id, text=text, final=True)
                )
                barge_in = params.barge_in_every > 0 and k % params.barge_in_every == 1
                await _one_turn(client, report, label, input_id, cid, sent, barge_in, acked)
            await count_lost(client, report, cid, acked, limit=200)
        finally:
            await client.close()

    await run_clients(ctx, [session(i) for i in ctx.mine(params.sessions)])


async def _one_turn(
    client: ProtocolClient,
    report: Report,
    label: str,
    input_id: str,
    cid: uuid.UUID,
    sent: float,
    barge_in: bool,
    acked: set[str],
) -> None:
    first_delta: float | None = None
    heard = ""
    heard_chars = 0  # what the cancel said was heard
    cancelled_at: float | None = None
    turn_id: uuid.UUID | None = None
    while True:
        frame = await client.recv(timeout=30)
        now = time.perf_counter()
        if isinstance(frame, Ack) and frame.id == input_id:
            acked.add(input_id)
            report.add(f"final input → ack ({label})", (now - sent) * 1000)
        elif isinstance(frame, TurnStart):
            turn_id = frame.turn_id
        elif isinstance(frame, Delta) and frame.turn_id == turn_id:
            if first_delta is None:
                first_delta = now
                report.add(f"final input → first delta ({label})", (now - sent) * 1000)
            heard += frame.text
            if barge_in and cancelled_at is None and len(heard) >= 10:
                cancelled_at, heard_chars = time.perf_counter(), len(heard)
                await client.send(
                    Cancel(
                        id=f"cancel-{input_id}",
                        conversation_id=cid,
                        turn_id=turn_id,
                        heard_chars=heard_chars,
                    )
                )
        elif isinstance(frame, TurnEnd) and frame.turn_id == turn_id:
            if cancelled_at is not None and frame.finish_reason == "stop":
                report.counts["barge_in_after_reply_end"] += 1  # the cancel lost the race
            elif cancelled_at is not None:
                report.add("barge-in → turn_end", (now - cancelled_at) * 1000)
                if frame.message.text != heard[:heard_chars]:
                    report.counts["heard_text_mismatch"] += 1
                report.counts["turns_interrupted"] += 1
            elif frame.finish_reason != "stop":
                report.errors[f"finish:{frame.finish_reason}"] += 1
            else:
                report.counts["turns_completed"] += 1
            return
        elif isinstance(frame, Error) and frame.id == f"cancel-{input_id}":
            continue  # no_active_turn: the reply ended first (counted at its turn_end)
        elif isinstance(frame, Error):
            report.errors[frame.code] += 1
            if frame.id == input_id:
                return
