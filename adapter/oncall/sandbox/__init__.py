"""A faithful local OnCall API for tests, demos and benchmarks (see app.py and control.py)."""

from adapter.oncall.sandbox.app import SandboxApp, create_sandbox_app
from adapter.oncall.sandbox.faults import FaultRule
from adapter.oncall.sandbox.settings import DEFAULT_API_KEYS, SandboxSettings

__all__ = ["DEFAULT_API_KEYS", "FaultRule", "SandboxApp", "SandboxSettings", "create_sandbox_app"]
