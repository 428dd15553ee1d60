"""The offline ``local`` provider: a deterministic PNG drawn from the pose and the prompt.

No network. For demos and alert drills it can wait (``POSEGEN_LOCAL_LATENCY``);
injected faults (``POSEGEN_FAULTS``) are decided by the worker's fault plan.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import time

from PIL import Image, ImageDraw

from app.providers.base import ImageRequest, TaskDone
from app.providers.call_metrics import ProviderCallMetrics
from app.providers.skeleton import encode_png
from app.settings import LatencyRange


class LocalProvider:
    name = "local"

    def __init__(self, latency: LatencyRange | None = None, call_metrics: ProviderCallMetrics | None = None) -> None:
        self._latency = latency or LatencyRange()
        self._call_metrics = call_metrics

    async def generate(self, request: ImageRequest, task_done: TaskDone | None = None) -> bytes:
        """The local render; the whole call is the task, so ``task_done`` is left to the caller's block."""
        began = time.perf_counter()
        delay = self._delay(request)
        if delay > 0:
            await asyncio.sleep(delay)
        image = await asyncio.to_thread(render_local_image, request)
        if self._call_metrics is not None:
            # The whole call is the task here: there is no remote queue in front of the render.
            await self._call_metrics.task_finished(time.perf_counter() - began, request.generation_id)
        return image

    def _delay(self, request: ImageRequest) -> float:
        if self._latency.high <= self._latency.low:
            return self._latency.low
        return random.Random(request.seed).uniform(self._latency.low, self._latency.high)

    async def aclose(self) -> None:
        return None


def render_local_image(request: ImageRequest) -> bytes:
    """A figure in the pose's shape over a background coloured by the prompt; same input, same bytes."""
    digest = hashlib.sha256(f"{request.prompt}\x00{request.seed}".encode()).digest()
    top, bottom = (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])
    width, height = request.width, request.height
    image = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        [image.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(top, bottom, strict=True)],
    )
    conditioning = Image.open(io.BytesIO(request.control_image)).convert("L").resize((width, height))
    mask = conditioning.point(lambda v: 255 if v > 0 else 0)
    figure = Image.new("RGB", (width, height), (255 - digest[6], 255 - digest[7], 255 - digest[8]))
    image.paste(figure, mask=mask)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height - 28, width, height], fill=(0, 0, 0))
    draw.text((8, height - 22), request.prompt[:70], fill=(255, 255, 255))
    return encode_png(image)

