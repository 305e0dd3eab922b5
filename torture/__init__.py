"""The torture suite: real processes, injected faults, a checker (see ``torture.run``)."""
