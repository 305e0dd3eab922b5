"""Serving the dashboard: uvicorn in a thread, with a port known before it starts."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn

from atf_es.dashboard.app import DashboardApp

log = logging.getLogger(__name__)


class DashboardError(RuntimeError):
    """The dashboard could not listen or did not start."""


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DashboardError(f"listen address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


class DashboardServer:
    """The dashboard's HTTP server on ``address`` (port 0: any free port).

    The socket is bound in ``start``, so ``port`` and ``url`` are right as
    soon as it returns (and a busy port fails there, as DashboardError).
    ``stop`` lets uvicorn finish the requests in flight and closes the app's
    client; it can be called without ``start``, and twice.
    """

    def __init__(self, app: DashboardApp, address: str) -> None:
        self.app = app
        self.host, self._requested_port = _split(address)
        self.port = self._requested_port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            raise DashboardError(
                f"the dashboard cannot listen on {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        sock.listen(128)
        sock.set_inheritable(True)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="dashboard",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise DashboardError(f"the dashboard did not start on {self.url}")
            time.sleep(0.01)
        log.info("dashboard serving on %s", self.url)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        if self._socket is not None:
            self._socket.close()
        self.app.close()


__all__ = ["DashboardError", "DashboardServer"]
