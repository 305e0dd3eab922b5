"""The generated protobuf code in atf_es/_proto matches schemas/proto."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_generated_code_imports_with_the_installed_runtime() -> None:
    with warnings.catch_warnings():
        # A gencode/runtime version mismatch shows up as a warning or an error.
        warnings.simplefilter("error")
        from atf_es._proto.atf.v1 import (
            admin_pb2_grpc,
            common_pb2,
            frontend_pb2,
            frontend_pb2_grpc,
            worker_pb2_grpc,
        )

    spec = frontend_pb2.TaskSpec(lambda_name="send_email", delay_ms=5_000)
    assert spec.WhichOneof("when") == "delay_ms"
    assert common_pb2.TaskStatus.Name(common_pb2.TASK_STATUS_DEAD_LETTERED)
    assert frontend_pb2_grpc.FrontendStub and admin_pb2_grpc.AdminStub
    assert worker_pb2_grpc.ControllerStub and worker_pb2_grpc.HeartbeatStatusStub


def test_proto_enums_mirror_the_domain() -> None:
    from atf_es._proto.atf.v1 import common_pb2
    from atf_es.events.records import EVENT_KINDS
    from atf_es.events.replies import ReplyCode
    from atf_es.events.status import TaskStatus

    def names(enum: object, prefix: str) -> list[str]:
        return [n.removeprefix(prefix) for n in enum.keys()[1:]]  # type: ignore[attr-defined]

    assert names(common_pb2.TaskStatus, "TASK_STATUS_") == [s.name for s in TaskStatus]
    assert names(common_pb2.EventKind, "EVENT_KIND_") == list(EVENT_KINDS.values())
    # OVER_QUOTA is the Frontend's own answer: no command was sent, so no Avro reply has it.
    assert names(common_pb2.ReplyCode, "REPLY_CODE_") == [c.name for c in ReplyCode] + [
        "OVER_QUOTA"
    ]
