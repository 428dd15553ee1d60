"""Choose the image provider named by ``POSEGEN_PROVIDER``."""

from __future__ import annotations

from app.providers.base import ImageProvider
from app.settings import Settings


def build_provider(settings: Settings) -> ImageProvider:
    if settings.provider == "flux":
        # Imported here so the offline default never loads the HTTP client module.
        from app.providers.flux import FluxProvider

        return FluxProvider(settings)
    from app.providers.local import LocalProvider

    return LocalProvider(settings.local_latency)
