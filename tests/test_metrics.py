"""/metrics: each family is there and moves when its event happens; no user or
conversation ever becomes a label; METRICS_TOKEN protects it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_server.config import Secret
from protocol.messages import Ack, Join, Joined, Send, TurnEnd
from tests.servers import RunningServer
from tests.wsclient import Client, directive, new_user

pytestmark = pytest.mark.asyncio


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            if s.name.startswith("chat_"):
                assert s.labels.get("replica") == "test-node", s
                assert set(s.labels) <= {
                    "replica",
                    "code",
                    "type",
                    "finish",
                    "duplicate",
                    "recovered",
                    "limit",
                    "le",
                }
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def test_every_family_moves_when_its_event_happens(server: RunningServer) -> None:
    before = await scrape(server)
    user = new_user()
    client = await Client.connect(server.ws)
    await client.hello(user)
    cid = await client.create()
    await client.send(Send(id="m1", conversation_id=cid, text="hi " + directive(tokens=5)))
    await client.expect(Ack)
    await client.until(TurnEnd)
    await client.send(Send(id="m1", conversation_id=cid, text="hi again"))  # a duplicate
    await client.expect(Ack)
    other = await Client.connect(server.ws)
    await other.hello(user)
    await other.send(Join(conversation_id=cid, after_seq=1))
    await other.until(Joined)
    during = await scrape(server)
    await other.close()
    await client.close()

    def moved(name: str, by: float = 1, **labels: str) -> None:
        grew = total(during, name, **labels) - total(before, name, **labels)
        assert grew >= by, f"{name}{labels} moved by {grew}"

    moved("chat_connections_open", 2)
    moved("chat_conversations_joined", 2)
    moved("chat_joins_total", recovered="fresh")
    moved("chat_joins_total", recovered="true")
    moved("chat_frames_in_total", 2, type="send")
    moved("chat_frames_in_total", type="hello")
    moved("chat_frames_out_total", type="delta")
    moved("chat_frames_out_total", type="turn_end")
    moved("chat_sends_total", 2)
    moved("chat_acks_total", duplicate="False")
    moved("chat_acks_total", duplicate="True")
    moved("chat_turns_started_total")
    moved("chat_turns_ended_total", finish="stop")
    moved("chat_model_requests_total")
    moved("chat_bus_publishes_total", 3)
    for histogram in (
        "chat_send_to_ack_seconds",
        "chat_send_to_first_delta_seconds",
        "chat_model_ttft_seconds",
        "chat_turn_duration_seconds",
    ):
        moved(f"{histogram}_count")
    assert total(during, "chat_draining") == 0
    assert total(during, "chat_bus_up") == 1
    after = await scrape(server)
    assert total(after, "chat_connections_closed_total", code="1000") > total(
        before, "chat_connections_closed_total", code="1000"
    )


async def test_a_model_error_is_counted_by_code(server: RunningServer) -> None:
    before = await scrape(server)
    client = await Client.connect(server.ws)
    await client.hello(new_user())
    cid = await client.create()
    await client.send(Send(id="x", conversation_id=cid, text="boom " + directive(fail=500)))
    end, _ = await client.until(TurnEnd)
    assert end.finish_reason == "error"
    after = await scrape(server)
    assert total(after, "chat_model_errors_total") > total(before, "chat_model_errors_total")
    assert total(after, "chat_turns_ended_total", finish="error") > total(
        before, "chat_turns_ended_total", finish="error"
    )
    await client.close()


async def test_metrics_token_guards_the_endpoint(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(metrics_token=Secret("scrape-me"))
    async with httpx.AsyncClient(base_url=running.http) as http:
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert right.status_code == 200
        assert "chat_connections_open" in right.text
