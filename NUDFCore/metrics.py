"""Surface-to-surface accuracy of a predicted mesh against a ground-truth mesh.

Both meshes must be in the same frame (LPS mm in the engine). Every figure is computed from dense
**area-weighted** random samples on each surface (seeded, so results are reproducible) and **exact**
point-to-triangle distances to the other surface — never vertex-to-vertex or voxel distances, so a fine
and a coarse tessellation of the same surface score the same.

Definitions (``d_pg``: distances of the samples on the prediction to the GT surface, "accuracy";
``d_gp``: GT samples to the prediction, "completeness"; both sets have the same number of samples):

- ``msd_mm``: symmetric mean surface distance, ``(mean(d_pg) + mean(d_gp)) / 2``.
- ``rms_mm``: ``sqrt((mean(d_pg²) + mean(d_gp²)) / 2)``.
- ``hd95_mm``: symmetric 95th percentile Hausdorff distance, ``max(P95(d_pg), P95(d_gp))`` (the larger of
  the two directed 95th percentiles; percentiles by linear interpolation over the samples).
- ``hausdorff_mm``: ``max(max d_pg, max d_gp)`` over the samples *and* the vertices of each mesh.
- ``chamfer_mm``: Chamfer-L1 as the **sum** of the two directed means, ``mean(d_pg) + mean(d_gp)``
  (= 2 × MSD); ``chamfer_l2_mm2``: ``mean(d_pg²) + mean(d_gp²)``.
- ``normal_consistency``: mean ``|cos|`` between each sample's face normal and the normal of the closest
  face on the other mesh, averaged over both directions (1 = parallel everywhere; orientation-free, since
  open surfaces have no agreed inside).
- ``boundary_mean_mm`` / ``boundary_max_mm``: symmetric mean / max distance between the longest boundary
  loop (the ostium rim) of each mesh, sampled densely along its edges, to the other loop's polyline
  (exact point-to-segment). NaN when either mesh has no boundary.
- ``false_area_fraction`` / ``false_area_mm2``: the share / amount of the predicted area farther than
  ``false_area_threshold_mm`` (3 mm) from the GT surface — false sheets that the mean hides.
- Paper-style figures (NUDF, ISBI 2022): ``accuracy_p90_mm`` (90th percentile of ``d_pg``) and
  ``completeness_within_2mm`` (share of the GT area within 2 mm of the prediction, a fraction 0–1).
- Area coverage in **percent** (0–100) at the radii ``COVERAGE_RADII_MM`` (2 and 3 mm): ``precision_<d>mm``,
  the share of the predicted area within d mm of the GT (is what was predicted on the surface?), and
  ``completeness_<d>mm``, the share of the GT area within d mm of the prediction (was all of it found?).
  A prediction that is right where it exists but misses half of the LAA scores ~100 % / ~50 %, which the
  mean distance hides.
- ``signed_offset_mm``: the median signed distance of the predicted samples within 3 mm of the GT,
  negative where they lie inside the GT surface closed over its boundary loops (for an LAA: inside the
  cavity). A mean distance cannot tell a surface that runs 1 mm inside the wall everywhere from one that is
  noisy about the wall; this can (0 = no systematic offset). NaN when no predicted sample is that close.

With ``spacing_mm`` (a voxel spacing, scalar) the main distances are also given in voxel units (``*_vox``).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import vtk

from .errors import InputError, OutputExistsError
from .io import make_polydata, polydata_points, polydata_triangles
from .meshtools import (
    boundary_loops,
    capped,
    cell_locator,
    closest_points,
    face_normals,
    inside_closed,
    loop_length,
    sample_surface,
    triangle_areas,
)

DEFAULT_SAMPLES = 50_000
FALSE_AREA_THRESHOLD_MM = 3.0
COMPLETENESS_RADIUS_MM = 2.0
#: radii (mm) of the precision_<d>mm / completeness_<d>mm fields (percent of area)
COVERAGE_RADII_MM: tuple[float, ...] = (2.0, 3.0)


@dataclass
class SurfaceMetrics:
    """Distances between a predicted and a ground-truth surface (mm unless the name says otherwise)."""

    case: str
    n_samples: int
    seed: int
    pred_area_mm2: float
    gt_area_mm2: float
    msd_mm: float
    rms_mm: float
    hd95_mm: float
    hausdorff_mm: float
    chamfer_mm: float
    chamfer_l2_mm2: float
    normal_consistency: float
    accuracy_mean_mm: float
    accuracy_p90_mm: float
    accuracy_p95_mm: float
    accuracy_max_mm: float
    completeness_mean_mm: float
    completeness_p95_mm: float
    completeness_max_mm: float
    completeness_within_2mm: float
    precision_2mm: float
    precision_3mm: float
    completeness_2mm: float
    completeness_3mm: float
    boundary_mean_mm: float
    boundary_max_mm: float
    pred_boundary_loops: int
    gt_boundary_loops: int
    false_area_threshold_mm: float
    false_area_fraction: float
    false_area_mm2: float
    signed_offset_mm: float
    spacing_mm: float | None = None
    msd_vox: float | None = None
    rms_vox: float | None = None
    hd95_vox: float | None = None
    hausdorff_vox: float | None = None
    chamfer_vox: float | None = None
    boundary_mean_vox: float | None = None

    def to_dict(self) -> dict:
        """Plain dict in the stable column order (NaN kept as float NaN)."""
        return asdict(self)

    def to_json(self, path: str | os.PathLike | None = None, overwrite: bool = False) -> str:
        """JSON text (NaN written as ``null``); also written to ``path`` when given."""
        text = json.dumps({k: _json_value(v) for k, v in self.to_dict().items()}, indent=2)
        if path is not None:
            p = _check_out(path, overwrite)
            p.write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "SurfaceMetrics":
        """Inverse of :meth:`to_dict` (also accepts the strings of a CSV row and ``None`` for NaN)."""
        kwargs = {}
        for f in fields(cls):
            if f.name not in data and f.name in _LATER_FIELDS:
                kwargs[f.name] = float("nan")
                continue
            if f.name not in data:
                raise InputError(f"Metrics record lacks the field {f.name!r}.")
            kwargs[f.name] = _parse_field(f.name, data[f.name])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "SurfaceMetrics":
        return cls.from_dict(json.loads(Path(path).read_text()))


def metric_columns() -> list[str]:
    """CSV column order (stable: the dataclass field order)."""
    return [f.name for f in fields(SurfaceMetrics)]


_INT_FIELDS = {"n_samples", "seed", "pred_boundary_loops", "gt_boundary_loops"}
_OPTIONAL_FIELDS = {"spacing_mm", "msd_vox", "rms_vox", "hd95_vox", "hausdorff_vox", "chamfer_vox",
                    "boundary_mean_vox"}
# Fields added after the first release: records written before them read back with NaN.
_LATER_FIELDS = {f"{kind}_{d:g}mm" for kind in ("precision", "completeness") for d in COVERAGE_RADII_MM}
_LATER_FIELDS.add("signed_offset_mm")


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _parse_field(name: str, value):
    if name == "case":
        return "" if value is None else str(value)
    if value is None or value == "":
        return None if name in _OPTIONAL_FIELDS else (0 if name in _INT_FIELDS else float("nan"))
    if name in _INT_FIELDS:
        return int(value)
    v = float(value)
    return v


def _check_out(path: str | os.PathLike, overwrite: bool) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; pass force/overwrite to replace it.")
    if not p.parent.exists():
        raise InputError(f"The output folder {p.parent} does not exist.")
    return p


def write_csv(
    rows: Iterable[SurfaceMetrics], path: str | os.PathLike, overwrite: bool = False, append: bool = False
) -> Path:
    """Write one row per case with the columns of :func:`metric_columns` (NaN/None as empty cells).

    ``append`` adds rows to an existing file written by this function (its header must match), so a
    benchmark can grow one table case by case.
    """
    p = Path(path)
    cols = metric_columns()
    exists = p.exists()
    if append and exists:
        with open(p, newline="") as f:
            header = next(csv.reader(f), None)
        if header != cols:
            raise InputError(f"Cannot append to {p}: its columns differ from this version's metrics.")
        mode = "a"
    else:
        _check_out(p, overwrite)
        mode = "w"
    with open(p, mode, newline="") as f:
        w = csv.writer(f)
        if mode == "w":
            w.writerow(cols)
        for r in rows:
            d = r.to_dict()
            w.writerow(["" if _json_value(d[c]) is None else d[c] for c in cols])
    return p


def read_csv(path: str | os.PathLike) -> list[SurfaceMetrics]:
    """Read a table written by :func:`write_csv`."""
    with open(path, newline="") as f:
        return [SurfaceMetrics.from_dict(row) for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------- core
def _clean_triangles(mesh: vtk.vtkPolyData, name: str) -> tuple[vtk.vtkPolyData, np.ndarray, np.ndarray]:
    """A triangles-only copy (so cell ids are triangle indices), its points and triangles; typed errors."""
    if mesh is None or mesh.GetNumberOfPoints() == 0:
        raise InputError(f"The {name} mesh is empty (no points); nothing to evaluate.")
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    if len(tris) == 0:
        raise InputError(f"The {name} mesh has no triangles (points or lines only); a surface is needed.")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"The {name} mesh has non-finite point coordinates.")
    if triangle_areas(pts, tris).sum() <= 0:
        raise InputError(f"The {name} mesh has zero area (all triangles degenerate).")
    return make_polydata(pts, tris), pts, tris


def _sample_loop(points: np.ndarray, loop: np.ndarray, step_mm: float) -> np.ndarray:
    """Points along a closed polyline, at most ``step_mm`` apart, including every vertex."""
    p = points[loop]
    q = np.roll(p, -1, axis=0)
    out = [p]
    seg_len = np.linalg.norm(q - p, axis=1)
    k = np.maximum(np.ceil(seg_len / step_mm).astype(int), 1)
    for m in np.unique(k):
        if m <= 1:
            continue
        sel = k == m
        t = (np.arange(1, m) / m)[None, :, None]
        out.append((p[sel][:, None, :] * (1 - t) + q[sel][:, None, :] * t).reshape(-1, 3))
    return np.concatenate(out)


def _point_to_polyline(samples: np.ndarray, points: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """Exact distance from each sample to the closed polyline ``points[loop]`` (chunked numpy)."""
    a = points[loop]
    b = np.roll(a, -1, axis=0)
    ab = b - a
    ab2 = np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-30)
    out = np.empty(len(samples))
    chunk = max(1, 2_000_000 // max(len(a), 1))
    for s in range(0, len(samples), chunk):
        x = samples[s : s + chunk, None, :]
        t = np.clip(np.einsum("nsk,sk->ns", x - a[None], ab) / ab2[None], 0.0, 1.0)
        proj = a[None] + t[..., None] * ab[None]
        out[s : s + chunk] = np.sqrt(((x - proj) ** 2).sum(-1).min(axis=1))
    return out


def boundary_distance(
    pred_lps: vtk.vtkPolyData, gt_lps: vtk.vtkPolyData, step_mm: float | None = None
) -> tuple[float, float, int, int]:
    """Symmetric (mean, max) distance between the longest boundary loops, and both meshes' loop counts.

    The longest loop (by perimeter) stands for the ostium rim. Each loop is sampled every ``step_mm``
    (default: a quarter of the shorter median boundary edge, at most 0.1 mm) and measured against the other
    loop's polyline exactly. (NaN, NaN) when either mesh has no boundary.
    """
    pp, gp = polydata_points(pred_lps), polydata_points(gt_lps)
    lp, lg = boundary_loops(pred_lps), boundary_loops(gt_lps)
    if not lp or not lg:
        return float("nan"), float("nan"), len(lp), len(lg)
    loop_p = max(lp, key=lambda lo: loop_length(pp, lo))
    loop_g = max(lg, key=lambda lo: loop_length(gp, lo))
    if step_mm is None:
        med = [
            np.median(np.linalg.norm(np.roll(x[lo], -1, 0) - x[lo], axis=1))
            for x, lo in ((pp, loop_p), (gp, loop_g))
        ]
        step_mm = min(0.1, 0.25 * float(min(med)))
    step_mm = max(step_mm, 1e-6)
    sp = _sample_loop(pp, loop_p, step_mm)
    sg = _sample_loop(gp, loop_g, step_mm)
    d_pg = _point_to_polyline(sp, gp, loop_g)
    d_gp = _point_to_polyline(sg, pp, loop_p)
    mean = 0.5 * (float(d_pg.mean()) + float(d_gp.mean()))
    return mean, float(max(d_pg.max(), d_gp.max())), len(lp), len(lg)


def surface_metrics(
    pred_lps: vtk.vtkPolyData,
    gt_lps: vtk.vtkPolyData,
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    spacing_mm: float | Sequence[float] | None = None,
    false_area_threshold_mm: float = FALSE_AREA_THRESHOLD_MM,
    case: str = "",
) -> SurfaceMetrics:
    """All surface figures of ``pred_lps`` against ``gt_lps`` (same frame, mm); see the module docstring.

    ``n_samples`` area-weighted samples are drawn on each mesh with ``seed`` (GT with ``seed + 1``).
    ``spacing_mm`` adds voxel-unit figures; a 3-vector is reduced to its mean (say so when reporting).
    Raises :class:`InputError` for an empty, triangle-less or zero-area mesh.
    """
    if n_samples < 100:
        raise InputError(f"n_samples must be at least 100; got {n_samples}.")
    if false_area_threshold_mm <= 0:
        raise InputError("false_area_threshold_mm must be positive.")
    pred, p_pts, p_tris = _clean_triangles(pred_lps, "predicted")
    gt, g_pts, g_tris = _clean_triangles(gt_lps, "ground-truth")

    sp, np_, _ = sample_surface(pred, n_samples, seed)
    sg, ng, _ = sample_surface(gt, n_samples, seed + 1)
    loc_p, loc_g = cell_locator(pred), cell_locator(gt)
    d_pg, _, c_pg = closest_points(loc_g, sp)
    d_gp, _, c_gp = closest_points(loc_p, sg)
    # The maximum often sits at a vertex (a spike, a corner): include vertices for the max only.
    v_pg = closest_points(loc_g, p_pts)[0]
    v_gp = closest_points(loc_p, g_pts)[0]

    fn_g = face_normals(g_pts, g_tris)
    fn_p = face_normals(p_pts, p_tris)
    cos_pg = np.abs(np.einsum("ij,ij->i", np_, fn_g[c_pg]))
    cos_gp = np.abs(np.einsum("ij,ij->i", ng, fn_p[c_gp]))
    ok_pg = np.linalg.norm(fn_g[c_pg], axis=1) > 0
    ok_gp = np.linalg.norm(fn_p[c_gp], axis=1) > 0
    nc = 0.5 * (float(cos_pg[ok_pg].mean()) + float(cos_gp[ok_gp].mean()))

    pred_area = float(triangle_areas(p_pts, p_tris).sum())
    gt_area = float(triangle_areas(g_pts, g_tris).sum())
    b_mean, b_max, n_lp, n_lg = boundary_distance(pred, gt)
    false_frac = float((d_pg > false_area_threshold_mm).mean())

    m_pg, m_gp = float(d_pg.mean()), float(d_gp.mean())
    s_pg, s_gp = float((d_pg**2).mean()), float((d_gp**2).mean())
    acc_max = float(max(d_pg.max(), v_pg.max()))
    comp_max = float(max(d_gp.max(), v_gp.max()))
    out = SurfaceMetrics(
        case=case,
        n_samples=int(n_samples),
        seed=int(seed),
        pred_area_mm2=pred_area,
        gt_area_mm2=gt_area,
        msd_mm=0.5 * (m_pg + m_gp),
        rms_mm=math.sqrt(0.5 * (s_pg + s_gp)),
        hd95_mm=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        hausdorff_mm=max(acc_max, comp_max),
        chamfer_mm=m_pg + m_gp,
        chamfer_l2_mm2=s_pg + s_gp,
        normal_consistency=nc,
        accuracy_mean_mm=m_pg,
        accuracy_p90_mm=float(np.percentile(d_pg, 90)),
        accuracy_p95_mm=float(np.percentile(d_pg, 95)),
        accuracy_max_mm=acc_max,
        completeness_mean_mm=m_gp,
        completeness_p95_mm=float(np.percentile(d_gp, 95)),
        completeness_max_mm=comp_max,
        completeness_within_2mm=float((d_gp <= COMPLETENESS_RADIUS_MM).mean()),
        **coverage_percentages(d_pg, d_gp),
        boundary_mean_mm=b_mean,
        boundary_max_mm=b_max,
        pred_boundary_loops=n_lp,
        gt_boundary_loops=n_lg,
        false_area_threshold_mm=float(false_area_threshold_mm),
        false_area_fraction=false_frac,
        false_area_mm2=false_frac * pred_area,
        signed_offset_mm=signed_offset(gt, sp, d_pg, false_area_threshold_mm),
    )
    if spacing_mm is not None:
        s = float(np.mean(np.asarray(spacing_mm, dtype=np.float64)))
        if not s > 0 or not math.isfinite(s):
            raise InputError(f"spacing_mm must be positive; got {spacing_mm}.")
        out.spacing_mm = s
        out.msd_vox = out.msd_mm / s
        out.rms_vox = out.rms_mm / s
        out.hd95_vox = out.hd95_mm / s
        out.hausdorff_vox = out.hausdorff_mm / s
        out.chamfer_vox = out.chamfer_mm / s
        out.boundary_mean_vox = out.boundary_mean_mm / s
    return out


def signed_offset(gt: vtk.vtkPolyData, samples: np.ndarray, distances: np.ndarray, within_mm: float,
                  max_points: int = 5000) -> float:
    """Median signed distance of the ``samples`` (on the prediction) within ``within_mm`` of ``gt``.

    Negative inside ``gt`` closed over its boundary loops. At most ``max_points`` evenly chosen samples are
    tested (the median settles long before that).
    """
    idx = np.flatnonzero(distances <= within_mm)
    if len(idx) == 0:
        return float("nan")
    idx = idx[np.linspace(0, len(idx) - 1, min(len(idx), max_points)).astype(int)]
    inside = inside_closed(capped(gt), samples[idx])
    return float(np.median(np.where(inside, -distances[idx], distances[idx])))


def coverage_percentages(d_pg: np.ndarray, d_gp: np.ndarray) -> dict[str, float]:
    """``precision_<d>mm`` / ``completeness_<d>mm`` (percent) from area-weighted sample distances.

    ``d_pg``: distances of samples on the prediction to the GT; ``d_gp``: GT samples to the prediction.
    """
    out = {}
    for d in COVERAGE_RADII_MM:
        out[f"precision_{d:g}mm"] = 100.0 * float((d_pg <= d).mean())
        out[f"completeness_{d:g}mm"] = 100.0 * float((d_gp <= d).mean())
    return out


# (label, field, unit) rows of the human-readable table, in print order.
SUMMARY_ROWS: list[tuple[str, str, str]] = [
    ("mean surface distance (symmetric)", "msd_mm", "mm"),
    ("RMS surface distance", "rms_mm", "mm"),
    ("HD95 (max of directed P95)", "hd95_mm", "mm"),
    ("Hausdorff (max)", "hausdorff_mm", "mm"),
    ("Chamfer-L1 (sum of directed means)", "chamfer_mm", "mm"),
    ("normal consistency (mean |cos|)", "normal_consistency", ""),
    ("accuracy pred->GT mean / P90", "accuracy_mean_mm", "mm"),
    ("completeness GT->pred mean", "completeness_mean_mm", "mm"),
    ("GT area within 2 mm of pred", "completeness_within_2mm", ""),
    ("precision: pred area within 2 / 3 mm of GT", "precision_2mm", "%"),
    ("completeness: GT area within 2 / 3 mm of pred", "completeness_2mm", "%"),
    ("ostium rim distance mean", "boundary_mean_mm", "mm"),
    ("ostium rim distance max", "boundary_max_mm", "mm"),
    ("false area fraction (> threshold from GT)", "false_area_fraction", ""),
    ("false area (> threshold from GT)", "false_area_mm2", "mm2"),
    ("signed offset (median; < 0: inside the GT)", "signed_offset_mm", "mm"),
]


def format_table(m: SurfaceMetrics) -> str:
    """A small aligned text table of the main figures (with voxel units when known)."""
    vox = {"msd_mm": m.msd_vox, "rms_mm": m.rms_vox, "hd95_mm": m.hd95_vox, "hausdorff_mm": m.hausdorff_vox,
           "chamfer_mm": m.chamfer_vox, "boundary_mean_mm": m.boundary_mean_vox}
    lines = []
    for label, name, unit in SUMMARY_ROWS:
        v = getattr(m, name)
        if name.startswith("false_area"):
            label = label.replace("threshold", f"{m.false_area_threshold_mm:g} mm")
        if name == "accuracy_mean_mm":
            text = f"{v:9.4f} / {m.accuracy_p90_mm:.4f} {unit}"
        elif unit == "%":
            other = getattr(m, name.replace("2mm", "3mm"))
            text = f"{v:9.2f} / {other:.2f} %"
        elif unit == "":
            text = f"{v:9.4f}"
        else:
            text = f"{v:9.4f} {unit}"
        if vox.get(name) is not None and math.isfinite(vox[name]):
            text += f"  ({vox[name]:.3f} vox)"
        lines.append(f"{label:<42} {text}")
    lines.append(
        f"{'areas pred / GT':<42} {m.pred_area_mm2:9.1f} / {m.gt_area_mm2:.1f} mm2"
        f" (ratio {m.pred_area_mm2 / m.gt_area_mm2:.3f});"
        f" boundary loops {m.pred_boundary_loops} / {m.gt_boundary_loops};"
        f" {m.n_samples} samples/mesh, seed {m.seed}"
    )
    return "\n".join(lines)
