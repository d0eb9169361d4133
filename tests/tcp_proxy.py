"""A loopback TCP proxy for fault tests and benchmarks: forwards bytes, can cut every
live connection at once (both directions closed) as a flaky uplink would, can
stay down for a while (``down()`` … ``up()``) as an outage would, and can send new
connections elsewhere (``retarget``) as a load balancer does when a replica dies."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self.cuts = 0
        self._closed = False
        self._down = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()  # the link is down: every attempt fails at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Close every live connection; new ones are accepted again right away."""
        self.cuts += 1
        return self._drop_all()

    def live(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._live) // 2

    def down(self) -> None:
        """An outage: live connections cut, new ones refused until ``up()``."""
        self._down.set()
        self._drop_all()

    def up(self) -> None:
        self._down.clear()

    def retarget(self, port: int) -> None:
        """New connections go to ``port`` from now on; live ones stay where they are."""
        self.target = ("127.0.0.1", port)

    def _drop_all(self) -> int:
        with self._lock:
            live, self._live = self._live, []
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return len(live) // 2

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self._drop_all()
