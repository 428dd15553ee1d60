"""Image providers: ``local`` (offline, Pillow) and ``flux`` (Black Forest Labs API)."""
