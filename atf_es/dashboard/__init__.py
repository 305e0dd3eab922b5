"""The web dashboard (``atf-es dashboard``, also started by ``atf-es dev``).

A small ASGI app (:class:`~atf_es.dashboard.app.DashboardApp`) served by
uvicorn in a thread (:class:`~atf_es.dashboard.server.DashboardServer`).
Its pages come from the Admin and Frontend gRPC services, called with the
token of whoever runs it: see docs/dashboard.md.
"""

from __future__ import annotations

from atf_es.client import Client
from atf_es.config import Settings
from atf_es.dashboard.app import DashboardApp
from atf_es.dashboard.server import DashboardError, DashboardServer


def dashboard_server(
    settings: Settings, frontend: str, listen: str | None = None
) -> DashboardServer:
    """A dashboard (not started) for the Frontend at ``frontend``, on ``listen``
    (default: ``settings.dashboard_address``), calling it with the settings' token
    and TLS roots."""
    client = Client(frontend, token=settings.auth_token, tls_ca_file=settings.tls_ca_file)
    return DashboardServer(
        DashboardApp(client, frontend=frontend), listen or settings.dashboard_address
    )


__all__ = ["DashboardApp", "DashboardError", "DashboardServer", "dashboard_server"]
