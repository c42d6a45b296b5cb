"""The encoder's view of a CT: a fixed physical cube around the LAA on an isotropic grid.

The network never sees patient coordinates directly: it sees a cube of ``size_mm`` resampled to ``n``³
voxels and answers queries given in *normalised* crop coordinates in [-1, 1] (``grid_sample`` order,
``align_corners=True``). :class:`CropGeometry` is the single, exact mapping between the two, so training
samples, inference queries and gradients all agree with the crop the encoder saw.

Convention (the NUDF authors' pitfall, docs/coordinates.md): with ``align_corners=True`` the values ±1 are the
*centres* of the first and last voxels, so voxel centres span exactly ``size_mm`` and the spacing is
``h = size_mm / (n - 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .io import Volume

#: Value given to crop voxels outside the CT (below any real HU, so it clips to air).
OUTSIDE_HU = -2048.0


@dataclass(frozen=True)
class HUWindow:
    """Intensity normalisation: ``clip(HU, low, high) / scale`` (the paper: −1000..1000, /1000)."""

    low: float = -1000.0
    high: float = 1000.0
    scale: float = 1000.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise InputError(f"HU window must have low < high; got ({self.low}, {self.high}).")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"HU scale must be positive; got {self.scale}.")

    def apply(self, hu: np.ndarray) -> np.ndarray:
        return (np.clip(hu, self.low, self.high) / self.scale).astype(np.float32)

    def as_list(self) -> list[float]:
        return [float(self.low), float(self.high), float(self.scale)]

    @classmethod
    def from_value(cls, value: "HUWindow | Sequence[float] | None") -> "HUWindow":
        """Accept a window, a (low, high) or (low, high, scale) sequence, or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, HUWindow):
            return value
        vals = [float(v) for v in value]
        if len(vals) == 2:
            return cls(vals[0], vals[1], max(abs(vals[0]), abs(vals[1])))
        if len(vals) == 3:
            return cls(*vals)
        raise InputError(f"HU window must be (low, high) or (low, high, scale); got {value!r}.")


def _check_rotation(rotation: np.ndarray) -> np.ndarray:
    r = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise InputError("The crop rotation must be a proper rotation matrix (orthonormal, det +1).")
    return r


@dataclass
class CropGeometry:
    """A cube of side ``size_mm`` centred at ``center_lps`` with ``n`` voxels per side.

    ``rotation_lps`` has the crop's x, y, z axes (in LPS) as columns; identity means axis-aligned with
    LPS. The crop array is indexed ``[z, y, x]`` = ``[D, H, W]``, and normalised point coordinates are
    ``(x, y, z)`` as ``F.grid_sample`` expects.
    """

    center_lps: np.ndarray
    size_mm: float = 70.0
    n: int = 128
    rotation_lps: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.center_lps = np.asarray(self.center_lps, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(self.center_lps)):
            raise InputError(f"The crop centre must be finite; got {self.center_lps}.")
        self.size_mm = float(self.size_mm)
        if not (np.isfinite(self.size_mm) and self.size_mm > 0):
            raise InputError(f"The crop size must be a positive number of mm; got {self.size_mm}.")
        self.n = int(self.n)
        if self.n < 4:
            raise InputError(f"The crop needs at least 4 voxels per side; got {self.n}.")
        self.rotation_lps = _check_rotation(self.rotation_lps)

    # -- mapping -----------------------------------------------------------------------------------
    @property
    def spacing_mm(self) -> float:
        """Distance between neighbouring voxel centres."""
        return self.size_mm / (self.n - 1)

    @property
    def half_size_mm(self) -> float:
        return 0.5 * self.size_mm

    @property
    def origin_lps(self) -> np.ndarray:
        """Centre of crop voxel (0, 0, 0) (normalised (−1, −1, −1))."""
        return self.center_lps - self.rotation_lps @ np.full(3, self.half_size_mm)

    def lps_to_normalized(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) → normalised crop coordinates (..., 3) in (x, y, z) = (W, H, D) order."""
        p = np.asarray(points_lps, dtype=np.float64)
        return ((p - self.center_lps) @ self.rotation_lps) / self.half_size_mm

    def normalized_to_lps(self, points_norm: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`lps_to_normalized`."""
        q = np.asarray(points_norm, dtype=np.float64)
        return (q * self.half_size_mm) @ self.rotation_lps.T + self.center_lps

    @property
    def jacobian(self) -> np.ndarray:
        """d(normalised)/d(LPS), a 3×3 matrix: ``J = Rᵀ / half_size``."""
        return self.rotation_lps.T / self.half_size_mm

    def normalized_gradient_to_lps(self, grad_norm: np.ndarray) -> np.ndarray:
        """Turn ∂u/∂(normalised point) (..., 3) into ∇u in LPS per mm (chain rule: ``Jᵀ g``)."""
        g = np.asarray(grad_norm, dtype=np.float64)
        return g @ self.jacobian

    def contains_lps(self, points_lps: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """True where a point lies inside the cube (normalised |coords| ≤ 1 − margin)."""
        q = self.lps_to_normalized(points_lps)
        return np.all(np.abs(q) <= 1.0 - margin, axis=-1)

    def grid_points_lps(self) -> np.ndarray:
        """LPS centres of all crop voxels, shape (n, n, n, 3), indexed like the crop ``[z, y, x]``."""
        t = np.linspace(-1.0, 1.0, self.n)
        z, y, x = np.meshgrid(t, t, t, indexing="ij")
        return self.normalized_to_lps(np.stack([x, y, z], axis=-1))

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image with this crop's grid (the target of resampling)."""
        img = sitk.Image([self.n] * 3, sitk.sitkFloat32)
        img.SetSpacing([self.spacing_mm] * 3)
        img.SetOrigin(tuple(float(v) for v in self.origin_lps))
        img.SetDirection(tuple(float(v) for v in self.rotation_lps.ravel()))
        return img

    def to_dict(self) -> dict:
        return {
            "center_lps": [float(v) for v in self.center_lps],
            "size_mm": self.size_mm,
            "n": self.n,
            "rotation_lps": [[float(v) for v in row] for row in self.rotation_lps],
        }


def _as_float_sitk(volume: "Volume | sitk.Image") -> sitk.Image:
    if isinstance(volume, Volume):
        vol = Volume(volume.array.astype(np.float32, copy=False), volume.spacing, volume.origin_lps,
                     volume.direction_lps)
        return vol.to_sitk()
    if isinstance(volume, sitk.Image):
        if volume.GetPixelID() != sitk.sitkFloat32:
            return sitk.Cast(volume, sitk.sitkFloat32)
        return volume
    raise InputError(f"Expected a Volume or a SimpleITK image; got {type(volume).__name__}.")


def extract_crop(
    volume: "Volume | sitk.Image",
    geometry: CropGeometry,
    window: "HUWindow | Sequence[float] | None" = None,
) -> np.ndarray:
    """Resample ``volume`` (any direction, anisotropic spacing) onto the crop grid, normalised.

    Linear interpolation; voxels outside the CT get −2048 HU (air after clipping). Returns a float32
    array ``[n, n, n]`` indexed ``[z, y, x]`` of the crop axes. Pass a float32 ``sitk.Image`` (see
    :func:`subvolume_around`) to avoid converting a large CT on every call.
    """
    win = HUWindow.from_value(window)
    image = _as_float_sitk(volume)
    out = sitk.Resample(image, geometry.reference_image(), sitk.Transform(), sitk.sitkLinear, OUTSIDE_HU,
                        sitk.sitkFloat32)
    return win.apply(sitk.GetArrayViewFromImage(out))


def subvolume_around(volume: Volume, points_lps: np.ndarray, margin_mm: float) -> sitk.Image:
    """The part of ``volume`` covering ``points_lps`` plus ``margin_mm``, as a float32 SimpleITK image.

    Training resamples many jittered, rotated crops of one case; caching this small region instead of
    the whole CT keeps that cheap in time and memory.
    """
    pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        raise InputError("subvolume_around needs at least one point.")
    lo, hi = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    ijk = volume.lps_to_index(corners)
    size = np.array(volume.size_ijk)
    i0 = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 1, 0, size - 1)
    i1 = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 2, 1, size)
    if np.any(i1 - i0 < 2):  # region outside the CT: keep a 2-voxel sliver so geometry stays valid
        i0 = np.minimum(i0, size - 2)
        i1 = np.maximum(i1, i0 + 2)
    arr = np.ascontiguousarray(volume.array[i0[2]:i1[2], i0[1]:i1[1], i0[0]:i1[0]], dtype=np.float32)
    sub = Volume(arr, volume.spacing, volume.index_to_lps(i0.astype(float)), volume.direction_lps)
    return sub.to_sitk()


def rotation_matrix(axis: Sequence[float], angle_rad: float) -> np.ndarray:
    """Rotation of ``angle_rad`` about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation about a uniformly random axis by an angle uniform in [−max_deg, max_deg]."""
    if max_deg <= 0:
        return np.eye(3)
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    return rotation_matrix(axis, angle)
