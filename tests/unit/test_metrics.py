"""The /metrics endpoint, the scrape-time gauges and the gRPC interceptor."""

from __future__ import annotations

import urllib.request
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from atf_es import metrics


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def test_serve_on_a_free_port_then_stop_twice() -> None:
    server = metrics.serve("127.0.0.1:0")
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert "# TYPE atf_processor_transitions_total counter" in _scrape(server.url)
    finally:
        server.stop()
        server.stop()


@pytest.mark.parametrize("address", ["7070", "host:", ":80", "h:99999", "h:x"])
def test_a_bad_address_is_refused_with_a_sentence(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        metrics.serve(address)


def test_sources_add_up_and_leave_with_their_service() -> None:
    def first() -> metrics.StateSnapshot:
        return {"atf_controller_buffered": {("echo", "0"): 2, ("echo", "1"): 1}}

    def second() -> metrics.StateSnapshot:
        return {"atf_controller_buffered": {("echo", "0"): 3}}

    def broken() -> metrics.StateSnapshot:
        raise RuntimeError("stopping")

    remove_first = metrics.add_source(first)
    remove_second = metrics.add_source(second)
    state = metrics._STATE
    remove_broken = state.add(broken)
    try:
        text = _exposition()
        assert 'atf_controller_buffered{lambda="echo",priority="0"} 5.0' in text
        assert 'atf_controller_buffered{lambda="echo",priority="1"} 1.0' in text
        remove_second()
        assert 'atf_controller_buffered{lambda="echo",priority="0"} 2.0' in _exposition()
    finally:
        remove_first()
        remove_second()
        remove_broken()
    assert 'atf_controller_buffered{lambda="echo"' not in _exposition()
    with pytest.raises(ValueError, match="undeclared"):
        metrics.add_source(lambda: {"atf_nonsense": {}})


def _exposition() -> str:
    return generate_latest(REGISTRY).decode()


def _handled(server: str, method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "atf_grpc_server_handled_total", {"server": server, "method": method, "code": code}
    )
    return value or 0.0


def test_the_interceptor_counts_calls_by_method_and_code() -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[metrics.GrpcMetrics("unit")],
    )
    servicer = health.HealthServicer()
    servicer.set("up", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    method = "/grpc.health.v1.Health/Check"
    ok, missing = _handled("unit", method, "OK"), _handled("unit", method, "NOT_FOUND")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(service="up"), timeout=5)
            stub.Check(health_pb2.HealthCheckRequest(service="up"), timeout=5)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError):
                channel.unary_unary("/no.Such/Method")(b"", timeout=5)
    finally:
        server.stop(0).wait()
    assert _handled("unit", method, "OK") == ok + 2
    assert _handled("unit", method, "NOT_FOUND") == missing + 1
    assert _handled("unit", "/no.Such/Method", "UNIMPLEMENTED") == 0
    seconds = REGISTRY.get_sample_value(
        "atf_grpc_server_handling_seconds_count", {"server": "unit", "method": method}
    )
    assert seconds is not None and seconds >= 3
