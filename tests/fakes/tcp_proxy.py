"""A TCP proxy (on 127.0.0.1 unless told another address) that can make connections go silent: accept,
never relay, never close.

What a network failure that closes nothing looks like from either end (a dropped NAT entry, a
failed-over load balancer): the socket stays open, writes are accepted, no answer ever comes. Point a
process at the proxy instead of Redis or PostgreSQL, then::

    with TcpProxy(("127.0.0.1", 6379)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        ...
        proxy.silence()                    # every open connection goes silent; new ones still relay
        proxy.silence(new_connections=True)  # ... and new ones are accepted and held silent too
        proxy.restore()                    # new connections relay again (silenced ones stay silent)

A silenced connection is never closed by the proxy until ``stop()``; bytes already in flight may
still arrive, nothing sent after the switch is relayed in either direction.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Self


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data, a connection to accept or an end of stream within ``timeout`` seconds: poll(2),
    which takes descriptors past 1023 (a long test process has them), where select(2) raised ValueError and
    killed the pump thread, freezing the link."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    silent: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    """Relays each accepted connection to ``upstream`` until told to go silent. Thread-based, test-only."""

    def __init__(self, upstream: tuple[str, int], port: int = 0, host: str = "127.0.0.1") -> None:
        """Listens on ``host``:``port`` (0: a free port, see :attr:`port`) once started."""
        self.upstream = upstream
        self._listener = socket.create_server((host, port))
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._silence_new = False
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> Self:
        self._acceptor.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def silence(self, *, new_connections: bool = False) -> int:
        """Stop relaying on every open connection (kept open); returns how many were silenced."""
        with self._lock:
            self._silence_new = new_connections
            for link in self._links:
                link.silent.set()
            return len(self._links)

    def restore(self) -> None:
        """Relay connections accepted from now on again."""
        with self._lock:
            self._silence_new = False

    def accepted_connections(self) -> int:
        """Connections accepted and still held, relaying or silent."""
        with self._lock:
            return len(self._links)

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.silent.is_set())

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                ready = _readable(self._listener, 0.2)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                silent = self._silence_new
            upstream = None
            if not silent:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            if silent:
                link.silent.set()
            with self._lock:
                self._links.append(link)
            if upstream is not None:
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(link, source, target), name="tcp-proxy-pump",
                                     daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        while not (self._stopped.is_set() or link.silent.is_set()):
            try:
                ready = _readable(source, 0.1)
                if not ready or link.silent.is_set():
                    continue
                data = source.recv(65536)
                if not data:  # an orderly close by one side is passed on, as a network would
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                link.close()
                return
