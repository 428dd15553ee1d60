"""Operators through the HTTP API with real workers and the fake FLUX: a provider outage fails and refunds
poses; after recovery the operator finds them, dry-runs, retries on the house (within the retries' share
of provider slots while new generations run), and a second identical retry changes nothing; a charged
retry refuses users who cannot pay; pausing intake answers 503 with nothing charged; every action is
audited and counted by the exporter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.api.admin_operations import sentry_issues_url
from app.api.auth import Role
from app.settings import Settings, SettingsError
from app.worker.limiter import retry_slot_limit
from exporter.server import Exporter
from tests.fakes.flux_server import FakeFlux
from tests.stack import ROOT, Stack, check_ledger_invariants, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
LATENCY = 0.8
SLOTS = 8
SHARE = 0.25  # of 8 slots: retries may hold 2


@pytest.fixture(scope="module")
def flux() -> Iterator[FakeFlux]:
    with FakeFlux(latency=LATENCY, retry_after=0.2) as fake:
        yield fake


@pytest.fixture(scope="module")
def ops_stack(template_db: str, tmp_path_factory: pytest.TempPathFactory, flux: FakeFlux) -> Iterator[Stack]:
    env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": flux.api_key, "FLUX_BASE_URL": flux.base_url,
           "FLUX_TIMEOUT_SECONDS": "2", "FLUX_DEADLINE_SECONDS": "20", "FLUX_MAX_RETRIES": "0",
           "FLUX_POLL_INTERVAL_SECONDS": "0.05", "POSEGEN_PROVIDER_CONCURRENCY": str(SLOTS),
           "POSEGEN_RETRY_SLOT_SHARE": str(SHARE)}
    with running_stack(template_db, tmp_path_factory.mktemp("ops"), workers=4, **env) as stack:
        stack.wait_workers_ready(4)
        yield stack


def admin(stack: Stack) -> dict[str, str]:
    return stack.headers("ops-oncall", Role.ADMIN)


def outage(stack: Stack, flux: FakeFlux, users: dict[str, int], tag: str) -> list[str]:
    """FLUX answers 500 to every submission while each user creates ``users[user]`` 4-pose generations;
    returns their ids once all have failed."""
    flux.fail_next("status_500", 10_000, "submit")
    created = [(user, stack.create_generation(user, POSES, prompt=f"{tag} outage {i}").json()["generationId"])
               for user, count in users.items() for i in range(count)]
    for user, generation_id in created:
        done = stack.wait_finished(user, generation_id, timeout=60)
        assert done["status"] == "failed" and done["errorType"] == "FLUX_API_ERROR", done
    flux.reset()
    return [generation_id for _, generation_id in created]


def retry(stack: Stack, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {**admin(stack), **({"Idempotency-Key": key} if key else {})}
    answer = stack.http.post("/admin/retries", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def wait_retry_done(stack: Stack, audit_id: int, timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    progress: dict[str, int] = {}
    while time.monotonic() < deadline:
        progress = stack.http.get(f"/admin/retries/{audit_id}", headers=admin(stack)).json()
        if progress["queued"] == progress["processing"] == 0:
            return progress
        time.sleep(0.2)
    raise AssertionError(f"retry {audit_id} not done: {progress}\n{stack.logs()}")


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def ledger_rows(stack: Stack, users: list[str]) -> int:
    with stack.db() as conn:
        return int(conn.execute("SELECT count(*) FROM credit_ledger WHERE user_id = ANY(%s)", (users,)).fetchone()[0])


def test_outage_refunded_then_retried_on_the_house_within_its_slot_share(ops_stack: Stack, flux: FakeFlux) -> None:
    stack = ops_stack
    alice, bob = stack.new_user(credits=1000), stack.new_user(credits=1000)
    since = datetime.now(UTC).isoformat()
    failed = outage(stack, flux, {alice: 2, bob: 2}, "first")
    assert stack.balance(alice) == stack.balance(bob) == 1000, "every failed pose refunded"

    # Find: the outage's failed generations, newest first, each with its attempt and credits.
    query = {"status": "failed", "errorType": "FLUX_API_ERROR", "createdFrom": since, "limit": 3}
    page = stack.http.get("/admin/generations", params=query, headers=admin(stack)).json()
    rest = stack.http.get("/admin/generations", params={**query, "cursor": page["nextCursor"]},
                          headers=admin(stack)).json()
    rows = page["generations"] + rest["generations"]
    assert rest["nextCursor"] is None and sorted(r["generationId"] for r in rows) == sorted(failed)
    assert [r["createdAt"] for r in rows] == sorted((r["createdAt"] for r in rows), reverse=True)
    assert all(r["creditsCharged"] == r["creditsRefunded"] == 120 for r in rows)
    assert rows[0]["attempts"] == [{**rows[0]["attempts"][0], "run": 1, "kind": "original", "outcome": "failed",
                                    "posesFailed": 4, "errorTypes": ["FLUX_API_ERROR"], "charged": True}]
    assert stack.http.get("/admin/generations", params=query, headers=stack.headers(alice)).status_code == 403

    # Dry run: what the retry would touch; nothing changes.
    body = {"filter": {"status": "failed", "errorType": "FLUX_API_ERROR", "createdFrom": since}, "charge": False}
    dry = retry(stack, {**body, "dryRun": True})
    assert dry["counts"] | {"refusedUsers": []} == {"generations": 4, "poses": 16, "users": 2, "credits": 480,
                                                     "charge": False, "refusedUsers": []}
    assert dry["audit"]["action"] == "retry_dry_run" and dry["audit"]["actor"] == "ops-oncall"
    ledger_before = ledger_rows(stack, [alice, bob])

    # New users' generations keep arriving while the retry runs.
    flux.reset_stats()
    fresh_user = stack.new_user(credits=100_000)
    fresh: list[str] = []
    stop = threading.Event()

    def keep_creating() -> None:
        while not stop.is_set() and len(fresh) < 30:
            fresh.append(stack.create_generation(fresh_user, POSES[:2], prompt="fresh work").json()["generationId"])
            time.sleep(0.25)

    creator = threading.Thread(target=keep_creating)
    creator.start()
    try:
        time.sleep(0.5)
        key = f"retry-{uuid.uuid4().hex}"
        done = retry(stack, {**body, "dryRun": False}, key)
        assert done["counts"]["generations"] == 4 and done["audit"]["action"] == "retry"
        progress = wait_retry_done(stack, done["audit"]["id"])
    finally:
        stop.set()
        creator.join()
    assert progress | {"total": 4} == {"auditId": done["audit"]["id"], "total": 4, "queued": 0, "processing": 0,
                                       "completed": 4, "failed": 0, "superseded": 0}
    for generation_id in fresh:
        assert stack.wait_finished(fresh_user, generation_id)["status"] == "completed"

    # The fake saw each task from submission to ready: retries never held more than their share.
    retried = [(t.ready_at - LATENCY, t.ready_at) for t in flux.tasks() if "first outage" in t.prompt]
    new = [(t.ready_at - LATENCY, t.ready_at) for t in flux.tasks() if "fresh work" in t.prompt]
    assert len(retried) == 16
    assert peak_overlap(retried) <= int(SLOTS * SHARE) == 2
    first_retry, last_retry = min(s for s, _ in retried), max(e for _, e in retried)
    assert any(first_retry < end and start < last_retry for start, end in new), "new work ran during the retry"

    # Completed, on the house: balances unchanged, a waiver per generation says why, the ledger is exact.
    for generation_id in failed:
        view = stack.http.get(f"/generations/{generation_id}", headers=admin(stack)).json()
        assert view["status"] == "completed" and all(p["status"] == "completed" for p in view["poses"])
    assert stack.balance(alice) == stack.balance(bob) == 1000
    with stack.db() as conn:
        check_ledger_invariants(conn)
        waivers = conn.execute("SELECT count(*), sum(amount), min(note) FROM credit_ledger WHERE kind = 'waiver'"
                               " AND generation_id = ANY(%s)", (failed,)).fetchone()
    assert waivers[:2] == (4, 480) and "on the house" in waivers[2]

    # History: the original run failed, the operator's retry completed.
    row = stack.http.get(f"/admin/generations/{failed[0]}", headers=admin(stack)).json()
    assert [(a["run"], a["kind"], a["requestedBy"], a["outcome"], a["charged"], a["posesCompleted"])
            for a in row["attempts"]] == [(1, "original", row["userId"], "failed", True, 0),
                                          (2, "retry", "ops-oncall", "completed", False, 4)]

    # The same retry again changes nothing: the same key replays, a new key finds nothing to retry.
    ledger_after = ledger_rows(stack, [alice, bob])
    assert ledger_after == ledger_before + 4
    replay = stack.http.post("/admin/retries", json={**body, "dryRun": False},
                             headers={**admin(stack), "Idempotency-Key": key})
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["audit"] == done["audit"]
    again = retry(stack, {**body, "dryRun": False}, f"retry-{uuid.uuid4().hex}")
    assert again["counts"]["generations"] == again["counts"]["poses"] == 0
    assert ledger_rows(stack, [alice, bob]) == ledger_after
    assert stack.balance(alice) == stack.balance(bob) == 1000

    audit = stack.http.get("/admin/audit", params={"limit": 10}, headers=admin(stack)).json()["entries"]
    assert [(e["action"], e["counts"]["generations"]) for e in audit[:3]] == [
        ("retry", 0), ("retry", 4), ("retry_dry_run", 4)]
    assert audit[1]["target"] == {"status": "failed", "errorType": "FLUX_API_ERROR",
                                  "createdFrom": audit[1]["target"]["createdFrom"]}


def test_generations_with_failed_poses_are_found_and_retried_whatever_their_status(
        ops_stack: Stack, flux: FakeFlux) -> None:
    """A generation with some poses failed ends ``completed``: ``status=failed`` misses it, ``hasFailedPoses=true``
    finds it beside the failed ones (and a retry's filter takes it), ``false`` finds the rest."""
    stack = ops_stack
    user = stack.new_user(credits=1000)
    (failed,) = outage(stack, flux, {user: 1}, "whole")
    flux.fail_next("status_500", 2, "submit")  # two of the next generation's four poses
    partly = stack.create_generation(user, POSES, prompt="partly failed").json()["generationId"]
    view = stack.wait_finished(user, partly)
    assert view["status"] == "completed" and sorted(p["status"] for p in view["poses"]) == [
        "completed", "completed", "failed", "failed"], view
    flux.reset()
    clean = stack.create_generation(user, POSES, prompt="all delivered").json()["generationId"]
    assert stack.wait_finished(user, clean)["status"] == "completed"

    def found(**query: Any) -> list[str]:
        answer = stack.http.get("/admin/generations", params={"userId": user, **query}, headers=admin(stack))
        assert answer.status_code == 200, answer.text
        return sorted(g["generationId"] for g in answer.json()["generations"])

    assert found(status="failed") == [failed], "status=failed leaves the partly failed generation out"
    assert found(hasFailedPoses="true") == sorted([failed, partly])
    assert found(hasFailedPoses="false") == [clean]
    assert found(hasFailedPoses="true", status="completed") == [partly]
    bad = stack.http.get("/admin/generations", params={"hasFailedPoses": "maybe"}, headers=admin(stack))
    assert bad.status_code == 422 and "bool" in bad.json()["detail"], bad.text

    body = {"filter": {"userId": user, "hasFailedPoses": True}, "charge": False}
    dry = retry(stack, {**body, "dryRun": True})
    assert (dry["counts"]["generations"], dry["counts"]["poses"]) == (2, 6)
    done = retry(stack, {**body, "dryRun": False}, f"retry-{uuid.uuid4().hex}")
    assert done["audit"]["target"] == {"userId": user, "hasFailedPoses": True}
    assert wait_retry_done(stack, done["audit"]["id"])["completed"] == 2
    assert found(hasFailedPoses="true") == []
    assert found(hasFailedPoses="false") == sorted([failed, partly, clean])
    assert stack.balance(user) == 1000 - 6 * 30, "the poses delivered at first paid (2 + 4), the retry was free"


def test_charged_retry_refuses_users_who_cannot_pay(ops_stack: Stack, flux: FakeFlux) -> None:
    stack = ops_stack
    rich, poor = stack.new_user(credits=1000), stack.new_user(credits=120)
    rich_failed, poor_failed = (outage(stack, flux, {user: 1}, f"charged {user}")[0] for user in (rich, poor))
    # The poor user spends what was refunded on a new generation.
    spent = stack.create_generation(poor, POSES[:3], prompt="spent elsewhere")
    assert spent.status_code == 202 and stack.balance(poor) == 30
    body = {"filter": {"status": "failed", "userId": rich}, "charge": True}
    assert retry(stack, {**body, "dryRun": True})["counts"]["credits"] == 120
    answer = retry(stack, {**body, "filter": {"status": "failed", "errorType": "FLUX_API_ERROR"}, "dryRun": False},
                   f"charged-{uuid.uuid4().hex}")
    refused = answer["counts"]["refusedUsers"]
    assert {"userId": poor, "required": 120, "balance": 30} in refused
    assert rich not in {r["userId"] for r in refused}
    wait_retry_done(stack, answer["audit"]["id"])
    assert stack.balance(rich) == 1000 - 120, "charged like a new generation"
    assert stack.wait_finished(poor, spent.json()["generationId"])["status"] == "completed"
    assert stack.balance(poor) == 30
    rich_row = stack.http.get(f"/admin/generations/{rich_failed}", headers=admin(stack)).json()
    poor_row = stack.http.get(f"/admin/generations/{poor_failed}", headers=admin(stack)).json()
    assert rich_row["status"] == "completed" and rich_row["creditsCharged"] == 240
    assert rich_row["attempts"][-1] | {"requestedAt": None, "finishedAt": None, "auditId": None} == {
        "run": 2, "kind": "retry", "requestedBy": "ops-oncall", "requestedAt": None, "charged": True, "credits": 120,
        "auditId": None, "outcome": "completed", "posesCompleted": 4, "posesFailed": 0, "posesPending": 0,
        "errorTypes": [], "finishedAt": None}
    assert poor_row["status"] == "failed" and len(poor_row["attempts"]) == 1
    with stack.db() as conn:
        check_ledger_invariants(conn)


def exporter_samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    settings = Settings.from_env({"DATABASE_URL": stack.database_url, "REDIS_URL": stack.redis_url})
    exporter = Exporter(settings, timeout_seconds=3)
    try:
        text = generate_latest(exporter.registry).decode()
    finally:
        exporter.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_pause_answers_503_charges_nothing_and_resumes(ops_stack: Stack, tmp_path: Path) -> None:
    stack = ops_stack
    user = stack.new_user(credits=300)
    before = exporter_samples(stack)
    paused = stack.http.post("/admin/pause", json={"scope": "intake", "reason": "provider maintenance",
                                                   "retryAfterSeconds": 120}, headers=admin(stack))
    assert paused.status_code == 200 and paused.json()["intake"]["paused"] is True
    refused = stack.create_generation(user, POSES[:1])
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "120", refused.text
    assert "paused" in refused.json()["detail"] and "provider maintenance" not in refused.text
    assert stack.balance(user) == 300
    with stack.db() as conn:
        assert conn.execute("SELECT count(*) FROM generations WHERE user_id = %s", (user,)).fetchone()[0] == 0
    health = stack.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["paused"] == {"intake": True, "workers": False}, "the reason is for operators only"
    assert stack.http.get("/admin/pause", headers=admin(stack)).json()["intake"]["reason"] == "provider maintenance"
    during = exporter_samples(stack)
    assert during[("pose_intake_paused", ())] == 1 and during[("pose_workers_paused", ())] == 0

    # Drain: workers finish what they run and take nothing new until resumed (RQ's suspension).
    stack.http.post("/admin/resume", json={"scope": "intake"}, headers=admin(stack))
    assert stack.http.post("/admin/pause", json={"scope": "workers"}, headers=admin(stack)).json()["workersPaused"]
    deadline = time.monotonic() + 10
    while stack.http.get("/admin/pause", headers=admin(stack)).json()["workers"] != {"suspended": 4}:
        assert time.monotonic() < deadline, "workers did not all stop taking jobs"
        time.sleep(0.1)
    waiting = stack.create_generation(user, POSES[:1])
    assert waiting.status_code == 202
    time.sleep(3)
    generation_id = waiting.json()["generationId"]
    assert stack.http.get(f"/generations/{generation_id}", headers=stack.headers(user)).json()["status"] == "queued"
    assert exporter_samples(stack)[("pose_workers_paused", ())] == 1
    resumed = stack.http.post("/admin/resume", json={"scope": "all"}, headers=admin(stack)).json()
    assert resumed["intake"]["paused"] is False and resumed["workersPaused"] is False
    assert stack.wait_finished(user, generation_id)["status"] == "completed"
    assert "paused" not in stack.http.get("/health").json()
    assert stack.balance(user) == 270

    after = exporter_samples(stack)
    actions = {"pause_intake": 1, "resume_intake": 2, "pause_workers": 1, "resume_workers": 1}
    for action, more in actions.items():
        key = ("pose_operator_actions_total", (("action", action),))
        assert after[key] - before[key] == more, action
    audit = stack.http.get("/admin/audit", params={"limit": 5}, headers=admin(stack)).json()["entries"]
    assert [e["action"] for e in audit] == ["resume_workers", "resume_intake", "pause_workers", "resume_intake",
                                            "pause_intake"]
    assert all(e["actor"] == "ops-oncall" for e in audit)
    with stack.db() as conn:
        check_ledger_invariants(conn)
        with pytest.raises(Exception, match="append-only"):
            conn.execute("DELETE FROM operator_audit")


@pytest.mark.tools
def test_dashboard_marks_each_operator_action(tmp_path: Path) -> None:
    built = json.loads((ROOT / "dashboards" / "build" / "pose-generator-overview.json").read_text())
    (annotation,) = [a for a in built["annotations"]["list"] if "pose_operator_actions_total" in a.get("expr", "")]
    assert annotation["enable"] and annotation["datasource"]["uid"] == "${datasource}"
    assert annotation["tagKeys"] == "action"
    rules = tmp_path / "annotation.rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "annotation", "rules": [
        {"record": "posegen:operator_actions:annotation", "expr": annotation["expr"]}]}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (make tools does)"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_openapi_documents_the_operator_routes(ops_stack: Stack) -> None:
    schema = ops_stack.http.get(f"{ops_stack.base_url}/schema/openapi.json").json()
    prefix = "/api/apps/pose-generator/admin"
    documented = {(path.removeprefix(prefix), method) for path, item in schema["paths"].items()
                  if path.startswith(prefix) for method in item}
    assert {("/generations", "get"), ("/generations/{generation_id}", "get"), ("/retries", "post"),
            ("/retries/{audit_id}", "get"), ("/pause", "get"), ("/pause", "post"), ("/resume", "post"),
            ("/audit", "get")} <= documented
    retry = schema["paths"][f"{prefix}/retries"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in retry["parameters"])
    assert not any("console" in path for path in schema["paths"]), "the console page is not part of the API"


def test_a_bad_retry_slot_share_stops_start_up_naming_it() -> None:
    for raw in ("0", "1.5", "a quarter"):
        with pytest.raises(SettingsError, match="POSEGEN_RETRY_SLOT_SHARE"):
            Settings.from_env({"POSEGEN_RETRY_SLOT_SHARE": raw})
    assert retry_slot_limit(8, 0.25) == 2 and retry_slot_limit(3, 0.25) == 1


def test_sentry_link_searches_the_generation_tag_of_the_dsn_project() -> None:
    assert sentry_issues_url("", "gen_1") is None
    assert sentry_issues_url("https://key@o42.ingest.us.sentry.io/4507", "gen_1") == (
        "https://us.sentry.io/issues/?project=4507&query=generationId%3Agen_1")
    assert sentry_issues_url("http://key@127.0.0.1:9000/3", "gen_2") == (
        "http://127.0.0.1:9000/issues/?project=3&query=generationId%3Agen_2")


def test_one_idempotency_key_answers_only_the_retry_it_made(ops_stack: Stack, flux: FakeFlux) -> None:
    """``Idempotency-Key: k`` retries G1 on the house; the same key for G2, or for G1 charged, is a 422 naming the
    earlier retry (it used to answer G1's result and leave G2 unretried); the same request again replays."""
    stack = ops_stack
    user = stack.new_user(credits=1000)
    first, second = outage(stack, flux, {user: 2}, "same key")
    key = f"retry-{uuid.uuid4().hex}"
    done = retry(stack, {"generationId": first, "charge": False, "dryRun": False}, key)
    for body in ({"generationId": second, "charge": True, "dryRun": False},
                 {"generationId": first, "charge": True, "dryRun": False}):
        answer = stack.http.post("/admin/retries", json=body, headers={**admin(stack), "Idempotency-Key": key})
        assert answer.status_code == 422, answer.text
        assert "already used for a different retry" in answer.json()["detail"], answer.text
    replay = stack.http.post("/admin/retries", json={"generationId": first, "charge": False, "dryRun": False},
                             headers={**admin(stack), "Idempotency-Key": key})
    assert replay.status_code == 200 and replay.json()["audit"] == done["audit"]
    row = stack.http.get(f"/admin/generations/{second}", headers=admin(stack)).json()
    assert [a["kind"] for a in row["attempts"]] == ["original"], "the refused request retried nothing"
