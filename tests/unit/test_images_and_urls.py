"""Image checks, FLUX host rules and signed image URLs, in-process (no network: refused URLs and hosts named
exactly are decided before any name is resolved)."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from app.providers.flux_hosts import TrustedHosts, UntrustedUrl, matches
from app.providers.image_check import ImageRefused, check_image
from app.storage.signed_urls import ImageUrlRefused, ImageUrlSigner


def encoded(size: tuple[int, int], kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=kind)
    return out.getvalue()


# --- app/providers/image_check.py -----------------------------------------------------------------------------
def test_png_and_jpeg_within_the_pixel_bound_pass() -> None:
    assert check_image(encoded((64, 32)), max_pixels=64 * 32) == "PNG"
    assert check_image(encoded((10, 10), "JPEG"), max_pixels=100) == "JPEG"


def test_too_many_pixels_other_formats_and_truncated_files_are_refused() -> None:
    with pytest.raises(ImageRefused, match="64 x 32 pixels, over the limit of 2047"):
        check_image(encoded((64, 32)), max_pixels=2047)
    with pytest.raises(ImageRefused, match="not a PNG or JPEG"):
        check_image(encoded((8, 8), "GIF"), max_pixels=1000)
    with pytest.raises(ImageRefused, match="not a PNG or JPEG"):
        check_image(b"<html>not an image</html>", max_pixels=1000)
    whole = encoded((300, 300), "JPEG")
    with pytest.raises(ImageRefused, match="does not decode"):
        check_image(whole[: len(whole) // 2], max_pixels=300 * 300)


# --- app/providers/flux_hosts.py ------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("api.bfl.ai", "api.bfl.ai", True),
    ("api.*.bfl.ai", "api.eu1.bfl.ai", True),
    ("api.*.bfl.ai", "api.bfl.ai", False),  # a star is one label, never none
    ("api.*.bfl.ai", "api.a.b.bfl.ai", False),  # ... and never two
    ("delivery-*.bfl.ai", "delivery-eu1.bfl.ai", True),
    ("delivery-*.bfl.ai", "delivery-eu1.bfl.ai.evil.com", False),
])
def test_a_host_pattern_matches_label_by_label(pattern: str, host: str, expected: bool) -> None:
    assert matches(pattern, host) is expected


def check(hosts: TrustedHosts, url: str) -> None:
    asyncio.run(hosts.check(httpx.URL(url), "the sample URL"))


def test_the_base_origin_and_hosts_named_exactly_are_trusted_without_resolving() -> None:
    hosts = TrustedHosts(httpx.URL("http://127.0.0.1:9000"), ["delivery.example.com"], "FLUX_DELIVERY_HOSTS")
    check(hosts, "http://127.0.0.1:9000/sample.png")
    check(hosts, "https://delivery.example.com/sample.png")


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://delivery.example.com/x.png", "not an http(s) URL"),
    ("http://delivery.example.com/x.png", "neither FLUX_BASE_URL's origin nor an https host"),
    ("https://evil.example.org/x.png", "FLUX_DELIVERY_HOSTS allows"),
    ("http://127.0.0.1:9001/x.png", "neither FLUX_BASE_URL's origin"),
])
def test_other_origins_are_refused_naming_the_setting(url: str, words: str) -> None:
    hosts = TrustedHosts(httpx.URL("http://127.0.0.1:9000"), ["delivery.example.com"], "FLUX_DELIVERY_HOSTS")
    with pytest.raises(UntrustedUrl, match="the sample URL") as refused:
        check(hosts, url)
    assert words in str(refused.value)


# --- app/storage/signed_urls.py -------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def parts(query: str) -> tuple[str, str]:
    fields = dict(item.split("=") for item in query.split("&"))
    return fields["expires"], fields["signature"]


def test_a_signed_url_is_valid_until_its_rounded_expiry() -> None:
    clock = Clock(1_000_000.0)
    signer = ImageUrlSigner("secret-" * 6, ttl_seconds=3600, clock=clock)
    expires, signature = parts(signer.query("gen_1/0.png"))
    assert int(expires) % 360 == 0 and 3600 <= int(expires) - clock.now < 3600 + 360
    assert signer.verify("gen_1/0.png", expires, signature) == int(expires) - 1_000_000
    clock.now += 1  # polled again a second later: the same URL (and ETag)
    assert parts(signer.query("gen_1/0.png")) == (expires, signature)
    clock.now = float(expires)
    with pytest.raises(ImageUrlRefused, match="expired"):
        signer.verify("gen_1/0.png", expires, signature)


@pytest.mark.parametrize(("key", "expires", "signature", "words"), [
    ("gen_1/0.png", None, None, "must be signed"),
    ("gen_1/1.png", "EXPIRES", "SIGNATURE", "does not match"),  # another image's key
    ("gen_1/0.png", "nan", "SIGNATURE", "does not match"),
    ("gen_1/0.png", "EXPIRES", "é", "does not match"),
])
def test_unsigned_forged_or_moved_urls_are_refused(key: str, expires: str | None, signature: str | None,
                                                   words: str) -> None:
    signer = ImageUrlSigner("secret-" * 6, ttl_seconds=3600, clock=Clock(1_000_000.0))
    good_expires, good_signature = parts(signer.query("gen_1/0.png"))
    expires = good_expires if expires == "EXPIRES" else expires
    signature = good_signature if signature == "SIGNATURE" else signature
    with pytest.raises(ImageUrlRefused, match=words):
        signer.verify(key, expires, signature)
    other = ImageUrlSigner("another-secret-" * 3, ttl_seconds=3600, clock=Clock(1_000_000.0))
    with pytest.raises(ImageUrlRefused, match="does not match"):
        other.verify("gen_1/0.png", good_expires, good_signature)
