"""A fake Supabase Storage: a real HTTP server on 127.0.0.1 keeping uploaded objects in memory.

It answers what :class:`app.storage.supabase.SupabaseStorage` uses:

- ``POST|PUT /storage/v1/object/{bucket}/{key}``: store the body (``Authorization: Bearer <service key>``
  and ``apikey`` required, else 401; unknown bucket 404; existing object without ``x-upsert: true`` 409);
- ``GET /storage/v1/object/public/{bucket}/{key}``: the stored bytes with their content type, no auth.

Faults apply to uploads only, one per request in the order queued, and can be set from the test
(:meth:`fail_next`, :meth:`hang_next`, :meth:`always_fail`, :meth:`reset`) or, from another process,
with ``POST /_control`` and a JSON body::

    {"action": "fail_next", "status": 503, "n": 2}
    {"action": "hang_next", "n": 1, "seconds": 30}
    {"action": "always_fail", "status": 500}
    {"action": "flood_next", "n": 1, "size": 314572800}
    {"action": "reset"}

``GET /_control`` answers the queued faults and every upload received. A hung request is held
``seconds`` (or until the server stops), then its connection is closed without an answer and
nothing is stored. A flooded upload is stored and answered 200 with a body of ``size`` bytes, streamed
without a ``Content-Length`` (a broken proxy, or a hostile endpoint), never held in memory here. Run alone
with ``python -m tests.fakes.supabase_server --port 54321``.

Usage::

    with FakeSupabaseStorage() as supabase:
        storage = SupabaseStorage(supabase.url, supabase.service_key, supabase.bucket)
        supabase.fail_next(503)
        ...
        assert [u.status for u in supabase.uploads()] == [503, 200]
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, run_until_interrupted

OBJECT_PREFIX = "/storage/v1/object/"
PUBLIC_PREFIX = "/storage/v1/object/public/"
CONTROL_PATH = "/_control"
_PAD = b" " * (1024 * 1024)


@dataclass(frozen=True)
class Upload:
    """One upload request as received; ``status`` is what the fake answered (0: held, never answered)."""

    bucket: str
    key: str
    content_type: str
    headers: dict[str, str]
    size: int
    status: int


@dataclass(frozen=True)
class Fault:
    kind: str  # "fail", "hang" or "flood"
    status: int = 0
    seconds: float = 0.0
    size: int = 0


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str


class FakeSupabaseStorage(BackgroundHTTPServer):
    """Start with ``with FakeSupabaseStorage() as supabase`` (or :meth:`start`/:meth:`stop`)."""

    def __init__(
        self, service_key: str = "fake-service-key", bucket: str = "pose-generations", port: int = 0
    ) -> None:
        self.service_key = service_key
        self.bucket = bucket
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._always_status = 0
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._uploads: list[Upload] = []
        self._stopping = threading.Event()
        # A short poll interval lets stop() return at once rather than after the default half second.
        super().__init__(_handler_for(self), name="fake-supabase", port=port, poll_interval=0.05)

    @property
    def url(self) -> str:
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()  # wakes held requests
        super().stop()

    def public_url(self, key: str, bucket: str | None = None) -> str:
        return f"{self.url}{PUBLIC_PREFIX}{bucket or self.bucket}/{key}"

    # Faults -------------------------------------------------------------------------------------

    def fail_next(self, status: int = 500, n: int = 1) -> None:
        """Answer the next ``n`` uploads with ``status`` (after any faults already queued)."""
        with self._lock:
            self._faults.extend(Fault("fail", status=status) for _ in range(n))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Hold the next ``n`` uploads ``seconds`` (longer than the client waits), then drop them."""
        with self._lock:
            self._faults.extend(Fault("hang", seconds=seconds) for _ in range(n))

    def flood_next(self, n: int = 1, size: int = 300 * 1024 * 1024) -> None:
        """Store the next ``n`` uploads and answer each with ``size`` bytes of body."""
        with self._lock:
            self._faults.extend(Fault("flood", size=size) for _ in range(n))

    def always_fail(self, status: int = 500) -> None:
        """Answer every upload with ``status`` (once queued faults are used) until :meth:`reset`."""
        with self._lock:
            self._always_status = status

    def reset(self) -> None:
        """Forget all faults; stored objects and recorded uploads stay."""
        with self._lock:
            self._faults.clear()
            self._always_status = 0

    # What was received --------------------------------------------------------------------------

    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    def object(self, key: str, bucket: str | None = None) -> bytes | None:
        with self._lock:
            stored = self._objects.get((bucket or self.bucket, key))
        return stored.data if stored else None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "faults": [asdict(f) for f in self._faults],
                "alwaysFailStatus": self._always_status or None,
                "uploads": [asdict(u) for u in self._uploads],
            }

    def control(self, command: dict[str, Any]) -> None:
        """Apply one ``/_control`` command; ``ValueError`` when it is malformed."""
        action = command.get("action")
        if action == "fail_next":
            self.fail_next(int(command.get("status", 500)), int(command.get("n", 1)))
        elif action == "hang_next":
            self.hang_next(int(command.get("n", 1)), float(command.get("seconds", 30.0)))
        elif action == "always_fail":
            self.always_fail(int(command.get("status", 500)))
        elif action == "flood_next":
            self.flood_next(int(command.get("n", 1)), int(command.get("size", 300 * 1024 * 1024)))
        elif action == "reset":
            self.reset()
        else:
            raise ValueError(f"unknown action {action!r}; use fail_next, hang_next, flood_next, always_fail or reset")

    # Used by the request handler ----------------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._always_status:
                return Fault("fail", status=self._always_status)
            return None

    def _record(self, upload: Upload) -> None:
        with self._lock:
            self._uploads.append(upload)

    def _store(self, bucket: str, key: str, stored: StoredObject, upsert: bool) -> bool:
        """Keep the object; ``False`` when it exists and the client did not ask to overwrite."""
        with self._lock:
            if not upsert and (bucket, key) in self._objects:
                return False
            self._objects[(bucket, key)] = stored
            return True

    def _fetch(self, bucket: str, key: str) -> StoredObject | None:
        with self._lock:
            return self._objects.get((bucket, key))


def _handler_for(fake: FakeSupabaseStorage) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def _error(self, status: int, error: str, message: str) -> None:
            # Supabase Storage's error shape.
            self._answer(status, {"statusCode": str(status), "error": error, "message": message})

        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def do_GET(self) -> None:
            path = self._path()
            if path == CONTROL_PATH:
                self._answer(200, fake.state())
                return
            if not path.startswith(PUBLIC_PREFIX):
                self._error(404, "not_found", "Route not found")
                return
            bucket, _, key = unquote(path[len(PUBLIC_PREFIX):]).partition("/")
            stored = fake._fetch(bucket, key)
            if stored is None:
                self._error(404, "not_found", "Object not found")
                return
            self._send(200, stored.data, stored.content_type)

        def do_POST(self) -> None:
            path = self._path()
            body = self._read_body()
            if path == CONTROL_PATH:
                self._control(body, fake)
            elif path.startswith(OBJECT_PREFIX) and not path.startswith(PUBLIC_PREFIX):
                self._upload(path, body)
            else:
                self._error(404, "not_found", "Route not found")

        def do_PUT(self) -> None:
            path = self._path()
            body = self._read_body()
            if path.startswith(OBJECT_PREFIX) and not path.startswith(PUBLIC_PREFIX):
                self._upload(path, body)
            else:
                self._error(404, "not_found", "Route not found")

        def _flood(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                while sent < size:
                    piece = _PAD[: min(len(_PAD), size - sent)]
                    self.wfile.write(piece)
                    sent += len(piece)
            except OSError:
                pass  # the client hung up, as a capped reader does

        def _upload(self, path: str, body: bytes) -> None:
            bucket, _, key = unquote(path[len(OBJECT_PREFIX):]).partition("/")
            headers = {name.lower(): value for name, value in self.headers.items()}
            content_type = headers.get("content-type", "application/octet-stream")

            def record(status: int) -> None:
                fake._record(Upload(bucket, key, content_type, headers, len(body), status))

            fault = fake._next_fault()
            if fault is not None and fault.kind == "hang":
                record(0)
                fake._stopping.wait(fault.seconds)
                self.close_connection = True
                return
            if fault is not None and fault.kind == "flood":
                fake._store(bucket, key, StoredObject(body, content_type), True)
                record(200)
                self._flood(fault.size)
                return
            if fault is not None:
                record(fault.status)
                self._error(fault.status, "injected", f"injected failure {fault.status}")
                return
            expected = f"Bearer {fake.service_key}"
            if headers.get("authorization") != expected or headers.get("apikey") != fake.service_key:
                record(401)
                self._error(401, "Unauthorized", "Invalid JWT")
                return
            if bucket != fake.bucket:
                record(404)
                self._error(404, "Bucket not found", "Bucket not found")
                return
            if not key:
                record(400)
                self._error(400, "InvalidKey", "Invalid key")
                return
            upsert = headers.get("x-upsert", "").lower() == "true"
            if not fake._store(bucket, key, StoredObject(body, content_type), upsert):
                record(409)
                self._error(409, "Duplicate", "The resource already exists")
                return
            record(200)
            self._answer(200, {"Key": f"{bucket}/{key}", "Id": str(uuid.uuid4())})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Supabase Storage until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--service-key", default="fake-service-key")
    parser.add_argument("--bucket", default="pose-generations")
    args = parser.parse_args()
    run_until_interrupted(FakeSupabaseStorage(args.service_key, args.bucket, args.port))


if __name__ == "__main__":
    main()
