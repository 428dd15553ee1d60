"""`make test` and `make dev` on a fresh machine: the local PostgreSQL and Redis start wherever the clone lives.

As root, the server runs as the ``postgres`` user, which cannot enter a 0700 folder such as root's home or a
``mktemp -d`` folder; the cluster must still start and accept connections.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.dev_commands import answers, dev_env, private_folder
from tests.stack import free_port

CONNECT = """
import os, psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TABLE fresh (n int)")
    conn.execute("INSERT INTO fresh VALUES (41)")
    print("postgres", conn.execute("SELECT n + 1 FROM fresh").fetchone()[0])
client = redis.Redis.from_url(os.environ["REDIS_URL"])
client.set("fresh", "yes")
print("redis", client.get("fresh").decode())
"""


def test_services_started_from_a_0700_clone_folder_accept_connections_and_stop_after() -> None:
    pg_port, redis_port = free_port(), free_port()
    with private_folder() as clone:
        # The command `make test` runs, from the clone's folder, with its default data folder (.data).
        env = dev_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
                       REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        env.pop("POSEGEN_DATA_DIR", None)
        done = subprocess.run([sys.executable, "-m", "app.devservices", "run", "--", sys.executable, "-c", CONNECT],
                              cwd=clone, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split() == ["postgres", "42", "redis", "yes"], done.stdout + done.stderr
        assert f"starting PostgreSQL on 127.0.0.1:{pg_port}" in done.stderr
        assert f"starting Redis on 127.0.0.1:{redis_port}" in done.stderr
        cluster = clone / ".data" / "postgres"
        assert (cluster / "PG_VERSION").exists()
        if os.geteuid() == 0:
            assert cluster.is_symlink() and cluster.resolve().owner() == "postgres"
    assert not answers(pg_port) and not answers(redis_port), "a service outlived the command"
