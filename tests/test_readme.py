"""The README's examples stay true: its TOML parses, its commands and variables exist."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

from atf_es.cli import build_parser
from atf_es.config import ENV_CONFIG_FILE, ENV_KAFKA_PREFIX, Settings, env_var_for, load_settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_toml_example_is_valid(tmp_path: Path) -> None:
    (block,) = _blocks("toml")
    config = tmp_path / "atf.toml"
    config.write_text(block)
    settings = load_settings(config, env={})
    assert settings.partitions == 32
    assert settings.kafka_config["sasl.mechanism"] == "SCRAM-SHA-512"


def test_commands_and_variables_exist() -> None:
    text = README.read_text()
    (subcommands,) = (
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    mentioned = set(re.findall(r"`atf-es (\w+)", text))
    assert mentioned
    assert mentioned <= set(subcommands)
    documented = set(re.findall(r"\bATF_[A-Z_]*[A-Z]\b", text))
    known = {env_var_for(f.name) for f in fields(Settings) if f.name != "sources"}
    known |= {ENV_CONFIG_FILE}
    kafka_examples = {var for var in documented if var.startswith(ENV_KAFKA_PREFIX)}
    assert documented - kafka_examples <= known
    assert env_var_for("kafka_config") not in text  # it is ATF_KAFKA__<KEY>


def test_python_examples_compile_and_the_app_block_runs() -> None:
    app_block, client_block = _blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(app_block, "README.md (app)", "exec"), namespace)
    from atf_es.app import App

    app = namespace["app"]
    assert isinstance(app, App)
    assert app.lambdas["send_email"].policy.max_attempts == 5
    compile(client_block, "README.md (client)", "exec")
    from atf_es.client import Client

    assert callable(Client.schedule) and callable(Client.wait)
