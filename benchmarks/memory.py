"""Honest peak-memory figures for the benchmarks (imported by ``unet_baseline.py`` and ``speed.py``).

``resource.getrusage(...).ru_maxrss`` is a lifetime high-water mark that Linux even carries across
``exec``: a worker started from a 1 GB parent reports ≥ 1 GB whatever it does. So on Linux we read
``VmHWM`` (the peak RSS of *this* address space) from ``/proc/self/status`` and reset it by writing ``5``
to ``/proc/self/clear_refs`` right before the measured task; elsewhere we fall back to ``ru_maxrss``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> float | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return float(m.group(1)) if m else None


def rss_mb() -> float:
    """Resident memory now (MB)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024.0
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or the last :func:`reset_peak` (MB)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0


def reset_peak() -> bool:
    """Reset the peak to the current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
