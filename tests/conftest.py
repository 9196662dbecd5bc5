"""Fixtures shared by every layer, and the Hypothesis profiles.

Under CI (`CI` set) Hypothesis runs derandomized: the same examples every run, so a red build is a
real failure, never a draw of the dice. Developers run it randomized to keep finding new cases.
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.integration.oncall_fixtures"]

settings.register_profile("ci", derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")
