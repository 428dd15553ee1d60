"""The throughput baseline: a bare Litestar JSON endpoint, served by uvicorn exactly as `posegen api` is."""

from __future__ import annotations

import gc
import sys

import uvicorn
from litestar import Litestar, get


@get("/ping", sync_to_thread=False)
def ping() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[ping])

if __name__ == "__main__":
    gc.freeze()  # as `posegen api` does before serving
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
