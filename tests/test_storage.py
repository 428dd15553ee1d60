"""Image storage: local files written atomically, and Supabase Storage against a real fake HTTP server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.errors import ErrorType, StorageError, classify
from app.observability.logging import configure_logging
from app.settings import Settings
from app.storage.factory import build_storage
from app.storage.local import LocalStorage
from app.storage.signed_urls import ImageUrlSigner
from app.storage.supabase import MAX_ANSWER_BYTES, SupabaseStorage
from tests.fakes.supabase_server import FakeSupabaseStorage
from tests.stack import Stack

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
KEY = "gen_1/0-pose_tree_pose.png"
SIGNER = ImageUrlSigner("storage-test-secret-long-enough-for-hs256", 3600)


@pytest.fixture
def supabase() -> Iterator[FakeSupabaseStorage]:
    with FakeSupabaseStorage() as fake:
        yield fake


def _storage(fake: FakeSupabaseStorage, **kwargs: object) -> SupabaseStorage:
    options: dict = {"timeout": 2.0, "max_retries": 2, "backoff_seconds": 0.01, **kwargs}
    service_key = options.pop("service_key", fake.service_key)
    return SupabaseStorage(fake.url, service_key, fake.bucket, **options)


def _put(storage: SupabaseStorage | LocalStorage, key: str = KEY, data: bytes = PNG) -> None:
    async def run() -> None:
        try:
            await storage.put(key, data, "image/png")
        finally:
            await storage.aclose()

    asyncio.run(run())


def _failed_put(storage: SupabaseStorage | LocalStorage, key: str = KEY) -> StorageError:
    with pytest.raises(StorageError) as caught:
        _put(storage, key)
    assert classify(caught.value) == ErrorType.STORAGE_ERROR
    return caught.value


# Local -------------------------------------------------------------------------------------------


def test_local_round_trip(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images", "/api/apps/pose-generator/images", SIGNER)
    _put(storage)
    assert storage.path_for(KEY).read_bytes() == PNG
    assert storage.path_for(KEY) == (tmp_path / "images" / "gen_1" / "0-pose_tree_pose.png").resolve()
    assert storage.public_url(KEY).startswith(f"/api/apps/pose-generator/images/{KEY}?expires=")


def test_local_overwrite_replaces_the_file_whole(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "/images", SIGNER)
    _put(storage, data=b"old image")
    with storage.path_for(KEY).open("rb") as reader:  # a client streaming the old image meanwhile
        _put(storage, data=b"new image, longer")
        assert reader.read() == b"old image"
    assert storage.path_for(KEY).read_bytes() == b"new image, longer"
    assert [p.name for p in storage.path_for(KEY).parent.iterdir()] == ["0-pose_tree_pose.png"]


def test_local_write_failure_is_a_storage_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "/images", SIGNER)
    storage.path_for(KEY).mkdir(parents=True)  # a folder where the file should go: rename fails
    error = _failed_put(storage)
    assert isinstance(error.__cause__, OSError)
    assert [p.name for p in storage.path_for(KEY).parent.iterdir()] == ["0-pose_tree_pose.png"]


@pytest.mark.parametrize(
    "key", ["../escape.png", "gen_1/../../escape.png", "/etc/escape.png", "gen_1\\x.png", "a\x00.png", ""]
)
def test_local_rejects_keys_leaving_the_folder(tmp_path: Path, key: str) -> None:
    root = tmp_path / "images"
    storage = LocalStorage(root, "/images", SIGNER)
    _failed_put(storage, key)
    with pytest.raises(StorageError):
        storage.path_for(key)
    assert not (tmp_path / "escape.png").exists() and not root.exists()


# Supabase ----------------------------------------------------------------------------------------


def test_supabase_upload_is_served_at_the_public_url(supabase: FakeSupabaseStorage) -> None:
    storage = _storage(supabase)
    _put(storage)
    url = storage.public_url(KEY)
    assert url == f"{supabase.url}/storage/v1/object/public/{supabase.bucket}/{KEY}"
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.content == PNG and response.headers["content-type"] == "image/png"


def test_supabase_upload_carries_the_service_key(supabase: FakeSupabaseStorage) -> None:
    _put(_storage(supabase))
    [upload] = supabase.uploads()
    assert (upload.bucket, upload.key, upload.content_type) == (supabase.bucket, KEY, "image/png")
    assert upload.size == len(PNG)
    assert upload.headers["authorization"] == f"Bearer {supabase.service_key}"
    assert upload.headers["apikey"] == supabase.service_key
    assert upload.headers["x-upsert"] == "true"


def test_supabase_upload_again_overwrites(supabase: FakeSupabaseStorage) -> None:
    _put(_storage(supabase), data=b"first")
    _put(_storage(supabase), data=b"second")
    assert supabase.object(KEY) == b"second"


def test_supabase_server_error_once_is_retried(supabase: FakeSupabaseStorage) -> None:
    supabase.fail_next(500)
    _put(_storage(supabase))
    assert [u.status for u in supabase.uploads()] == [500, 200]
    assert supabase.object(KEY) == PNG


def test_supabase_server_error_always_is_a_storage_error(supabase: FakeSupabaseStorage) -> None:
    supabase.always_fail(500)
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    error = _failed_put(_storage(supabase, max_retries=2))
    assert "HTTP 500" in str(error) and "3 attempts" in str(error) and KEY not in str(error)
    assert [u.status for u in supabase.uploads()] == [500, 500, 500]
    entries = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    failure = next(e for e in entries if e["message"] == "Failed to upload image")
    assert failure["level"] == "ERROR" and failure["component"] == "Storage"
    assert failure["metadata"]["key"] == KEY and failure["metadata"]["status"] == 500
    supabase.reset()
    _put(_storage(supabase))
    assert supabase.object(KEY) == PNG


def test_supabase_wrong_key_is_a_storage_error_without_retry(supabase: FakeSupabaseStorage) -> None:
    error = _failed_put(_storage(supabase, service_key="not-the-key"))
    assert "HTTP 401" in str(error) and "not-the-key" not in str(error)
    assert [u.status for u in supabase.uploads()] == [401]
    assert supabase.object(KEY) is None


def test_supabase_hang_is_a_storage_error_within_the_timeout(supabase: FakeSupabaseStorage) -> None:
    supabase.hang_next(2)
    began = time.monotonic()
    error = _failed_put(_storage(supabase, timeout=0.3, max_retries=1))
    assert time.monotonic() - began < 2.0
    assert "ReadTimeout" in str(error) and "2 attempts" in str(error)
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert supabase.object(KEY) is None


def test_supabase_hang_once_then_the_retry_lands(supabase: FakeSupabaseStorage) -> None:
    supabase.hang_next(1)
    _put(_storage(supabase, timeout=0.3))
    assert [u.status for u in supabase.uploads()] == [0, 200]
    assert supabase.object(KEY) == PNG


def test_supabase_unreachable_is_a_storage_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = SupabaseStorage(f"http://127.0.0.1:{port}", "key", "pose-generations", timeout=1.0,
                              max_retries=1, backoff_seconds=0.01)
    with pytest.raises(StorageError, match="ConnectError") as caught:
        _put(storage)
    assert classify(caught.value) == ErrorType.STORAGE_ERROR


def test_supabase_rejects_keys_leaving_the_bucket(supabase: FakeSupabaseStorage) -> None:
    error = _failed_put(_storage(supabase), "../other-bucket/x.png")
    assert "other-bucket" not in str(error)
    assert supabase.uploads() == []


def test_supabase_answer_past_its_cap_is_a_storage_error_read_no_further(supabase: FakeSupabaseStorage) -> None:
    """A success answer names the object in a few dozen bytes; one that goes on for 50 MB is refused after 64 KiB
    (not retried), and what is logged of an error answer is a short, clean excerpt."""
    supabase.flood_next(size=50 * 1024 * 1024)
    error = _failed_put(_storage(supabase))
    assert "answer refused" in str(error) and f"over the limit of {MAX_ANSWER_BYTES} bytes" in str(error), error
    assert [u.status for u in supabase.uploads()] == [200]
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    supabase.reset()
    supabase.fail_next(400)
    _failed_put(_storage(supabase))
    entries = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    failure = next(e for e in entries if e["message"] == "Failed to upload image")
    assert failure["metadata"]["detail"] == "injected failure 400"


def test_a_worker_refuses_a_300_mb_supabase_answer_far_below_its_size(  # type: ignore[no-untyped-def]
    fresh_stack, supabase: FakeSupabaseStorage
) -> None:
    """Through a real worker: the upload's answer is a 300 MB flood; the pose fails as STORAGE_ERROR, refunded,
    and the work-horse's peak memory stays far below what reading the answer whole takes (~600 MB)."""
    stack: Stack = fresh_stack(workers=1, STORAGE_BACKEND="supabase", SUPABASE_URL=supabase.url,
                               SUPABASE_SERVICE_KEY=supabase.service_key, SUPABASE_BUCKET=supabase.bucket)
    stack.wait_workers_ready(1)
    supabase.flood_next(size=300 * 1024 * 1024)
    user = stack.new_user(credits=100)
    done = stack.wait_finished(user, stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"])
    assert done["status"] == "failed" and done["errorType"] == "STORAGE_ERROR", done
    with stack.db() as conn:
        (message,) = conn.execute("SELECT error_message FROM generation_poses WHERE generation_id = %s",
                                  (done["generationId"],)).fetchone()
    assert "answer refused" in message, message
    assert done["creditsRefunded"] == 30 and stack.balance(user) == 100
    peak = stack.work_horse_peak_memory_mb(done["generationId"])
    assert peak < 150, f"work-horse peak {peak} MB"


def test_fake_is_steered_over_http(supabase: FakeSupabaseStorage) -> None:
    """Another process (a worker) meets the faults a test sets through ``POST /_control``."""
    command = {"action": "fail_next", "status": 503, "n": 2}
    answer = httpx.post(f"{supabase.url}/_control", json=command, timeout=5)
    assert answer.status_code == 200 and [f["status"] for f in answer.json()["faults"]] == [503, 503]
    _put(_storage(supabase))
    state = httpx.get(f"{supabase.url}/_control", timeout=5).json()
    assert [u["status"] for u in state["uploads"]] == [503, 503, 200] and state["faults"] == []
    assert httpx.post(f"{supabase.url}/_control", json={"action": "explode"}, timeout=5).status_code == 400


# Factory -----------------------------------------------------------------------------------------


def test_factory_builds_the_configured_backend(tmp_path: Path) -> None:
    local = build_storage(Settings(data_dir=tmp_path), api_url_prefix="/api/images")
    assert isinstance(local, LocalStorage) and local.public_url("a/b.png").startswith("/api/images/a/b.png?expires=")
    settings = Settings(storage_backend="supabase", supabase_url="https://ref.supabase.co",
                        supabase_service_key="key", supabase_bucket="poses")
    remote = build_storage(settings, api_url_prefix="/api/images")
    assert isinstance(remote, SupabaseStorage)
    assert remote.public_url("a/b.png") == "https://ref.supabase.co/storage/v1/object/public/poses/a/b.png"
    asyncio.run(remote.aclose())
