"""`make dev` and `posegen migrate` on a machine that is not as expected: one line naming the problem, exit non-zero.

Nothing here gets as far as starting the stack, so each case takes a second or two.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.dev_commands import dev_env
from tests.stack import BASE_DATABASE_URL, ROOT, database_url, free_port

NO_SUCH_ROLE = f"nosuchrole_{uuid.uuid4().hex[:6]}"


def _role_url(role: str, database: str) -> str:
    """The machine's PostgreSQL URL with a role (and password) it does not know."""
    parts = urlsplit(BASE_DATABASE_URL)
    return urlunsplit((parts.scheme, f"{role}:secret@{parts.hostname}:{parts.port or 5432}", f"/{database}", "", ""))


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=dev_env(**env), capture_output=True, text=True, timeout=120)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and " is up " not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A TCP server that answers anything with a line that is not RESP."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            with client, suppress(OSError):
                client.sendall(b"garbage\r\n")
                client.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_a_busy_api_port_is_named_with_the_variable_that_moves_it(tmp_path: Path) -> None:
    """As a second `make dev` meets the first: the API port is taken."""
    with socket.socket() as first:
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        done = _run(["make", "--no-print-directory", "dev", f"API_PORT={port}"], POSEGEN_DATA_DIR=str(tmp_path))
    line = _one_error_line(done)
    assert f"port {port} on 127.0.0.1 (API) is in use" in line and "API_PORT=" in line, line


def test_an_api_host_that_is_no_address_of_this_machine_is_named(tmp_path: Path) -> None:
    done = _run(["make", "--no-print-directory", "dev", "API_HOST=192.0.2.1"], POSEGEN_DATA_DIR=str(tmp_path))
    line = _one_error_line(done)
    assert "cannot listen on 192.0.2.1:" in line and "API_HOST" in line, line


def test_redis_url_pointing_at_something_that_is_not_redis(not_redis: int, tmp_path: Path) -> None:
    done = _run([sys.executable, "-m", "app.cli", "dev", "--port", str(free_port())],
                REDIS_URL=f"redis://127.0.0.1:{not_redis}/0", DATABASE_URL=database_url("postgres"),
                POSEGEN_DATA_DIR=str(tmp_path))
    line = _one_error_line(done)
    assert f"REDIS_URL: the server at 127.0.0.1:{not_redis} is not a usable Redis" in line, line
    assert "starting Redis" not in done.stderr


def test_a_wrong_role_on_a_running_postgresql_is_reported_as_such_not_as_no_server(tmp_path: Path) -> None:
    done = _run([sys.executable, "-m", "app.cli", "dev", "--port", str(free_port())],
                DATABASE_URL=_role_url(NO_SUCH_ROLE, "posegen"), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                POSEGEN_DATA_DIR=str(tmp_path))
    line = _one_error_line(done)
    assert f'role "{NO_SUCH_ROLE}" does not exist' in line, line
    assert "secret" not in line  # the password stays out of the message
    assert "PostgreSQL" in line and "initialising" not in done.stderr and "starting PostgreSQL" not in done.stderr
    assert not (tmp_path / "postgres").exists()


@pytest.mark.parametrize("problem", ["wrong role", "no server"])
def test_migrate_against_a_bad_database_prints_one_line(problem: str) -> None:
    if problem == "wrong role":
        url, expected = _role_url(NO_SUCH_ROLE, "posegen"), f'role "{NO_SUCH_ROLE}" does not exist'
    else:
        url, expected = f"postgresql://postgres@127.0.0.1:{free_port()}/posegen", "Connection refused"
    done = _run([sys.executable, "-m", "app.cli", "migrate"], DATABASE_URL=url)
    line = _one_error_line(done)
    assert line.startswith("error: posegen migrate: PostgreSQL at ") and expected in line, line
    assert done.stderr.strip() == line


def test_migrate_against_a_server_that_never_answers_gives_up_in_seconds() -> None:
    """A port where something accepts but never speaks PostgreSQL (a black hole): libpq's connect_timeout ends it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/posegen"
        began = time.monotonic()
        done = _run([sys.executable, "-m", "app.cli", "migrate"], DATABASE_URL=url)
        took = time.monotonic() - began
    line = _one_error_line(done)
    assert line.startswith("error: posegen migrate: PostgreSQL at ") and "timeout" in line, line
    assert took < 30, f"migrate waited {took:.0f} s for a server that never answers"
