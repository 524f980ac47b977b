"""psutil samples of the host and of each target's process tree.

CONTRACT (host part available now; the sampler and thresholds come with the ops work):

    def host_snapshot(paths: Sequence[Path] = ()) -> dict[str, Any]
        # {"cpu_percent": float, "ram_percent": float, "ram_used_mb": float,
        #  "ram_total_mb": float, "disks": {str(path): {"percent": float, "free_gb": float}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

_MB = 1024 * 1024


def host_snapshot(paths: Sequence[Path] = ()) -> dict[str, Any]:
    """A cheap, non-blocking sample (CPU % since the previous call)."""
    memory = psutil.virtual_memory()
    disks: dict[str, dict[str, float]] = {}
    for path in paths:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        usage = psutil.disk_usage(str(existing))
        disks[str(path)] = {"percent": usage.percent, "free_gb": round(usage.free / 1024**3, 2)}
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "ram_percent": memory.percent,
        "ram_used_mb": round((memory.total - memory.available) / _MB, 1),
        "ram_total_mb": round(memory.total / _MB, 1),
        "disks": disks,
    }
