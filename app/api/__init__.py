"""HTTP edge: the Litestar app and its controllers."""
