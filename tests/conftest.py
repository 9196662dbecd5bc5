"""Fixtures shared by every layer: the live OnCall sandbox (tests/integration/oncall_fixtures.py)."""

pytest_plugins = ["tests.integration.oncall_fixtures"]
