"""The isolation benchmark's two lambdas (``bench/isolation.py``).

``lambda_a`` is the one flooded, ``lambda_b`` the one whose delivery is
measured. Both record when they start in the benchmark ledger
(``bench/peer_apps/ledger.py``) and return the key; ``lambda_a`` then sleeps
``BENCH_A_SLEEP_MS`` milliseconds (0 by default: a no-op). The names sort
``lambda_a`` first, so where the processor walks lambdas by name (the store
consumer's due-task scan), the flood is served first: the worse case for B.
"""

from __future__ import annotations

import os
import time

from atf_es.app import App, TaskContext
from bench.peer_apps.ledger import record

LAMBDA_A = "lambda_a"
LAMBDA_B = "lambda_b"
A_SLEEP_ENV = "BENCH_A_SLEEP_MS"

app = App("isolation")
_A_SLEEP_S = float(os.environ.get(A_SLEEP_ENV) or 0) / 1000


@app.lambda_(LAMBDA_A, max_attempts=3)
def lambda_a(task: TaskContext) -> str:
    key = record(task.payload.decode())
    if _A_SLEEP_S > 0:
        time.sleep(_A_SLEEP_S)  # the flood's work, if asked for
    return key


@app.lambda_(LAMBDA_B, max_attempts=3)
def lambda_b(task: TaskContext) -> str:
    return record(task.payload.decode())
