"""What every image provider offers the worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

#: Called once the provider has finished the task (its concurrency allowance is free again), before the
#: image is fetched: the worker gives the provider slot back then.
TaskDone = Callable[[], Awaitable[None]]


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

    async def generate(self, request: ImageRequest, task_done: TaskDone | None = None) -> bytes:
        """Return the image bytes (PNG or JPEG); raise a :class:`app.errors.PoseGenerationError`.

        ``task_done`` is awaited when the provider's task has finished and only the delivery is left."""
        ...

    async def aclose(self) -> None: ...
