"""A loopback TCP proxy that can be cut: ``down()`` drops every connection and refuses new ones.

Given several target ports it is a round-robin load balancer (one target per connection).
Given ``latency`` (seconds of round trip), every byte reaches the other side half of it
later, in each direction, with bandwidth uncapped: a bucket 40 ms away on a fast link.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import suppress


class TcpProxy:
    def __init__(
        self, target_port: int | Sequence[int], listen_port: int = 0, *, latency: float = 0.0
    ) -> None:
        self.latency = latency
        ports = [target_port] if isinstance(target_port, int) else list(target_port)
        self._targets = itertools.cycle([("127.0.0.1", port) for port in ports])
        self._server = socket.create_server(("127.0.0.1", listen_port))
        self.port = int(self._server.getsockname()[1])
        self._up = True
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self._lock:
            self._up = False
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.down()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()  # connection refused, as far as the client can tell
                    continue
                try:
                    upstream = socket.create_connection(next(self._targets), timeout=5)
                except OSError:
                    client.close()
                    continue
                self._open |= {client, upstream}
            pending = [2]  # pumps still running on this pair; the last one closes both
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, pending), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pending: list[int]) -> None:
        if self.latency > 0:
            self._delayed_pump(source, sink, pending)
            return
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._finish(source, sink, pending)

    def _delayed_pump(self, source: socket.socket, sink: socket.socket, pending: list[int]) -> None:
        """Read as fast as the sender writes; deliver each piece one-way latency later."""
        one_way = self.latency / 2
        line: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def deliver() -> None:
            try:
                while True:
                    due, data = line.get()
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    if not data:
                        return
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                self._finish(source, sink, pending)

        threading.Thread(target=deliver, daemon=True).start()
        try:
            while data := source.recv(262144):
                line.put((time.monotonic() + one_way, data))
        except OSError:
            pass
        line.put((time.monotonic() + one_way, b""))

    def _finish(self, source: socket.socket, sink: socket.socket, pending: list[int]) -> None:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            pending[0] -= 1
            if pending[0] == 0:
                for sock in (source, sink):
                    self._open.discard(sock)
                    sock.close()
