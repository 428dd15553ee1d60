"""A broken or hostile provider cannot hurt us: real workers against a FLUX that misbehaves on purpose.

One stack for the module (an API and one worker, ``POSEGEN_PROVIDER=flux`` pointed at :class:`HostileFlux`); each
test sets one misbehaviour, runs a generation through the real worker, and checks what a user and on-call see:
the pose failed as ``FLUX_API_ERROR`` with a clear message, refunded, and nothing reached where it must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fakes.hostile_flux import SECRET_PAGE, HostileFlux, InternalPage, png_declaring
from tests.stack import Stack, check_ledger_invariants, running_stack

POSE = ["pose_tree_pose"]
# A sample FLUX answers is at most FLUX_MAX_IMAGE_BYTES (20 MiB) and a JSON answer FLUX_MAX_JSON_BYTES (1 MiB);
# the floods are far beyond both, yet sized so that a worker reading them whole stays within this machine's
# means: a 300 MB sample read whole peaked at 734 MB; a JSON answer is polled again and again, and 200 MB of
# it peaked at 2.8 GB, so the poll flood is 64 MB.
SAMPLE_FLOOD_BYTES = 300 * 1024 * 1024
POLL_FLOOD_BYTES = 64 * 1024 * 1024
# The work-horse's peak resident memory (its baseline is the forked worker's, about 100 MB) must stay far below
# what reading a flood whole takes.
PEAK_MEMORY_LIMIT_MB = 150


@pytest.fixture(scope="module")
def flux() -> Iterator[HostileFlux]:
    with HostileFlux(latency=0.1) as fake:
        yield fake


@pytest.fixture(autouse=True)
def honest_again(flux: HostileFlux) -> Iterator[None]:
    yield
    flux.foreign_polling_url = flux.poll_redirect = flux.foreign_sample_url = None
    flux.flood = None
    flux.sample_bytes = flux.submit_error = None
    flux.sample_headers = {}


@pytest.fixture
def internal_page() -> Iterator[InternalPage]:
    with InternalPage() as page:
        yield page


@pytest.fixture(scope="module")
def hostile(template_db: str, tmp_path_factory: pytest.TempPathFactory, flux: HostileFlux) -> Iterator[Stack]:
    env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": flux.api_key, "FLUX_BASE_URL": flux.base_url,
           "FLUX_TIMEOUT_SECONDS": "10", "FLUX_DEADLINE_SECONDS": "30", "FLUX_MAX_RETRIES": "1",
           "FLUX_POLL_INTERVAL_SECONDS": "0.05"}
    with running_stack(template_db, tmp_path_factory.mktemp("hostile"), workers=1, **env) as stack:
        stack.wait_workers_ready(1)
        yield stack


def run_pose(stack: Stack, prompt: str = "a portrait") -> dict[str, Any]:
    """One pose through the worker, finished; the user paid and, the pose having failed, got it back."""
    user = stack.new_user(credits=100)
    created = stack.create_generation(user, POSE, prompt=prompt)
    assert created.status_code == 202, created.text
    done = stack.wait_finished(user, created.json()["generationId"], timeout=90)
    if done["status"] == "failed":
        assert done["creditsRefunded"] == 30 and stack.balance(user) == 100, done
    return done


def failure_message(stack: Stack, done: dict[str, Any]) -> str:
    """What the database recorded for the failed pose (also the generation's errorMessage)."""
    assert done["status"] == "failed" and done["poses"][0]["errorType"] == "FLUX_API_ERROR", done
    with stack.db() as conn:
        (message,) = conn.execute("SELECT error_message FROM generation_poses WHERE generation_id = %s",
                                  (done["generationId"],)).fetchone()
        check_ledger_invariants(conn)
    return str(message)


# 1. Our API key goes only where we sent it -----------------------------------------------------------------------


def test_a_polling_url_on_another_host_never_gets_the_key(hostile: Stack, flux: HostileFlux,
                                                          internal_page: InternalPage) -> None:
    flux.foreign_polling_url = f"{internal_page.base_url}/v1/get_result?id=stolen"
    done = run_pose(hostile)
    assert internal_page.requests() == []  # not polled at all, so never with x-key
    message = failure_message(hostile, done)
    assert "polling_url" in message and "not called" in message, message


def test_a_poll_redirected_to_another_host_is_not_followed(hostile: Stack, flux: HostileFlux,
                                                           internal_page: InternalPage) -> None:
    flux.poll_redirect = f"{internal_page.base_url}/collect"
    done = run_pose(hostile)
    assert [r for r in internal_page.requests() if "x-key" in r.headers] == []
    assert internal_page.requests() == []
    message = failure_message(hostile, done)
    assert "302" in message and "redirect" in message and "not followed" in message, message


# 2. Downloads only from where samples live ------------------------------------------------------------------------


def test_a_sample_anywhere_but_a_delivery_host_is_never_fetched(hostile: Stack, flux: HostileFlux,
                                                                internal_page: InternalPage) -> None:
    redis_port = urlsplit(hostile.redis_url).port or 6379
    targets = [
        f"{internal_page.base_url}/admin?token=SIGNATURE-SECRET",  # another local port
        f"http://localhost:{internal_page.address[1]}/admin",
        f"{hostile.base_url}/api/apps/pose-generator/health",  # our own API
        f"http://127.0.0.1:{redis_port}/",  # Redis
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # a cloud metadata service
        f"https://127.0.0.1:{internal_page.address[1]}/admin",
        "file:///etc/passwd",
    ]
    for target in targets:
        flux.foreign_sample_url = target
        done = run_pose(hostile, prompt=f"sample at {target}")
        assert internal_page.requests() == [], target
        message = failure_message(hostile, done)
        assert "FLUX sample" in message and "not called" in message, (target, message)
        assert "SIGNATURE-SECRET" not in message and "/admin" not in message, message
    assert SECRET_PAGE not in hostile.workers[0].output() and "SIGNATURE-SECRET" not in hostile.workers[0].output()


def test_an_error_answer_with_control_characters_is_recorded_as_a_short_clean_excerpt(
    hostile: Stack, flux: HostileFlux
) -> None:
    """An error body with a NUL byte once made saving the error fail (PostgreSQL refuses NUL in text): the
    generation was left unfinished and re-queued. What is recorded is a short excerpt, cleaned."""
    flux.submit_error = (b'{"detail": "bad\x00request \x1b[31mred\x1b[0m \xff see https://x.example/p?sig=SECRETSIG '
                         + b"A" * 5000 + b'"}')
    message = failure_message(hostile, run_pose(hostile))
    assert "HTTP 400" in message and "bad request" in message, message
    assert not any(ord(c) < 32 or ord(c) == 127 for c in message), repr(message)
    assert "SECRETSIG" not in message and "https://x.example/p" in message, message
    assert len(message) < 300, message


# 3. Size and shape limits -----------------------------------------------------------------------------------------


def test_a_300_mb_sample_is_refused_with_the_work_horse_far_below_its_size(hostile: Stack, flux: HostileFlux) -> None:
    flux.flood = ("sample", SAMPLE_FLOOD_BYTES)
    done = run_pose(hostile)
    message = failure_message(hostile, done)
    assert "download answer refused" in message and "over the limit of 20971520 bytes" in message, message
    peak = hostile.work_horse_peak_memory_mb(done["generationId"])
    assert peak < PEAK_MEMORY_LIMIT_MB, f"work-horse peak {peak} MB"
    assert flux.flood_bytes_sent < SAMPLE_FLOOD_BYTES / 3, flux.flood_bytes_sent


def test_a_64_mb_poll_answer_is_refused_with_the_work_horse_far_below_its_size(
    hostile: Stack, flux: HostileFlux
) -> None:
    flux.flood = ("poll", POLL_FLOOD_BYTES)
    done = run_pose(hostile)
    message = failure_message(hostile, done)
    assert "poll answer refused" in message and "over the limit of 1048576 bytes" in message, message
    peak = hostile.work_horse_peak_memory_mb(done["generationId"])
    assert peak < PEAK_MEMORY_LIMIT_MB, f"work-horse peak {peak} MB"


@pytest.mark.parametrize(("sample", "reason"), [
    (png_declaring(100_000, 100_000), "declares far more than"),
    (png_declaring(5_000, 5_000), "declares 5000 x 5000 pixels, over the limit of 16777216"),
    (png_declaring(64, 64), "does not decode"),  # its pixel data is far too short
    (b"\x89PNG\r\n\x1a\n<html>not an image</html>", "is not a PNG or JPEG image"),
], ids=["100000x100000", "5000x5000", "truncated", "not-an-image"])
def test_a_sample_that_is_not_an_image_within_bounds_is_refused(hostile: Stack, flux: HostileFlux, sample: bytes,
                                                                 reason: str) -> None:
    flux.sample_bytes = sample
    message = failure_message(hostile, run_pose(hostile))
    assert "FLUX sample of task" in message and reason in message, message


def test_an_honest_flux_still_delivers(hostile: Stack) -> None:
    done = run_pose(hostile)
    assert done["status"] == "completed" and done["creditsRefunded"] == 0, done
