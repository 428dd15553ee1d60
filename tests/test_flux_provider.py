"""The flux provider against a fake FLUX API that is a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis as AsyncRedis

from app.errors import ErrorType, PoseGenerationError, classify
from app.providers.base import ImageRequest
from app.providers.flux import FluxProvider, poll_delay
from app.providers.flux_hosts import TrustedHosts, UntrustedUrl, matches
from app.providers.task_durations import TaskDurations
from app.settings import Settings, SettingsError
from app.upstream import EXCERPT_CHARS, excerpt
from tests.fakes.flux_server import STAT_FIELDS, FakeFlux
from tests.fakes.hostile_flux import HostileFlux
from tests.stack import claim_redis_db, redis_url, release_redis_db

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Short timings keep the failure tests fast: a hung call gives up after 0.3 s, a pose after 2 s.
FAST: dict[str, Any] = {
    "flux_timeout_seconds": 0.3,
    "flux_deadline_seconds": 2.0,
    "flux_poll_interval_seconds": 0.02,
    "flux_max_retries": 3,
}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (leaked := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def flux() -> Iterator[FakeFlux]:
    with FakeFlux() as fake:
        yield fake


def _settings(flux: FakeFlux, **overrides: Any) -> Settings:
    options = {"flux_api_key": flux.api_key, "flux_base_url": flux.base_url, **FAST, **overrides}
    return Settings(provider="flux", **options)


def _request(prompt: str = "a dancer on a beach", seed: int = 7) -> ImageRequest:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return ImageRequest(prompt=prompt, control_image=buffer.getvalue(), width=512, height=512, seed=seed,
                        generation_id="gen-1", pose_id="pose-1")


async def _with_provider(settings: Settings, requests: list[ImageRequest]) -> list[bytes | BaseException]:
    provider = FluxProvider(settings)
    try:
        return await asyncio.gather(*(provider.generate(r) for r in requests), return_exceptions=True)
    finally:
        await provider.aclose()


def _generate(settings: Settings, request: ImageRequest | None = None) -> bytes:
    (outcome,) = asyncio.run(_with_provider(settings, [request or _request()]))
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _failure(settings: Settings, request: ImageRequest | None = None) -> tuple[BaseException, float]:
    began = time.monotonic()
    (outcome,) = asyncio.run(_with_provider(settings, [request or _request()]))
    assert isinstance(outcome, BaseException), "expected the generation to fail"
    return outcome, time.monotonic() - began


def test_success_returns_png_and_sends_what_flux_expects(flux: FakeFlux) -> None:
    settings = _settings(flux)

    image = _generate(settings, _request("a dancer on a beach", seed=42))

    assert image.startswith(PNG_SIGNATURE) and image == flux.sample_png
    (task,) = flux.tasks()
    assert (task.model, task.prompt, task.width, task.height, task.seed, task.output_format) == (
        settings.flux_model, "a dancer on a beach", 512, 512, 42, "png")
    assert task.control_image_is_png
    assert flux.auth_failures == 0  # the fake demands x-key on submit and poll
    assert (flux.submissions, flux.downloads, flux.rate_limited) == (1, 1, 0)


def test_pending_tasks_are_polled_until_ready() -> None:
    with FakeFlux(latency=0.3) as flux:
        began = time.monotonic()
        image = _generate(_settings(flux))

        assert image.startswith(PNG_SIGNATURE)
        assert time.monotonic() - began >= 0.3
        # Polled while pending, then once ready: at least two polls (how many more depends on the machine's load,
        # a loaded run made two).
        assert flux.polls >= 2


def test_a_relative_polling_url_is_resolved_against_the_base(flux: FakeFlux) -> None:
    flux.relative_polling_urls = True

    assert _generate(_settings(flux)).startswith(PNG_SIGNATURE)


def test_a_429_is_retried_after_the_retry_after_seconds(flux: FakeFlux) -> None:
    flux.retry_after = 0.5
    flux.fail_next("status_429")
    began = time.monotonic()

    assert _generate(_settings(flux)).startswith(PNG_SIGNATURE)

    assert time.monotonic() - began >= 0.5
    assert (flux.rate_limited, flux.submissions, flux.accepted) == (1, 2, 1)


def test_a_retry_after_beyond_the_deadline_fails_at_once(flux: FakeFlux) -> None:
    flux.retry_after = 30
    flux.fail_next("status_429")

    error, elapsed = _failure(_settings(flux))

    assert classify(error) is ErrorType.FLUX_API_ERROR and "429" in str(error)
    assert elapsed < 1.0


def test_transient_5xx_on_submit_and_poll_are_retried(flux: FakeFlux) -> None:
    flux.fail_next("status_500", 2)
    flux.fail_next("status_500", 2, stage="poll")

    # Four jittered backoffs (up to 0.125 + 0.25 + 0.125 + 0.25 s) fit the 2 s deadline only on an idle machine.
    assert _generate(_settings(flux, flux_deadline_seconds=10.0)).startswith(PNG_SIGNATURE)
    assert flux.submissions == 3 and flux.faults_injected == 4


def test_5xx_that_outlast_the_retries_are_a_flux_api_error(flux: FakeFlux) -> None:
    flux.fail_next("status_500", 10)

    error, _ = _failure(_settings(flux, flux_max_retries=2, flux_deadline_seconds=10.0))

    assert classify(error) is ErrorType.FLUX_API_ERROR and "500" in str(error)
    assert flux.submissions == 3  # the first try and two retries


@pytest.mark.parametrize("stage", ["submit", "poll", "sample"])
def test_a_hung_flux_is_a_timeout_within_the_deadline(flux: FakeFlux, stage: str) -> None:
    settings = _settings(flux, flux_deadline_seconds=1.0)

    error, elapsed = _failure(settings, _request(f"a dancer [fault:hang@{stage}]"))

    assert classify(error) is ErrorType.TIMEOUT_ERROR
    assert elapsed < 1.5


@pytest.mark.parametrize("stage", ["submit", "poll", "sample"])
def test_garbage_instead_of_json_or_an_image_is_a_flux_api_error(flux: FakeFlux, stage: str) -> None:
    error, _ = _failure(_settings(flux), _request(f"a dancer [fault:garbage@{stage}]"))

    assert classify(error) is ErrorType.FLUX_API_ERROR
    assert flux.downloads == 0


def test_moderated_content_is_a_flux_api_error_saying_so(flux: FakeFlux) -> None:
    error, _ = _failure(_settings(flux), _request("something forbidden [fault:moderated]"))

    assert classify(error) is ErrorType.FLUX_API_ERROR
    assert "moderat" in str(error).lower()


def test_a_task_ending_in_error_is_a_flux_api_error(flux: FakeFlux) -> None:
    flux.fail_next("error")

    error, _ = _failure(_settings(flux))

    assert classify(error) is ErrorType.FLUX_API_ERROR and "Error" in str(error)


def test_a_wrong_key_is_a_flux_api_error_without_retries(flux: FakeFlux) -> None:
    settings = _settings(flux, flux_api_key="not-the-key")

    error, _ = _failure(settings)

    assert classify(error) is ErrorType.FLUX_API_ERROR and "403" in str(error)
    assert "not-the-key" not in str(error)
    assert flux.auth_failures == 1 and flux.submissions == 0


def test_flux_not_listening_is_a_network_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(provider="flux", flux_api_key="key", flux_base_url=f"http://127.0.0.1:{port}",
                        **{**FAST, "flux_max_retries": 2})

    error, elapsed = _failure(settings)

    assert classify(error) is ErrorType.NETWORK_ERROR
    assert elapsed < FAST["flux_deadline_seconds"]


def test_a_cap_on_active_tasks_answers_429_and_the_peak_is_recorded() -> None:
    with FakeFlux(latency=0.5, cap=24, retry_after=0.2) as flux:
        settings = _settings(flux, flux_timeout_seconds=2.0, flux_deadline_seconds=10.0, flux_max_retries=10)
        requests = [_request(f"pose {n}", seed=n) for n in range(30)]

        outcomes = asyncio.run(_with_provider(settings, requests))

        assert all(isinstance(o, bytes) and o.startswith(PNG_SIGNATURE) for o in outcomes), outcomes
        assert flux.peak_in_flight == 24
        assert flux.rate_limited >= 6
        assert flux.accepted == 30 and flux.submissions == 30 + flux.rate_limited


def test_another_process_steers_the_fake_through_its_control_endpoint(flux: FakeFlux) -> None:
    answer = httpx.post(f"{flux.base_url}/_control",
                        json={"action": "fail_next", "kind": "moderated", "n": 1}, timeout=5)
    assert answer.status_code == 200 and answer.json()["queued_outcomes"] == ["Content Moderated"]
    httpx.post(f"{flux.base_url}/_control", json={"action": "configure", "cap": 5, "latency": 0.05},
               timeout=5).raise_for_status()

    error, _ = _failure(_settings(flux))
    stats = httpx.get(f"{flux.base_url}/_stats", timeout=5).json()

    assert "moderat" in str(error).lower() and isinstance(error, PoseGenerationError)
    assert set(stats) == set(STAT_FIELDS)
    assert stats["submissions"] == stats["accepted"] == 1 and stats["peak_in_flight"] == 1
    assert flux.cap == 5
    bad = httpx.post(f"{flux.base_url}/_control", json={"action": "explode"}, timeout=5)
    assert bad.status_code == 400


def test_poll_schedule_is_fine_only_around_the_expected_finish() -> None:
    interval = 0.4
    assert poll_delay(0.0, None, interval) == interval  # nothing known: the fixed interval
    assert poll_delay(0.0, 2.0, interval) == interval
    assert poll_delay(1.6, 2.0, interval) == pytest.approx(0.2)  # up to 90 % of the expected time
    assert poll_delay(1.8, 2.0, interval) == pytest.approx(0.1)  # finely from there ...
    assert poll_delay(2.3, 2.0, interval) == pytest.approx(0.1)
    assert poll_delay(2.4, 2.0, interval) == interval  # ... until one interval past it
    assert all(poll_delay(t / 10, 2.0, interval) <= interval for t in range(60))


def test_task_durations_are_learned_in_redis_and_shared() -> None:
    index = claim_redis_db()
    try:
        url = redis_url(index)

        async def run(flux: FakeFlux, count: int) -> float | None:
            redis = AsyncRedis.from_url(url)
            provider = FluxProvider(_settings(flux, flux_poll_interval_seconds=0.2),
                                    durations=TaskDurations(redis, "flux-pro-1.1"))
            try:
                for _ in range(count):
                    assert (await provider.generate(_request())).startswith(PNG_SIGNATURE)
                return await TaskDurations(redis, "flux-pro-1.1").expected()
            finally:
                await provider.aclose()
                await redis.aclose()

        with FakeFlux(latency=0.5) as flux:
            learned = asyncio.run(run(flux, 6))
            assert learned is not None and 0.5 <= learned < 0.5 + 0.2 + 0.15, learned
            polls_per_task = flux.polls / 6
        # Tasks got faster: the estimate follows them down, since polls start before it.
        with FakeFlux(latency=0.25) as faster:
            relearned = asyncio.run(run(faster, 10))
            assert relearned is not None and relearned < learned - 0.1, (learned, relearned)
        assert polls_per_task < 12
    finally:
        release_redis_db(index)


def test_the_task_is_reported_done_when_ready_before_the_download() -> None:
    """The worker's provider slot counts FLUX's tasks in flight: it is handed back when the task is Ready,
    not after the sample's download from the delivery host."""
    downloads_when_done: list[int] = []

    async def task_done() -> None:
        downloads_when_done.append(flux.downloads)

    async def scenario(settings: Settings) -> bytes:
        provider = FluxProvider(settings)
        try:
            return await provider.generate(_request(), task_done=task_done)
        finally:
            await provider.aclose()

    with FakeFlux(latency=0.2) as flux:
        image = asyncio.run(scenario(_settings(flux)))
        assert image == flux.sample_png
        assert downloads_when_done == [0] and flux.downloads == 1
        # A task that fails never reports done (the caller's block releases the slot as it ends).
        flux.fail_next("moderated")
        downloads_when_done.clear()
        with pytest.raises(PoseGenerationError):
            asyncio.run(scenario(_settings(flux)))
        assert downloads_when_done == []


# Untrusted answers, in-process (tests/test_hostile_provider.py performs each attack through a real worker) ----------


def test_a_host_pattern_star_stands_for_part_of_one_label_only() -> None:
    assert matches("api.*.bfl.ai", "api.eu.bfl.ai") and matches("api.*.bfl.ai", "api.us1.bfl.ai")
    assert not matches("api.*.bfl.ai", "api.bfl.ai") and not matches("api.*.bfl.ai", "api.a.b.bfl.ai")
    assert not matches("api.*.bfl.ai", "api.eu.bfl.ai.evil.example")
    assert matches("delivery-*.bfl.ai", "delivery-eu1.bfl.ai")
    assert not matches("delivery-*.bfl.ai", "delivery-eu1.evil.bfl.ai") and not matches("api.bfl.ai", "xapi.bfl.ai")


BASE = httpx.URL("http://127.0.0.1:8787/")
HOST_CASES = [
    # (allowed host list, URL, refusal reason or None when allowed)
    (("api.bfl.ai", "api.*.bfl.ai"), "http://127.0.0.1:8787/v1/get_result?id=1", None),  # FLUX_BASE_URL's origin
    (("api.bfl.ai", "api.*.bfl.ai"), "https://api.bfl.ai/v1/get_result?id=1", None),  # named: not even resolved
    (("api.bfl.ai", "api.*.bfl.ai"), "http://127.0.0.1:8788/v1/get_result", "neither FLUX_BASE_URL's origin"),
    (("api.bfl.ai", "api.*.bfl.ai"), "http://localhost:8787/", "neither FLUX_BASE_URL's origin"),
    (("api.bfl.ai", "api.*.bfl.ai"), "http://api.bfl.ai/v1/get_result", "an https host"),  # the key in the clear
    (("api.bfl.ai", "api.*.bfl.ai"), "https://api.eu.bfl.ai.evil.example/", "neither FLUX_BASE_URL's origin"),
    (("api.bfl.ai", "api.*.bfl.ai"), "https://evil.example/?next=api.bfl.ai", "neither FLUX_BASE_URL's origin"),
    (("api.bfl.ai", "api.*.bfl.ai"), "ftp://api.bfl.ai/x", "not an http(s) URL"),
    (("local*",), "https://localhost/x.png", "resolves to 127.0.0.1, a non-public address"),
    (("localhost",), "https://localhost/x.png", None),  # named exactly: the operator vouches for it
    (("8.*.8.8",), "https://8.8.8.8/x.png", None),  # a pattern's host with public addresses only
    (("10.*.0.1",), "https://10.0.0.1/x.png", "resolves to 10.0.0.1, a non-public address"),
    (("10.*.0.1", "10.0.0.1"), "https://10.0.0.1/x.png", None),
    (("::1",), "https://[::1]:8443/x.png", None),
    (("delivery-*.bfl.ai",), "https://169.254.169.254/latest/meta-data/", "neither FLUX_BASE_URL's origin"),
]


@pytest.mark.parametrize(("hosts", "url", "refusal"), HOST_CASES, ids=[f"{c[1]} {c[0]}" for c in HOST_CASES])
def test_trusted_hosts_allow_the_base_origin_and_https_hosts_the_list_allows(
    hosts: tuple[str, ...], url: str, refusal: str | None
) -> None:
    trusted = TrustedHosts(BASE, hosts, "FLUX_DELIVERY_HOSTS")
    if refusal is None:
        asyncio.run(trusted.check(httpx.URL(url), "FLUX sample"))
        return
    with pytest.raises(UntrustedUrl) as refused:
        asyncio.run(trusted.check(httpx.URL(url), "FLUX sample"))
    assert refusal in str(refused.value) and "not called" in str(refused.value), refused.value
    assert "?" not in str(refused.value) and "/x.png" not in str(refused.value)  # the origin only


def test_a_pattern_host_that_does_not_resolve_is_a_network_error() -> None:
    trusted = TrustedHosts(BASE, ("x*.example.invalid",), "FLUX_DELIVERY_HOSTS")
    with pytest.raises(PoseGenerationError) as failed:
        asyncio.run(trusted.check(httpx.URL("https://xa.example.invalid/x.png"), "FLUX sample"))
    assert classify(failed.value) is ErrorType.NETWORK_ERROR


def test_an_excerpt_is_short_clean_and_without_query_strings() -> None:
    text = ("bad\x00request \x1b[31mred\u202e \ud800 see https://delivery-eu1.bfl.ai/r/x.png?se=2026&sig=SECRET#frag "
            + "A" * 500)
    shown = excerpt(text)
    assert len(shown) == EXCERPT_CHARS and shown.endswith("...")
    assert shown.startswith("bad request [31mred see https://delivery-eu1.bfl.ai/r/x.png AAA"), shown
    assert excerpt(b"\xff\xfebytes\x00too") == "\ufffd\ufffdbytes too"
    assert excerpt({"reason": "x\x00"}) == "{'reason': 'x\\x00'}" and excerpt(None) == ""


def test_an_answer_declaring_more_than_the_cap_is_refused_before_it_is_read() -> None:
    with HostileFlux() as flux:
        flux.sample_bytes = flux.sample_png + b"\0" * 4096  # a PNG with trailing bytes, Content-Length declared
        error, _ = _failure(_settings(flux, flux_max_image_bytes=2048))
        assert classify(error) is ErrorType.FLUX_API_ERROR
        assert f"declares {len(flux.sample_bytes)} bytes, over the limit of 2048 bytes" in str(error), error


def test_a_compressed_answer_is_refused_rather_than_expanded() -> None:
    with HostileFlux() as flux:
        flux.sample_bytes = gzip.compress(flux.sample_png + b"\0" * 10_000_000)  # ~10 kB expanding to 10 MB
        flux.sample_headers = {"Content-Encoding": "gzip"}
        error, _ = _failure(_settings(flux))
        assert classify(error) is ErrorType.FLUX_API_ERROR and "gzip-encoded" in str(error), error


def test_a_jpeg_sample_is_delivered() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(buffer, format="JPEG")
    with HostileFlux() as flux:
        flux.sample_bytes = buffer.getvalue()
        assert _generate(_settings(flux)) == buffer.getvalue()


def test_host_lists_are_checked_at_start_up() -> None:
    for bad in ("*.ai", "bfl.*", "*", "https://api.bfl.ai", "api.bfl.ai:443", "a..b", "a_b.example"):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"FLUX_DELIVERY_HOSTS": f"delivery-*.bfl.ai, {bad}"})
        assert str(refused.value).startswith("FLUX_DELIVERY_HOSTS entry"), refused.value
    settings = Settings.from_env({"FLUX_API_HOSTS": "API.bfl.ai., api.*.bfl.ai, [::1], 10.0.0.7, localhost"})
    assert settings.flux_api_hosts == ("api.bfl.ai", "api.*.bfl.ai", "::1", "10.0.0.7", "localhost")
    assert Settings().flux_delivery_hosts == ("delivery-*.bfl.ai", "delivery.*.bfl.ai")
