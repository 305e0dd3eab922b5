"""Every service process serves /metrics, and the series move under load.

The deployment (``tests.e2e.deployment``) starts each service with
``ATF_METRICS_ADDRESS=127.0.0.1:0``; each prints ``metrics: URL``. This test
scrapes every one of them over HTTP, runs a small load through the Frontend
(successes, a fatal failure, a dead letter, a refused schedule, a batch, and
one garbage record on the commands topic), scrapes again and checks what
moved.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from atf_es import kafka_clients
from atf_es.client import Client, TaskRequest, UnknownLambda
from atf_es.events.status import TaskStatus
from atf_es.topics import Topics
from tests.e2e.deployment import TASK_TIMEOUT, Deployment
from tests.e2e.ledger_app import DOOMED_MAX_ATTEMPTS
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def present(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for n, ls in samples)


def scrape_all(deployment: Deployment) -> dict[str, Samples]:
    """Every live service's samples; executors of one lambda are added up."""
    by_kind: dict[str, Samples] = {}
    for service in deployment.services:
        if service.process.poll() is not None:
            continue
        into = by_kind.setdefault(service.name, {})
        for key, v in scrape(service.metrics_url()).items():
            into[key] = into.get(key, 0.0) + v
    return by_kind


def test_every_service_serves_metrics_that_move_under_load(deployment: Deployment) -> None:
    before = scrape_all(deployment)
    assert {"processor", "hsc", "frontend", "controller", "executor-work"} <= set(before)
    for samples in before.values():
        assert present(samples, "python_info"), "the default collectors are served too"

    work = 6
    with Client(deployment.frontend, timeout=30) as client:
        # One runs past the heartbeat interval: the others are started by
        # their claim and end before their first heartbeat is due.
        ids = [client.schedule("work", b"0.6" if i == 0 else b"0") for i in range(work)]
        outcomes = client.schedule_many([TaskRequest("work", b"0"), TaskRequest("nope", b"")])
        assert outcomes[0].ok and not outcomes[1].ok, outcomes
        ids.append(outcomes[0].task_id)
        fatal = client.schedule("fatal", b"it")
        doomed = client.schedule("doomed", b"")
        with pytest.raises(UnknownLambda):
            client.schedule("no-such-lambda", b"")
        for task_id in ids:
            assert client.wait(task_id, timeout=TASK_TIMEOUT).status is TaskStatus.SUCCESS
        assert client.wait(fatal, timeout=TASK_TIMEOUT).status is TaskStatus.FATAL_FAILURE
        assert client.wait(doomed, timeout=TASK_TIMEOUT).status is TaskStatus.DEAD_LETTERED

    # A record no processor can decode: set aside to the poison topic.
    settings = deployment.settings
    producer = kafka_clients.producer(settings.kafka_bootstrap or "", settings.kafka_config)
    producer.produce(Topics(settings.topic_prefix).commands, b"\x00garbage", b"poison-key")
    assert producer.flush(10) == 0

    def moved(kind: str, check: Callable[[Samples, Samples], bool]) -> Callable[[], bool]:
        def scraped() -> bool:
            after = scrape_all(deployment)[kind]
            return check(before[kind], after)

        return scraped

    def grew(name: str, by: float = 1, **labels: str) -> Callable[[Samples, Samples], bool]:
        return lambda old, new: value(new, name, **labels) - value(old, name, **labels) >= by

    # The processor's gauges are recomputed once a second and counters count
    # committed batches: wait for the last of them rather than assume.
    wait_for(
        moved("processor", grew("atf_processor_poison_records_total")),
        30,
        "the poison record to be counted",
        interval=0.2,
    )

    def gauges_caught_up(_: Samples, new: Samples) -> bool:
        return (
            value(new, "atf_processor_tasks", status="success", **{"lambda": "work"}) >= work
            and value(new, "atf_processor_tasks", status="dead_lettered") >= 1
        )

    wait_for(
        moved("processor", gauges_caught_up), 30, "the task gauges to be recomputed", interval=0.2
    )
    after = scrape_all(deployment)

    def delta(service: str, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(before[service], name, **labels)

    report: Mapping[str, float] = {
        "frontend scheduled work": delta(
            "frontend", "atf_frontend_scheduled_total", **{"lambda": "work"}
        ),
        "frontend batch scheduled": delta(
            "frontend", "atf_frontend_scheduled_total", method="ScheduleBatch"
        ),
        "frontend errors (other, NOT_FOUND)": delta(
            "frontend", "atf_frontend_schedule_errors_total", code="NOT_FOUND",
            **{"lambda": "other"},
        ),
    }  # fmt: skip
    print(report)

    # Frontend: schedule rate and errors by lambda, and the gRPC server metrics.
    assert report["frontend scheduled work"] >= work + 1
    assert report["frontend batch scheduled"] >= 1
    assert report["frontend errors (other, NOT_FOUND)"] >= 2  # the batch's and Schedule's
    assert (
        delta(
            "frontend",
            "atf_grpc_server_handled_total",
            method="/atf.v1.Frontend/Schedule",
            code="NOT_FOUND",
        )
        >= 1
    )
    assert delta("frontend", "atf_grpc_server_handling_seconds_count", server="frontend") >= work

    # Processor: transitions by status, dead letters, poison, batches, transactions.
    def transitions(lambda_name: str, status: str) -> float:
        return delta(
            "processor", "atf_processor_transitions_total", status=status, **{"lambda": lambda_name}
        )

    assert transitions("work", "success") >= work + 1
    assert transitions("work", "enqueued") >= work + 1
    assert transitions("fatal", "fatal_failure") >= 1
    assert transitions("doomed", "retriable_failure") >= DOOMED_MAX_ATTEMPTS - 1
    assert transitions("doomed", "dead_lettered") >= 1
    assert delta("processor", "atf_processor_dead_lettered_total", **{"lambda": "doomed"}) >= 1
    assert delta("processor", "atf_processor_poison_records_total") >= 1
    assert delta("processor", "atf_processor_commands_total") >= 3 * work
    assert delta("processor", "atf_processor_batch_size_count", kind="commands") >= 1
    assert delta("processor", "atf_processor_batch_size_sum", kind="events") >= 4 * work
    assert delta("processor", "atf_processor_transaction_seconds_count") >= 1
    assert delta("processor", "atf_processor_transactions_total", outcome="committed") >= 1
    processor = after["processor"]
    # Gauges: tasks by status, queue depth and credit, lag, restore progress.
    assert value(processor, "atf_processor_tasks", status="success", **{"lambda": "work"}) >= work
    assert value(processor, "atf_processor_tasks", status="dead_lettered") >= 1
    for partition in ("0", "1"):
        assert present(processor, "atf_processor_consumer_lag", partition=partition)
        assert present(processor, "atf_processor_restore_total", partition=partition)
        assert value(processor, "atf_processor_restore_replayed", partition=partition) == value(
            processor, "atf_processor_restore_total", partition=partition
        )
    assert present(processor, "atf_processor_enqueued", priority="0", **{"lambda": "work"})
    assert value(processor, "atf_processor_enqueue_credit", **{"lambda": "work"}) > 0
    assert value(processor, "atf_processor_owned_partitions") == 2

    # HSC: claims, heartbeats and results served.
    for method in ("ClaimTasks", "Heartbeat", "SetResults"):
        grpc_method = f"/atf.v1.HeartbeatStatus/{method}"
        assert delta("hsc", "atf_grpc_server_handled_total", method=grpc_method, code="OK") >= 1

    # Controller: items handed out, buffers and their credit.
    controller = after["controller"]
    claimed = delta(
        "controller", "atf_controller_items_total", outcome="claimed", **{"lambda": "work"}
    )
    assert claimed >= work + 1
    assert present(controller, "atf_controller_buffered", priority="0", **{"lambda": "work"})
    assert value(controller, "atf_controller_buffer_credit", **{"lambda": "work"}) > 0
    assert present(controller, "atf_controller_paused", **{"lambda": "doomed"})

    # Executors: delivery latency, outcomes, heartbeat series.
    assert (
        delta(
            "executor-work",
            "atf_executor_delivery_latency_seconds_count",
            **{"lambda": "work"},
        )
        >= work + 1
    )
    assert delta("executor-work", "atf_executor_tasks_total", outcome="success") >= work + 1
    assert delta("executor-fatal", "atf_executor_tasks_total", outcome="fatal") >= 1
    assert (
        delta("executor-doomed", "atf_executor_tasks_total", outcome="retriable")
        >= DOOMED_MAX_ATTEMPTS
    )
    for name in (
        "atf_executor_heartbeat_failures_total",
        "atf_executor_self_terminations_total",
        "atf_executor_heartbeat_refusals_total",
    ):
        assert present(after["executor-work"], name, **{"lambda": "work"}), name
    assert present(after["executor-work"], "atf_executor_running", **{"lambda": "work"})
