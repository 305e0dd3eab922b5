"""How many tasks an executor thread asks for at once (no services needed:
an unstarted Executor connects to nothing)."""

from __future__ import annotations

import pytest

from atf_es.app import App, TaskContext
from atf_es.services.executor import BATCH_WAIT_S, Executor


def executor(**options: object) -> Executor:
    app = App("batches")

    @app.lambda_("noop")
    def noop(task: TaskContext) -> None:
        return None

    return Executor(app, "noop", "127.0.0.1:1", "127.0.0.1:2", **options)  # type: ignore[arg-type]


def test_one_at_a_time_until_a_callback_was_timed() -> None:
    assert executor()._batch_size() == 1


def test_short_callbacks_fill_a_batch_up_to_its_limit() -> None:
    ex = executor(batch=8)
    ex._estimate(0.0001)
    assert ex._batch_size() == 8
    ex = executor(batch=3)
    ex._estimate(0.0001)
    assert ex._batch_size() == 3


def test_the_last_task_of_a_batch_waits_at_most_the_budget() -> None:
    ex = executor(batch=100)
    for seconds in (0.001, 0.004, 0.01, 0.02, BATCH_WAIT_S, 0.3):
        ex._run_estimate = None
        ex._estimate(seconds)
        size = ex._batch_size()
        assert size >= 1
        # The tasks before the last take (size - 1) estimates; one more would pass the budget.
        assert (size - 1) * seconds <= BATCH_WAIT_S + 1e-12
        assert size == 100 or size * seconds > BATCH_WAIT_S


def test_a_slow_callback_stops_batching_at_once_and_fast_ones_bring_it_back_slowly() -> None:
    ex = executor(batch=8)
    ex._estimate(0.001)
    assert ex._batch_size() == 8
    ex._estimate(2.0)
    assert ex._batch_size() == 1
    sizes = []
    for _ in range(30):
        ex._estimate(0.001)
        sizes.append(ex._batch_size())
    assert sizes[:10] == [1] * 10, "one fast callback does not undo a slow one"
    assert sizes == sorted(sizes) and sizes[-1] == 8


@pytest.mark.parametrize("options", [{"prefetch": True}, {"batch": 1}])
def test_prefetch_or_a_batch_of_one_asks_for_one(options: dict[str, object]) -> None:
    ex = executor(**options)
    ex._estimate(0.0001)
    assert ex._batch_size() == 1


def test_a_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        executor(batch=0)
