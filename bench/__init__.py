"""Benchmarks; a package so that ``bench.peer_apps`` is importable by worker processes."""
