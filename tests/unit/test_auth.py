"""The tokens file and the role table: every problem named, no open method by accident."""

from __future__ import annotations

from pathlib import Path

import pytest

from atf_es._proto.atf.v1 import admin_pb2, frontend_pb2, worker_pb2
from atf_es.config import ConfigError
from atf_es.services.auth import METHOD_ROLES, Principal, digest, load_principals

TOKEN = "t" * 20


def _load(tmp_path: Path, text: str) -> dict[str, Principal]:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return load_principals(path)


def test_principals_are_found_by_the_digest_of_their_token(tmp_path: Path) -> None:
    principals = _load(
        tmp_path,
        f"""
[[principal]]
name = "billing"
token = "{TOKEN}"
roles = ["schedule", "read"]
lambdas = ["send_invoice", "refund"]

[[principal]]
name = "ops"
token_sha256 = "{digest("o" * 20).upper()}"
roles = ["admin"]
""",
    )
    billing = principals[digest(TOKEN)]
    assert billing.roles == {"schedule", "read"}
    assert billing.covers("refund") and not billing.covers("payroll")
    ops = principals[digest("o" * 20)]
    assert ops.admin and ops.covers("anything")


def test_a_star_grants_every_lambda(tmp_path: Path) -> None:
    principals = _load(
        tmp_path,
        f'[[principal]]\nname = "r"\ntoken = "{TOKEN}"\nroles = ["read"]\nlambdas = ["*"]\n',
    )
    assert principals[digest(TOKEN)].lambdas is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('name = "a"\nroles = ["read"]', "needs exactly one of token and token_sha256"),
        (f'name = "a"\ntoken = "{TOKEN}"\nroles = ["root"]', "roles must be a non-empty list"),
        (f'name = "a"\ntoken = "{TOKEN}"\nroles = []', "roles must be a non-empty list"),
        ('name = "a"\ntoken = "short"\nroles = ["read"]', "at least 16 characters"),
        ('name = "a"\ntoken_sha256 = "abc"\nroles = ["read"]', "64 hex digits"),
        (f'token = "{TOKEN}"\nroles = ["read"]', "needs a name"),
        (
            f'name = "a"\ntoken = "{TOKEN}"\nroles = ["read"]\nlambdas = "x"',
            "lambdas must be a list",
        ),
        (
            f'name = "a"\ntoken = "{TOKEN}"\nroles = ["read"]\nlambda = ["x"]',
            "'lambda' is not a key",
        ),
    ],
)
def test_a_bad_principal_is_named_with_its_problem(
    tmp_path: Path, entry: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, f"[[principal]]\n{entry}\n")
    assert problem in str(error.value)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        f'[[principal]]\nname = "a"\ntoken = "{TOKEN}"\nroles = ["worker"]\n'
        f'[[principal]]\nname = "a"\ntoken = "{TOKEN}"\nroles = ["worker"]\n'
        '[[principal]]\nname = "c"\ntoken = "short"\nroles = ["worker"]\n'
        '[[principal]]\nname = "d"\ntoken = "dddddddddddddddddddd"\nroles = ["read"]\n'
    )
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    problems = error.value.problems
    assert any("is given twice" in p for p in problems)
    assert any("same token as 'a'" in p for p in problems)
    assert any("at least 16 characters" in p for p in problems)
    assert any("'d'" in p and "need lambdas" in p for p in problems)


def test_unreadable_empty_and_invalid_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_principals(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="no \\[\\[principal\\]\\] tables"):
        _load(tmp_path, "")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "[[principal]\n")


def test_every_non_admin_method_in_the_role_table_exists_and_nothing_is_open_by_default() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (frontend_pb2, admin_pb2, worker_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METHOD_ROLES) <= methods, set(METHOD_ROLES) - methods
    admin_only = methods - set(METHOD_ROLES)
    assert {
        "/atf.v1.Admin/SetGate",
        "/atf.v1.Admin/Redrive",
        "/atf.v1.Admin/SetPeriodic",
        "/atf.v1.Admin/PausePeriodic",
        "/atf.v1.Admin/RemovePeriodic",
    } <= admin_only
    assert all("admin" not in roles for roles in METHOD_ROLES.values())
