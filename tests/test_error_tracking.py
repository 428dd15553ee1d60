"""Sentry: failed poses, failed generations and API errors reach a (fake) Sentry, tagged, without secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from app import API_PREFIX
from app.observability.sentry import FILTERED, SecretScrubber
from tests.fakes.datadog_agent import FakeDatadogAgent
from tests.fakes.sentry_sink import FakeSentry
from tests.stack import JWT_SECRET, ROOT, Stack, free_port

POSES = ["pose_tree_pose", "pose_arms_crossed"]
# Values that must never reach Sentry; the Supabase key is JWT-shaped, as real service keys are.
FLUX_KEY = "flux-key-" + uuid.uuid4().hex
SUPABASE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0." + uuid.uuid4().hex
SECRET_ENV = {"FLUX_API_KEY": FLUX_KEY, "SUPABASE_SERVICE_KEY": SUPABASE_KEY}


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    with FakeSentry() as sink:
        yield sink


def assert_no_secrets(raw: bytes, *extra: str) -> None:
    for secret in (JWT_SECRET, FLUX_KEY, SUPABASE_KEY, *extra):
        assert secret.encode() not in raw, f"{secret[:12]}... reached Sentry"
    assert b"Bearer ey" not in raw


def test_failed_generation_reaches_sentry_with_its_tags_and_no_secrets(  # type: ignore[no-untyped-def]
    fresh_stack, sentry: FakeSentry
) -> None:
    stack: Stack = fresh_stack(workers=1, SENTRY_DSN=sentry.dsn, POSEGEN_FAULTS="FLUX_API_ERROR=1.0",
                               POSEGEN_ENV="staging", **SECRET_ENV)
    user = stack.new_user(credits=1000)
    answer = stack.create_generation(user, POSES)
    assert answer.status_code == 202, answer.text
    generation_id = answer.json()["generationId"]
    assert stack.wait_finished(user, generation_id)["status"] == "failed"

    def ours(events: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return [e for e in events if e.get("tags", {}).get("generationId") == generation_id]

    events = ours(sentry.wait_for_events(lambda events: len(ours(events)) >= 3))
    poses = [e for e in events if e.get("exception")]
    generation = [e for e in events if e.get("message") == "Generation failed: FLUX_API_ERROR"]
    assert sorted(e["tags"]["poseId"] for e in poses) == sorted(POSES)
    assert len(generation) == 1
    for event in events:
        assert event["tags"]["component"] == "pose-generator"
        assert event["tags"]["errorType"] == "FLUX_API_ERROR"
        assert event["tags"]["userId"] == user and event["user"]["id"] == user
        assert event["tags"]["process"] == "worker"
        assert event["environment"] == "staging"
        assert event["release"] == "posegen@1.0.0"
    assert_no_secrets(sentry.raw(), stack.token(user))


def test_unhandled_api_error_reaches_sentry_with_its_route_and_no_credentials(  # type: ignore[no-untyped-def]
    fresh_stack, sentry: FakeSentry
) -> None:
    # The database is down: the request's connection cannot be had, an error the handler does not expect.
    stack: Stack = fresh_stack(workers=0, SENTRY_DSN=sentry.dsn,
                               DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x", **SECRET_ENV)
    token = stack.token("user_sentry")
    cookie = "session=" + uuid.uuid4().hex
    answer = stack.http.post(
        "/generations", json={"poseIds": POSES, "prompt": f"a portrait, my token is {token}"},
        headers={"Authorization": f"Bearer {token}", "Cookie": cookie, "x-key": FLUX_KEY},
    )
    assert answer.status_code >= 500, answer.text
    events = sentry.wait_for_events(lambda events: any(e.get("exception") for e in events))
    event = next(e for e in events if e.get("exception"))
    assert event["tags"]["route"] == f"{API_PREFIX}/generations"
    assert event["tags"]["method"] == "POST"
    assert event["tags"]["component"] == "pose-generator" and event["tags"]["process"] == "api"
    assert event["request"]["method"] == "POST"
    assert_no_secrets(sentry.raw(), token, cookie.split("=", 1)[1])


def test_nothing_is_sent_when_sentry_and_tracing_are_off(fresh_stack, sentry: FakeSentry) -> None:  # type: ignore[no-untyped-def]
    with FakeDatadogAgent() as agent:
        # The agent address alone does not switch tracing on, and no DSN means no Sentry.
        stack: Stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=1.0", DD_TRACE_AGENT_URL=agent.url)
        user = stack.new_user(credits=1000)
        generation_id = stack.create_generation(user, POSES).json()["generationId"]
        assert stack.wait_finished(user, generation_id)["status"] == "failed"
        for process in [*stack.workers, stack.api]:
            process.stop()  # anything buffered would be flushed at exit
        assert agent.requests() == []
    assert sentry.envelopes() == []


def test_off_by_default_neither_sdk_is_imported() -> None:
    code = (
        "import sys\n"
        "from app.settings import Settings\n"
        "from app.observability import sentry, tracing\n"
        "settings = Settings.from_env({})\n"
        "assert not sentry.init_sentry(settings, process='api') and not tracing.init_tracing(settings)\n"
        "from app.api.app import create_app\n"
        "create_app(settings)\n"
        "import app.worker.main, app.worker.pipeline\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sentry_sdk', 'ddtrace'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SENTRY_DSN", "DD_TRACE_ENABLED")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_scrubber_removes_credentials_wherever_they_appear() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
    scrubber = SecretScrubber(["flux-key-0123456789", "short"])
    event = {
        "request": {"headers": {"Authorization": f"Bearer {token}", "X-Key": "anything", "Accept": "*/*"},
                    "cookies": {"sb-access-token": "x"}},
        "breadcrumbs": {"values": [{"message": f"calling with Bearer {token}", "data": {"url": "/x"}}]},
        "extra": {"settings": "Settings(flux_api_key='flux-key-0123456789', jwt_secret='short')"},
        "contexts": {"headers": [["authorization", "Basic abc"], ["accept", "*/*"]]},
        "exception": {"values": [{"value": f"bad token {token}", "stacktrace": {"frames": [
            {"vars": {"supabase_service_key": "eyJ-anything", "pose": "pose_tree_pose"}}]}}]},
    }
    scrubbed = scrubber.scrub(event)
    text = repr(scrubbed)
    assert token not in text and "flux-key-0123456789" not in text and "anything" not in text
    assert scrubbed["request"]["headers"]["Accept"] == "*/*"
    assert scrubbed["request"]["headers"]["Authorization"] == FILTERED
    assert scrubbed["breadcrumbs"]["values"][0]["message"] == f"calling with Bearer {FILTERED}"
    assert scrubbed["contexts"]["headers"] == [["authorization", FILTERED], ["accept", "*/*"]]
    # Values too short to be keys are left alone rather than cut out of ordinary words.
    assert "jwt_secret='short'" in text
    assert scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]["pose"] == "pose_tree_pose"


def test_scrubber_removes_signatures_and_tokens_from_urls_and_query_strings() -> None:
    """A signed image URL stays fetchable until it expires: its signature must not reach Sentry."""
    signature = "5f1c0e" * 10
    event = {"request": {"url": f"http://api/images/gen_1/0.png?expires=99&signature={signature}",
                         "query_string": f"expires=99&signature={signature}"},
             "breadcrumbs": {"values": [{"data": {"url": f"https://x/y?token={signature}&page=2"}}]},
             "message": f"fetching /images/k?SIGNATURE={signature}"}
    scrubbed = SecretScrubber([]).scrub(event)
    assert signature not in repr(scrubbed)
    assert scrubbed["request"]["query_string"] == f"expires=99&signature={FILTERED}"
    assert scrubbed["breadcrumbs"]["values"][0]["data"]["url"].endswith(f"token={FILTERED}&page=2")
