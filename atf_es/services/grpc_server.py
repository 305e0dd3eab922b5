"""A gRPC server shell shared by every service: health checks and reflection on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

Registration = Callable[[grpc.Server], None]


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and a sentence (``context.abort`` raises)."""
    context.abort(code, message)
    raise AssertionError("grpc's context.abort returned")  # pragma: no cover


class GrpcServer:
    """Serves the given services on ``address``; ``port`` is known after ``start()``."""

    def __init__(
        self,
        name: str,
        address: str,
        registrations: Sequence[Registration],
        service_names: Sequence[str],
        *,
        max_workers: int = 32,
    ) -> None:
        self.name = name
        self.address = address
        self._registrations = registrations
        self._service_names = tuple(service_names)
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self.port: int | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(self.address)
        if port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.address}")
        server.start()
        self.port = port
        self._server = server
        for service in ("", *self._service_names):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on port %d", self.name, port)

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds. Safe unstarted and twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._health.enter_graceful_shutdown()
        server.stop(grace).wait(grace + 1)
