"""`make dev` as a new user meets it: it starts, prints every URL and a token, serves a generation, stops on Ctrl-C.

And when a part of the stack dies, it says which and why, stops the rest and exits non-zero.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.dev_commands import (
    admin_token,
    answers,
    banner_lines,
    dev_env,
    drop_dev_role,
    private_folder,
    wait_for_banner,
)
from tests.stack import (
    ROOT,
    child_pids,
    claim_redis_db,
    database_url,
    drop_database,
    free_port,
    redis_url,
    release_redis_db,
)
from tests.support.dev_stack import four_pose_generation_completes

API = "/api/apps/pose-generator"


def test_make_dev_from_a_0700_folder_starts_its_own_services_and_serves_a_four_pose_generation() -> None:
    """Nothing at DATABASE_URL/REDIS_URL, data under a 0700 folder, ports chosen with make variables."""
    port, exporter_port, metrics_port, pg_port, redis_port, canary_port = (free_port() for _ in range(6))
    with private_folder() as folder:
        data = folder / ".data"
        env = dev_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{pg_port}/posegen",
                       REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", POSEGEN_DATA_DIR=str(data))
        log_path = folder / "dev.log"
        with open(log_path, "wb") as log:
            # Its own session, so the Ctrl-C below reaches make and everything under it, as a terminal's does.
            make = subprocess.Popen(["make", "--no-print-directory", "dev", f"API_PORT={port}",
                                     f"EXPORTER_PORT={exporter_port}", f"WORKER_METRICS_PORT={metrics_port}",
                                     f"CANARY_METRICS_PORT={canary_port}", "WORKERS=1"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            output = wait_for_banner(make, log_path)
            assert "started here: PostgreSQL, Redis" in output, output
            assert (data / "postgres" / "PG_VERSION").exists()
            admin = admin_token(output)
            base, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}{API}"
            banner = "\n".join(banner_lines(output))
            expected = [f"API:               {base}/schema ", f"{base}/schema/openapi.json", f"{api}/health",
                        f"Operator console:  {api}/admin/console/ ", f"{api}/metrics-prometheus",
                        f"{api}/metrics?period=24h", f"{api}/metrics/health-indicators?period=24h",
                        f"{api}/metrics/errors?period=24h", f"{api}/metrics/top-users?limit=10",
                        f"{api}/metrics/popular-poses?limit=20",
                        f"http://127.0.0.1:{exporter_port}/metrics", f"http://127.0.0.1:{metrics_port}/metrics",
                        f"http://127.0.0.1:{canary_port}/metrics"]
            for url in expected:
                assert url in banner, f"{url} missing from the banner:\n{banner}"
            # Every URL the banner shows answers as printed: without a token 200, or 401 for the admin metrics;
            # with the banner's admin token, 200.
            for url in re.findall(r"http://\S+", banner):
                anonymous = httpx.get(url, timeout=10)
                assert anonymous.status_code in (200, 401), f"{url}: {anonymous.status_code} {anonymous.text[:300]}"
                answer = httpx.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
                assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:300]}"
            assert 'id="sign-in"' in httpx.get(f"{api}/admin/console/", timeout=10).text
            assert httpx.get(f"{base}/schema/openapi.json", timeout=10).json()["paths"]
            four_pose_generation_completes(api, admin, port)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=60)
            finally:
                if make.poll() is None:
                    os.killpg(make.pid, signal.SIGKILL)
        # Ctrl-C stopped everything it started: the API, and the PostgreSQL and Redis it started.
        for what, closed_port in (("API", port), ("PostgreSQL", pg_port), ("Redis", redis_port)):
            assert not answers(closed_port), f"{what} still answers after Ctrl-C:\n{log_path.read_text()[-3000:]}"


@pytest.mark.parametrize("victim", ["worker", "redis-server"])
def test_dev_moves_off_a_busy_default_port_and_stops_when_a_part_is_killed(victim: str, tmp_path: Path) -> None:
    """A fresh machine may have something on 9109: the default moves on. Any part that dies stops the stack:
    a worker, or the Redis that `posegen dev` started itself (PostgreSQL is the machine's, already running)."""
    db_name = f"posegen_dev_{uuid.uuid4().hex[:8]}"
    redis_index = claim_redis_db()
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a recent user's TIME_WAIT is not "busy"
    try:
        squatter.bind(("127.0.0.1", 9109))
        squatter.listen()
    except OSError:
        pass  # already busy: just as good
    own_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = dev_env(DATABASE_URL=database_url(db_name),
                  REDIS_URL=own_redis if victim == "redis-server" else redis_url(redis_index),
                  POSEGEN_DATA_DIR=str(tmp_path / "data"))
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port), "--workers", "1"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        output = wait_for_banner(dev, log_path)
        assert ("started here: Redis" if victim == "redis-server" else "started here: nothing") in output
        assert "port 9109 is in use: worker metrics on " in output
        worker_url = next(line.split()[-1] for line in banner_lines(output) if "Worker metrics:" in line)
        assert not worker_url.endswith(":9109/metrics")
        assert httpx.get(worker_url, timeout=5).status_code == 200
        pid = next(pid for pid in child_pids(dev.pid)
                   if victim.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        os.kill(pid, signal.SIGKILL)
        dev.wait(timeout=60)
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=30)
        squatter.close()
        drop_database(db_name)
        drop_dev_role(db_name)
        release_redis_db(redis_index)
    output = log_path.read_text(errors="replace")
    assert dev.returncode == 1, output[-3000:]
    name = f"worker dev-worker-1-{dev.pid}" if victim == "worker" else "Redis (started here)"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {name} (pid {pid}) was killed by SIGKILL; stopped the rest"], output[-3000:]
    assert not answers(port), "the API still answers after a part of the stack died"


def test_an_operator_pause_outlives_a_restart_of_the_stack_and_the_banner_says_so(tmp_path: Path) -> None:
    """`posegen ops pause --scope intake`, Ctrl-C, `posegen dev` again (its own Redis, stopped and started
    again): intake is still paused, and the banner says so in one line, with the command that ends it."""
    db_name = f"posegen_dev_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dev_env(DATABASE_URL=database_url(db_name), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                  POSEGEN_DATA_DIR=str(tmp_path / "data"))
    outputs: list[str] = []

    def run_stack(then: object) -> None:
        log_path = tmp_path / f"dev-{len(outputs)}.log"
        with open(log_path, "wb") as log:
            dev = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port), "--workers", "1",
                                    "--exporter-port", str(free_port()), "--worker-metrics-port", str(free_port()),
                                    "--canary-metrics-port", str(free_port())],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            output = wait_for_banner(dev, log_path)
            assert "started here: Redis" in output, output
            then(output)  # type: ignore[operator]
        finally:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=60)
            outputs.append(log_path.read_text(errors="replace"))

    def pause(output: str) -> None:
        assert "PAUSED" not in "\n".join(banner_lines(output))
        paused = subprocess.run([sys.executable, "-m", "app.cli", "ops", "--api", f"http://127.0.0.1:{port}",
                                 "--token", admin_token(output), "pause", "--scope", "intake", "--reason",
                                 "provider maintenance", "--retry-after", "60"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert paused.returncode == 0 and "intake: PAUSED by admin" in paused.stdout, paused.stdout + paused.stderr

    def still_paused(output: str) -> None:
        said = [line for line in banner_lines(output) if "PAUSED" in line]
        assert said == ["  Intake is PAUSED by admin (provider maintenance): POST /generations answers 503 until "
                        "`posegen ops resume --scope intake`"], "\n".join(banner_lines(output))
        refused = httpx.post(f"http://127.0.0.1:{port}{API}/generations",
                             json={"poseIds": ["pose_tree_pose"], "prompt": "after the restart"},
                             headers={"Authorization": f"Bearer {admin_token(output)}"}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "60", refused.text

    try:
        run_stack(pause)
        run_stack(still_paused)
    finally:
        drop_database(db_name)
        drop_dev_role(db_name)
