"""One deployment of separate processes for every e2e test module (see ``deployment``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from atf_es.broker import EmbeddedBroker
from tests.e2e.deployment import Deployment, deployment_of_processes


@pytest.fixture(scope="package")
def deployment(
    shared_broker: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """processor, hsc, frontend, controller and an executor per lambda, each a process.

    Package-scoped: started once for all of ``tests/e2e`` (on its own embedded
    broker, unless the run shares an external one) and stopped after its last
    test, so the rest of the suite does not share the CPU with it.
    """
    with ExitStack() as stack:
        bootstrap = shared_broker
        if bootstrap is None:
            embedded = EmbeddedBroker(tmp_path_factory.mktemp("e2e-broker"))
            bootstrap = stack.enter_context(embedded).bootstrap
        yield stack.enter_context(
            deployment_of_processes(bootstrap, tmp_path_factory.mktemp("e2e"))
        )
