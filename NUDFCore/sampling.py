"""Training points for the NUDF: where to ask the network, and the exact answer there.

Per case, query points are drawn (i) just off the ground-truth (GT) surface on each side, spread in proportion
to that side's local *shape diameter* (SD, Shapira et al. 2008) so thin gaps get tight samples and wide lumens
loose ones, (ii) uniformly in a box around the LAA, and (iii) as *hard negatives*: points on other strong
intensity edges of the CT and just beyond the ostium on the left-atrium (LA) side. A first CPU experiment showed
that false surface on those other edges is the dominant error when only the GT neighbourhood is supervised.
Every point gets the exact unsigned point-to-triangle distance to the open GT mesh (never a voxel distance).

Kinds (``SampleSet.kind``): 0 lumen side near the surface, 1 outer side near the surface, 2 uniform in the box,
3 hard negative on another intensity edge (> ``hard_min_mm`` from the GT), 4 hard negative beyond the ostium.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import __version__
from .errors import InputError, NUDFError
from .io import Volume, atomic_output, polydata_points, polydata_triangles
from .provenance import content_sha256_prefix

logger = logging.getLogger(__name__)

#: Bump when the sampling algorithm changes: it is part of the cache key, so old caches are not reused.
SAMPLING_VERSION = 1

KIND_LUMEN = 0
KIND_OUTER = 1
KIND_UNIFORM = 2
KIND_EDGE = 3
KIND_BEYOND_OSTIUM = 4
KIND_NAMES = {
    KIND_LUMEN: "lumen side",
    KIND_OUTER: "outer side",
    KIND_UNIFORM: "uniform in box",
    KIND_EDGE: "hard negative: other edge",
    KIND_BEYOND_OSTIUM: "hard negative: beyond ostium",
}
#: The paper's 45/45/10 near/near/uniform split, with a share of the near points given to hard negatives.
DEFAULT_MIX: dict[int, float] = {
    KIND_LUMEN: 0.38,
    KIND_OUTER: 0.38,
    KIND_UNIFORM: 0.10,
    KIND_EDGE: 0.08,
    KIND_BEYOND_OSTIUM: 0.06,
}


class SampleCacheError(NUDFError, IOError):
    """A saved sample file is missing, corrupt, truncated or inconsistent."""


# ------------------------------------------------------------------------------------------------ SampleSet
@dataclass
class SampleSet:
    """Training queries of one case with their exact unsigned distances (LPS mm)."""

    points_lps: np.ndarray  # (N, 3) float32
    distance_mm: np.ndarray  # (N,) float32, exact unsigned distance to the GT mesh
    kind: np.ndarray  # (N,) int8, see KIND_*
    lumen_points_lps: np.ndarray  # (M, 3) float32, inside the LAA lumen (crop centres for training)
    box_lps: np.ndarray = field(default_factory=lambda: np.zeros((2, 3), np.float32))  # (2, 3) min/max corner

    def __post_init__(self) -> None:
        self.points_lps = np.asarray(self.points_lps, dtype=np.float32).reshape(-1, 3)
        self.distance_mm = np.asarray(self.distance_mm, dtype=np.float32).reshape(-1)
        self.kind = np.asarray(self.kind, dtype=np.int8).reshape(-1)
        self.lumen_points_lps = np.asarray(self.lumen_points_lps, dtype=np.float32).reshape(-1, 3)
        self.box_lps = np.asarray(self.box_lps, dtype=np.float32).reshape(2, 3)
        n = len(self.points_lps)
        if len(self.distance_mm) != n or len(self.kind) != n:
            raise SampleCacheError(
                f"Inconsistent sample set: {n} points, {len(self.distance_mm)} distances, {len(self.kind)} kinds."
            )

    def __len__(self) -> int:
        return len(self.points_lps)

    def counts(self) -> dict[int, int]:
        """Number of points of each kind (all five kinds listed)."""
        return {k: int((self.kind == k).sum()) for k in KIND_NAMES}

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (a crash never leaves a half-written file under the final name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, suffix=".tmp") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                points_lps=self.points_lps,
                distance_mm=self.distance_mm,
                kind=self.kind,
                lumen_points_lps=self.lumen_points_lps,
                box_lps=self.box_lps,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SampleSet":
        """Read a file written by :meth:`save`; any damage raises :class:`SampleCacheError`."""
        path = Path(path)
        if not path.is_file():
            raise SampleCacheError(f"No sample file at {path}.")
        keys = ("points_lps", "distance_mm", "kind", "lumen_points_lps", "box_lps")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise SampleCacheError(f"Sample file {path} lacks {', '.join(missing)}.")
                arrays = {k: z[k] for k in keys}
        except SampleCacheError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise SampleCacheError(f"Sample file {path} is corrupt or truncated ({exc}).") from exc
        for k in ("points_lps", "distance_mm"):
            if not np.all(np.isfinite(arrays[k])):
                raise SampleCacheError(f"Sample file {path} holds non-finite {k}.")
        return cls(**arrays)


# ------------------------------------------------------------------------------------------- shape diameter
def _cone_directions(n_rays: int, half_angle: float) -> np.ndarray:
    """Unit directions (n_rays, 3) spread evenly (sunflower pattern) over a spherical cap around +z."""
    i = np.arange(n_rays, dtype=np.float64)
    cos_t = 1.0 - (1.0 - math.cos(half_angle)) * (i + 0.5) / n_rays
    sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)


def _orthonormal_frames(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (F, 3) completing each unit ``axis`` (F, 3) to an orthonormal frame."""
    helper = np.zeros_like(axis)
    helper[np.arange(len(axis)), np.argmin(np.abs(axis), axis=1)] = 1.0
    t1 = np.cross(axis, helper)
    t1 /= np.maximum(np.linalg.norm(t1, axis=1, keepdims=True), 1e-12)
    return t1, np.cross(axis, t1)


def _robust_mean(lengths: np.ndarray) -> np.ndarray:
    """Per row: mean of the values within 1.5 MAD of the median (NaN = ignored ray); NaN where none."""
    out = np.full(len(lengths), np.nan)
    valid = ~np.isnan(lengths)
    rows = valid.any(axis=1)
    if not rows.any():
        return out
    vals = lengths[rows]
    med = np.nanmedian(vals, axis=1, keepdims=True)
    mad = np.nanmedian(np.abs(vals - med), axis=1, keepdims=True)
    keep = np.abs(vals - med) <= 1.5 * mad + 1e-9
    keep &= ~np.isnan(vals)
    out[rows] = np.where(keep, vals, 0.0).sum(axis=1) / keep.sum(axis=1)
    return out


def shape_diameter(
    mesh_lps,
    *,
    cone_deg: float = 45.0,
    n_rays: int = 25,
    no_hit_cap_mm: float = 35.0,
    flip: bool = False,
    seed: int = 0,
    max_faces: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Shape diameter of each face (mm): how wide the volume is on one side of the surface.

    Rays leave each face centroid inside a cone of full opening ``cone_deg`` around the inward normal (the
    winding normal negated; ``flip=True`` measures the other side). A hit counts only if the face hit is seen
    from its own inside (its normal, flipped like ours, points along the ray); other hits make the ray
    ignored. A ray that hits nothing within ``no_hit_cap_mm`` counts as exactly the cap (an open surface has
    no far wall; the NUDF authors' tool returned 0 there, which would mean "thin"). The diameter is the mean
    of the lengths within 1.5 MAD of their median (Shapira's robust average); a face with no usable ray gets
    the cap. With a 45° cone a sphere of diameter D gives ≈0.96 D.

    ``max_faces`` bounds the cost on large meshes: the rays are cast from that many faces (drawn with
    ``seed``) and every other face takes the value of its nearest computed face with a compatible normal.
    """
    import vtk
    from scipy.spatial import cKDTree

    from .meshtools import cell_locator, face_normals

    if n_rays < 1 or not (0.0 < cone_deg < 180.0) or no_hit_cap_mm <= 0:
        raise InputError("shape_diameter needs n_rays >= 1, 0 < cone_deg < 180 and no_hit_cap_mm > 0.")
    pts = polydata_points(mesh_lps)
    tris = polydata_triangles(mesh_lps)
    n_faces = len(tris)
    if n_faces == 0:
        raise InputError("shape_diameter: the mesh has no triangles.")
    normals = face_normals(pts, tris)
    side_normals = -normals if flip else normals  # "outward" on the measured side; rays go against it
    centroids = pts[tris].mean(axis=1)
    rng = np.random.default_rng(seed)
    if max_faces is not None and n_faces > max_faces:
        chosen = np.sort(rng.choice(n_faces, size=int(max_faces), replace=False))
    else:
        chosen = np.arange(n_faces)

    axis = -side_normals[chosen]
    degenerate = np.linalg.norm(axis, axis=1) < 0.5
    axis[degenerate] = (0.0, 0.0, 1.0)
    t1, t2 = _orthonormal_frames(axis)
    local = _cone_directions(n_rays, math.radians(cone_deg) / 2.0)
    spin = rng.uniform(0.0, 2.0 * math.pi, size=len(chosen))  # per-face rotation avoids aliasing patterns
    c, s = np.cos(spin)[:, None], np.sin(spin)[:, None]
    lx = c * local[None, :, 0] - s * local[None, :, 1]
    ly = s * local[None, :, 0] + c * local[None, :, 1]
    dirs = lx[..., None] * t1[:, None, :] + ly[..., None] * t2[:, None, :] + local[None, :, 2, None] * axis[:, None, :]

    diag = float(np.linalg.norm(pts.max(axis=0) - pts.min(axis=0)))
    eps = max(1e-6, 1e-6 * diag)
    starts = centroids[chosen][:, None, :] + eps * dirs
    ends = centroids[chosen][:, None, :] + no_hit_cap_mm * dirs
    loc = cell_locator(mesh_lps)
    lengths = np.full((len(chosen), n_rays), np.nan)
    t = vtk.reference(0.0)
    x = [0.0, 0.0, 0.0]
    pc = [0.0, 0.0, 0.0]
    sub = vtk.reference(0)
    cid = vtk.reference(0)
    cell = vtk.vtkGenericCell()
    face_iter = range(len(chosen))
    if progress:
        from tqdm import tqdm

        face_iter = tqdm(face_iter, desc="shape diameter", unit="face", leave=False)
    for a in face_iter:
        if degenerate[a]:
            continue
        origin = centroids[chosen[a]]
        own = chosen[a]
        for r in range(n_rays):
            hit = loc.IntersectWithLine(starts[a, r], ends[a, r], 0.0, t, x, pc, sub, cid, cell)
            if not hit:
                lengths[a, r] = no_hit_cap_mm
                continue
            h = cid.get()
            if h == own:
                continue
            if float(np.dot(side_normals[h], dirs[a, r])) > 0.0:
                lengths[a, r] = math.dist(origin, x)
    sd_chosen = _robust_mean(lengths)
    sd_chosen = np.where(np.isnan(sd_chosen), no_hit_cap_mm, sd_chosen)
    if len(chosen) == n_faces:
        return sd_chosen
    out = np.empty(n_faces)
    out[chosen] = sd_chosen
    rest = np.setdiff1d(np.arange(n_faces), chosen)
    k = min(8, len(chosen))
    _, nn = cKDTree(centroids[chosen]).query(centroids[rest], k=k)
    nn = nn.reshape(len(rest), k)
    agree = np.einsum("rkc,rc->rk", normals[chosen][nn], normals[rest]) > 0.0
    first = np.where(agree.any(axis=1), np.argmax(agree, axis=1), 0)
    out[rest] = sd_chosen[nn[np.arange(len(rest)), first]]
    return out


# ------------------------------------------------------------------------------------------------- helpers
def sigma_from_sd(sd_mm: np.ndarray, sigma_range_mm: tuple[float, float] = (0.1, 3.0)) -> np.ndarray:
    """σ of the off-surface displacement: SD/4 (the paper's rule), clamped to a sane range in mm."""
    lo, hi = sigma_range_mm
    return np.clip(np.asarray(sd_mm, dtype=np.float64) / 4.0, lo, hi)


def false_surface_rate(pred_mm: np.ndarray, true_mm: np.ndarray, near_mm: float = 1.0, far_mm: float = 3.0) -> float:
    """Of the points the model puts on a surface (pred < ``near_mm``), the fraction truly far (> ``far_mm``).

    0 when no point is predicted near a surface. This is the failure mode hard negatives target.
    """
    pred = np.asarray(pred_mm, dtype=np.float64).reshape(-1)
    true = np.asarray(true_mm, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise InputError(f"false_surface_rate: {pred.shape[0]} predictions for {true.shape[0]} true distances.")
    near = pred < near_mm
    n = int(near.sum())
    return float((true[near] > far_mm).sum() / n) if n else 0.0


def _split_counts(n: int, mix: Mapping[int, float]) -> dict[int, int]:
    """Integer counts per kind summing to ``n`` (largest remainder), kinds in KIND_NAMES order."""
    w = np.array([float(mix.get(k, 0.0)) for k in KIND_NAMES])
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return {k: int(c) for k, c in zip(KIND_NAMES, counts)}


def _check_mix(mix: Mapping[int, float] | None) -> dict[int, float]:
    mix = dict(DEFAULT_MIX if mix is None else mix)
    bad = [k for k in mix if k not in KIND_NAMES]
    if bad:
        raise InputError(f"Unknown sample kinds {bad}; valid kinds are {sorted(KIND_NAMES)}.")
    vals = np.array(list(mix.values()), dtype=np.float64)
    if np.any(~np.isfinite(vals)) or np.any(vals < 0) or vals.sum() <= 0:
        raise InputError(f"The sample mix must hold non-negative shares with a positive sum; got {mix}.")
    return {k: float(mix.get(k, 0.0)) / float(vals.sum()) for k in KIND_NAMES}


def lumen_side_sign(mesh_lps, seed_lps: np.ndarray, k: int = 32) -> int:
    """+1 if the winding normals point out of the lumen (the seed is on their negative side), else -1.

    Votes over the ``k`` faces nearest the seed, weighted by inverse distance, so one odd face near a fold
    does not decide.
    """
    from scipy.spatial import cKDTree

    from .meshtools import face_normals

    pts = polydata_points(mesh_lps)
    tris = polydata_triangles(mesh_lps)
    cent = pts[tris].mean(axis=1)
    k = min(k, len(tris))
    d, idx = cKDTree(cent).query(np.asarray(seed_lps, float).reshape(3), k=k)
    d, idx = np.atleast_1d(d), np.atleast_1d(idx)
    normals = face_normals(pts, tris)[idx]
    side = np.einsum("kc,kc->k", np.asarray(seed_lps, float).reshape(1, 3) - cent[idx], normals)
    vote = float((np.sign(side) / np.maximum(d, 1e-6)).sum())
    return 1 if vote <= 0 else -1


def sample_box(mesh_lps, box_mm: float, margin_mm: float = 10.0) -> np.ndarray:
    """Axis-aligned LPS box (2, 3) of side ``box_mm`` centred on the mesh, grown to hold it with a margin."""
    pts = polydata_points(mesh_lps)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = 0.5 * (lo + hi)
    half = np.maximum(box_mm / 2.0, 0.5 * (hi - lo) + margin_mm)
    return np.stack([centre - half, centre + half])


def edge_voxels(
    volume: Volume,
    box_lps: np.ndarray,
    *,
    sigma_mm: float = 1.0,
    quantile: float = 0.85,
    min_gradient: float = 30.0,
    ridge_fraction: float = 0.8,
    target_mm: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Voxels on strong intensity edges inside a box: (continuous ijk indices, gradient magnitudes (HU/mm),
    voxel step in index units (3,), threshold used).

    The CT is Gaussian-smoothed (``sigma_mm``) so noise does not count as an edge, then strided to about
    ``target_mm`` voxels (the smoothing already removed finer detail) and differentiated in mm. An edge voxel
    has a gradient magnitude above both the box's ``quantile`` and ``min_gradient`` HU/mm.
    """
    from scipy import ndimage

    box_lps = np.asarray(box_lps, dtype=np.float64).reshape(2, 3)
    corners = np.array([[box_lps[a, 0], box_lps[b, 1], box_lps[c, 2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    ijk = volume.lps_to_index(corners)
    size = np.array(volume.size_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 2, 0, size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 3, 0, size)
    empty = (np.zeros((0, 3)), np.zeros(0), np.ones(3), float("inf"))
    if np.any(hi - lo < 3):
        return empty
    sub = volume.array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32)
    spacing_kji = volume.spacing[::-1]
    sub = ndimage.gaussian_filter(sub, sigma=sigma_mm / spacing_kji, mode="nearest")
    stride_kji = np.maximum(1, np.round(target_mm / spacing_kji).astype(int))
    sub = sub[:: stride_kji[0], :: stride_kji[1], :: stride_kji[2]]
    if min(sub.shape) < 2:
        return empty
    grads = np.gradient(sub, *(spacing_kji * stride_kji))
    gmag = np.sqrt(sum(g * g for g in grads))
    ridge = gmag >= ridge_fraction * ndimage.maximum_filter(gmag, size=3, mode="nearest")
    # Box membership per voxel without materialising every voxel's LPS point: LPS is affine in (i, j, k).
    step_lps = volume.direction_lps @ np.diag(volume.spacing * stride_kji[::-1])  # columns: one strided step
    base = volume.index_to_lps(lo.astype(np.float64))
    inside = np.ones(sub.shape, dtype=bool)
    for axis in range(3):  # LPS axis
        ci = base[axis] + step_lps[axis, 0] * np.arange(sub.shape[2])
        cj = step_lps[axis, 1] * np.arange(sub.shape[1])
        ck = step_lps[axis, 2] * np.arange(sub.shape[0])
        coord = ck[:, None, None] + cj[None, :, None] + ci[None, None, :]
        inside &= (coord >= box_lps[0, axis]) & (coord <= box_lps[1, axis])
    if not inside.any():
        return empty
    thr = max(float(np.quantile(gmag[inside], quantile)), float(min_gradient))
    sel = np.argwhere(inside & ridge & (gmag >= thr))  # (n, 3) strided (k, j, i)
    idx = sel[:, ::-1] * stride_kji[::-1] + lo
    return idx.astype(np.float64), gmag[tuple(sel.T)], stride_kji[::-1].astype(np.float64), thr


def _jitter_voxels(volume: Volume, idx: np.ndarray, step: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """LPS points drawn uniformly inside the (strided) voxels whose centres are ``idx``."""
    return volume.index_to_lps(idx + (rng.random(idx.shape) - 0.5) * step)


def ostium_radius(mesh_lps, ostium_center_lps: np.ndarray, ostium_normal_lps: np.ndarray) -> float:
    """Radius of the ostium (mm): the largest in-plane distance of the boundary loop nearest the ostium centre.

    Falls back to the in-plane extent of the mesh points within 2 mm of the ostium plane, then to 12 mm.
    """
    from .meshtools import boundary_loops

    pts = polydata_points(mesh_lps)
    c = np.asarray(ostium_center_lps, float)
    n = np.asarray(ostium_normal_lps, float)
    loops = boundary_loops(mesh_lps)
    cand = None
    if loops:
        loop = min(loops, key=lambda lp: float(np.linalg.norm(pts[lp].mean(axis=0) - c)))
        cand = pts[loop]
    else:
        near = np.abs((pts - c) @ n) < 2.0
        cand = pts[near] if near.any() else None
    if cand is None or len(cand) == 0:
        return 12.0
    rel = cand - c
    rel -= np.outer(rel @ n, n)
    return float(max(np.linalg.norm(rel, axis=1).max(), 1.0))


def sample_case(
    volume: Volume,
    mesh_lps,
    *,
    seed_lps: np.ndarray,
    ostium_center_lps: np.ndarray,
    ostium_normal_lps: np.ndarray,
    n_points: int = 200_000,
    seed: int = 0,
    box_mm: float = 90.0,
    mix: dict[int, float] | None = None,
    n_lumen: int = 2000,
    thin_mm: float = 3.5,
    thin_weight: float = 10.0,
    sigma_range_mm: tuple[float, float] = (0.1, 3.0),
    hard_min_mm: float = 2.0,
    beyond_depth_mm: float = 12.0,
    sd_max_faces: int | None = 6000,
    progress: bool = False,
) -> SampleSet:
    """Training queries for one case (see the module docstring for the five kinds).

    ``mesh_lps`` is the open GT surface; its side is oriented so that ``seed_lps`` (a point inside the LAA
    lumen) lies on the lumen side, whatever the file's winding. The ostium plane (``ostium_center_lps``,
    unit ``ostium_normal_lps`` from the LA into the LAA) bounds the lumen points and places kind 4. Kind 3
    needs edges in the CT; if the box holds too few edge voxels far enough from the GT, the shortfall is
    filled with uniform points (kind 2) and logged, so the total is always ``n_points``.
    """
    from .meshtools import face_normals, sample_on_faces, triangle_areas, unsigned_distance

    if int(n_points) < 1:
        raise InputError(f"n_points must be >= 1; got {n_points}.")
    n_points = int(n_points)
    shares = _check_mix(mix)
    pts = polydata_points(mesh_lps)
    tris = polydata_triangles(mesh_lps)
    if len(tris) == 0:
        raise InputError("sample_case: the GT mesh has no triangles.")
    seed_lps = np.asarray(seed_lps, dtype=np.float64).reshape(3)
    o_c = np.asarray(ostium_center_lps, dtype=np.float64).reshape(3)
    o_n = np.asarray(ostium_normal_lps, dtype=np.float64).reshape(3)
    if np.linalg.norm(o_n) < 1e-9 or not np.all(np.isfinite(np.r_[seed_lps, o_c, o_n])):
        raise InputError("sample_case needs a finite seed, ostium centre and a non-zero ostium normal.")
    o_n = o_n / np.linalg.norm(o_n)
    rng = np.random.default_rng(seed)

    # -- orientation and per-side shape diameter
    sign = lumen_side_sign(mesh_lps, seed_lps)
    outward = sign * face_normals(pts, tris)
    sd_kw = dict(seed=seed, max_faces=sd_max_faces, progress=progress)
    sd_in = shape_diameter(mesh_lps, flip=sign < 0, **sd_kw)
    sd_out = shape_diameter(mesh_lps, flip=sign > 0, **sd_kw)
    areas = triangle_areas(pts, tris)
    counts = _split_counts(n_points, shares)
    box = sample_box(mesh_lps, box_mm)

    # -- near-surface samples on each side (thin faces oversampled)
    near = {}
    for kind, sd, direction in ((KIND_LUMEN, sd_in, -1.0), (KIND_OUTER, sd_out, 1.0)):
        w = areas * np.where(sd < thin_mm, thin_weight, 1.0)
        p, fid = sample_on_faces(pts, tris, w, counts[kind], rng)
        offset = np.abs(rng.normal(size=len(fid))) * sigma_from_sd(sd[fid], sigma_range_mm)
        near[kind] = p + direction * offset[:, None] * outward[fid]

    # -- hard negatives on other edges (need their exact distances to filter)
    chunks_p: list[np.ndarray] = [near[KIND_LUMEN], near[KIND_OUTER]]
    chunks_k: list[np.ndarray] = [np.full(counts[KIND_LUMEN], KIND_LUMEN), np.full(counts[KIND_OUTER], KIND_OUTER)]
    chunks_d: list[np.ndarray | None] = [None, None]
    e_idx, _, e_step, _ = edge_voxels(volume, box)
    n_edge = counts[KIND_EDGE]
    edge_p, edge_d = np.zeros((0, 3)), np.zeros(0)
    if n_edge and len(e_idx):
        got_p, got_d, have, tried = [], [], 0, 0
        while have < n_edge and tried < 20 * n_edge:  # draw in rounds: exact distances of far points are costly
            m = max(256, int(1.25 * (n_edge - have)) + 16)
            cand = _jitter_voxels(volume, e_idx[rng.integers(0, len(e_idx), size=m)], e_step, rng)
            dcand = unsigned_distance(mesh_lps, cand)
            ok = dcand > hard_min_mm
            got_p.append(cand[ok])
            got_d.append(dcand[ok])
            have += int(ok.sum())
            tried += m
        edge_p, edge_d = np.concatenate(got_p)[:n_edge], np.concatenate(got_d)[:n_edge]
    shortfall = n_edge - len(edge_p)
    if shortfall:
        logger.warning(
            "Only %d of %d edge hard negatives found (> %.1f mm from the GT); %d uniform points instead.",
            len(edge_p), n_edge, hard_min_mm, shortfall,
        )
    chunks_p.append(edge_p)
    chunks_k.append(np.full(len(edge_p), KIND_EDGE))
    chunks_d.append(edge_d)

    # -- hard negatives beyond the ostium: LA-side edges near the ostium, and the LA volume next to it
    n_beyond = counts[KIND_BEYOND_OSTIUM]
    radius = ostium_radius(mesh_lps, o_c, o_n) + 10.0
    from_edges = np.zeros((0, 3))
    if n_beyond and len(e_idx):
        e_pts = volume.index_to_lps(e_idx)
        h = (e_pts - o_c) @ o_n
        lateral = np.linalg.norm((e_pts - o_c) - np.outer(h, o_n), axis=1)
        sel = np.flatnonzero((h < 0) & (h > -beyond_depth_mm) & (lateral < radius))
        if len(sel):
            take = sel[rng.integers(0, len(sel), size=n_beyond // 2)]
            from_edges = _jitter_voxels(volume, e_idx[take], e_step, rng)
            h2 = (from_edges - o_c) @ o_n
            from_edges -= np.maximum(h2, 0.0)[:, None] * o_n  # jitter must not cross back over the plane
            from_edges -= 1e-3 * o_n
    n_vol = n_beyond - len(from_edges)
    t1, t2 = _orthonormal_frames(o_n[None, :])
    r = radius * np.sqrt(rng.random(n_vol))
    phi = rng.uniform(0.0, 2.0 * math.pi, n_vol)
    depth = np.minimum(0.25 + np.abs(rng.normal(0.0, beyond_depth_mm / 2.0, n_vol)), beyond_depth_mm)
    in_volume = o_c + (r * np.cos(phi))[:, None] * t1 + (r * np.sin(phi))[:, None] * t2 - depth[:, None] * o_n
    beyond = np.concatenate([from_edges, in_volume])
    chunks_p.append(beyond)
    chunks_k.append(np.full(n_beyond, KIND_BEYOND_OSTIUM))
    chunks_d.append(None)

    # -- uniform points in the box (plus any edge shortfall)
    n_uni = counts[KIND_UNIFORM] + shortfall
    chunks_p.append(box[0] + rng.random((n_uni, 3)) * (box[1] - box[0]))
    chunks_k.append(np.full(n_uni, KIND_UNIFORM))
    chunks_d.append(None)

    # -- exact distances for everything not yet measured
    dists = []
    for p, d in zip(chunks_p, chunks_d):
        dists.append(d if d is not None else unsigned_distance(mesh_lps, p))
    points = np.concatenate(chunks_p)
    distance = np.concatenate(dists)
    kind = np.concatenate(chunks_k).astype(np.int8)
    order = rng.permutation(len(points))

    # -- lumen points: surface points moved halfway across the lumen, kept if really inside on the LAA side
    lumen = _lumen_points(mesh_lps, pts, tris, areas, outward, sign, sd_in, o_c, o_n, n_lumen, rng, seed_lps)
    return SampleSet(points[order], distance[order], kind[order], lumen, box)


def _lumen_points(
    mesh_lps, pts, tris, areas, outward, sign, sd_in, o_c, o_n, n_lumen, rng, seed_lps
) -> np.ndarray:
    """Points inside the LAA lumen: surface samples moved inward by SD_in/2 (at most 15 mm), kept when on the
    LAA side of the ostium plane, on the lumen side of the nearest surface, and at least a third of that move
    away from the wall (a move that crossed a wall lands close to it or on the wrong side). Never empty:
    the seed stands in when nothing qualifies, since training draws crop centres from these."""
    from .meshtools import sample_on_faces, signed_distance

    if n_lumen <= 0:
        return np.zeros((0, 3))
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(6):
        p, fid = sample_on_faces(pts, tris, areas, max(64, (3 * (n_lumen - total)) // 2), rng)
        move = np.minimum(sd_in[fid] / 2.0, 15.0)
        q = p - move[:, None] * outward[fid]
        ok = (q - o_c) @ o_n > 0.0
        q, move = q[ok], move[ok]
        signed = sign * signed_distance(mesh_lps, q)  # negative on the lumen side
        good = q[signed <= -move / 3.0]
        kept.append(good)
        total += len(good)
        if total >= n_lumen:
            break
    out = np.concatenate(kept)[:n_lumen]
    if len(out) < n_lumen:
        logger.warning("Only %d of %d lumen points found%s.", len(out), n_lumen, "" if len(out) else "; using the seed")
    return out if len(out) else np.asarray(seed_lps, dtype=np.float64).reshape(1, 3)


# ---------------------------------------------------------------------------------------------------- cache
def _mesh_fingerprint(mesh_lps) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(polydata_points(mesh_lps), dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(polydata_triangles(mesh_lps), dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_key(params: Mapping[str, Any]) -> str:
    """Short hash of the sampling parameters, the sampling algorithm version and the NUDFCore version."""
    payload = dict(params, sampling_version=SAMPLING_VERSION, nudfcore_version=__version__)
    text = json.dumps(payload, sort_keys=True, default=lambda v: np.asarray(v).tolist())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_or_sample(case, *, n_points: int = 200_000, seed: int = 0, cache: bool = True, **options: Any) -> SampleSet:
    """The case's sample set, from ``case.case_dir/samples_<hash>.npz`` when present and sound.

    The hash covers the parameters (including ``options`` passed on to :func:`sample_case`), the GT mesh
    content, the CT file's content (the hard negatives lie on its edges), the seed/ostium used, and the code
    versions, so a changed input never reuses a stale file.
    A corrupt cache is regenerated (and overwritten).
    """
    mesh = case.load_mesh()
    seed_lps = np.asarray(case.seed_lps, dtype=np.float64)
    o_c = np.asarray(case.ostium_center_lps, dtype=np.float64)
    o_n = np.asarray(case.ostium_normal_lps, dtype=np.float64)
    params = dict(
        n_points=int(n_points), seed=int(seed), mesh=_mesh_fingerprint(mesh), ct=content_sha256_prefix(case.ct_path),
        seed_lps=seed_lps, ostium_center_lps=o_c, ostium_normal_lps=o_n,
        options={k: options[k] for k in sorted(options) if k != "progress"},
    )
    path = Path(case.case_dir) / f"samples_{cache_key(params)}.npz"
    if cache and path.exists():
        try:
            return SampleSet.load(path)
        except SampleCacheError as exc:
            logger.warning("Regenerating samples: %s", exc)
    samples = sample_case(
        case.load_volume(), mesh, seed_lps=seed_lps, ostium_center_lps=o_c, ostium_normal_lps=o_n,
        n_points=n_points, seed=seed, **options,
    )
    if cache:
        samples.save(path)
    return samples
