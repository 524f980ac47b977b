"""The health kit for the backend to mount: `erpwatch_healthkit`, re-exported here.

The kit is its own small distribution (``healthkit/`` in this repository, installable into a
backend's environment without this ``watchdog`` package); erpwatch ships it too, so
``from watchdog.healthkit import HealthKit`` keeps working where erpwatch is installed.
"""

from erpwatch_healthkit import Check, HealthKit

__all__ = ["Check", "HealthKit"]
