"""Every command block of the README and of docs/ runs as written on a fresh clone, against a running `make dev`
stack.

The docs' convention: a block fenced ```bash (or ```sh, ```shell, ```console) holds commands a reader runs from
the clone's folder while `make dev` runs. This test runs each such block of README.md and of every docs/*.md on
its own, in a new bash with ``-e -o pipefail`` (every command must succeed), against one stack it starts with
`make dev` on free ports chosen through `make dev`'s own variables (``API_PORT``, ...), exported as a reader who
chose them would have; commands that name the API's port read ``API_PORT`` too. No ``JWT_SECRET`` is set, as on
a fresh clone. A block the test must not run (it starts the long-running stack, or installs) carries the visible
marker, on the line just above its fence::

    <!-- not run by tests/test_readme.py: <why> -->

Blocks fenced otherwise (```json, ```text) are not commands.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from tests.dev_commands import dev_env, drop_dev_role, wait_for_banner
from tests.stack import ROOT, claim_redis_db, database_url, drop_database, free_port, redis_url, release_redis_db

# The pages whose command blocks run: the README, then docs/ in name order.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
NOT_RUN = re.compile(r"^<!-- not run by tests/test_readme\.py: (?P<why>\S.*?) -->$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")
# A block that names the API's address itself would reach whatever listens there, not the test's stack.
FIXED_ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost):\d")
BLOCK_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class CommandBlock:
    """One fenced shell block of a page: where it starts (``page:line``), its commands, and why it is not run
    (or None)."""

    where: str
    commands: str
    not_run_because: str | None


def command_blocks(text: str, page: str = "README.md") -> list[CommandBlock]:
    """The shell blocks of ``text`` (the page named ``page``) in order. A not-run marker anywhere but just above a
    shell block is an error, so a marker cannot drift onto prose or onto another kind of block."""
    lines = text.splitlines()
    blocks: list[CommandBlock] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        marker = NOT_RUN.match(lines[index].strip())
        if marker:
            following = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
            assert following and following["language"] in SHELL_FENCES, (
                f"{page}:{index + 1}: a not-run marker must sit on the line just above a shell block's fence")
        if opening is None:
            index += 1
            continue
        closing = next((i for i in range(index + 1, len(lines)) if lines[i].rstrip() == "```"), None)
        assert closing is not None, f"{page}:{index + 1}: a fence that is never closed"
        if opening["language"] in SHELL_FENCES:
            above = NOT_RUN.match(lines[index - 1].strip()) if index else None
            blocks.append(CommandBlock(f"{page}:{index + 2}", "\n".join(lines[index + 1:closing]) + "\n",
                                       above["why"] if above else None))
        index = closing + 1
    return blocks


def run_block(block: CommandBlock, env: dict[str, str]) -> tuple[int | str, str, str]:
    """Run the block's commands in a new bash (``-e -o pipefail``) in a session of its own from the clone's
    folder: its exit code (or why it was stopped) and output. A block still running after
    BLOCK_TIMEOUT_SECONDS is stopped with everything it started (Ctrl-C, then SIGKILL)."""
    shell = subprocess.Popen(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", block.commands],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=BLOCK_TIMEOUT_SECONDS)
        return shell.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        stdout = stderr = ""
        for stop in (signal.SIGINT, signal.SIGKILL):
            with suppress(ProcessLookupError):
                os.killpg(shell.pid, stop)
            with suppress(subprocess.TimeoutExpired):
                stdout, stderr = shell.communicate(timeout=30)
                break
        return f"still running after {BLOCK_TIMEOUT_SECONDS} s (stopped)", stdout, stderr


def test_every_readme_command_block_runs_as_written_against_a_dev_stack(tmp_path: Path) -> None:
    blocks = [block for page in PAGES for block in command_blocks(page.read_text(), str(page.relative_to(ROOT)))
              if block.not_run_because is None]
    assert len(blocks) >= 2, "the README's Try it and docs/operating.md's Operator actions blocks are run"
    for block in blocks:  # before anything runs: a fixed address would reach whatever listens there
        assert not FIXED_ADDRESS.search(block.commands), (
            f"{block.where}: name the API's port as ${{API_PORT:-8000}}, not a fixed address:\n"
            f"{block.commands}")
    db_name = f"posegen_readme_{uuid.uuid4().hex[:8]}"
    redis_index = claim_redis_db()
    port = free_port()
    env = {key: value for key, value in dev_env().items() if key != "JWT_SECRET"}
    env.update(API_PORT=str(port), EXPORTER_PORT=str(free_port()), WORKER_METRICS_PORT=str(free_port()),
               WORKERS="1", DATABASE_URL=database_url(db_name), REDIS_URL=redis_url(redis_index),
               POSEGEN_DATA_DIR=str(tmp_path / "data"),
               # Its default is port 8000, not this stack: a block relying on it fails here, reaching no one.
               POSEGEN_API_URL=f"http://127.0.0.1:{free_port()}")
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(["make", "--no-print-directory", "dev"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_banner(make, log_path)
        for block in blocks:
            code, stdout, stderr = run_block(block, env)
            assert code == 0, (f"{block.where}: the block exited {code}\n{block.commands}\n"
                               f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}")
    finally:
        with suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=60)
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
            drop_database(db_name)
            drop_dev_role(db_name)
            release_redis_db(redis_index)
