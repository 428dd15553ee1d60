"""What every image provider offers the worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ImageRequest:
    """One pose to render: the prompt plus its ControlNet conditioning image (PNG bytes)."""

    prompt: str
    control_image: bytes
    width: int
    height: int
    seed: int
    generation_id: str
    pose_id: str


class ImageProvider(Protocol):
    name: str

    async def generate(self, request: ImageRequest) -> bytes:
        """Return the image bytes (PNG or JPEG); raise a :class:`app.errors.PoseGenerationError`."""
        ...

    async def aclose(self) -> None: ...
