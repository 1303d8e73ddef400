"""Time to the first token of a simple turn, with and without the low thinking budget.

``python -m load.ttft_thinking``: two servers side by side, one with the default
``FAST_THINKING_BUDGET=0`` and one with ``FAST_THINKING_BUDGET=-1`` (simple turns think
as the model decides, as Gemini 2.5 Flash does by default). The simulator is set like
2.5 Flash thinking dynamically: 500 ms to the first token plus 800 thinking tokens at
100 a second (the ~8 s reported for 2.5 Flash). The same simple turn goes to one server
then the other, round after round; send → first delta is reported per round.

It shows that the router's choice reaches the model and removes the thinking delay; the
delay itself is the simulator's setting, not a measurement of Gemini.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid

from load.client import join, open_session
from load.spawn import spawned_server
from protocol.messages import ConversationCreate, Delta, Join, Send, TurnStart

THINKS_LIKE_FLASH = "[[sim ttft_ms=500 think_tps=100 think_tokens=800 tokens=5]]"
SIMPLE = f"what time is it? {THINKS_LIKE_FLASH}"


async def first_token(url: str) -> tuple[float, int | None]:
    """Send → first delta of one simple turn, and the thinking budget the route chose."""
    client = await open_session(url, f"ttft-{uuid.uuid4().hex[:8]}")
    try:
        cid = (await join(client, Join(create=ConversationCreate()))).conversation.id
        sent = time.monotonic()
        await client.send(Send(id="1", conversation_id=cid, text=SIMPLE))
        budget = None
        while True:
            frame = await client.recv(timeout=30)
            if isinstance(frame, TurnStart):
                budget = frame.route.thinking_budget
            if isinstance(frame, Delta):
                return time.monotonic() - sent, budget
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = {"0": "FAST_THINKING_BUDGET=0 (default)", "-1": "FAST_THINKING_BUDGET=-1"}
    with contextlib.ExitStack() as stack:
        servers = {v: stack.enter_context(spawned_server(FAST_THINKING_BUDGET=v)) for v in sides}
        asyncio.run(first_token(servers["0"].ws_url))  # warm-up: model client, embedder
        asyncio.run(first_token(servers["-1"].ws_url))
        results: dict[str, list[tuple[float, int | None]]] = {v: [] for v in sides}
        for _ in range(max(1, args.rounds)):
            for value, server in servers.items():
                results[value].append(asyncio.run(first_token(server.ws_url)))
    print("| setting | route.thinking_budget | send → first delta, per round |")
    print("|---|---|---|")
    for value, label in sides.items():
        budgets = {b for _, b in results[value]}
        times = ", ".join(f"{t:.2f} s" for t, _ in results[value])
        print(f"| {label} | {', '.join(map(str, budgets))} | {times} |")


if __name__ == "__main__":
    main()
