"""Settings: layering, validation messages and the Kafka client mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from atf_es.config import DAY_MS, HOUR_MS, ConfigError, Settings, load_settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return list(raised.value.problems)


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.kafka_bootstrap is None
    assert settings.topic_prefix == "atf"
    assert settings.partitions == 8
    assert settings.replication_factor == 1
    assert settings.audit_window_ms == 7 * DAY_MS
    assert settings.command_retention_ms == 7 * DAY_MS
    assert settings.exec_retention_ms == DAY_MS
    assert settings.reply_retention_ms == HOUR_MS
    assert settings.data_dir == Path(".atf-data")
    assert settings.poll_interval_ms == 50
    assert settings.session_timeout_ms == 10_000
    assert settings.max_enqueued == 1_000
    assert settings.max_batch == 500
    assert settings.commands_fetch_wait_ms == 20
    assert dict(settings.kafka_config) == {}
    assert settings.source_of("partitions") == "default"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.partitions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.kafka_config["x"] = "y"  # type: ignore[index]


def test_the_commands_fetch_wait_comes_from_the_environment() -> None:
    settings = load_settings(env={"ATF_COMMANDS_FETCH_WAIT_MS": "250"})
    assert settings.commands_fetch_wait_ms == 250
    assert _problems(env={"ATF_COMMANDS_FETCH_WAIT_MS": "soon"}) == [
        "commands_fetch_wait_ms must be an integer, got 'soon' "
        "(from environment variable ATF_COMMANDS_FETCH_WAIT_MS)."
    ]


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "atf.toml",
        'topic_prefix = "fromfile"\npartitions = 4\npoll_interval_ms = 20\ndata_dir = "/var/atf"\n',
    )
    settings = load_settings(
        config,
        env={"ATF_PARTITIONS": "6", "ATF_POLL_INTERVAL_MS": "10"},
        overrides={"partitions": 12, "kafka_bootstrap": None},
    )
    assert settings.topic_prefix == "fromfile"
    assert settings.data_dir == Path("/var/atf")
    assert settings.poll_interval_ms == 10
    assert settings.partitions == 12
    assert settings.source_of("topic_prefix") == f"config file {config}"
    assert settings.source_of("poll_interval_ms") == "environment variable ATF_POLL_INTERVAL_MS"
    assert settings.source_of("partitions") == "command line"
    assert settings.source_of("kafka_bootstrap") == "default"


def test_config_file_from_atf_config_env(tmp_path: Path) -> None:
    config = _write(tmp_path / "atf.toml", 'topic_prefix = "viaenv"\n')
    settings = load_settings(env={"ATF_CONFIG": str(config)})
    assert settings.topic_prefix == "viaenv"


def test_env_values_are_parsed() -> None:
    settings = load_settings(
        env={
            "ATF_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
            "ATF_TOPIC_PREFIX": "prod_atf",
            "ATF_PARTITIONS": " 16 ",
            "ATF_AUDIT_WINDOW_MS": "86_400_000",
            "ATF_DATA_DIR": "/tmp/atf",
            "PATH": "/usr/bin",
        }
    )
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.topic_prefix == "prod_atf"
    assert settings.partitions == 16
    assert settings.audit_window_ms == 86_400_000
    assert settings.data_dir == Path("/tmp/atf")


def test_empty_bootstrap_env_means_embedded() -> None:
    assert load_settings(env={"ATF_KAFKA_BOOTSTRAP": ""}).kafka_bootstrap is None


def test_kafka_config_from_file_env_and_overrides(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "atf.toml",
        "[kafka]\n"
        'security.protocol = "SASL_SSL"\n'
        '"sasl.mechanism" = "PLAIN"\n'
        "socket.keepalive.enable = true\n"
        "message.max.bytes = 2000000\n",
    )
    settings = load_settings(
        config,
        env={
            "ATF_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "ATF_KAFKA__SASL_USERNAME": "alice",
            "ATF_KAFKA__SASL_PASSWORD": "s3cret",
        },
        overrides={"kafka_config": {"client.id": "cli"}},
    )
    assert dict(settings.kafka_config) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "socket.keepalive.enable": "true",
        "message.max.bytes": "2000000",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "client.id": "cli",
    }
    assert settings.source_of("kafka.sasl.mechanism") == (
        "environment variable ATF_KAFKA__SASL_MECHANISM"
    )
    assert settings.source_of("kafka.security.protocol") == f"config file {config}"
    assert settings.redacted_kafka_config()["sasl.password"] == "********"
    assert settings.redacted_kafka_config()["sasl.username"] == "alice"
    client = settings.client_config("b:9092", **{"group.id": "g"})
    assert client["bootstrap.servers"] == "b:9092"
    assert client["group.id"] == "g"
    assert client["sasl.mechanism"] == "SCRAM-SHA-512"


def test_bad_integer_env_names_the_variable() -> None:
    problems = _problems(env={"ATF_PARTITIONS": "eight"})
    assert problems == [
        "partitions must be an integer, got 'eight' (from environment variable ATF_PARTITIONS)."
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = _write(tmp_path / "atf.toml", 'partitions = "8"\nreplication_factor = 0\n')
    problems = _problems(
        config_file=config,
        env={"ATF_POLL_INTERVAL_MS": "soon", "ATF_TOPIC_PREFIX": "bad prefix"},
    )
    assert len(problems) == 4
    assert f"partitions must be an integer, got '8' (from config file {config})." in problems
    assert (
        "poll_interval_ms must be an integer, got 'soon' "
        "(from environment variable ATF_POLL_INTERVAL_MS)." in problems
    )
    assert (
        f"replication_factor must be between 1 and 32, got 0 (from config file {config})."
        in problems
    )
    assert any(
        p.startswith("topic_prefix 'bad prefix' may only contain")
        and p.endswith("(from environment variable ATF_TOPIC_PREFIX).")
        for p in problems
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("partitions", 0, "partitions must be between 1 and 10000, got 0"),
        ("replication_factor", 40, "replication_factor must be between 1 and 32, got 40"),
        ("audit_window_ms", -1, "audit_window_ms must be at least 0, got -1"),
        ("command_retention_ms", 0, "command_retention_ms must be at least 1, got 0"),
        ("exec_retention_ms", 0, "exec_retention_ms must be at least 1, got 0"),
        ("reply_retention_ms", 0, "reply_retention_ms must be at least 1, got 0"),
        ("poll_interval_ms", 0, "poll_interval_ms must be between 1 and 60000, got 0"),
        ("session_timeout_ms", 999, "session_timeout_ms must be between 1000 and 1800000"),
        ("max_enqueued", 0, "max_enqueued must be between 1 and 1000000, got 0"),
        ("max_batch", 0, "max_batch must be between 1 and 100000, got 0"),
        ("commands_fetch_wait_ms", 0, "commands_fetch_wait_ms must be between 1 and 10000"),
        ("commands_fetch_wait_ms", 10_001, "commands_fetch_wait_ms must be between 1 and 10000"),
        ("executor_prefetch", 2, "executor_prefetch must be between 0 and 1, got 2"),
        ("executor_batch", 0, "executor_batch must be between 1 and 100, got 0"),
        ("controller_buffer", 0, "controller_buffer must be between 1 and 100000, got 0"),
        ("partitions", True, "partitions must be an integer, got True"),
        ("topic_prefix", "", "topic_prefix must not be empty"),
        ("topic_prefix", "a/b", "topic_prefix 'a/b' may only contain ASCII letters"),
        ("topic_prefix", "atf.", "must not end with '.'"),
        ("topic_prefix", "__atf", "must not start with '__'"),
        ("topic_prefix", "x" * 121, "topic_prefix must be at most 120 characters, got 121"),
        ("kafka_bootstrap", "   ", "kafka_bootstrap must not be blank"),
        ("kafka_bootstrap", "localhost", "kafka_bootstrap 'localhost' is not host:port"),
        ("kafka_bootstrap", "a:1,b:99999", "kafka_bootstrap 'b:99999' is not host:port"),
        ("data_dir", "", "data_dir must be a non-empty path"),
    ],
)
def test_validation_messages(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings(**{field: value})  # type: ignore[arg-type]
    (problem,) = raised.value.problems
    assert expected in problem
    assert problem.endswith("(from default).") or "(from " in problem


def test_validation_names_the_source_of_override() -> None:
    problems = _problems(env={}, overrides={"partitions": 0})
    assert problems == ["partitions must be between 1 and 10000, got 0 (from command line)."]


def test_accepted_bootstrap_forms() -> None:
    for bootstrap in ("localhost:9092", "a:1, b:2", "[::1]:9092", "PLAINTEXT://k:9092"):
        assert Settings(kafka_bootstrap=bootstrap).kafka_bootstrap == bootstrap


def test_kafka_config_must_not_set_bootstrap_servers() -> None:
    problems = _problems(env={"ATF_KAFKA__BOOTSTRAP_SERVERS": "x:1"})
    assert problems == [
        "kafka_config must not set bootstrap.servers; set kafka_bootstrap "
        "(ATF_KAFKA_BOOTSTRAP or --bootstrap) instead "
        "(from environment variable ATF_KAFKA__BOOTSTRAP_SERVERS)."
    ]


def test_kafka_config_rejects_non_scalar_values(tmp_path: Path) -> None:
    config = _write(tmp_path / "atf.toml", "[kafka]\nlist = [1, 2]\n")
    (problem,) = _problems(config_file=config, env={})
    assert problem.startswith("kafka_config entry 'list' must be a string, number or boolean")


def test_unknown_env_var_suggests_a_fix() -> None:
    (problem,) = _problems(env={"ATF_PARTITONS": "3"})
    assert problem == (
        "The environment variable ATF_PARTITONS is not an atf-es setting; "
        "did you mean 'ATF_PARTITIONS'?"
    )


def test_unknown_env_var_without_close_match_lists_known_ones() -> None:
    (problem,) = _problems(env={"ATF_ZZZ": "1"})
    assert problem.startswith("The environment variable ATF_ZZZ is not an atf-es setting; known")
    assert "ATF_KAFKA__<PROPERTY>" in problem


def test_unknown_file_key(tmp_path: Path) -> None:
    config = _write(tmp_path / "atf.toml", "partitons = 3\n")
    (problem,) = _problems(config_file=config, env={})
    assert (
        problem
        == f"'partitons' is not a setting (from config file {config}); did you mean 'partitions'?"
    )


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert _problems(config_file=missing, env={}) == [f"The config file {missing} does not exist."]
    broken = _write(tmp_path / "broken.toml", "partitions = = 3\n")
    (problem,) = _problems(config_file=broken, env={})
    assert problem.startswith(f"The config file {broken} is not valid TOML:")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="partitions"):
        Settings(partitions=-1)


def test_service_addresses_are_validated() -> None:
    settings = load_settings(env={"ATF_FRONTEND_ADDRESS": "0.0.0.0:0"})
    assert settings.frontend_address == "0.0.0.0:0"
    assert settings.source_of("frontend_address") == "environment variable ATF_FRONTEND_ADDRESS"
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"ATF_HSC_ADDRESS": "localhost", "ATF_CONTROLLER_ADDRESS": "h:99999"})
    text = " ".join(caught.value.problems)
    assert "hsc_address must be host:port" in text and "'localhost'" in text
    assert "controller_address must be host:port" in text
