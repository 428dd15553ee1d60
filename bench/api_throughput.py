"""API throughput with wrk: a bare Litestar endpoint (baseline) against POST and GET /generations.

Setup: one API process (`posegen api`, uvicorn, one event loop) on its own database and Redis db, no worker
(jobs accumulate in the queue), rate limiting off; the baseline is a bare Litestar app on the same server
settings. wrk (Debian package) drives each for DURATION seconds with C connections on 2 threads.
Run: ``.venv/bin/python -m bench.api_throughput [--duration 10] [--connections 32]``
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.provider_saturation import rss_mib
from tests.stack import build_template, drop_database, free_port, running_stack

# Each wrk connection posts as one of many users, as real traffic does (one user's requests serialise on
# their balance row by design).
POST_SCRIPT = """
tokens = {%s}
counter = 0
request = function()
  counter = counter + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. tokens[(counter %% #tokens) + 1]
  return wrk.format("POST", nil, headers,
    '{"poseIds": ["pose_standing_confident", "pose_tree_pose"], "prompt": "throughput"}')
end
"""
GET_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %s"
"""


def wrk(url: str, duration: int, connections: int, script: str | None, tmp: Path) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if script:
        path = tmp / f"s{time.monotonic_ns()}.lua"
        path.write_text(script)
        args[1:1] = ["-s", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
            "errors": int(non2xx.group(1)) if non2xx else 0, "requests": int(done.group(1)) if done else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    template = build_template()
    results: dict[str, dict[str, float]] = {}
    memory: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            port = free_port()
            baseline = subprocess.Popen([sys.executable, "-m", "bench.baseline_app", str(port)])
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                results["bare Litestar GET (baseline)"] = wrk(f"http://127.0.0.1:{port}/ping", args.duration,
                                                              args.connections, None, tmp)
            finally:
                baseline.terminate()
                baseline.wait()
            with running_stack(template, tmp / "stack", workers=0, POSEGEN_RATE_LIMIT_PER_MINUTE="0",
                               POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE="0", POSEGEN_READ_LIMIT_PER_MINUTE="0",
                               LOG_LEVEL="WARN") as stack:
                users = [stack.new_user(credits=10**9) for _ in range(64)]
                user, token = users[0], stack.token(users[0])
                tokens = ", ".join(f'"{stack.token(u)}"' for u in users)
                generation_id = stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"]
                api = f"{stack.base_url}/api/apps/pose-generator"
                for round_ in (1, 2):
                    results[f"POST /generations (round {round_})"] = wrk(
                        f"{api}/generations", args.duration, args.connections, POST_SCRIPT % tokens, tmp)
                    results[f"GET /generations/{{id}} (round {round_})"] = wrk(
                        f"{api}/generations/{generation_id}", args.duration, args.connections, GET_SCRIPT % token,
                        tmp)
                    memory[f"API RSS after round {round_}, MiB"] = rss_mib(stack.api.pid)  # type: ignore[union-attr]
                with stack.db() as conn:
                    created = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    finally:
        drop_database(template)
    base = results["bare Litestar GET (baseline)"]["rps"]
    print(f"API throughput: wrk -t2 -c{args.connections} -d{args.duration}s, one uvicorn process, same machine")
    print(f"{'endpoint':<36}{'req/s':>10}{'p99 ms':>10}{'non-2xx':>9}{'x baseline':>12}{'target':>9}")
    targets = {"POST": ">= 0.20", "GET /": ">= 0.50"}
    for name, figure in results.items():
        target = next((t for k, t in targets.items() if name.startswith(k)), "")
        print(f"{name:<36}{figure['rps']:>10.0f}{figure['p99_ms']:>10.1f}{figure['errors']:>9}"
              f"{figure['rps'] / base:>12.2f}{target:>9}")
    for name, value in memory.items():
        print(f"{name:<36}{value:>10.1f}")
    print(f"generations created during the run: {created}")
    print(json.dumps({k: v["rps"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
