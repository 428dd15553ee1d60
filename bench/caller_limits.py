"""Per-caller limits: what one user's flood of polls does to another user, and what the limits cost.

Setup: one stack (database, Redis db, no worker); one API process (`posegen api`) started per configuration
on a port of its own: limits off (every `POSEGEN_*_LIMIT_PER_MINUTE` and `POSEGEN_CALLER_CONCURRENCY` 0), the
read limit alone (1,200 a minute, the default; creates limited but never reached), or every limit on (reads
1,200 a minute and 8 requests of a caller at once, the defaults; creates 1,000,000 a minute, never reached,
refused creates 30).
- Flood: a victim reads `GET /credits` about 15 times a second (its own keep-alive connection) while a
  flooder polls `GET /generations/{id}` as one user for FLOOD seconds over 200 connections (wrk). The
  baseline is the victim alone, in the same run. Shown: the victim's median and p95 latency, and the flood's
  answers.
- Cost: wrk -t2 -c32 for DURATION s on `GET /generations/{id}`, read by READERS admins taking turns (each far
  under its allowance, so every read is admitted and counted), and on `POST /generations` by 64 users taking
  turns; the baseline is limits off.
Configurations alternate for ROUNDS rounds; each figure is its best round (the machine is shared).
Run: ``.venv/bin/python -m bench.caller_limits [--flood 6] [--duration 10] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from app.api.auth import Role
from bench.api_throughput import GET_SCRIPT, POST_SCRIPT, wrk
from tests.stack import Process, Stack, build_template, drop_database, free_port, running_stack

READERS = 400
READERS_SCRIPT = """
tokens = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[(counter %% #tokens) + 1]})
end
"""
# The victim reads at most this often: well under the default limit, as a client polling would.
VICTIM_INTERVAL_SECONDS = 0.06
CONFIGS = {
    "limits off": {"POSEGEN_READ_LIMIT_PER_MINUTE": "0", "POSEGEN_CALLER_CONCURRENCY": "0",
                   "POSEGEN_RATE_LIMIT_PER_MINUTE": "0", "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE": "0"},
    "read limit": {"POSEGEN_READ_LIMIT_PER_MINUTE": "1200", "POSEGEN_CALLER_CONCURRENCY": "0",
                   "POSEGEN_RATE_LIMIT_PER_MINUTE": "1000000", "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE": "30"},
    "all limits": {"POSEGEN_READ_LIMIT_PER_MINUTE": "1200", "POSEGEN_CALLER_CONCURRENCY": "8",
                   "POSEGEN_RATE_LIMIT_PER_MINUTE": "1000000", "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE": "30"},
}


def start_api(stack: Stack, env: dict[str, str], tmp: Path) -> tuple[Process, str]:
    port = free_port()
    api = Process(["api", "--port", str(port)], {**stack.env, **env}, tmp / f"api-{port}.log")
    base = f"http://127.0.0.1:{port}/api/apps/pose-generator"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return api, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"API did not start:\n{api.output()}")


def victim_latencies(base: str, token: str, stop: threading.Event) -> list[float]:
    """Milliseconds of paced ``GET /credits`` until ``stop`` is set."""
    took: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while not stop.is_set():
            began = time.perf_counter()
            assert client.get("/credits").status_code == 200
            took.append((time.perf_counter() - began) * 1000)
            time.sleep(max(0.0, VICTIM_INTERVAL_SECONDS - (time.perf_counter() - began)))
    return took


def flood_round(stack: Stack, base: str, seconds: int, tmp: Path, *, with_flood: bool) -> dict[str, float]:
    victim, flooder = stack.new_user(credits=100), stack.new_user(credits=1000)
    generation_id = stack.create_generation(flooder, ["pose_tree_pose"]).json()["generationId"]
    stop = threading.Event()
    latencies: list[float] = []
    reader = threading.Thread(target=lambda: latencies.extend(victim_latencies(base, stack.token(victim), stop)))
    reader.start()
    result: dict[str, float] = {}
    if with_flood:
        figure = wrk(f"{base}/generations/{generation_id}", seconds, 200, GET_SCRIPT % stack.token(flooder), tmp)
        result = {"answered": figure["requests"], "429": figure["errors"]}
    else:
        time.sleep(seconds)  # the victim alone, as long as a flood lasts
    stop.set()
    reader.join()
    return result | {"median ms": statistics.median(latencies),
                     "p95 ms": statistics.quantiles(latencies, n=20)[18], "samples": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=6, help="seconds of flood")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each throughput run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    template = build_template()
    floods: dict[str, list[dict[str, float]]] = {}
    costs: dict[tuple[str, str], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name, running_stack(
                template, Path(tmp_name) / "stack", workers=0, api=False, LOG_LEVEL="WARN") as stack:
            tmp = Path(tmp_name)
            readers = ", ".join(f'"{stack.token(f"reader-{i}", Role.ADMIN)}"' for i in range(READERS))
            for _ in range(args.rounds):
                for name, env in CONFIGS.items():
                    api, base = start_api(stack, env, tmp)
                    stack.http = httpx.Client(base_url=base, timeout=30)
                    try:
                        if name == "limits off":  # the victim alone
                            floods.setdefault("no flood (baseline)", []).append(
                                flood_round(stack, base, args.flood, tmp, with_flood=False))
                        floods.setdefault(f"flood, {name}", []).append(
                            flood_round(stack, base, args.flood, tmp, with_flood=True))
                        if name == "read limit":
                            continue
                        owner = stack.new_user(credits=100)
                        generation = stack.create_generation(owner, ["pose_tree_pose"]).json()["generationId"]
                        polls = wrk(f"{base}/generations/{generation}", args.duration, 32, READERS_SCRIPT % readers,
                                    tmp)
                        creators = ", ".join(f'"{stack.token(stack.new_user(credits=10**9))}"' for _ in range(64))
                        creates = wrk(f"{base}/generations", args.duration, 32, POST_SCRIPT % creators, tmp)
                        assert polls["errors"] == 0 and creates["errors"] == 0, (polls, creates)
                        costs.setdefault(("GET /generations/{id}", name), []).append(polls["rps"])
                        costs.setdefault(("POST /generations", name), []).append(creates["rps"])
                    finally:
                        stack.http.close()
                        api.stop()
    finally:
        drop_database(template)

    baseline = min(floods["no flood (baseline)"], key=lambda r: r["median ms"])
    print(f"Another user's GET /credits (~15/s) while one user polls over 200 connections for {args.flood} s "
          f"(best of {args.rounds} rounds; one API process; 2 cores shared with wrk, PostgreSQL and Redis)")
    print(f"{'victim reads':<28}{'median ms':>10}{'x base':>8}{'p95 ms':>9}{'x base':>8}{'flood polls':>13}"
          f"{'of them 429':>13}")
    for name, rounds in floods.items():
        best = min(rounds, key=lambda r: r["median ms"])
        print(f"{name:<28}{best['median ms']:>10.1f}{best['median ms'] / baseline['median ms']:>8.2f}"
              f"{best['p95 ms']:>9.1f}{best['p95 ms'] / baseline['p95 ms']:>8.2f}{best.get('answered', 0):>13,.0f}"
              f"{best.get('429', 0):>13,.0f}")
    print()
    print(f"What the limits cost: wrk -t2 -c32 -d{args.duration}s; polls by {READERS} admins taking turns, creates "
          "by 64 users taking turns, none near its allowance")
    print(f"{'request':<24}{'limits':<14}{'req/s':>10}{'x off':>8}")
    for (request, name), figures in costs.items():
        off = max(costs[request, "limits off"])
        print(f"{request:<24}{name:<14}{max(figures):>10.0f}{max(figures) / off:>8.2f}")

if __name__ == "__main__":
    main()
