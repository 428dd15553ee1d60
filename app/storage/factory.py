"""Choose the storage backend named by ``STORAGE_BACKEND``."""

from __future__ import annotations

from app.settings import Settings
from app.storage.base import ImageStorage
from app.storage.local import LocalStorage
from app.storage.signed_urls import ImageUrlSigner


def build_storage(settings: Settings, *, api_url_prefix: str) -> ImageStorage:
    if settings.storage_backend == "supabase":
        # Imported here so the default backend never loads the HTTP client module.
        from app.storage.supabase import SupabaseStorage

        return SupabaseStorage(settings.supabase_url, settings.supabase_service_key, settings.supabase_bucket)
    signer = ImageUrlSigner(settings.jwt_secret, settings.image_url_ttl_seconds)
    return LocalStorage(settings.data_dir / "images", api_url_prefix, signer)
