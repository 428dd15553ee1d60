"""`posegen dev` as a new user meets it: it starts, prints URLs and a token, serves a generation, stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.stack import ROOT, claim_redis_db, database_url, drop_database, free_port, redis_url, release_redis_db


def test_dev_stack_serves_a_four_pose_generation_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    db_name = f"posegen_dev_{uuid.uuid4().hex[:8]}"
    redis_index = claim_redis_db()
    port, exporter_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url(db_name), "REDIS_URL": redis_url(redis_index),
           "JWT_SECRET": "dev-stack-test-secret-long-enough", "POSEGEN_DATA_DIR": str(tmp_path / "data"),
           "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port), "--workers", "1",
                                "--exporter-port", str(exporter_port),
                                "--worker-metrics-port", str(free_port())], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in log_path.read_text() and time.monotonic() < deadline:
            assert dev.poll() is None, log_path.read_text()
            time.sleep(0.2)
        output = log_path.read_text()
        api = f"http://127.0.0.1:{port}/api/apps/pose-generator"
        assert api in output and "/metrics-prometheus" in output
        lines = output.splitlines()
        admin = lines[lines.index(next(line for line in lines if "Admin token" in line)) + 1].strip()
        assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", admin)

        token = subprocess.run([sys.executable, "-m", "app.cli", "token", "--user", "newcomer"], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        with httpx.Client(base_url=api, timeout=10) as client:
            granted = client.post("/credits/grants", json={"userId": "newcomer", "amount": 500},
                                  headers={"Authorization": f"Bearer {admin}"})
            assert granted.status_code == 201, granted.text
            user = {"Authorization": f"Bearer {token}"}
            poses = [p["poseId"] for p in client.get("/poses", params={"limit": 4}, headers=user).json()["poses"]]
            created = client.post("/generations", json={"poseIds": poses, "prompt": "a dancer on a rooftop"},
                                  headers=user)
            assert created.status_code == 202, created.text
            generation_id = created.json()["generationId"]
            body: dict = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = client.get(f"/generations/{generation_id}", headers=user).json()
                if body["status"] in ("completed", "failed"):
                    break
                time.sleep(0.2)
            assert body["status"] == "completed", body
            for pose in body["poses"]:
                image = client.get(httpx.URL(f"http://127.0.0.1:{port}").join(pose["imageUrl"]))
                assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=30)
        finally:
            if dev.poll() is None:
                dev.kill()
            drop_database(db_name)
            release_redis_db(redis_index)
    assert dev.returncode == 0, log_path.read_text()[-3000:]
    # Everything it started is gone: the API port no longer answers.
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/apps/pose-generator/health", timeout=1)
        raise AssertionError("the API still answers after Ctrl-C")
    except httpx.TransportError:
        pass
