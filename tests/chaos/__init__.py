"""Chaos, checked (issue 7): many clients chat while a seeded fault injector kills and
restarts nodes; a checker then verifies the delivery guarantees of docs/protocol.md.

`python -m tests.chaos` (`make chaos`) runs it on its own cluster; tests/e2e/test_chaos.py
runs a short version under pytest."""
