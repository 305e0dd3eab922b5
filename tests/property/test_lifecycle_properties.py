"""Random interleavings of commands and timers through the pure lifecycle."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.property.lifecycle_machine import LifecycleMachine

# CI runs thousands of interleavings; a developer's quick run can lower this.
EXAMPLES = int(os.environ.get("ATF_PROPERTY_EXAMPLES", "2000"))

TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
