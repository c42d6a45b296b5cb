"""The one place where patient coordinate frames are converted.

Slicer works in RAS (x to the Right, y Anterior, z Superior); ITK/SimpleITK, NIfTI/NRRD/DICOM and STL
files in LPS (x to the Left, y Posterior, z Superior).  The two differ by negating x and y:
``RAS = F @ LPS`` with ``F = diag(-1, -1, 1)`` (and F is its own inverse).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import InputError

Frame = Literal["lps", "ras"]
FRAMES: tuple[str, ...] = ("lps", "ras")

#: LPS <-> RAS flip matrix (its own inverse).
LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0])


def check_frame(frame: str) -> Frame:
    """Return ``frame`` lower-cased, or raise :class:`InputError` if it is not 'lps' or 'ras'."""
    f = str(frame).lower()
    if f not in FRAMES:
        raise InputError(f"Unknown coordinate frame {frame!r}: use 'lps' or 'ras'.")
    return f  # type: ignore[return-value]


def _flip_xy(points: np.ndarray) -> np.ndarray:
    p = np.array(points, dtype=np.float64, copy=True)
    if p.shape[-1] != 3:
        raise InputError(f"Points must have 3 coordinates (got shape {p.shape}).")
    p[..., 0] *= -1.0
    p[..., 1] *= -1.0
    return p


def lps_to_ras(points_lps: np.ndarray) -> np.ndarray:
    """Map points (..., 3) from LPS to RAS."""
    return _flip_xy(points_lps)


def ras_to_lps(points_ras: np.ndarray) -> np.ndarray:
    """Map points (..., 3) from RAS to LPS."""
    return _flip_xy(points_ras)


def to_lps(points: np.ndarray, frame: str) -> np.ndarray:
    """Map points given in ``frame`` ('lps' or 'ras') to LPS."""
    return ras_to_lps(points) if check_frame(frame) == "ras" else np.array(points, dtype=np.float64)


def from_lps(points_lps: np.ndarray, frame: str) -> np.ndarray:
    """Map LPS points to ``frame`` ('lps' or 'ras')."""
    return lps_to_ras(points_lps) if check_frame(frame) == "ras" else np.array(points_lps, dtype=np.float64)
