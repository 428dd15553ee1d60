"""Structured JSON logs in the seed's shape: ``{timestamp, level, component, message, metadata}``.

Configure once with :func:`configure_logging`; modules ask for a component logger::

    log = get_logger("Worker")
    log.info("Processing generation job", generationId=gid, poseCount=4)
    log.error("Failed to upload image", exc_info=exc, generationId=gid)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from app.timestamps import iso_timestamp

COMPONENTS = ("Worker", "Storage", "FLUX", "Metrics", "API", "Canary")
_LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "warn": "WARN", "error": "ERROR",
           "critical": "ERROR", "exception": "ERROR"}
_NUMERIC = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
            "WARNING": logging.WARNING, "ERROR": logging.ERROR}
# Processors that other modules (tracing) add to every entry's metadata, e.g. trace ids.
_extra_processors: list[Any] = []


def _seed_shape(_: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = _LEVELS.get(method_name, method_name.upper())
    component = event_dict.pop("component", "API")
    message = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    entry: dict[str, Any] = {
        "timestamp": iso_timestamp(),
        "level": level,
        "component": component,
        "message": message,
        "metadata": event_dict,
    }
    error = _error_of(exc_info)
    if error is not None:
        entry["error"] = error
    return entry


def _error_of(exc_info: Any) -> dict[str, Any] | None:
    if not exc_info:
        return None
    exc: BaseException | None
    if isinstance(exc_info, BaseException):
        exc = exc_info
    elif isinstance(exc_info, tuple):
        exc = exc_info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is None:
        return None
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _render(_: Any, __: str, entry: MutableMapping[str, Any]) -> str:
    return json.dumps(entry, default=str, separators=(",", ":"))


def add_processor(processor: Any) -> None:
    """Let an optional integration (tracing) add fields to each entry's metadata; call before configure."""
    _extra_processors.append(processor)


# Standard-library loggers of the libraries we run (RQ's worker loop, the ASGI server) and the component their
# lines belong to; any other library's lines are the API's.
_LIBRARY_COMPONENTS = (("rq", "Worker"), ("httpx", "FLUX"), ("httpcore", "FLUX"))


# Every line any thread of this process writes goes out under this lock, one whole line at a time. It is held
# across fork(): a worker forks a work-horse while its reaper thread may be logging, and a lock (ours, or the
# stream's own buffer lock) held by a thread that does not exist in the child would block the child's first
# log line forever (a generation then stays unfinished, its job alive, until the job timeout). The standard
# library's logging module takes its lock around fork() for the same reason.
_WRITE_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_WRITE_LOCK.acquire, after_in_parent=_WRITE_LOCK.release,
                        after_in_child=_WRITE_LOCK.release)


def write_line(stream: TextIO, line: str) -> None:
    """Write ``line`` and a newline to ``stream`` and flush, as one unit among this process's threads and
    never interrupted by a fork."""
    with _WRITE_LOCK:
        stream.write(line + "\n")
        stream.flush()


class LineLogger:
    """structlog's logger for this process: each rendered entry is one line, written by :func:`write_line`
    (structlog's own ``PrintLogger`` takes a lock that a fork can leave held in the child)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        write_line(self._stream or sys.stdout, message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class LibraryLogHandler(logging.Handler):
    """Writes standard-library log records (RQ's "could not connect to Redis", a library's warning) as
    entries of the seed's shape, so every line a process prints is one JSON object. A record of a library
    without a component of its own (psycopg's pool, a Python warning) is the process's ``component``."""

    def __init__(self, stream: TextIO | None = None, component: str = "API") -> None:
        super().__init__()
        self._stream = stream
        self._component = component

    def emit(self, record: logging.LogRecord) -> None:
        try:
            component = next((c for prefix, c in _LIBRARY_COMPONENTS
                              if record.name == prefix or record.name.startswith(prefix + ".")), self._component)
            entry = _seed_shape(None, record.levelname.lower(), {
                "event": record.getMessage(), "component": component, "logger": record.name,
                "exc_info": record.exc_info})
            write_line(self._stream or sys.stdout, _render(None, "", entry))
        except Exception:  # noqa: BLE001 - logging must never take the process down
            self.handleError(record)


def configure_logging(level: str = "INFO", stream: TextIO | None = None, component: str = "API") -> None:
    """JSON entries of the seed's shape on ``stream`` (stdout) at ``level`` and above, for our loggers and
    for the standard-library loggers of the libraries we use (see :class:`LibraryLogHandler`); ``component``
    is the process's (API, Worker, Metrics), given to library lines and uncaught exceptions.

    Every way a line reaches the process's output goes through here: the root logger's handler, Python's
    ``warnings`` (``logging.captureWarnings``), the last-resort handler that writes the records of a logger
    with no handler, and the hooks that print an uncaught exception of the main thread or another thread.
    A framework that replaces the root logger's handlers after this (Litestar's default logging config,
    uvicorn's ``log_config``) must be told not to: the API does so."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown log component {component!r}; use one of {COMPONENTS}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryLogHandler)]:
        root.removeHandler(handler)
    root.addHandler(LibraryLogHandler(stream, component))
    if root.level == logging.WARNING:  # the default: libraries' own INFO chatter stays out unless asked for
        root.setLevel(max(_NUMERIC[level.upper()], logging.WARNING))
    logging.captureWarnings(True)
    last_resort = LibraryLogHandler(stream, component)
    last_resort.setLevel(logging.WARNING)  # as the standard library's own last resort
    logging.lastResort = last_resort
    sys.excepthook, threading.excepthook = _uncaught_hooks(stream, component)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *_extra_processors, _seed_shape, _render],
        wrapper_class=structlog.make_filtering_bound_logger(_NUMERIC[level.upper()]),
        logger_factory=lambda *_: LineLogger(stream),
        cache_logger_on_first_use=False,
    )


def _uncaught_hooks(stream: TextIO | None, component: str) -> tuple[Any, Any]:
    """``sys.excepthook`` and ``threading.excepthook`` writing the exception as one ERROR entry (with its
    stack in ``error``) instead of a plain traceback."""

    def write(message: str, exc: BaseException | None) -> None:
        entry = _seed_shape(None, "error", {"event": message, "component": component, "exc_info": exc})
        write_line(stream or sys.stdout, _render(None, "", entry))

    def uncaught(_: type[BaseException], exc: BaseException, __: Any) -> None:
        write("Uncaught exception", exc)

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # as the standard hook: a thread that exits says nothing
            return
        name = args.thread.name if args.thread is not None else "unknown"
        write(f"Uncaught exception in thread {name}", args.exc_value)

    return uncaught, uncaught_in_thread


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to one of :data:`COMPONENTS`."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown log component {component!r}; use one of {COMPONENTS}")
    # Initial values keep the proxy lazy, so module-level loggers follow configure_logging() made later.
    return structlog.get_logger(component=component)


def bind_context(**values: Any) -> None:
    """Bind values (e.g. ``generationId``) into every log entry of the current task or thread."""
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


def announce_fault_drill(faults: Mapping[str, float], component: str) -> None:
    """A process running with ``POSEGEN_FAULTS`` (``faults``: fraction of poses failed per error type) says so
    once at start-up, as a warning: its failures are injected, not real."""
    if any(faults.values()):
        get_logger(component).warning("Fault drill on: POSEGEN_FAULTS injects failures", faults=dict(faults))
