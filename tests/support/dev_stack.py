"""Dev stack helpers shared by several test files (moved out of tests/test_dev_stack.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from tests.dev_commands import (
    dev_env,
)
from tests.stack import (
    ROOT,
)


def four_pose_generation_completes(api: str, admin: str, port: int) -> None:
    token = subprocess.run([sys.executable, "-m", "app.cli", "token", "--user", "newcomer"], cwd=ROOT,
                           env=dev_env(), capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    with httpx.Client(base_url=api, timeout=10) as client:
        granted = client.post("/credits/grants", json={"userId": "newcomer", "amount": 500},
                              headers={"Authorization": f"Bearer {admin}"})
        assert granted.status_code == 201, granted.text
        user = {"Authorization": f"Bearer {token}"}
        poses = [p["poseId"] for p in client.get("/poses", params={"limit": 4}, headers=user).json()["poses"]]
        assert len(poses) == 4
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
        assert len(body["poses"]) == 4
        for pose in body["poses"]:
            image = client.get(httpx.URL(f"http://127.0.0.1:{port}").join(pose["imageUrl"]))
            assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
