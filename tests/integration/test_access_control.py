"""Access control end to end: tokens, roles and lambda grants over TLS.

Every service here listens with TLS (a certificate made by ``openssl`` for
127.0.0.1) and a tokens file; the Controller and the Executor reach the HSC
and the Controller with a worker token, so the task that runs proves the
worker path works through the same checks. Nothing is mocked: the calls go
through real gRPC servers to a real processor on the real broker.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atf_es._proto.atf.v1 import worker_pb2, worker_pb2_grpc
from atf_es.app import App, TaskContext
from atf_es.cli import main
from atf_es.client import (
    ChainStep,
    Client,
    PermissionDenied,
    TaskNotFound,
    TaskRequest,
    Unauthenticated,
    Unavailable,
)
from atf_es.config import Settings
from atf_es.events import TaskStatus
from atf_es.services.auth import ServerSecurity, digest
from atf_es.services.channels import Credentials, open_channel
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.grpc_server import GrpcServer
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from tests.helpers import wait_for
from tests.kafka_harness import prepare

pytestmark = pytest.mark.integration

BILLING = "billing-" + "b" * 24
OPS = "ops-" + "o" * 28
WORKER = "worker-" + "w" * 25
VIEWER = "viewer-" + "v" * 25

TOKENS = f"""
[[principal]]
name = "billing"
token = "{BILLING}"
roles = ["schedule"]
lambdas = ["alpha"]

[[principal]]
name = "ops"
token_sha256 = "{digest(OPS)}"
roles = ["admin"]

[[principal]]
name = "executors"
token = "{WORKER}"
roles = ["worker"]

[[principal]]
name = "viewer"
token = "{VIEWER}"
roles = ["read"]
lambdas = ["*"]
"""

FAST: dict[str, Any] = {
    "heartbeat_interval_ms": 400,
    "heartbeat_timeout_ms": 2_500,
    "heartbeat_margin_ms": 600,
    "claim_timeout_ms": 5_000,
}


def make_app() -> App:
    app = App("access-test")

    @app.lambda_("alpha", **FAST)
    def alpha(task: TaskContext) -> str:
        return "alpha ran"

    @app.lambda_("beta", **FAST)
    def beta(task: TaskContext) -> str:
        return "beta ran"

    return app


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Secured:
    settings: Settings
    frontend: GrpcServer
    hsc: GrpcServer
    controller: Controller
    address: str

    def client(self, token: str | None) -> Client:
        return Client(self.address, timeout=15, token=token, tls_ca_file=self.settings.tls_ca_file)


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[Secured]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = make_certificate(tmp_path)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    settings = replace(
        settings,
        auth_tokens_file=tokens,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_ca_file=cert,
        auth_token=WORKER,
    )
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    prepare(settings)
    app = make_app()
    app.define(settings, bootstrap)
    security = ServerSecurity.from_settings(settings)
    processor = Processor(settings, bootstrap, instance_id=f"auth-{uuid.uuid4().hex[:6]}")
    gateway = CommandGateway(settings, bootstrap, client_id="auth-test")
    control = ControlView(settings, bootstrap)
    hsc = hsc_server(gateway, "127.0.0.1:0", security=security)
    frontend = frontend_server(gateway, control, "127.0.0.1:0", security=security)
    stops: list[Any] = []
    try:
        processor.start()
        stops.append(processor.stop)
        hsc.start()
        stops.append(hsc.stop)
        frontend.start()
        stops.append(frontend.stop)
        controller = Controller(
            settings, bootstrap, ["alpha", "beta"], f"127.0.0.1:{hsc.port}", security=security
        )
        controller.start()
        stops.append(controller.stop)
        for name in ("alpha", "beta"):
            executor = Executor(
                app,
                name,
                f"127.0.0.1:{controller.port}",
                f"127.0.0.1:{hsc.port}",
                threads=1,
                wait_ms=1_000,
                credentials=Credentials.from_settings(settings),
            )
            executor.start()
            stops.append(executor.stop)
        assert processor.ready.wait(30), "the processor did not join its group"
        yield Secured(settings, frontend, hsc, controller, f"127.0.0.1:{frontend.port}")
    finally:
        for stop in reversed(stops):
            stop()
        gateway.close()
        control.close()


def _finished(client: Client, task_id: str) -> TaskStatus | None:
    try:
        status = client.get(task_id).status
    except TaskNotFound:  # a chain node its parent has not let go yet
        return None
    return status if status.terminal else None


def test_a_token_for_lambda_a_schedules_a_and_nothing_else(secured: Secured) -> None:
    with secured.client(BILLING) as billing, secured.client(OPS) as ops:
        # Its own lambda: scheduled, run by an executor that holds a worker token.
        task_id = billing.schedule("alpha", b"invoice")
        assert wait_for(lambda: _finished(billing, task_id), 30, "alpha to finish") == (
            TaskStatus.SUCCESS
        )

        with pytest.raises(PermissionDenied) as denied:
            billing.schedule("beta", task_id="beta-by-billing")
        assert "'billing' may not schedule tasks of lambda 'beta'" in denied.value.message
        assert "schedule on 'alpha'" in denied.value.message
        with pytest.raises(PermissionDenied):
            billing.schedule_many(
                [TaskRequest("alpha", task_id="mixed-a"), TaskRequest("beta", task_id="mixed-b")]
            )
        with pytest.raises(PermissionDenied):
            billing.schedule_chain(
                [ChainStep("one", "alpha"), ChainStep("two", "beta", after=["one"])],
                chain_id="mixed-chain",
            )
        # A chain of its own lambda: every node, scheduled by the processor when
        # its parent ends, still belongs to billing.
        _, nodes = billing.schedule_chain(
            [ChainStep("one", "alpha"), ChainStep("two", "alpha", after=["one"])]
        )
        assert wait_for(lambda: _finished(billing, nodes["two"]), 30, "the chain to end") == (
            TaskStatus.SUCCESS
        )
        assert {billing.get(t).scheduled_by for t in nodes.values()} == {"billing"}

        # A refused call wrote nothing, not even its allowed part.
        for refused in ("beta-by-billing", "mixed-a", "mixed-b", "chain:mixed-chain"):
            with pytest.raises(TaskNotFound):
                ops.get(refused)

        # Nothing operator-level: no gates, no redrive, no periodic schedules.
        with pytest.raises(PermissionDenied) as denied:
            billing.pause("alpha", reason="mine")
        assert "may not call atf.v1.Admin/SetGate (it needs admin)" in denied.value.message
        with pytest.raises(PermissionDenied):
            billing.resume("beta")
        with pytest.raises(PermissionDenied):
            billing.redrive([task_id], reason="again")
        with pytest.raises(PermissionDenied):
            billing.set_periodic("nightly", "alpha", every=60)
        with pytest.raises(PermissionDenied):
            billing.gates()
        assert ops.gates() == []

        # Another lambda's task: neither readable nor cancellable.
        other = ops.schedule("beta", delay=3600)
        with pytest.raises(PermissionDenied):
            billing.get(other)
        with pytest.raises(PermissionDenied):
            billing.history(other)
        with pytest.raises(PermissionDenied):
            billing.cancel(other, reason="not mine")
        assert ops.get(other).status is TaskStatus.NEW

        # Its own task: cancellable, and the history says who cancelled it.
        mine = billing.schedule("alpha", delay=3600)
        assert billing.get(mine).scheduled_by == "billing"
        assert billing.cancel(mine, requested_by="someone else").status is TaskStatus.CANCELLED
        cancelled = [e for e in billing.history(mine) if e.status is TaskStatus.CANCELLED]
        assert cancelled and "billing" in str(cancelled[-1])

        # A task of its lambda that someone else scheduled: readable, not cancellable.
        theirs = ops.schedule("alpha", delay=3600)
        assert billing.get(theirs).scheduled_by == "ops"
        with pytest.raises(PermissionDenied) as denied:
            billing.cancel(theirs, reason="not mine either")
        assert "may not cancel a task scheduled by 'ops' (only admins may)" in denied.value.message
        assert ops.get(theirs).status is TaskStatus.NEW
        assert ops.cancel(theirs).status is TaskStatus.CANCELLED


def test_only_admins_gate_and_what_they_do_is_recorded_under_their_name(
    secured: Secured,
) -> None:
    with secured.client(OPS) as ops, secured.client(VIEWER) as viewer:
        gate = ops.pause("beta", reason="maintenance", by="somebody-else")
        assert gate.set_by == "ops"
        assert [g.lambda_name for g in viewer.gates()] == ["beta"]
        with pytest.raises(PermissionDenied):
            viewer.resume("beta")
        with pytest.raises(PermissionDenied):
            viewer.schedule("alpha")
        ops.resume("beta")
        assert viewer.gates() == []
        task_id = ops.schedule("beta")
        assert wait_for(lambda: _finished(viewer, task_id), 30, "beta to finish") == (
            TaskStatus.SUCCESS
        )


def test_calls_without_a_known_token_are_unauthenticated(secured: Secured) -> None:
    with secured.client(None) as anonymous:
        with pytest.raises(Unauthenticated) as refused:
            anonymous.schedule("alpha")
        assert "requires a token" in refused.value.message
        with pytest.raises(Unauthenticated):
            anonymous.gates()
    with secured.client("not-a-token-of-this-service") as stranger:
        with pytest.raises(Unauthenticated) as refused:
            stranger.get("anything")
        assert "not known" in refused.value.message
    # Plaintext against a TLS service does not get through at all.
    with Client(secured.address, timeout=3, token=OPS) as plaintext, pytest.raises(Unavailable):
        plaintext.gates()
    # Health checks stay open, for probes and load balancers.
    with open_channel(secured.address, Credentials(tls_ca_file=secured.settings.tls_ca_file)) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_worker_protocol_needs_a_worker_token(secured: Secured) -> None:
    request = worker_pb2.ClaimTaskRequest(task_id="nothing", lease=1, worker="w")
    for token, code in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (BILLING, grpc.StatusCode.PERMISSION_DENIED),
    ):
        credentials = Credentials(token, secured.settings.tls_ca_file)
        with open_channel(f"127.0.0.1:{secured.hsc.port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                worker_pb2_grpc.HeartbeatStatusStub(channel).ClaimTask(request, timeout=5)
            assert refused.value.code() == code, refused.value.details()
    with open_channel(
        f"127.0.0.1:{secured.controller.port}", Credentials(BILLING, secured.settings.tls_ca_file)
    ) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            worker_pb2_grpc.ControllerStub(channel).NextWork(
                worker_pb2.NextWorkRequest(worker="w", lambda_names=["alpha"]), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs admin or worker" in (refused.value.details() or "")


def test_the_cli_says_what_was_refused(
    secured: Secured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATF_AUTH_TOKEN", BILLING)
    monkeypatch.setenv("ATF_TLS_CA_FILE", str(secured.settings.tls_ca_file))
    status = main(["gate", "pause", "alpha", "--frontend", secured.address])
    assert status == 1
    error = capsys.readouterr().err
    assert "'billing' may not call atf.v1.Admin/SetGate" in error
    # The health probe of docker-compose.yml: open without a token, over TLS.
    monkeypatch.delenv("ATF_AUTH_TOKEN")
    assert main(["health", secured.address]) == 0
    assert f"{secured.address}: SERVING" in capsys.readouterr().out
    monkeypatch.delenv("ATF_TLS_CA_FILE")
    assert main(["health", secured.address, "--timeout", "2"]) == 1
    assert "unhealthy" in capsys.readouterr().out
