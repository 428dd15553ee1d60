"""The HTTP contract a client can rely on: problem details, idempotency, rate-limit headers, content
negotiation, caching headers, HEAD, signed image URLs, the configured pose limit, an offline schema viewer,
and a client generated from the served OpenAPI document that works.

One stack for the module, with a pose limit of 3 and a rate limit of 3 creates per user per minute (each
test uses users of its own).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.api.app import create_app
from app.api.auth import Role
from app.settings import Settings
from app.storage.signed_urls import ImageUrlSigner
from tests.stack import JWT_SECRET, Stack, running_stack

MAX_POSES = 3
PER_MINUTE = 3
POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
PROBLEM_JSON = "application/problem+json"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(template_db, tmp_path_factory.mktemp("contract"), workers=1,
                       POSEGEN_MAX_POSES=str(MAX_POSES), POSEGEN_RATE_LIMIT_PER_MINUTE=str(PER_MINUTE)) as running:
        running.wait_workers_ready(1)
        yield running


def _problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_JSON), answer.headers
    body = answer.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"] and body["detail"]
    return body


def test_the_configured_pose_limit_is_applied_and_in_the_schema(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    schema = httpx.get(f"{stack.base_url}/schema/openapi.json").json()
    assert schema["components"]["schemas"]["CreateGenerationRequest"]["properties"]["poseIds"]["maxItems"] == MAX_POSES
    body = _problem(stack.create_generation(user, POSES[:MAX_POSES + 1]), 422)
    assert body["fields"] == ["poseIds"] and "poseIds" in body["detail"]
    assert stack.create_generation(user, POSES[:MAX_POSES]).status_code == 202
    assert stack.balance(user) == 1000 - MAX_POSES * 30


def test_an_idempotency_key_reused_for_another_request_is_422(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    key = {"Idempotency-Key": "order-42"}
    first = stack.create_generation(user, POSES[:2], prompt="a chef", headers=key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = stack.create_generation(user, POSES[:2], prompt="a chef", headers=key)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["generationId"] == first.json()["generationId"]
    for poses, prompt in ((POSES[:2], "a baker"), (POSES[1:3], "a chef"), (POSES[1::-1], "a chef")):
        body = _problem(stack.create_generation(user, poses, prompt=prompt, headers=key), 422)
        assert "Idempotency-Key" in body["detail"] and "different request" in body["detail"]
        assert body["field"] == "Idempotency-Key" and body["errorType"] == "VALIDATION_ERROR"
    assert stack.balance(user) == 1000 - 2 * 30


def test_retry_after_only_on_429_and_refused_requests_keep_the_allowance(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    headers = stack.headers(user)
    refused = [
        stack.http.post("/generations", content=b"poseIds=x", headers={**headers, "Content-Type": "text/plain"}),
        stack.http.post("/generations", content=b'{"poseIds": ["x"], "prompt": "' + b"x" * 100_000 + b'"}',
                        headers={**headers, "Content-Type": "application/json"}),
        stack.create_generation(user, []),
        stack.create_generation(user, POSES[:1], headers={"Accept": "text/html"}),
        stack.http.post("/generations", content=b"{not json", headers={**headers, "Content-Type": "application/json"}),
    ] * 2
    assert [a.status_code for a in refused] == [415, 413, 422, 406, 400] * 2
    for answer in refused:
        assert "Retry-After" not in answer.headers
        assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    assert [a.headers.get("RateLimit-Remaining") for a in refused] == [str(PER_MINUTE)] * len(refused)
    accepted = [stack.create_generation(user, POSES[:1], prompt=f"p{i}") for i in range(PER_MINUTE)]
    assert [a.status_code for a in accepted] == [202] * PER_MINUTE
    for answer in accepted:
        assert "Retry-After" not in answer.headers and answer.headers["RateLimit-Limit"] == str(PER_MINUTE)
    limited = stack.create_generation(user, POSES[:1])
    assert "Rate limit" in _problem(limited, 429)["detail"]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert stack.balance(user) == 1000 - PER_MINUTE * 30


def test_errors_are_problem_details_with_the_detail_clients_read(stack: Stack) -> None:
    user = stack.new_user(credits=0)
    anonymous = stack.http.get("/credits")
    assert "Authorization" in _problem(anonymous, 401)["detail"]
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="pose-generator"'
    forged = stack.http.get("/credits", headers={"Authorization": "Bearer not.a.jwt"})
    assert _problem(forged, 401)["detail"] == "invalid token"
    assert forged.headers["WWW-Authenticate"] == 'Bearer realm="pose-generator", error="invalid_token"'
    assert "not found" in _problem(stack.http.get("/generations/gen_nope", headers=stack.headers(user)), 404)["detail"]
    poor = _problem(stack.create_generation(user, POSES[:2]), 402)
    assert poor["detail"] == "Insufficient credits: 60 required, balance 0"
    assert (poor["errorType"], poor["required"], poor["balance"]) == ("CREDIT_ERROR", 60, 0)
    invalid = _problem(stack.http.post("/credits/grants", json={"userId": "u", "amount": -1},
                                       headers=stack.headers("admin", Role.ADMIN)), 422)
    assert invalid["fields"] == ["amount"] and invalid["invalidParams"][0]["name"] == "amount"
    not_allowed = _problem(stack.http.delete("/generations", headers=stack.headers(user)), 405)
    assert not_allowed["status"] == 405
    allowed = stack.http.delete("/generations", headers=stack.headers(user)).headers["Allow"]
    assert {m.strip() for m in allowed.split(",")} >= {"GET", "HEAD", "POST"}
    options = stack.http.options("/generations")
    assert options.status_code == 204 and "HEAD" in options.headers["Allow"]


def test_creates_point_at_their_poll_and_polls_revalidate(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    created = stack.create_generation(user, POSES[:1])
    assert created.status_code == 202
    location = created.headers["Location"]
    assert location.endswith(f"/generations/{created.json()['generationId']}")
    stack.wait_finished(user, created.json()["generationId"])
    poll = httpx.get(f"{stack.base_url}{location}", headers=stack.headers(user))
    assert poll.status_code == 200 and poll.json()["status"] == "completed"
    assert poll.headers["Cache-Control"] == "private, no-cache"
    etag = poll.headers["ETag"]
    same = httpx.get(f"{stack.base_url}{location}", headers={**stack.headers(user), "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["ETag"] == etag
    other = httpx.get(f"{stack.base_url}{location}", headers={**stack.headers(user), "If-None-Match": '"x"'})
    assert other.status_code == 200 and other.json() == poll.json()


def test_head_answers_like_get_without_a_body(stack: Stack) -> None:
    user = stack.new_user()
    for path, headers in (("/health", {}), ("/poses?limit=2", stack.headers(user))):
        get = stack.http.get(path, headers=headers)
        head = stack.http.head(path, headers=headers)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    assert stack.http.get("/health").headers["Cache-Control"] == "no-store"


def test_content_negotiation_406_and_415(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    headers = stack.headers(user)
    body = _problem(stack.http.get("/poses", headers={**headers, "Accept": "text/html"}), 406)
    assert "application/json" in body["detail"]
    for accept in ("application/json", "*/*", "application/*", "text/html, application/json;q=0.5",
                   "application/json; charset=utf-8"):
        assert stack.http.get("/poses", headers={**headers, "Accept": accept}).status_code == 200
    # RFC 9110: q=0 is "not acceptable", and the most specific range decides.
    for accept in ("application/json;q=0", "*/*;q=0",
                   "application/*, application/json;q=0, application/problem+json;q=0"):
        _problem(stack.http.get("/poses", headers={**headers, "Accept": accept}), 406)
    metrics = stack.http.get("/metrics-prometheus", headers={"Accept": "application/openmetrics-text"})
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("application/openmetrics-text")
    body = _problem(stack.http.post("/generations", content=b'{"poseIds": ["pose_tree_pose"], "prompt": "x"}',
                                    headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert "application/json" in body["detail"]
    grant = stack.http.post("/credits/grants", content=b'{"userId": "u", "amount": 5}',
                            headers={**stack.headers("admin", Role.ADMIN), "Content-Type": "text/plain"})
    assert "application/json" in _problem(grant, 415)["detail"]
    assert stack.balance(user) == 1000


def test_image_urls_are_signed_and_expire(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    created = stack.create_generation(user, POSES[:1]).json()
    done = stack.wait_finished(user, created["generationId"])
    url = done["poses"][0]["imageUrl"]
    path, query = url.split("?")
    params = parse_qs(query)
    assert set(params) == {"expires", "signature"}
    assert int(params["expires"][0]) >= time.time() + 3600 - 5
    image = httpx.get(f"{stack.base_url}{url}")  # no token: the signed URL alone is enough
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert re.fullmatch(r"private, max-age=\d+, immutable", image.headers["Cache-Control"])
    head = httpx.head(f"{stack.base_url}{url}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(image.content))
    key = urlsplit(path).path.split("/images/", 1)[1]
    expired = ImageUrlSigner(JWT_SECRET, 10, clock=lambda: time.time() - 3600).query(key)
    forged = query.replace(params["signature"][0], "0" * 64)
    other_image = query  # the signature covers the key: it does not open another image
    cases = {
        path: "must be signed",
        f"{path}?{forged}": "does not match",
        f"{path}?{expired}": "expired",
        f"{path.replace('0-', '1-')}?{other_image}": "does not match",
    }
    for target, reason in cases.items():
        assert reason in _problem(httpx.get(f"{stack.base_url}{target}"), 403)["detail"], target
    missing = ImageUrlSigner(JWT_SECRET, 60).query("gen_none/0-x.png")
    _problem(httpx.get(f"{stack.base_url}{path.split('/images/')[0]}/images/gen_none/0-x.png?{missing}"), 404)


def test_the_schema_viewer_loads_nothing_from_the_internet(stack: Stack) -> None:
    page = httpx.get(f"{stack.base_url}/schema")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        answer = httpx.get(f"{stack.base_url}{asset}")
        assert answer.status_code == 200 and len(answer.content) > 100, asset
    assert httpx.get(f"{stack.base_url}/schema/openapi.json").json()["info"]["title"] == "Pose Generator API"


def test_a_client_generated_from_the_served_schema_works(stack: Stack, tmp_path: Path) -> None:
    """openapi-python-client reads every response of the served document (errors included) without a warning,
    and the generated client creates, polls, and reads a 402 and a 422 as problem details."""
    config = tmp_path / "generator.yml"
    # The generator has no type for image/png: treat the image route's body as bytes.
    config.write_text("content_type_overrides:\n  image/png: application/octet-stream\n")
    package = tmp_path / "posegen_client"
    result = subprocess.run(
        [str(VENV_BIN / "openapi-python-client"), "generate", "--url", f"{stack.base_url}/schema/openapi.json",
         "--meta", "none", "--output-path", str(package), "--config", str(config)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Warning" not in output and "WARNING" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("posegen_client")
        create = importlib.import_module("posegen_client.api.generations.api_apps_pose_generator_generations_create")
        read = importlib.import_module(
            "posegen_client.api.generations.api_apps_pose_generator_generations_generation_id_read")
        models = importlib.import_module("posegen_client.models")

        rich, poor = stack.new_user(credits=1000), stack.new_user(credits=0)
        client = client_module.AuthenticatedClient(base_url=stack.base_url, token=stack.token(rich))
        accepted = create.sync_detailed(client=client, idempotency_key="generated-client-1",
                                        body=models.CreateGenerationRequest(pose_ids=POSES[:2], prompt="a dancer"))
        assert accepted.status_code == 202 and isinstance(accepted.parsed, models.GenerationAccepted)
        view = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = read.sync(accepted.parsed.generation_id, client=client)
            assert isinstance(view, models.GenerationView)
            if view.status in ("completed", "failed"):
                break
            time.sleep(0.1)
        assert view is not None and view.status == "completed" and len(view.poses) == 2

        poor_client = client_module.AuthenticatedClient(base_url=stack.base_url, token=stack.token(poor))
        refused = create.sync_detailed(client=poor_client,
                                       body=models.CreateGenerationRequest(pose_ids=POSES[:1], prompt="x"))
        assert refused.status_code == 402 and isinstance(refused.parsed, models.ProblemDetail)
        assert refused.parsed.detail == "Insufficient credits: 30 required, balance 0"
        assert (refused.parsed.error_type, refused.parsed.balance) == ("CREDIT_ERROR", 0)

        invalid = create.sync_detailed(client=client, body=models.CreateGenerationRequest(
            pose_ids=POSES[:MAX_POSES + 1], prompt="x"))
        assert invalid.status_code == 422 and isinstance(invalid.parsed, models.ProblemDetail)
        assert invalid.parsed.fields == ["poseIds"] and invalid.parsed.invalid_params[0].name == "poseIds"
        missing = read.sync_detailed("gen_missing", client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ProblemDetail)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "posegen_client" or m.startswith("posegen_client.")]:
            del sys.modules[name]


def test_a_fault_drill_is_visible_in_health_logs_and_worker_metrics(stack: Stack, fresh_stack) -> None:  # type: ignore[no-untyped-def]
    assert stack.http.get("/health").json()["faultDrill"] == {"active": False, "faults": {}}
    drill: Stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=0.25,STORAGE_ERROR=0.05")
    health = drill.http.get("/health").json()
    assert health["faultDrill"] == {"active": True, "faults": {"FLUX_API_ERROR": 0.25, "STORAGE_ERROR": 0.05}}
    assert set(health) == {"status", "timestamp", "app", "version", "checks", "phase", "faultDrill"}
    worker = drill.workers[0]
    deadline = time.monotonic() + 60
    metrics = ""
    while time.monotonic() < deadline:
        try:
            metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert "pose_fault_drill_active 1.0" in metrics
    assert 'pose_fault_drill_fraction{error_type="FLUX_API_ERROR"} 0.25' in metrics
    for process in (drill.api, worker):
        assert process is not None
        warnings = [line for line in process.output().splitlines() if "Fault drill on" in line]
        assert len(warnings) == 1 and '"level":"WARN"' in warnings[0] and "FLUX_API_ERROR" in warnings[0]
    quiet = httpx.get(f"http://127.0.0.1:{stack.workers[0].metrics_port}/metrics").text
    assert "pose_fault_drill_active 0.0" in quiet


def test_the_stack_serves_only_routes_of_the_app_with_every_option(stack: Stack) -> None:
    """What a running API serves is part of the app built with every optional route (FLUX webhooks), the one whose
    routes docs/api.md lists (tests/unit/test_reference_tables.py)."""
    everything = Settings.from_env({"FLUX_WEBHOOKS": "true", "POSEGEN_PUBLIC_BASE_URL": "https://api.example.com"})
    schema = create_app(everything).openapi_schema.to_schema()
    assert set(httpx.get(f"{stack.base_url}/schema/openapi.json").json()["paths"]) <= set(schema["paths"])


def test_the_app_uses_no_api_litestar_deprecates() -> None:
    """Building the app and its OpenAPI document warns of nothing Litestar deprecates (inferred dependencies
    and parameters, untyped request bodies, ``Parameter(header=...)``): those stop working in Litestar 3.
    pyproject.toml turns such warnings into errors for every test that builds the app."""
    everything = Settings.from_env({"FLUX_WEBHOOKS": "true", "POSEGEN_PUBLIC_BASE_URL": "https://api.example.com"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_app(everything).openapi_schema.to_schema()
    deprecated = sorted({str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)})
    assert deprecated == [], f"{len(deprecated)} deprecations, e.g.:\n" + "\n".join(deprecated[:5])
