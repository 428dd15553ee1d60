"""``make bench``: every benchmark in one go, each on its own fresh stack, then one summary table.

Each benchmark prints its own table (with its setup and baseline); this runner shows them in turn and
ends with one line per benchmark: its headline figure against its baseline and target. Pass ``--quick``
to use smaller sizes (the 1,000,000-generation runs take several minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (module, arguments for a full run, arguments for --quick, headline: (regex over its output, label, target))
BENCHMARKS: list[tuple[str, list[str], list[str], list[tuple[str, str, str]]]] = [
    ("bench.generation_wall_time", [], ["--runs", "3"], [
        (r"median wall time, s\s+([\d.]+)", "4-pose generation wall time, s (FLUX 2 s)", "~2, not 8"),
    ]),
    ("bench.provider_saturation", [], ["--generations", "40"], [
        (r"makespan / ideal\s+([\d.]+)", "provider saturation, polling: makespan / ideal", "<= 1.15"),
        (r"makespan / ideal\s+[\d.]+\s+([\d.]+)", "provider saturation, webhooks: makespan / ideal", "<= 1.05"),
        (r"peak in-flight at FLUX\s+([\d.]+)", "provider saturation: peak in-flight (cap 24)", "<= 24"),
        (r"429 answers\s+([\d.]+)", "provider saturation: 429 answers", "0"),
    ]),
    ("bench.worker_processes", ["--modes", "plain,pool"], ["--generations", "30", "--modes", "plain,pool"], [
        (r"one port \(plain\)\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "8 plain workers on one host: makespan / ideal",
         "<= 1.15"),
        (r"--processes 8\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "posegen worker --processes 8: makespan / ideal", "<= 1.15"),
    ]),
    ("bench.pose_overhead", [], ["30"], [
        (r"median overhead \(total - provider\), ms\s+([\d.]+)", "per-pose overhead, median ms", "<= 15"),
        (r"poses per second \(one worker process\)\s+([\d.]+)", "poses/s per worker process (local)", ""),
    ]),
    ("bench.api_throughput", [], ["--duration", "5"], [
        (r"POST /generations \(round 2\)\s+\d+\s+[\d.]+\s+\d+\s+([\d.]+)", "API: POST /generations x baseline",
         ">= 0.20"),
        (r"GET /generations/\{id\} \(round 2\)\s+\d+\s+[\d.]+\s+\d+\s+([\d.]+)",
         "API: GET /generations/{id} x baseline", ">= 0.50"),
    ]),
    ("bench.api_processes", [], ["--duration", "5", "--rounds", "1"], [
        (r"GET /generations/\{id\}\s+2\s+\d+\s+[\d.]+\s+\d+\s+([\d.]+)", "API: GET /generations/{id}, 2 / 1 processes",
         ""),
        (r"POST /generations\s+2\s+\d+\s+[\d.]+\s+\d+\s+([\d.]+)", "API: POST /generations, 2 / 1 processes", ""),
    ]),
    ("bench.caller_limits", [], ["--duration", "5", "--rounds", "1"], [
        (r"flood, limits off\s+[\d.]+\s+([\d.]+)", "flood: other user's read median x alone, no limits",
         ""),
        (r"flood, all limits\s+[\d.]+\s+([\d.]+)", "flood: other user's read median x alone, limits",
         ""),
        (r"GET /generations/\{id\}\s+all limits\s+\d+\s+([\d.]+)", "caller limits: GET /generations/{id} x off",
         ""),
        (r"POST /generations\s+all limits\s+\d+\s+([\d.]+)", "caller limits: POST /generations x off", ""),
    ]),
    ("bench.metrics_api", [], ["100000"], [
        (r"/metrics\?period=30d\s+<50\s+[\d.]+\s+[\d.]+\s+([\d.]+)", "GET /metrics?period=30d median ms, large",
         "<= 50"),
    ]),
    ("bench.exporter_scrape", [], ["--quick"], [
        (r"median scrape at [\d,]+ generations, ms\s+([\d.]+)", "exporter scrape median ms, large", "<= 20"),
        (r"median growth [\d,]+ -> [\d,]+\s+([\d.]+)", "exporter scrape growth small -> large", "<= 1.3"),
    ]),
    ("bench.load_mixed", [], ["--duration", "60"], [
        (r"5xx answers: (\d+)", "mixed load: 5xx answers", "0"),
        (r"poll\s+\d+\s+[\d.]+\s+([\d.]+)", "mixed load: poll p99 ms", ""),
        (r"create\s+\d+\s+[\d.]+\s+([\d.]+)", "mixed load: create p99 ms", ""),
    ]),
    ("bench.bookkeeping_cost", [], ["--seconds", "10"], [
        (r"none \(no bookkeeping\)\s+([\d.]+)", "bookkeeping pgbench: calls/s, none", ""),
        (r"before \(002.*?\)\s+[\d.]+\s+\d+\s+([\d.]+)", "bookkeeping pgbench: cost x none, before (002)", ""),
        (r"008 \(shared.*?\)\s+[\d.]+\s+\d+\s+([\d.]+)", "bookkeeping pgbench: cost x none, 008", ""),
        (r"after \(010.*?\)\s+[\d.]+\s+\d+\s+([\d.]+)\s+<= 1.30", "bookkeeping pgbench: cost x none, after",
         "<= 1.30"),
    ]),
    ("bench.generation_cost", [], ["--one", "10", "--many", "80"], [
        (r"total\s+([\d.]+)", "cost per generation: CPU ms, one at a time", ""),
        (r"generations per second\s+[\d.]+\s+([\d.]+)", "cost per generation: generations/s, API + 2 workers",
         ""),
    ]),
    ("bench.tracing_overhead", [], [], [
        (r"throughput on / off\s+([\d.]+)", "generation throughput, tracing on / off", "~1"),
    ]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    summary: list[tuple[str, str, str]] = []
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}, "
          f"{Path('/proc/cpuinfo').read_text().count('processor')} cores")
    for module, full, quick, headlines in BENCHMARKS:
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            summary.append((module, "missing", ""))
            continue
        argv = [sys.executable, "-m", module, *(quick if args.quick else full)]
        print(f"\n=== {' '.join(argv[2:])}", flush=True)
        began = time.monotonic()
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        output = result.stdout
        print(output.rstrip())
        if result.returncode != 0:
            print(result.stderr[-3000:])
            summary.append((module, f"failed (exit {result.returncode})", ""))
            continue
        for pattern, label, target in headlines:
            match = re.search(pattern, output)
            summary.append((label, match.group(1) if match else "not found", target))
        summary.append((f"  ({module} took {time.monotonic() - began:.0f} s)", "", ""))
    print("\n=== summary")
    print(f"{'figure':<52}{'value':>12}  target")
    for label, value, target in summary:
        print(f"{label:<52}{value:>12}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
