"""The torture run, short: every fault kind at least once, then the checker's verdict.

The long run is ``python -m torture --duration 1800`` (see docs/reliability.md);
this one runs in CI so that a change that breaks a guarantee under faults
fails the build, not only the next long run.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest

from atf_es.config import Settings
from torture.run import FAULT_KINDS, Options, main, render, run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(480)
def test_a_short_torture_run_loses_nothing_and_never_overlaps(
    settings: Settings, tmp_path: Path
) -> None:
    settings = replace(settings, partitions=4, session_timeout_ms=6000)
    out = io.StringIO()
    # The waits after the load are bounded well inside the test's timeout, so
    # a system that stops making progress fails with the checker's report.
    options = Options(
        duration=95.0,
        rate=3.0,
        seed=7,
        finish_timeout=40.0,
        drain_timeout=90.0,
        owned_timeout=60.0,
    )
    outcome = run(settings, tmp_path, options, out)
    shown = f"{out.getvalue()}\n{render(outcome)}"
    print(shown)
    assert outcome.ok, shown
    injected = outcome.figures["faults"]
    assert isinstance(injected, dict)
    assert set(injected) == set(FAULT_KINDS), shown
    assert outcome.report.tasks >= 200, shown
    assert outcome.figures["lost"] == 0 and outcome.figures["overlaps"] == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--duration", "0"], "--duration and --rate must be positive"),
        (["--kinds", "kill-processor,unplug-cable"], "unknown fault kinds ['unplug-cable']"),
        (["--fault-gap", "5"], "--fault-gap takes two numbers"),
        (["--fault-gap", "5,1"], "--fault-gap needs 0 <= LOW <= HIGH"),
    ],
)
def test_bad_arguments_exit_2_with_a_sentence(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
