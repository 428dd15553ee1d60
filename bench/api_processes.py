"""API throughput with one and with two server processes (``posegen api --workers N``), in the same run.

Setup: one stack (database, Redis db, no worker); for N in 1, 2 an API started with ``--workers N`` on a port
of its own (N > 1: prometheus-client's multiprocess mode, one folder of metric files per run), then wrk
(-t2, C connections, DURATION s) on GET /generations/{id} and POST /generations, as in bench.api_throughput.
The baseline of each figure is the one-process figure of the same run; the configurations alternate for
ROUNDS rounds and each figure is its best round, so load from other programs on the machine weighs on both
alike. On a 2-core machine wrk, PostgreSQL and Redis share the cores with the API, so the ratio shows what a
second process buys here, not per core.
Afterwards one scrape of /metrics-prometheus is checked against the requests wrk counted.
Run: ``.venv/bin/python -m bench.api_processes [--duration 10] [--connections 32] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.api_throughput import GET_SCRIPT, POST_SCRIPT, wrk
from tests.stack import Process, build_template, drop_database, free_port, running_stack

PROCESSES = (1, 2)


def start_api(env: dict[str, str], workers: int, tmp: Path) -> tuple[Process, str]:
    port = free_port()
    api = Process(["api", "--port", str(port), "--workers", str(workers)], env, tmp / f"api-{workers}.log")
    base = f"http://127.0.0.1:{port}/api/apps/pose-generator"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return api, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"API --workers {workers} did not start:\n{api.output()}")


def scraped_polls(base: str) -> float:
    """GET /generations/{id} answers counted by one scrape of ``/metrics-prometheus``."""
    text = httpx.get(f"{base}/metrics-prometheus", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "pose_http_requests_total" and "/generations/{" in s.labels["route"]
               and s.labels["method"] == "GET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    template = build_template()
    results: dict[tuple[str, int], dict[str, float]] = {}
    exact: dict[int, tuple[float, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            with running_stack(template, tmp / "stack", workers=0, POSEGEN_RATE_LIMIT_PER_MINUTE="0",
                               POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE="0", POSEGEN_READ_LIMIT_PER_MINUTE="0",
                               LOG_LEVEL="WARN") as stack:
                users = [stack.new_user(credits=10**9) for _ in range(64)]
                tokens = ", ".join(f'"{stack.token(u)}"' for u in users)
                generation_id = stack.create_generation(users[0], ["pose_tree_pose"]).json()["generationId"]
                stack.api.stop()  # type: ignore[union-attr]  # each round starts its own
                for _round in range(args.rounds):
                    for processes in PROCESSES:
                        api, base = start_api(stack.env, processes, tmp)
                        try:
                            figures = {
                                "GET /generations/{id}": wrk(f"{base}/generations/{generation_id}", args.duration,
                                                             args.connections, GET_SCRIPT % stack.token(users[0]),
                                                             tmp),
                                "POST /generations": wrk(f"{base}/generations", args.duration, args.connections,
                                                         POST_SCRIPT % tokens, tmp),
                            }
                            exact[processes] = (figures["GET /generations/{id}"]["requests"], scraped_polls(base))
                        finally:
                            api.stop()
                        for endpoint, figure in figures.items():
                            best = results.get((endpoint, processes))
                            if best is None or figure["rps"] > best["rps"]:
                                results[(endpoint, processes)] = figure
    finally:
        drop_database(template)
    print(f"API throughput by server processes: wrk -t2 -c{args.connections} -d{args.duration}s, same run, "
          "same database and Redis, 2-core machine shared with wrk")
    print(f"{'endpoint':<24}{'processes':>10}{'req/s':>10}{'p99 ms':>9}{'non-2xx':>9}{'x 1 process':>13}")
    for (endpoint, processes), figure in sorted(results.items()):
        ratio = figure["rps"] / results[(endpoint, 1)]["rps"]
        print(f"{endpoint:<24}{processes:>10}{figure['rps']:>10.0f}{figure['p99_ms']:>9.1f}{figure['errors']:>9}"
              f"{ratio:>13.2f}")
    for processes, (sent, scraped) in exact.items():
        print(f"GET /generations/{{id}}, {processes} process(es): wrk completed {sent:.0f}, one scrape of "
              f"/metrics-prometheus counts {scraped:.0f} (it also counts the <= {args.connections} requests in "
              "flight when wrk stopped)")


if __name__ == "__main__":
    main()
