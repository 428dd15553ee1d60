"""A client's story: mint a token, get credits, create a generation, poll it, download the images."""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from app.api.auth import Role
from tests.stack import Stack, check_ledger_invariants

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def test_four_pose_generation_completes_with_downloadable_images(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    answer = stack.create_generation(user, POSES, prompt="an astronaut in a business suit")
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "queued"
    assert accepted["creditsCharged"] == 4 * 30
    assert stack.balance(user) == 1000 - 120

    done = stack.wait_finished(user, accepted["generationId"])
    assert done["status"] == "completed"
    assert done["creditsRefunded"] == 0 and done["errorType"] is None
    assert done["durationMs"] > 0 and done["finishedAt"].endswith("Z")
    assert [p["poseId"] for p in done["poses"]] == POSES
    for pose in done["poses"]:
        assert pose["status"] == "completed" and pose["errorType"] is None
        image = httpx.get(httpx.URL(stack.base_url).join(pose["imageUrl"]), timeout=10)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (512, 512)
        assert pose["durationMs"] is not None and pose["queueWaitMs"] is not None
        assert pose["providerMs"] is not None and pose["uploadMs"] is not None
    with stack.db() as conn:
        check_ledger_invariants(conn)


def test_generation_is_listed_newest_first_and_paginated(stack: Stack) -> None:
    user = stack.new_user(credits=300)
    ids = [stack.create_generation(user, POSES[:1], prompt=f"p{i}").json()["generationId"] for i in range(3)]
    page = stack.http.get("/generations", params={"limit": 2}, headers=stack.headers(user)).json()
    assert page["total"] == 3 and page["limit"] == 2
    assert [g["generationId"] for g in page["generations"]] == ids[::-1][:2]
    rest = stack.http.get("/generations", params={"limit": 2, "offset": 2}, headers=stack.headers(user)).json()
    assert [g["generationId"] for g in rest["generations"]] == ids[:1]


def test_not_enough_credits_is_402_and_writes_nothing(stack: Stack) -> None:
    user = stack.new_user(credits=59)
    answer = stack.create_generation(user, POSES[:2])
    assert answer.status_code == 402
    assert "Insufficient credits" in answer.json()["detail"]
    assert stack.balance(user) == 59
    with stack.db() as conn:
        assert conn.execute("SELECT count(*) FROM generations WHERE user_id = %s", (user,)).fetchone()[0] == 0
        kinds = [r[0] for r in conn.execute("SELECT kind FROM credit_ledger WHERE user_id = %s", (user,))]
        assert kinds == ["grant"]
        assert conn.execute(
            "SELECT count(*) FROM error_events WHERE user_id = %s AND error_type = 'CREDIT_ERROR'", (user,)
        ).fetchone()[0] == 1


def test_unknown_user_starts_at_zero(stack: Stack) -> None:
    user = stack.new_user()
    assert stack.balance(user) == 0
    assert stack.create_generation(user, POSES[:1]).status_code == 402


def test_invalid_input_is_422_naming_the_field(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    cases = [
        ({"poseIds": [], "prompt": "x"}, "poseIds"),
        ({"poseIds": POSES * 3, "prompt": "x"}, "poseIds"),
        ({"poseIds": ["pose_does_not_exist"], "prompt": "x"}, "poseIds"),
        ({"poseIds": POSES[:1], "prompt": ""}, "prompt"),
        ({"poseIds": POSES[:1], "prompt": "   "}, "prompt"),
        ({"poseIds": POSES[:1], "prompt": "x" * 1001}, "prompt"),
        ({"poseIds": POSES[:1]}, "prompt"),
        ({"poseIds": "pose_tree_pose", "prompt": "x"}, "poseIds"),
    ]
    for body, field in cases:
        answer = stack.http.post("/generations", json=body, headers=stack.headers(user))
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.json()["detail"], (body, answer.text)
    bad_json = stack.http.post("/generations", content=b"{not json", headers={
        **stack.headers(user), "Content-Type": "application/json"})
    assert bad_json.status_code in (400, 422)
    assert stack.balance(user) == 1000


def test_another_users_generation_is_404_but_admin_sees_it(stack: Stack) -> None:
    owner, other = stack.new_user(credits=100), stack.new_user(credits=100)
    generation_id = stack.create_generation(owner, POSES[:1]).json()["generationId"]
    assert stack.http.get(f"/generations/{generation_id}", headers=stack.headers(other)).status_code == 404
    admin = stack.http.get(f"/generations/{generation_id}", headers=stack.headers("admin", Role.ADMIN))
    assert admin.status_code == 200
    assert stack.http.get("/generations/gen_missing", headers=stack.headers(owner)).status_code == 404
    listed = stack.http.get("/generations", headers=stack.headers(other)).json()
    assert listed["total"] == 0


def test_racing_idempotency_keys_charge_once(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    key = uuid.uuid4().hex

    def create(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            return client.post("/generations", json={"poseIds": POSES[:2], "prompt": "same"},
                               headers={**stack.headers(user), "Idempotency-Key": key})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(create, range(20)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["generationId"] for a in answers}) == 1
    assert stack.balance(user) == 1000 - 60
    with stack.db() as conn:
        assert conn.execute("SELECT count(*) FROM generations WHERE user_id = %s", (user,)).fetchone()[0] == 1


def test_fifty_concurrent_generations_against_a_balance_for_twenty(stack: Stack) -> None:
    user = stack.new_user(credits=20 * 30)

    def create(i: int) -> int:
        with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            return client.post("/generations", json={"poseIds": POSES[:1], "prompt": f"n{i}"},
                               headers=stack.headers(user)).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(create, range(50)))
    assert codes.count(202) == 20 and codes.count(402) == 30
    with stack.db() as conn:
        balance = conn.execute("SELECT balance FROM credit_accounts WHERE user_id = %s", (user,)).fetchone()[0]
        assert balance == 0
        check_ledger_invariants(conn)


def test_openapi_schema_lists_every_route(stack: Stack) -> None:
    schema = httpx.get(f"{stack.base_url}/schema/openapi.json", timeout=10).json()
    paths = set(schema["paths"])
    prefix = "/api/apps/pose-generator"
    for path in ("/generations", "/generations/{generation_id}", "/poses", "/poses/{pose_id}", "/credits",
                 "/credits/grants", "/health"):
        assert prefix + path in paths, (path, sorted(paths))
    create = schema["paths"][prefix + "/generations"]["post"]
    assert "202" in create["responses"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("CreateGenerationRequest")
    request_schema = schema["components"]["schemas"]["CreateGenerationRequest"]
    assert set(request_schema["required"]) == {"poseIds", "prompt"}
    assert request_schema["properties"]["poseIds"]["maxItems"] == 10
    assert request_schema["properties"]["prompt"]["maxLength"] == 1000
    assert "402" in create["responses"] and "422" in create["responses"] and "503" in create["responses"]
