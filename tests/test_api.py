"""REST /api/v1: every endpoint with good and bad input; a user sees only their own rows
(another user's ids are 404); bad bodies are 422 naming the field."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.routing import Route

from chat_server import api
from chat_server.config import Secret
from protocol.messages import Ack, ConversationUpdated, Send, TurnEnd
from tests.servers import RunningServer
from tests.wsclient import Client, new_user


def fresh_user(server: RunningServer) -> httpx.Client:
    """A REST client for a user nobody else is."""
    return httpx.Client(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {new_user()}"}
    )


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with fresh_user(server) as client:
        yield client


@pytest.fixture
def other(server: RunningServer) -> Iterator[httpx.Client]:
    """A second user, for isolation checks."""
    with fresh_user(server) as client:
        yield client


def error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    body: dict[str, str] = response.json()
    assert body["message"]
    return body


# ---------------------------------------------------------------- assistants


def test_assistant_crud(http: httpx.Client) -> None:
    seeded = http.get("/assistants").json()
    assert [a["name"] for a in seeded] == ["Secretary"]
    made = http.post(
        "/assistants",
        json={"name": "Scheduler", "description": "calendar", "system_prompt": "Be brief."},
    )
    assert made.status_code == 201
    body = made.json()
    assert body["default_model"] == "gemini-2.5-flash"
    assert body["complex_model"] is None
    aid = body["id"]
    assert http.get(f"/assistants/{aid}").json() == body
    patched = http.patch(f"/assistants/{aid}", json={"complex_model": "gemini-2.5-pro"}).json()
    assert (patched["complex_model"], patched["name"], patched["system_prompt"]) == (
        "gemini-2.5-pro",
        "Scheduler",
        "Be brief.",
    )
    assert [a["name"] for a in http.get("/assistants").json()] == ["Secretary", "Scheduler"]
    assert http.delete(f"/assistants/{aid}").status_code == 204
    assert error(http.get(f"/assistants/{aid}"), 404)["error"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, None),  # missing name: msgspec names it in the message
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ok", "default_model": "has space"}, "default_model"),
        ({"name": "ok", "surprise": 1}, None),
    ],
)
def test_bad_assistant_bodies_are_422_naming_the_field(
    http: httpx.Client, body: dict[str, object], field: str | None
) -> None:
    problem = error(http.post("/assistants", json=body), 422)
    assert problem["error"] == "validation_error"
    if field:
        assert problem["field"] == field
    else:
        assert "name" in problem["message"] or "surprise" in problem["message"]


def test_malformed_json_is_400_and_unknown_ids_are_404(http: httpx.Client) -> None:
    bad = http.post("/assistants", content=b"{nope", headers={"Content-Type": "application/json"})
    assert error(bad, 400)["error"] == "bad_json"
    assert error(http.get(f"/assistants/{uuid.uuid4()}"), 404)["error"] == "not_found"
    assert error(http.get("/assistants/not-a-uuid"), 404)["error"] == "not_found"
    assert error(http.patch(f"/assistants/{uuid.uuid4()}", json={}), 404)
    assert error(http.delete(f"/skills/{uuid.uuid4()}"), 404)


def test_another_users_rows_are_404_and_untouched(http: httpx.Client, other: httpx.Client) -> None:
    aid = http.post("/assistants", json={"name": "Mine"}).json()["id"]
    sid = http.post(f"/assistants/{aid}/skills", json={"name": "s", "description": "d"}).json()[
        "id"
    ]
    cid = http.post("/conversations", json={"title": "private"}).json()["id"]
    for path in (f"/assistants/{aid}", f"/skills/{sid}", f"/conversations/{cid}"):
        assert error(other.get(path), 404)["error"] == "not_found"
        assert error(other.delete(path), 404)
    assert error(other.patch(f"/assistants/{aid}", json={"name": "stolen"}), 404)
    assert error(other.get(f"/conversations/{cid}/messages"), 404)
    assert error(
        other.post(f"/assistants/{aid}/skills", json={"name": "x", "description": "y"}), 404
    )
    assert error(other.post("/conversations", json={"assistant_id": aid}), 404)
    assert error(other.post("/route", json={"text": "hi", "conversation_id": cid}), 404)
    assert http.get(f"/assistants/{aid}").json()["name"] == "Mine"
    assert all(c["id"] != cid for c in other.get("/conversations").json()["items"])


def test_auth_uses_the_websocket_rules(start_server: Callable[..., RunningServer]) -> None:
    secret = "api-secret-0123456789abcdef-0123456789"
    server = start_server(jwt_secret=Secret(secret))
    base = f"{server.http}/api/v1"
    assert error(httpx.get(f"{base}/assistants"), 401)["error"] == "unauthorized"
    wrong = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "w" * 40, algorithm="HS256")
    assert error(httpx.get(f"{base}/assistants", headers={"Authorization": f"Bearer {wrong}"}), 401)
    good = jwt.encode({"sub": "api-user", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    ok = httpx.get(f"{base}/assistants", headers={"Authorization": f"Bearer {good}"})
    assert ok.status_code == 200


# ---------------------------------------------------------------- skills


def test_skill_crud(http: httpx.Client) -> None:
    aid = http.post("/assistants", json={"name": "Translator"}).json()["id"]
    made = http.post(
        f"/assistants/{aid}/skills",
        json={
            "name": "translation",
            "description": "Translate between Japanese and English. 翻訳する。",
        },
    )
    assert made.status_code == 201
    skill = made.json()
    assert (skill["assistant_id"], skill["threshold"], skill["examples"]) == (aid, 0.1, 0)
    assert http.get(f"/assistants/{aid}/skills").json() == [skill]
    assert http.get(f"/skills/{skill['id']}").json() == skill
    patched = http.patch(
        f"/skills/{skill['id']}", json={"threshold": 0.25, "description": "英訳と和訳"}
    ).json()
    assert (patched["threshold"], patched["description"]) == (0.25, "英訳と和訳")
    routed = http.post("/route", json={"text": "この文を和訳して"}).json()
    assert routed["candidates"][0]["skill"] == "translation", "the new description is searched"
    assert (
        error(http.post(f"/assistants/{aid}/skills", json={"name": "x", "description": ""}), 422)[
            "field"
        ]
        == "description"
    )
    assert error(http.patch(f"/skills/{skill['id']}", json={"threshold": 1.5}), 422)["field"] == (
        "threshold"
    )
    assert http.delete(f"/skills/{skill['id']}").status_code == 204
    assert http.get(f"/assistants/{aid}/skills").json() == []


def test_skill_examples_are_added_listed_routed_and_deleted(
    http: httpx.Client, other: httpx.Client
) -> None:
    aid = http.post("/assistants", json={"name": "Gardener"}).json()["id"]
    skill = http.post(
        f"/assistants/{aid}/skills", json={"name": "plants", "description": "garden care"}
    ).json()
    assert (
        http.post("/route", json={"text": "剪定ばさみで枝を切りたい"}).json()["reason"] != "skill"
    )
    made = http.post(f"/skills/{skill['id']}/examples", json={"text": "剪定ばさみで枝を切りたい"})
    assert made.status_code == 201, made.text
    example = made.json()
    assert (example["skill_id"], example["source"]) == (skill["id"], "example")
    assert http.get(f"/skills/{skill['id']}/examples").json() == [example]
    assert http.get(f"/skills/{skill['id']}").json()["examples"] == 1
    routed = http.post("/route", json={"text": "剪定ばさみで枝を切りたい"}).json()
    assert (routed["reason"], routed["skill"]) == ("skill", "plants"), "the example routes"
    assert routed["candidates"][0]["via_example"] is False, "a given example is not learned"
    # another user's skill or example is 404, and stays
    assert error(other.get(f"/skills/{skill['id']}/examples"), 404)
    assert error(other.post(f"/skills/{skill['id']}/examples", json={"text": "x"}), 404)
    assert error(other.delete(f"/examples/{example['id']}"), 404)
    assert error(http.post(f"/skills/{skill['id']}/examples", json={"text": ""}), 422)["field"] == (
        "text"
    )
    assert http.delete(f"/examples/{example['id']}").status_code == 204
    assert http.get(f"/skills/{skill['id']}/examples").json() == []
    assert error(http.delete(f"/examples/{example['id']}"), 404)


# ---------------------------------------------------------------- conversations


def test_conversations_create_list_paginate_get_delete(http: httpx.Client) -> None:
    made = [http.post("/conversations", json={"title": f"c{i}"}).json() for i in range(5)]
    secretary = http.get("/assistants").json()[0]["id"]
    assert all(c["assistant_id"] == secretary and c["last_seq"] == 0 for c in made)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = http.get("/conversations", params=params).json()
        seen += [c["title"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (["c4", "c3", "c2", "c1", "c0"], 3)
    assert http.get(f"/conversations/{made[0]['id']}").json()["title"] == "c0"
    assert http.delete(f"/conversations/{made[0]['id']}").status_code == 204
    assert error(http.get(f"/conversations/{made[0]['id']}"), 404)
    assert error(http.get("/conversations", params={"limit": 0}), 422)["field"] == "limit"
    assert error(http.get("/conversations", params={"limit": "x"}), 422)["field"] == "limit"
    assert (
        error(http.get("/conversations", params={"cursor": "garbage!"}), 422)["field"] == "cursor"
    )
    assert error(http.post("/conversations", json={"title": "t" * 201}), 422)["field"] == "title"


@pytest.mark.asyncio
async def test_renaming_tells_every_device_of_the_conversation(server: RunningServer) -> None:
    user, outsider = new_user(), new_user()
    device = await Client.connect(server.ws)
    await device.hello(user)
    cid = await device.create(title="before")
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        renamed = await http.patch(f"/conversations/{cid}", json={"title": "after"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["title"] == "after"
        event, _ = await device.until(ConversationUpdated)
        assert (event.conversation_id, event.conversation.title) == (cid, "after")
        assert (await http.get(f"/conversations/{cid}")).json()["title"] == "after"
        untitled = await http.patch(f"/conversations/{cid}", json={"title": None})
        assert untitled.json()["title"] is None
        assert error(await http.patch(f"/conversations/{cid}", json={"title": "t" * 201}), 422)
        assert error(await http.patch(f"/conversations/{cid}", json={}), 422)
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {outsider}"}
    ) as foreign:
        assert error(await foreign.patch(f"/conversations/{cid}", json={"title": "x"}), 404)
    await device.close()


@pytest.mark.asyncio
async def test_history_pages_over_rest_match_what_the_websocket_stored(
    server: RunningServer,
) -> None:
    user = new_user()
    client = await Client.connect(server.ws)
    await client.hello(user)
    cid = await client.create()
    for i in range(3):
        await client.send(Send(id=f"m{i}", conversation_id=cid, text=f"message {i}"))
        await client.expect(Ack)
        await client.until(TurnEnd)
    await client.close()
    async with httpx.AsyncClient(
        base_url=f"{server.http}/api/v1", headers={"Authorization": f"Bearer {user}"}
    ) as http:
        newest = (await http.get(f"/conversations/{cid}/messages", params={"limit": 4})).json()
        assert [m["seq"] for m in newest["messages"]] == [3, 4, 5, 6]
        assert newest["has_more"] is True
        older = (
            await http.get(f"/conversations/{cid}/messages", params={"before_seq": 3, "limit": 4})
        ).json()
        assert [(m["seq"], m["role"]) for m in older["messages"]] == [(1, "user"), (2, "assistant")]
        assert older["messages"][0]["text"] == "message 0"
        assert older["has_more"] is False
        bad = await http.get(f"/conversations/{cid}/messages", params={"limit": 500})
        assert error(bad, 422)["field"] == "limit"


# ---------------------------------------------------------------- route and feedback


def test_route_dry_run_explains_itself(http: httpx.Client) -> None:
    aid = http.post("/assistants", json={"name": "Scheduler"}).json()["id"]
    http.post(
        f"/assistants/{aid}/skills",
        json={"name": "calendar", "description": "schedule meetings and appointments"},
    )
    routed = http.post("/route", json={"text": "Schedule a meeting on Monday"}).json()
    assert (routed["reason"], routed["assistant"]["id"], routed["skill"]) == (
        "skill",
        aid,
        "calendar",
    )
    assert (routed["language"], routed["kind"], routed["complexity"]) == ("en", "schedule", "low")
    assert routed["candidates"][0]["score"] == routed["score"]
    chat = http.post("/route", json={"text": "ありがとう"}).json()
    assert chat["reason"] in ("default", "fallback")
    assert chat["assistant"]["name"] == "Secretary"
    explicit = http.post("/route", json={"text": "anything", "assistant_id": aid}).json()
    assert explicit["reason"] == "explicit"
    assert error(http.post("/route", json={"text": ""}), 422)["field"] == "text"
    assert error(http.post("/route", json={"text": "x", "assistant_id": str(uuid.uuid4())}), 404)


def test_a_turn_with_nothing_to_embed_scores_zero_not_nan(http: httpx.Client) -> None:
    # Symbols and emoji embed to a zero vector, whose cosine distance is NaN in Postgres.
    aid = http.post("/assistants", json={"name": "Scheduler"}).json()["id"]
    http.post(f"/assistants/{aid}/skills", json={"name": "calendar", "description": "meetings"})
    http.post(f"/assistants/{aid}/skills", json={"name": "symbols", "description": "!!!"})
    routed = http.post("/route", json={"text": "🙂 !!"})
    assert routed.status_code == 200, routed.text
    body = routed.json()
    assert body["reason"] in ("default", "fallback")
    assert [c["score"] for c in body["candidates"]] == [0.0, 0.0]


def test_feedback_rejects_unknown_or_foreign_ids(http: httpx.Client, other: httpx.Client) -> None:
    aid = http.post("/assistants", json={"name": "A"}).json()["id"]
    missing = {"message_id": str(uuid.uuid4()), "assistant_id": aid}
    assert error(http.post("/feedback", json=missing), 404)["message"] == "message not found"
    assert (
        error(http.post("/feedback", json={"message_id": "x", "assistant_id": aid}), 422)["field"]
        == "message_id"
    )
    assert error(other.post("/feedback", json=missing), 404)


def test_feedback_creates_a_skill_for_an_assistant_without_one(
    server: RunningServer, http: httpx.Client
) -> None:
    token = http.headers["Authorization"].split()[1]

    async def one_turn() -> uuid.UUID:
        client = await Client.connect(server.ws)
        await client.hello(token)
        cid = await client.create()
        await client.send(Send(id="1", conversation_id=cid, text="Water the office plants"))
        ack = await client.expect(Ack)
        await client.until(TurnEnd)
        await client.close()
        return ack.message_id

    message_id = asyncio.run(one_turn())
    aid = http.post("/assistants", json={"name": "Facilities"}).json()["id"]
    learned = http.post("/feedback", json={"message_id": str(message_id), "assistant_id": aid})
    assert learned.status_code == 201
    assert learned.json()["created_skill"] is True
    routed = http.post("/route", json={"text": "Please water the plants in the office"}).json()
    assert routed["assistant"]["name"] == "Facilities"


# ---------------------------------------------------------------- OpenAPI


def test_openapi_documents_every_route(server: RunningServer) -> None:
    doc = httpx.get(f"{server.http}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (route.path, method)
        for route in api.routes()
        if isinstance(route, Route) and not route.path.endswith("openapi.json")
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert documented == served
    create = doc["paths"]["/api/v1/assistants"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AssistantIn"
    )
    # Every status an operation can answer, and none it cannot.
    assert set(create["responses"]) == {"201", "400", "401", "422", "429"}
    get_one = doc["paths"]["/api/v1/assistants/{assistant_id}"]["get"]
    assert set(get_one["responses"]) == {"200", "401", "404", "429"}
    page = doc["paths"]["/api/v1/conversations/{conversation_id}/messages"]["get"]
    assert set(page["responses"]) == {"200", "401", "404", "422", "429"}
    assert {p["name"] for p in page["parameters"]} == {"conversation_id", "before_seq", "limit"}
    feedback = doc["paths"]["/api/v1/feedback"]["post"]
    assert set(feedback["responses"]) == {"201", "400", "401", "404", "422", "429"}
    for ref in ("AssistantOut", "RouteOut", "ErrorOut", "MessageInfo"):
        assert ref in doc["components"]["schemas"]


def test_schemathesis_finds_no_server_error_or_undocumented_answer(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The document and the server cannot drift: schemathesis, as a user runs it (with a
    JWT), checks every status, body and header against the document (bounded examples)."""
    secret = "0123456789abcdef0123456789abcdef"
    # Not rate limited: every operation's logic is reached, not its 429.
    running = start_server(jwt_secret=Secret(secret), requests_per_minute=1_000_000)
    token = jwt.encode({"sub": new_user(), "exp": time.time() + 600}, secret, algorithm="HS256")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "--no-color",
            "run",
            f"{running.http}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "15",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "28/28" in result.stdout  # every operation was tested


# ---------------------------------------------------------------- CORS


def test_cors_preflight_succeeds_only_for_allowed_origins(
    start_server: Callable[..., RunningServer],
) -> None:
    running = start_server(allowed_origins=("https://app.example",))
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ("authorization, content-type"),
    }
    with httpx.Client(base_url=f"{running.http}/api/v1") as client:
        allowed = client.options(
            "/assistants", headers={"Origin": "https://app.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options(
            "/assistants", headers={"Origin": "https://evil.example", **preflight}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        listed = client.get(
            "/assistants",
            headers={"Origin": "https://app.example", "Authorization": f"Bearer {new_user()}"},
        )
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "https://app.example"


def test_without_allowed_origins_no_origin_gets_cors(server: RunningServer) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    response = httpx.options(f"{server.http}/api/v1/assistants", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code >= 400


def test_nul_in_any_text_field_is_422_not_500(http: httpx.Client) -> None:
    # Postgres rejects NUL in text: a title or description with one was a 500.
    aid = http.post("/assistants", json={"name": "Scheduler"}).json()["id"]
    bad = [
        ("/conversations", {"title": "trip\u0000"}, "title"),
        (f"/assistants/{aid}/skills", {"name": "s", "description": "a\u0000b"}, "description"),
        ("/assistants", {"name": "x", "system_prompt": "\u0000"}, "system_prompt"),
        ("/route", {"text": "hi\u0000"}, "text"),
    ]
    for path, body, field in bad:
        assert error(http.post(path, json=body), 422)["field"] == field, path
    skill = http.post(f"/assistants/{aid}/skills", json={"name": "s", "description": "ok"}).json()
    patched = http.patch(f"/skills/{skill['id']}", json={"description": "\u0000"})
    assert error(patched, 422)["field"] == "description"
