"""ControlNet conditioning image: an OpenPose-style skeleton drawn from a pose's keypoints."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from app.domain.pose_library import LIMBS
from app.errors import ControlNetError

# The OpenPose palette, one colour per limb, so a ControlNet model reads limbs as it was trained to.
LIMB_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170),
)


def validate_keypoints(keypoints: Sequence[Sequence[float]]) -> None:
    if len(keypoints) != 18:
        raise ControlNetError(f"a pose needs 18 keypoints, got {len(keypoints)}")
    for index, point in enumerate(keypoints):
        if len(point) != 2 or not all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in point):
            raise ControlNetError(f"keypoint {index} must be [x, y] within 0..1, got {point!r}")


def draw_skeleton(
    draw: ImageDraw.ImageDraw, keypoints: Sequence[Sequence[float]], size: int, width: int
) -> None:
    points = [(x * size, y * size) for x, y in keypoints]
    for (a, b), colour in zip(LIMBS, LIMB_COLOURS, strict=True):
        draw.line([points[a], points[b]], fill=colour, width=width)
    radius = max(2, width // 2 + 1)
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255))


def render_pose_skeleton(keypoints: Sequence[Sequence[float]], size: int = 512) -> bytes:
    """PNG bytes of the skeleton on black, as ControlNet's OpenPose conditioning expects.

    A pose's skeleton never changes, so renders are cached by content; the
    worker warms the cache before forking work-horses, which inherit it.
    """
    validate_keypoints(keypoints)
    return _render_cached(tuple((float(x), float(y)) for x, y in keypoints), size)


@functools.lru_cache(maxsize=1024)
def _render_cached(keypoints: tuple[tuple[float, float], ...], size: int) -> bytes:
    image = Image.new("RGB", (size, size), (0, 0, 0))
    draw_skeleton(ImageDraw.Draw(image), keypoints, size, width=max(2, size // 100))
    return encode_png(image)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: these images are transient or small, and encoding time is per-pose overhead.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
