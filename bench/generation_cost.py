"""Cost per generation: CPU time per process for one 4-pose generation, and generations/s on this machine.

Setup: a stack of its own (API + 2 worker processes, PostgreSQL database cloned from a migrated template,
Redis db of its own), the local provider at zero latency (the Pillow render is the "provider call"), the
default log level. What a generation costs is measured per process from /proc (user + system CPU time,
work-horse children included through the worker's reaped-children times; PostgreSQL backends of this
database sampled every few ms from pg_stat_activity, so a backend's last few ms before it exits are missed).
The client creates through the API, waits with one SQL query per 20 ms on a connection excluded from the
figures, and reads each finished generation once through the API, as a client would.

1. one at a time: R generations created one after another, each waited for; CPU per generation and
   wall time per generation (no concurrency: the latency floor);
2. throughput: N generations created by 8 client threads at once; generations/s and CPU per generation
   (with batching: concurrent creates and reads share transactions and queries).
With py-spy installed, phase 2 is also sampled in the API and the workers (work-horses included), only
while a thread holds the GIL (so waiting is left out), and the functions holding most samples (own time)
are listed: where the Python time goes (C code that releases the GIL, e.g. zlib, is not seen).
Run: ``.venv/bin/python -m bench.generation_cost [--one 20] [--many 200]``
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from tests.stack import Stack, build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (with ``children``: plus its reaped and live children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    used = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime: children reaped so far
        for child in _children(pid):
            used_child = cpu_seconds(child, children=True)
            used += int(used_child * TICKS)
    return used / TICKS


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


class BackendSampler:
    """CPU seconds of every PostgreSQL backend of one database (but ``exclude``), sampled in a thread."""

    def __init__(self, database_url: str, exclude: set[int], interval: float = 0.005) -> None:
        self._url = database_url
        self._exclude = exclude
        self._interval = interval
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def total(self) -> float:
        with self._lock:
            return sum(self._seen.values())

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            own = conn.info.backend_pid
            database = conn.info.dbname
            while not self._stop.is_set():
                pids = [row[0] for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (database,)).fetchall()]
                with self._lock:
                    for pid in pids:
                        if pid != own and pid not in self._exclude:
                            self._seen[pid] = max(self._seen.get(pid, 0.0), cpu_seconds(pid))
                time.sleep(self._interval)


class Meter:
    """CPU seconds per process class (API, workers, PostgreSQL) between two idle moments."""

    def __init__(self, stack: Stack, sampler: BackendSampler) -> None:
        self._stack = stack
        self._sampler = sampler

    def read(self) -> dict[str, float]:
        assert self._stack.api is not None
        return {"API": cpu_seconds(self._stack.api.pid, children=True),
                "workers": sum(cpu_seconds(w.pid, children=True) for w in self._stack.workers),
                "PostgreSQL": self._sampler.total()}


def wait_all(conn: psycopg.Connection[Any], ids: list[str]) -> None:
    deadline = time.monotonic() + 600
    while conn.execute("SELECT count(*) FROM generations WHERE id = ANY(%s) AND status IN ('queued', 'processing')",
                       (ids,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError("generations did not finish within 600 s")
        time.sleep(0.02)


def create(stack: Stack, user: str, i: int) -> str:
    answer = stack.create_generation(user, POSES, prompt=f"cost {i}")
    assert answer.status_code == 202, answer.text
    return str(answer.json()["generationId"])


def read_once(stack: Stack, user: str, generation_id: str) -> None:
    answer = stack.http.get(f"/generations/{generation_id}", headers=stack.headers(user))
    assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text


def profile(pids: dict[str, int], seconds: float, folder: Path) -> dict[str, list[tuple[str, float]]]:
    """py-spy samples of each process (children too) for ``seconds``: the top functions by own samples,
    then the share of samples by package of the function."""
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    running = {name: subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                       "--rate", "200", "--subprocesses", "--nonblocking", "--gil", "--format", "raw",
                                       "--output", str(folder / f"{name}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name, pid in pids.items()}
    summaries: dict[str, list[tuple[str, float]]] = {}
    for name, process in running.items():
        process.wait()
        path = folder / f"{name}.txt"
        if not path.exists():
            continue
        own: collections.Counter[str] = collections.Counter()
        packages: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack_text, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            leaf = stack_text.split(";")[-1]
            own[_short(leaf)] += int(count)
            packages[_package(leaf)] += int(count)
            total += int(count)
        summaries[name] = ([(frame, 100 * n / total) for frame, n in own.most_common(8)]
                           + [(f"[package] {package}", 100 * n / total) for package, n in packages.most_common(6)]
                           if total else [])
    return summaries


def _package(frame: str) -> str:
    """The package a frame's file belongs to: ``PIL``, ``rq``, ``asyncio``, ``app.providers``..."""
    where = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    parts = Path(where).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "app" in parts:
        index = parts.index("app")
        return ".".join(parts[index:index + 2]).removesuffix(".py")
    return Path(where).parent.name if "python3" not in Path(where).parent.name else "stdlib " + Path(where).stem


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: lines differ, the function is what matters."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if where else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", type=int, default=20, help="generations created one after another")
    parser.add_argument("--many", type=int, default=200, help="generations created at once")
    args = parser.parse_args()
    template = build_template()
    try:
        with tempfile.TemporaryDirectory() as tmp, running_stack(template, Path(tmp), workers=2) as stack, \
                stack.db() as conn:
            stack.wait_workers_ready(2)
            users = [stack.new_user(credits=10**8) for _ in range(8)]
            warm = [create(stack, users[i % 8], i) for i in range(8)]
            wait_all(conn, warm)
            with BackendSampler(stack.database_url, exclude={conn.info.backend_pid}) as sampler:
                meter = Meter(stack, sampler)
                time.sleep(0.3)
                before = meter.read()
                walls = []
                for i in range(args.one):
                    began = time.perf_counter()
                    generation_id = create(stack, users[i % 8], i)
                    wait_all(conn, [generation_id])
                    read_once(stack, users[i % 8], generation_id)
                    walls.append(time.perf_counter() - began)
                time.sleep(0.3)
                one = {k: (v - before[k]) / args.one for k, v in meter.read().items()}

                before = meter.read()
                pids = {"API": stack.api.pid, **{f"worker {i + 1}": w.pid for i, w in enumerate(stack.workers)}}
                began = time.perf_counter()
                with ThreadPoolExecutor(8) as clients:
                    ids = list(clients.map(lambda i: (users[i % 8], create(stack, users[i % 8], i)), range(args.many)))
                    created = time.perf_counter() - began
                    profiling = clients.submit(profile, pids, max(2.0, created * 3), Path(tmp))
                    wait_all(conn, [g for _, g in ids])
                    wall = time.perf_counter() - began
                    list(clients.map(lambda pair: read_once(stack, *pair), ids))
                    profiles = profiling.result()
                time.sleep(0.3)
                many = {k: (v - before[k]) / args.many for k, v in meter.read().items()}
    finally:
        drop_database(template)

    cores = os.cpu_count() or 1
    print(f"cost per generation: 4 poses, local provider at zero latency, API + 2 workers + PostgreSQL on this "
          f"machine ({cores} cores, load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"{'CPU ms per generation':<34}{'one at a time':>16}{'throughput run':>16}")
    for name in ("API", "workers", "PostgreSQL"):
        print(f"{name:<34}{one[name] * 1000:>16.1f}{many[name] * 1000:>16.1f}")
    print(f"{'total':<34}{sum(one.values()) * 1000:>16.1f}{sum(many.values()) * 1000:>16.1f}")
    print(f"{'wall per generation, ms (median)':<34}{statistics.median(walls) * 1000:>16.0f}{'':>16}")
    print(f"{'generations per second':<34}{1 / statistics.median(walls):>16.1f}{args.many / wall:>16.1f}")
    print(f"{'CPU-bound ceiling, generations/s':<34}{cores / sum(one.values()):>16.1f}"
          f"{cores / sum(many.values()):>16.1f}   (cores / CPU s per generation)")
    for name, rows in profiles.items():
        print(f"\nprofile, {name} (py-spy, throughput run, samples holding the GIL, by own function):")
        for frame, share in rows:
            print(f"  {share:5.1f}%  {frame}")
        if not rows:
            print("  (no samples: the process held the GIL too rarely to sample)")
    if not profiles:
        print("\n(py-spy not installed: no profile; pip install py-spy)")


if __name__ == "__main__":
    main()
