"""One deployment of separate processes for every e2e test module (see ``deployment``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.deployment import Deployment, deployment_of_processes


@pytest.fixture(scope="package")
def deployment(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """processor, hsc, frontend, controller and an executor per lambda, each a process.

    Package-scoped: started once for all of ``tests/e2e`` and stopped after its
    last test, so the rest of the suite does not share the CPU with it.
    """
    with deployment_of_processes(broker, tmp_path_factory.mktemp("e2e")) as system:
        yield system
