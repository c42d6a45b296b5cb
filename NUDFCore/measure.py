"""LAA occlusion planning measurements from an open LAA surface (LPS mm): ostium, landing zones, depth, volume.

The open surface's longest boundary loop *is* the ostium (or a clinician's plane re-cuts the surface, see
``ostium_plane_lps``). Everything here is geometry on the mesh, so it works on our segmentations, on a mesh
file and on a ground-truth mesh alike. Definitions (every figure carries its unit in its name):

- **Ostium plane**: least-squares (SVD) plane of the boundary loop, integrated along its arc length so the
  vertex spacing does not bias it; ``normal_lps`` points into the LAA (towards the surface's area centroid).
  ``planarity_rms_mm`` / ``planarity_max_mm``: RMS / maximum distance of the loop from that plane.
- **Contour figures** (ostium, landing zones, profile sections), on the contour projected into its plane:
  ``perimeter_mm`` (the 3D loop for the ostium, the planar cut otherwise, smoothed over 3 mm so a segmented rim's
  voxel-scale zigzag does not count), ``area_mm2`` (the projected
  polygon, shoelace), ``max_diameter_mm`` / ``min_diameter_mm`` = the maximum / minimum **Feret (caliper)
  diameter** — the largest distance between two contour points and the smallest width between two parallel
  lines enclosing the contour (rotating calipers on the convex hull; 2a and 2b for an ellipse);
  ``perimeter_derived_diameter_mm`` = P/π, ``area_derived_diameter_mm`` = 2·√(A/π), ``ovality`` = min/max.
  ``center_lps`` is the area centroid of the projected polygon, lifted into the plane. A warning is added when
  the loop's RMS distance from its plane exceeds 10 % of its diameter (a ragged rim, or a hole joined to it).
- ``spanning_area_mm2``: area of the minimal surface spanning the 3D ostium loop among surfaces that are graphs
  over its plane (minimal-surface equation solved by lagged-diffusivity P1 finite elements on a constrained
  Delaunay triangulation, vtkDelaunay2D); equals ``area_mm2`` for a planar loop. This surface also caps the
  ostium for the volume and the cross-sections.
- **A movable ostium**: ``ostium_plane_lps`` = (origin, normal) re-cuts the surface at that plane and keeps
  the appendage side (the normal is turned to face the current ostium's way); the plane must cut the surface
  (:class:`InputError` otherwise), and a warning says how much of the new ostium contour is still the old rim
  when the plane crosses it.
- **Centreline** (ostium centre → apex), VMTK's criterion on a voxel graph: the capped surface, extended by a
  straight prism below the ostium so the path crosses the ostium plane undisturbed, is voxelised
  (``vtkPolyDataToImageStencil``; voxel = ostium diameter / 40 within 0.2–0.6 mm) with its wall-distance map r
  (``scipy.ndimage``). The medial end is the lumen voxel beyond the ostium with the largest geodesic distance
  (Dijkstra, ``scipy.sparse.csgraph``) + 2r — the centre of the tip's largest inscribed sphere, not a corner of
  the wall (the middle of the near-best voxels where the medial axis is a sheet, in an oval lumen). The path to
  it is the inverse-radius minimal path (cost 1/r², Dijkstra on the 26-connected graph), then refined: each
  point moves (≤ 1 mm per pass, 3 passes) towards the area centroid of the lumen section perpendicular to the
  curve, and the curve is smoothed by a local quadratic (Savitzky–Golay, 4 mm), which keeps arcs unbiased.
  From the medial end it runs straight along its end tangent to the wall: the apex on the surface.
- ``centerline_length_mm``: its length, ostium centre → apex (the depth along the centreline).
  ``bend_angle_deg``: angle between its tangents at the ostium and at the medial end (quadratic fits over the
  first/last 8 mm). ``depth_mm``: the largest distance of the surface from the ostium plane;
  ``apex_depth_mm``: the apex's distance from the ostium plane.
- **Profile**: cross-sections of the capped surface perpendicular to the centreline every ``profile_step_mm``
  of centreline arc length (``depth_mm`` = arc length from the ostium centre); the contour around the
  centreline point is measured. **Landing zones**: the same sections at ``landing_depths_mm`` (10 mm,
  Watchman-style; 12 mm, Amulet-style lobe).
- ``volume_ml``: volume enclosed by the surface with the ostium capped by the spanning surface (and any
  other small hole fanned), by the divergence theorem; ``surface_area_mm2``: area of the open surface.

JSON keys (stable; written by :meth:`LAAMeasurements.to_json`): ``ostium`` {``center_lps``, ``normal_lps``,
``perimeter_mm``, ``area_mm2``, ``max_diameter_mm``, ``min_diameter_mm``, ``perimeter_derived_diameter_mm``,
``area_derived_diameter_mm``, ``ovality``, ``planarity_rms_mm``, ``planarity_max_mm``, ``spanning_area_mm2``,
``contour_lps``}, ``landing_zones`` [{``depth_mm``, ``center_lps``, ``normal_lps``, the same diameters, areas and
``ovality``, ``contour_lps``}], ``depth_mm``, ``apex_depth_mm``, ``centerline_length_mm``, ``bend_angle_deg``,
``volume_ml``, ``surface_area_mm2``, ``apex_lps``, ``centerline_lps``, ``profile`` [{``depth_mm``,
``center_lps``, diameters, areas, ``ovality``}], ``ostium_source`` ("boundary" or "plane"), ``warnings``,
``schema``. Figures that cannot be measured are ``null``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .frames import lps_to_ras
from .io import atomic_output, check_output_path, make_polydata, polydata_points, polydata_triangles
from .meshtools import (
    boundary_loops, clip_by_plane, connected_components, loop_length, submesh, triangle_areas, unsigned_distance,
)

SCHEMA = "nudf-laa-measurements/1"
DEFAULT_LANDING_DEPTHS_MM: tuple[float, ...] = (10.0, 12.0)
PROFILE_STEP_MM = 1.0
#: Centreline smoothing (Savitzky–Golay window along the arc, mm) and the arc over which end tangents are fitted.
CENTERLINE_SMOOTHING_MM = 4.0
TANGENT_FIT_MM = 8.0
#: Centreline grid: voxels across the ostium's area-derived diameter (within 0.2–0.6 mm; coarser grids let the
#: path drift in wide, flat tips), and at most this many voxels in all (the voxel size grows to fit).
VOXELS_PER_DIAMETER = 40.0
MAX_VOXELS = 3_000_000
#: Warn when the ostium loop's RMS distance from its plane exceeds this fraction of its diameter.
NONPLANAR_WARNING = 0.1
#: Perimeters are measured on the contour smoothed over this arc (mm; see :func:`smoothed_perimeter`).
PERIMETER_SMOOTHING_MM = 3.0
#: Half-length (mm) of the centreline chord that gives a cross-section's normal.
SECTION_TANGENT_MM = 3.0
#: Contour points kept in JSON / shown as curves (evenly spaced along the contour).
CONTOUR_POINTS = 96

#: The contour figures, in print/CSV order: (JSON key, label, unit).
CONTOUR_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("max_diameter_mm", "max diameter (Feret)", "mm"),
    ("min_diameter_mm", "min diameter (Feret)", "mm"),
    ("perimeter_derived_diameter_mm", "perimeter-derived diameter P/pi", "mm"),
    ("area_derived_diameter_mm", "area-derived diameter 2*sqrt(A/pi)", "mm"),
    ("perimeter_mm", "perimeter", "mm"),
    ("area_mm2", "area", "mm2"),
    ("ovality", "ovality (min/max)", ""),
)
#: Whole-appendage figures: (JSON key, label, unit).
GLOBAL_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("depth_mm", "depth (ostium plane -> deepest point)", "mm"),
    ("apex_depth_mm", "apex depth (ostium plane -> apex)", "mm"),
    ("centerline_length_mm", "centreline length (ostium -> apex)", "mm"),
    ("bend_angle_deg", "centreline bend angle", "deg"),
    ("volume_ml", "volume (ostium capped)", "mL"),
    ("surface_area_mm2", "surface area", "mm2"),
)


# ------------------------------------------------------------------------------------------ records
@dataclass
class Section:
    """A planar contour (ostium, landing zone or profile section) and its figures (mm, mm²)."""

    depth_mm: float | None
    center_lps: np.ndarray
    normal_lps: np.ndarray
    perimeter_mm: float
    area_mm2: float
    max_diameter_mm: float
    min_diameter_mm: float
    perimeter_derived_diameter_mm: float
    area_derived_diameter_mm: float
    ovality: float
    contour_lps: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))

    def figures(self) -> dict[str, float]:
        return {k: getattr(self, k) for k, _, _ in CONTOUR_FIELDS}

    def to_dict(self, contour: bool = True) -> dict:
        d: dict = {"depth_mm": _num(self.depth_mm), "center_lps": _vec(self.center_lps),
                   "normal_lps": _vec(self.normal_lps)}
        d.update({k: _num(v) for k, v in self.figures().items()})
        if contour:
            d["contour_lps"] = _vec(_even_subsample(self.contour_lps, CONTOUR_POINTS))
        return d


@dataclass
class Ostium(Section):
    """The ostium contour: a :class:`Section` plus its planarity and the area of its spanning surface."""

    planarity_rms_mm: float = float("nan")
    planarity_max_mm: float = float("nan")
    spanning_area_mm2: float = float("nan")

    def to_dict(self, contour: bool = True) -> dict:
        d = super().to_dict(contour)
        d.pop("depth_mm")
        for k in ("planarity_rms_mm", "planarity_max_mm", "spanning_area_mm2"):
            d[k] = _num(getattr(self, k))
        if contour:
            d["contour_lps"] = d.pop("contour_lps")  # keep the long list last
        return d


@dataclass
class LAAMeasurements:
    """Every measurement of one LAA surface; see the module docstring for the definitions."""

    ostium: Ostium
    landing_zones: list[Section | None]
    landing_depths_mm: list[float]
    profile: list[Section]
    depth_mm: float
    apex_depth_mm: float
    centerline_length_mm: float
    bend_angle_deg: float
    volume_ml: float
    surface_area_mm2: float
    apex_lps: np.ndarray
    centerline_lps: np.ndarray = field(repr=False)
    ostium_source: str = "boundary"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON document (stable keys; NaN as ``None``)."""
        zones = []
        for d, z in zip(self.landing_depths_mm, self.landing_zones):
            if z is None:
                zones.append({"depth_mm": float(d), "center_lps": None, "normal_lps": None,
                              **{k: None for k, _, _ in CONTOUR_FIELDS}, "contour_lps": []})
            else:
                zones.append(z.to_dict())
        out = {"schema": SCHEMA, "ostium": self.ostium.to_dict(), "landing_zones": zones}
        out.update({k: _num(getattr(self, k)) for k, _, _ in GLOBAL_FIELDS})
        out.update({
            "apex_lps": _vec(self.apex_lps),
            "centerline_lps": _vec(self.centerline_lps),
            "profile": [s.to_dict(contour=False) for s in self.profile],
            "ostium_source": self.ostium_source,
            "warnings": list(self.warnings),
        })
        return out

    def to_json(self, path: str | os.PathLike | None = None, overwrite: bool = False) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        if path is not None:
            write_json(self.to_dict(), path, overwrite)
        return json.dumps(self.to_dict(), indent=1)

    def flat_row(self) -> dict[str, float]:
        """One flat row (cohort CSV columns): ostium, each landing zone, then the whole-appendage figures."""
        row: dict[str, float] = {}
        for i, axis in enumerate("xyz"):
            row[f"ostium_center_lps_{axis}"] = float(self.ostium.center_lps[i])
        for i, axis in enumerate("xyz"):
            row[f"ostium_normal_lps_{axis}"] = float(self.ostium.normal_lps[i])
        for k, _, _ in CONTOUR_FIELDS:
            row[f"ostium_{k}"] = float(getattr(self.ostium, k))
        for k in ("planarity_rms_mm", "spanning_area_mm2"):
            row[f"ostium_{k}"] = float(getattr(self.ostium, k))
        for d, z in zip(self.landing_depths_mm, self.landing_zones):
            for k, _, _ in CONTOUR_FIELDS:
                row[f"landing_{d:g}mm_{k}"] = float("nan") if z is None else float(getattr(z, k))
        for k, _, _ in GLOBAL_FIELDS:
            row[k] = float(getattr(self, k))
        return row

    def summary_rows(self) -> list[tuple[str, float, str]]:
        """(label, value, unit) rows of the readable table (CLI and the Slicer table node)."""
        rows = [(f"ostium {label}", getattr(self.ostium, k), unit) for k, label, unit in CONTOUR_FIELDS]
        rows.append(("ostium planarity (RMS out of plane)", self.ostium.planarity_rms_mm, "mm"))
        rows.append(("ostium spanning-surface area", self.ostium.spanning_area_mm2, "mm2"))
        for d, z in zip(self.landing_depths_mm, self.landing_zones):
            for k, label, unit in CONTOUR_FIELDS[:4]:
                rows.append((f"landing {d:g} mm: {label}", float("nan") if z is None else getattr(z, k), unit))
        rows.extend((label, getattr(self, k), unit) for k, label, unit in GLOBAL_FIELDS)
        return rows


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _vec(a) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 4).tolist()


# ------------------------------------------------------------------------------------------ output
def write_csv(rows: Iterable[tuple[str, LAAMeasurements]], path: str | os.PathLike, overwrite: bool = False,
              append: bool = False) -> Path:
    """A cohort table: one row per (case name, measurements) with :meth:`LAAMeasurements.flat_row` columns.

    ``append`` adds rows to a table written by this function (its header must match). NaN is an empty cell.
    """
    rows = list(rows)
    p = Path(path)
    cols = ["case"] + (list(rows[0][1].flat_row()) if rows else [])
    if append and p.exists():
        with open(p, newline="") as f:
            header = next(csv.reader(f), None)
        if header != cols:
            raise InputError(f"Cannot append to {p}: its columns differ (other landing depths or another version).")
        with open(p, "a", newline="") as f:
            _write_rows(csv.writer(f), rows)
        return p
    p = check_output_path(p, (".csv",), overwrite)
    with atomic_output(p, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            _write_rows(w, rows)
    return p


def _write_rows(w, rows) -> None:
    for name, m in rows:
        w.writerow([name] + ["" if not math.isfinite(v) else f"{v:.6g}" for v in m.flat_row().values()])


def format_table(m: LAAMeasurements, frame: str = "lps") -> str:
    """A readable aligned table; the ostium centre/normal are shown in ``frame`` (LPS or RAS)."""
    def fmt(v: float, unit: str) -> str:
        return "       n/a" if not math.isfinite(v) else f"{v:10.2f} {unit}" if unit else f"{v:10.3f}"

    c = m.ostium.center_lps if frame == "lps" else lps_to_ras(m.ostium.center_lps)
    n = m.ostium.normal_lps if frame == "lps" else lps_to_ras(m.ostium.normal_lps)
    lines = [f"{'ostium centre (' + frame.upper() + ')':<50} " + ", ".join(f"{v:.2f}" for v in c) + " mm",
             f"{'ostium normal (' + frame.upper() + ', into the LAA)':<50} " + ", ".join(f"{v:.3f}" for v in n)]
    lines += [f"{label:<50} {fmt(float(v), unit)}" for label, v, unit in m.summary_rows()]
    lines.append(f"{'ostium from':<50} {'the mesh boundary' if m.ostium_source == 'boundary' else 'the given plane'}")
    lines += [f"warning: {w}" for w in m.warnings]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- contour geometry
def _even_subsample(points: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` points evenly spaced along a closed polyline (its own vertices when fewer)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) <= n:
        return pts
    seg = np.linalg.norm(np.roll(pts, -1, axis=0) - pts, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    closed = np.vstack([pts, pts[:1]])
    return np.column_stack([np.interp(t, s, closed[:, k]) for k in range(3)])


def _loop_plane(loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and unit normal of the least-squares plane of a closed polyline, integrated along its arc."""
    a, b = loop, np.roll(loop, -1, axis=0)
    w = np.linalg.norm(b - a, axis=1)
    mid = 0.5 * (a + b)
    c = (w[:, None] * mid).sum(0) / w.sum()
    d, e = mid - c, b - a
    cov = np.einsum("i,ij,ik->jk", w, d, d) + np.einsum("i,ij,ik->jk", w / 12.0, e, e)
    _, vecs = np.linalg.eigh(cov)
    return c, vecs[:, 0]


def _plane_basis(normal: np.ndarray, loop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """In-plane unit axes (u, v) with u × v = normal; u along the loop's longest in-plane extent if given."""
    n = normal / np.linalg.norm(normal)
    if loop is not None and len(loop) >= 3:
        q = loop - loop.mean(0)
        q = q - np.outer(q @ n, n)
        _, vecs = np.linalg.eigh(q.T @ q)
        u = vecs[:, 2]
    else:
        u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u = u - (u @ n) * n
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def _polygon_area_centroid(p2: np.ndarray) -> tuple[float, np.ndarray]:
    """Signed area (counter-clockwise positive) and area centroid of a 2D polygon (shoelace)."""
    x, y = p2[:, 0], p2[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    a = 0.5 * cross.sum()
    if abs(a) < 1e-12:
        return 0.0, p2.mean(0)
    cx = ((x + xn) * cross).sum() / (6 * a)
    cy = ((y + yn) * cross).sum() / (6 * a)
    return float(a), np.array([cx, cy])


def feret_diameters(p2: np.ndarray) -> tuple[float, float]:
    """Maximum and minimum Feret (caliper) diameters of a 2D point set (rotating calipers on its hull)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = p2[ConvexHull(p2).vertices]
    except (QhullError, ValueError):
        ext = np.ptp(p2, axis=0)
        return float(np.hypot(*ext)), 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    dmax = float(np.sqrt((diff**2).sum(-1)).max())
    e = np.roll(hull, -1, axis=0) - hull
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
    nrm = np.column_stack([-e[:, 1], e[:, 0]])
    proj = np.einsum("ek,pk->ep", nrm, hull)  # every hull point on every edge normal
    widths = proj.max(1) - proj.min(1)
    return dmax, float(widths.min())


def _projected(contour: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A closed contour projected into the plane with ``normal``: its 2D points (principal in-plane axes),
    its area centroid lifted to the contour's mean height, and its (unsigned) area."""
    n = normal / np.linalg.norm(normal)
    u, v = _plane_basis(n, contour)
    base = contour.mean(0)
    q = contour - base
    p2 = np.column_stack([q @ u, q @ v])
    area_signed, c2 = _polygon_area_centroid(p2)
    return p2, base + c2[0] * u + c2[1] * v + float((q @ n).mean()) * n, abs(area_signed)


def smoothed_perimeter(loop: np.ndarray, window_mm: float = PERIMETER_SMOOTHING_MM) -> float:
    """Length of a closed polyline (2D or 3D) after a periodic local-quadratic (Savitzky–Golay) smoothing over
    ``window_mm``: the voxel-scale zigzag of a segmented rim would otherwise add up to tens of mm of perimeter,
    while a smooth loop keeps its length (a circle of radius ≥ 5 mm changes by < 0.1 %)."""
    from scipy.ndimage import convolve1d

    p = np.asarray(loop, dtype=np.float64)
    raw = float(np.linalg.norm(np.roll(p, -1, 0) - p, axis=1).sum())
    step = min(0.25, raw / 400.0)
    dense = _dense_polyline(p, step)
    seg = np.linalg.norm(np.roll(dense, -1, 0) - dense, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    closed = np.vstack([dense, dense[:1]])
    t = np.arange(0.0, s[-1], step)
    even = np.column_stack([np.interp(t, s, closed[:, k]) for k in range(p.shape[1])])
    half = min(int(round(0.5 * window_mm / step)), (len(even) - 1) // 2)
    if half < 2:
        return raw
    x = np.arange(-half, half + 1)
    weights = np.linalg.pinv(np.vander(x, 3, increasing=True))[0]
    smooth = convolve1d(even, weights[::-1], axis=0, mode="wrap")
    return float(np.linalg.norm(np.roll(smooth, -1, 0) - smooth, axis=1).sum())


def contour_section(contour: np.ndarray, normal: np.ndarray, depth_mm: float | None = None,
                    perimeter_3d: bool = False) -> Section:
    """The figures of a closed contour in the plane with ``normal`` (the contour is projected into it)."""
    n = normal / np.linalg.norm(normal)
    p2, center, area = _projected(contour, n)
    perim = smoothed_perimeter(contour if perimeter_3d else p2)
    dmax, dmin = feret_diameters(p2)
    return Section(
        depth_mm=depth_mm, center_lps=center, normal_lps=n, perimeter_mm=perim, area_mm2=area,
        max_diameter_mm=dmax, min_diameter_mm=dmin, perimeter_derived_diameter_mm=perim / math.pi,
        area_derived_diameter_mm=2.0 * math.sqrt(area / math.pi), ovality=dmin / dmax if dmax > 0 else float("nan"),
        contour_lps=np.asarray(contour, dtype=np.float64),
    )


# ------------------------------------------------------------------------------------ spanning cap
def spanning_surface(loop: np.ndarray, center: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A triangulated minimal graph surface spanning the closed 3D ``loop`` over its plane.

    Returns (points, triangles) whose first ``len(loop)`` points are the loop itself, in order, so the cap
    shares the mesh's rim vertices exactly (a watertight closure). See :func:`_triangulate_disk` for the
    triangulation; the heights over the plane solve the minimal-surface equation (lagged diffusivity: a
    few P1 finite-element solves with weights 1/√(1+|∇z|²)).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    n = normal / np.linalg.norm(normal)
    u, v = _plane_basis(n)
    q = loop - center
    p2 = np.column_stack([q @ u, q @ v])
    if _polygon_area_centroid(p2)[0] < 0:  # counter-clockwise in (u, v)
        u, v = v, u
        p2 = p2[:, ::-1]
    pts2, tris = _triangulate_disk(p2)
    nb = len(p2)
    a, b, c = pts2[tris[:, 0]], pts2[tris[:, 1]], pts2[tris[:, 2]]
    jac = np.stack([b - a, c - a], axis=2)  # columns b-a, c-a
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    fe = np.abs(det) > 1e-10 * max(float(np.ptp(p2, axis=0).max()), 1.0) ** 2  # slivers carry no stiffness
    z = np.zeros(len(pts2))
    z[:nb] = q @ n
    interior = np.arange(nb, len(pts2))
    if len(interior) and fe.any():
        ft = tris[fe]
        inv = np.linalg.inv(jac[fe])
        g = np.stack([-(inv[:, 0] + inv[:, 1]), inv[:, 0], inv[:, 1]], axis=1)  # (T, 3 vertices, 2)
        area2 = 0.5 * np.abs(det[fe])
        rows = np.repeat(ft, 3, axis=1).ravel()
        cols = np.tile(ft, (1, 3)).ravel()
        gg = np.einsum("tik,tjk->tij", g, g)
        for _ in range(12):
            grad = np.einsum("ti,tik->tk", z[ft], g)
            w = area2 / np.sqrt(1.0 + (grad**2).sum(1))
            k = coo_matrix(((gg * w[:, None, None]).ravel(), (rows, cols)), shape=(len(z), len(z))).tocsr()
            z_new = z.copy()
            z_new[interior] = spsolve(k[interior][:, interior].tocsc(), -(k[interior][:, :nb] @ z[:nb]))
            change = float(np.abs(z_new - z).max())
            z = z_new
            if change < 1e-6:
                break
    pts3 = center + pts2[:, :1] * u + pts2[:, 1:2] * v + z[:, None] * n
    pts3[:nb] = loop
    return pts3, tris


def _triangulate_disk(p2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate the inside of a counter-clockwise 2D polygon with interior points; rim points come first.

    vtkDelaunay2D triangulates a grid of interior points constrained by the rim, using only rim points at
    least half a grid step apart (cut surfaces have tiny rim edges that defeat its edge recovery); the
    skipped rim points are then fanned into the triangles along their edges, so every rim point is used.
    When the constrained triangulation fails, a fan from the area centroid is used instead.
    """
    from scipy.spatial import cKDTree

    nb = len(p2)
    perimeter = float(np.linalg.norm(np.roll(p2, -1, 0) - p2, axis=1).sum())
    area, centroid = _polygon_area_centroid(p2)
    h = max(perimeter / 100.0, float(np.sqrt(area / 20_000.0)), 1e-6)
    kept = [0]
    for i in range(1, nb):
        if np.linalg.norm(p2[i] - p2[kept[-1]]) >= 0.5 * h:
            kept.append(i)
    while len(kept) > 3 and np.linalg.norm(p2[kept[-1]] - p2[0]) < 0.5 * h:
        kept.pop()
    kept = np.array(kept)
    lo, hi = p2.min(0), p2.max(0)
    gx, gy = np.meshgrid(np.arange(lo[0] + h / 2, hi[0], h), np.arange(lo[1] + h / 2, hi[1], h))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    if len(grid):
        grid = grid[cKDTree(_dense_polyline(p2, h / 4)).query(grid)[0] > 0.5 * h]
    tris = _constrained_delaunay(np.vstack([p2[kept], grid]), len(kept)) if len(kept) >= 3 else np.zeros((0, 3), int)
    ids = np.concatenate([kept, nb + np.arange(len(grid))])
    pts2 = np.vstack([p2, grid])
    tris = ids[tris] if len(tris) else tris
    if len(tris):  # vtkDelaunay2D does not promise an orientation: make every triangle counter-clockwise
        a, b, c = pts2[tris[:, 0]], pts2[tris[:, 1]], pts2[tris[:, 2]]
        cw = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0] < 0
        tris[cw] = tris[cw][:, ::-1]
    ok = len(tris) > 0 and abs(_triangles_area2d(pts2, tris) - area) <= 1e-3 * area
    if not ok:  # fall back: a fan from the area centroid (exact for star-shaped contours)
        pts2 = np.vstack([p2, centroid[None]])
        j = np.arange(nb)
        return pts2, np.column_stack([j, (j + 1) % nb, np.full(nb, nb)])
    # fan the skipped rim points into the triangles along the rim edges they were skipped from
    nxt = {int(kept[i]): int(kept[(i + 1) % len(kept)]) for i in range(len(kept))}
    work, out = [tuple(t) for t in tris.tolist()], []
    while work:
        t = work.pop()
        for e in range(3):
            x, y, o = t[e], t[(e + 1) % 3], t[(e + 2) % 3]
            forward = x < nb and y < nb and nxt.get(x) == y
            backward = x < nb and y < nb and nxt.get(y) == x
            gap = (y - x) % nb if forward else (x - y) % nb if backward else 1
            if gap > 1:
                chain = [(x + s) % nb for s in range(gap + 1)] if forward else [(x - s) % nb for s in range(gap + 1)]
                work.extend((chain[s], chain[s + 1], o) for s in range(gap))
                break
        else:
            out.append(t)
    tris = np.array(out, dtype=np.int64)
    keep = np.union1d(np.arange(nb), tris.ravel())  # drop grid points left outside the rim; rim stays first
    remap = np.full(len(pts2), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return pts2[keep], remap[tris]


def _constrained_delaunay(points2d: np.ndarray, n_rim: int) -> np.ndarray:
    """vtkDelaunay2D of the points, constrained to the inside of the polygon of the first ``n_rim`` points
    (counter-clockwise). Warnings (edges it could not recover) are silenced: the caller checks the area."""
    vp = vtk.vtkPoints()
    vp.SetData(numpy_support.numpy_to_vtk(np.column_stack([points2d, np.zeros(len(points2d))]), deep=True))
    cloud = vtk.vtkPolyData()
    cloud.SetPoints(vp)
    poly = vtk.vtkCellArray()
    poly.InsertNextCell(n_rim)
    for i in range(n_rim):
        poly.InsertCellPoint(i)
    boundary = vtk.vtkPolyData()
    boundary.SetPoints(vp)
    boundary.SetPolys(poly)
    dl = vtk.vtkDelaunay2D()
    dl.SetInputData(cloud)
    dl.SetSourceData(boundary)
    warn = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        dl.Update()
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warn)
    return polydata_triangles(dl.GetOutput())


def _triangles_area2d(p2: np.ndarray, tris: np.ndarray) -> float:
    a, b, c = p2[tris[:, 0]], p2[tris[:, 1]], p2[tris[:, 2]]
    return float(0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).sum())


def _dense_polyline(p: np.ndarray, step: float) -> np.ndarray:
    """Points along a closed polyline (any dimension) at most ``step`` apart, vertices included."""
    q = np.roll(p, -1, axis=0)
    k = np.maximum(np.ceil(np.linalg.norm(q - p, axis=1) / step).astype(int), 1)
    t = np.concatenate([np.arange(m) / m for m in k])
    i = np.repeat(np.arange(len(p)), k)
    return p[i] + t[:, None] * (q[i] - p[i])


# ------------------------------------------------------------------------------------- mesh prep
def _prepare(mesh_lps: vtk.vtkPolyData, largest: bool = True) -> vtk.vtkPolyData:
    """Triangles only, points within 1 nm merged (degenerate triangles collapse away), consistent winding,
    and (``largest``) only the largest face-connected component."""
    if mesh_lps is None or mesh_lps.GetNumberOfPoints() == 0:
        raise InputError("The mesh is empty; there is nothing to measure.")
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(mesh_lps)
    clean.PointMergingOn()
    clean.ToleranceIsAbsoluteOn()
    clean.SetAbsoluteTolerance(1e-6)
    clean.ConvertPolysToLinesOff()
    clean.ConvertLinesToPointsOff()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(clean.GetOutputPort())
    tri.PassLinesOff()
    tri.PassVertsOff()
    normals = vtk.vtkPolyDataNormals()  # consistent winding (reorders the triangles), nothing else
    normals.SetInputConnection(tri.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOff()
    normals.ComputePointNormalsOff()
    normals.ComputeCellNormalsOff()
    normals.Update()
    pts = polydata_points(normals.GetOutput())
    tris = polydata_triangles(normals.GetOutput())
    if len(tris) == 0 or not np.all(np.isfinite(pts)):
        raise InputError("The mesh has no triangles (or non-finite points); a surface is needed.")
    if triangle_areas(pts, tris).sum() <= 0:
        raise InputError("The mesh has zero area.")
    out = submesh(make_polydata(pts, tris), np.ones(len(tris), bool))
    labels = connected_components(out)
    return submesh(out, labels == 0) if largest and labels.max() > 0 else out


def _longest_loop(mesh: vtk.vtkPolyData) -> tuple[np.ndarray, list[np.ndarray]]:
    loops = boundary_loops(mesh)
    if not loops:
        raise InputError("The mesh has no boundary: it is not an open LAA surface. Give an ostium plane to cut it.")
    pts = polydata_points(mesh)
    loops = [lo for lo in loops if len(lo) >= 3]
    loops.sort(key=lambda lo: loop_length(pts, lo), reverse=True)
    return loops[0], loops[1:]


def _fitted_plane(mesh: vtk.vtkPolyData, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares plane of a boundary loop (centre, unit normal), the normal turned into the LAA (towards
    the surface's area centroid)."""
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    center, normal = _loop_plane(pts[loop])
    areas = triangle_areas(pts, tris)
    area_centroid = (areas[:, None] * pts[tris].mean(1)).sum(0) / areas.sum()
    return center, (-normal if (area_centroid - center) @ normal < 0 else normal)


def cut_at_plane(mesh_lps: vtk.vtkPolyData, origin_lps: Sequence[float], normal_lps: Sequence[float]
                 ) -> tuple[vtk.vtkPolyData, np.ndarray, list[str]]:
    """Re-cut an LAA surface at a clinician's ostium plane, keeping the distal (LAA) side.

    The normal is turned, if needed, to face the same way as the current ostium's (into the LAA). Of the
    pieces the plane leaves, the one whose cut lies nearest the plane origin is kept. Returns (mesh, the
    point ids of its new ostium loop, warnings). Raises :class:`InputError` when the plane misses the surface.
    """
    origin = np.asarray(origin_lps, dtype=np.float64).reshape(3)
    n = np.asarray(normal_lps, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(n)) or np.linalg.norm(n) == 0:
        raise InputError("The ostium plane needs a finite origin and a non-zero normal.")
    n = n / np.linalg.norm(n)
    mesh = _prepare(mesh_lps)
    pts = polydata_points(mesh)
    if boundary_loops(mesh) and _fitted_plane(mesh, _longest_loop(mesh)[0])[1] @ n < 0:
        n = -n  # the new ostium faces the same way as the current one: into the appendage
    h = (pts - origin) @ n
    scale = max(float(np.ptp(pts, axis=0).max()), 1.0)
    tol = 1e-6 * scale
    if h.max() <= tol:
        raise InputError("The ostium plane lies beyond the LAA: no segmented surface on its appendage side.")
    if h.min() >= -tol:
        raise InputError("The ostium plane lies outside the segmented surface (proximal to its whole rim); "
                         "move it into the appendage.")
    cut = _prepare(clip_by_plane(mesh, origin, n), largest=False)
    labels = connected_components(cut)
    best = None
    n_cuts = 0
    for lab in range(int(labels.max()) + 1):  # each piece's longest loop is its ostium candidate
        piece = submesh(cut, labels == lab)
        if not boundary_loops(piece):
            continue
        ppts = polydata_points(piece)
        lo = _longest_loop(piece)[0]
        on = np.abs((ppts[lo] - origin) @ n) <= 1e-5 * scale
        if on.sum() < 3:
            continue
        n_cuts += 1
        dist = float(np.linalg.norm(ppts[lo][on] - origin, axis=1).min())
        if best is None or dist < best[0]:
            best = (dist, piece, lo, on)
    if best is None:
        raise InputError("The ostium plane does not cut the segmented surface; move it into the appendage.")
    _, piece, loop, on = best
    warnings = []
    ppts = polydata_points(piece)
    seg = np.linalg.norm(np.roll(ppts[loop], -1, 0) - ppts[loop], axis=1)
    off_fraction = float(seg[~(on & np.roll(on, -1))].sum() / seg.sum())
    if off_fraction > 0.01:
        warnings.append(f"The ostium plane lies partly outside the segmented surface: {100 * off_fraction:.0f} % "
                        "of the ostium contour is the surface's original rim, not the plane.")
    if n_cuts > 1:
        warnings.append(f"The plane cuts the surface in {n_cuts} places; the piece whose cut lies nearest the "
                        "plane's centre was kept.")
    return piece, loop, warnings


# ------------------------------------------------------------------------------------ closed surface
@dataclass
class _Closed:
    """The open mesh, its ostium cap and hole fans, assembled into closed surfaces."""

    pts: np.ndarray  # mesh points, then cap interior points, then hole centres
    tris: np.ndarray  # mesh + ostium cap + hole fans, consistently wound
    n_mesh_tris: int
    cap_tris: np.ndarray  # the ostium cap, in `pts` ids (its rim = the mesh's ostium loop)
    cap_local_tris: np.ndarray  # the same triangles in the cap's own numbering (rim first)
    cap_pts: np.ndarray  # the cap's own points (rim first)
    span_area_mm2: float

    def polydata(self) -> vtk.vtkPolyData:
        return make_polydata(self.pts, self.tris)


def _directed_boundary(tris: np.ndarray) -> set[tuple[int, int]]:
    """The boundary edges of a consistently wound triangle mesh, in the direction its triangles run them."""
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    und = np.sort(e, axis=1)
    _, inv, cnt = np.unique(und, axis=0, return_inverse=True, return_counts=True)
    return set(map(tuple, e[cnt[inv.ravel()] == 1].tolist()))


def _close(mesh: vtk.vtkPolyData, ostium: np.ndarray, holes: list[np.ndarray], center: np.ndarray,
           normal: np.ndarray) -> _Closed:
    """Close the open mesh: the ostium by its spanning surface, other (small) holes by a fan from their centre."""
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    directed = _directed_boundary(tris)
    cap_pts, cap_tris = spanning_surface(pts[ostium], center, normal)
    nb = len(ostium)
    ids = np.concatenate([ostium, len(pts) + np.arange(len(cap_pts) - nb)])
    pieces = [ids[cap_tris]]
    extra = [cap_pts[nb:]]
    first_hole = len(pts) + len(cap_pts) - nb
    for k, hole in enumerate(holes):
        pieces.append(np.column_stack([hole, np.roll(hole, -1), np.full(len(hole), first_hole + k)]))
        extra.append(pts[hole].mean(0, keepdims=True))
    oriented = []
    for t in pieces:  # a cap must run against the mesh along their shared rim
        e = set(map(tuple, np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]).tolist()))
        same = sum((a, b) in e for a, b in directed)
        opposite = sum((b, a) in e for a, b in directed)
        oriented.append(t[:, ::-1].copy() if same > opposite else t)
    local = cap_tris[:, ::-1].copy() if oriented[0][0, 0] != pieces[0][0, 0] else cap_tris
    return _Closed(
        pts=np.vstack([pts] + extra), tris=np.vstack([tris] + oriented), n_mesh_tris=len(tris),
        cap_tris=oriented[0], cap_local_tris=local, cap_pts=cap_pts,
        span_area_mm2=float(triangle_areas(cap_pts, cap_tris).sum()),
    )


def _signed_volume(pts: np.ndarray, tris: np.ndarray) -> float:
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


# ---------------------------------------------------------------------------------------- centreline
def _voxelise(pts: np.ndarray, tris: np.ndarray, spacing: float, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask [k, j, i] of a closed surface on an axis-aligned grid (vtkPolyDataToImageStencil) and the
    grid origin (the centre of voxel 0)."""
    lo = pts.min(0) - pad * spacing
    dims = np.ceil((pts.max(0) + pad * spacing - lo) / spacing).astype(int) + 1
    image = vtk.vtkImageData()
    image.SetOrigin(*lo)
    image.SetSpacing(spacing, spacing, spacing)
    image.SetDimensions(*[int(d) for d in dims])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    to_stencil = vtk.vtkPolyDataToImageStencil()
    to_stencil.SetInputData(make_polydata(pts, tris))
    to_stencil.SetOutputOrigin(*lo)
    to_stencil.SetOutputSpacing(spacing, spacing, spacing)
    to_stencil.SetOutputWholeExtent(0, int(dims[0]) - 1, 0, int(dims[1]) - 1, 0, int(dims[2]) - 1)
    stencil = vtk.vtkImageStencil()
    stencil.SetInputData(image)
    stencil.SetStencilConnection(to_stencil.GetOutputPort())
    stencil.ReverseStencilOff()
    stencil.SetBackgroundValue(0)
    stencil.Update()
    arr = numpy_support.vtk_to_numpy(stencil.GetOutput().GetPointData().GetScalars())
    return arr.reshape(dims[2], dims[1], dims[0]).astype(bool), lo


def _voxel_edges(mask: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 26-connected voxel graph of a mask: (voxel flat indices, edge sources, edge targets, step lengths)."""
    idx = -np.ones(mask.shape, dtype=np.int64)
    flat = np.flatnonzero(mask.ravel())
    idx.ravel()[flat] = np.arange(len(flat))
    shape = mask.shape
    rows, cols, steps = [], [], []
    for off in [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]:
        src = tuple(slice(max(0, -d), s - max(0, d)) for d, s in zip(off, shape))
        dst = tuple(slice(max(0, d), s - max(0, -d)) for d, s in zip(off, shape))
        a, b = idx[src], idx[dst]
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
        steps.append(np.full(int(ok.sum()), spacing * math.sqrt(sum(d * d for d in off))))
    return flat, np.concatenate(rows), np.concatenate(cols), np.concatenate(steps)


def _resample_open(p: np.ndarray, step: float) -> np.ndarray:
    """An open polyline resampled every ``step`` mm along its arc (both ends kept)."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if len(p) < 2 or s[-1] <= 0:
        return p[:1].copy()
    t = np.arange(0.0, s[-1], step)
    if s[-1] - t[-1] > 1e-6 * step:
        t = np.append(t, s[-1])
    return np.column_stack([np.interp(t, s, p[:, k]) for k in range(3)])


def _smooth_polyline(p: np.ndarray, step: float, window_mm: float) -> np.ndarray:
    """Resample at ``step`` mm and smooth (:func:`_savgol`)."""
    return _savgol(_resample_open(p, step), step, window_mm)


def _savgol(q: np.ndarray, step: float, window_mm: float) -> np.ndarray:
    """Savitzky–Golay smoothing (local quadratic regression over ``window_mm``) of an evenly sampled open
    polyline; the end windows are fitted as a whole and evaluated at each end point.

    A local quadratic keeps circular arcs unbiased up to the very ends (a Gaussian would straighten them
    there); the first point stays put (it is the ostium centre).
    """
    from scipy.ndimage import convolve1d

    half = int(round(window_mm / step)) // 2
    half = min(half, (len(q) - 1) // 2)
    if half < 2:
        return q
    x = np.arange(-half, half + 1)
    weights = np.linalg.pinv(np.vander(x, 3, increasing=True))[0]  # the fitted value at the window centre
    out = convolve1d(q, weights[::-1], axis=0, mode="nearest")
    n, w = len(q), 2 * half + 1
    for lo, idx in ((0, np.arange(half)), (n - w, np.arange(n - half, n))):
        coef = np.polynomial.polynomial.polyfit(np.arange(lo, lo + w), q[lo:lo + w], 2)
        out[idx] = np.polynomial.polynomial.polyval(idx, coef).T
    out[0] = q[0]
    return out


def _start_tangent(p: np.ndarray, length_mm: float) -> np.ndarray:
    """Unit tangent at the first point of an open polyline: derivative of a quadratic fitted over its first
    ``length_mm`` of arc (exact on circular arcs up to third order)."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    sel = s <= max(length_mm, s[min(3, len(s) - 1)])
    if sel.sum() < 4:
        d = p[min(len(p) - 1, 1)] - p[0]
    else:
        d = np.polynomial.polynomial.polyfit(s[sel], p[sel], 2)[1]
    return d / max(float(np.linalg.norm(d)), 1e-12)


def _polyline_length(p: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def _ray_hit(locator: vtk.vtkAbstractCellLocator, start: np.ndarray, direction: np.ndarray,
             length: float) -> np.ndarray | None:
    """First intersection of the segment start → start + length·direction with the located surface."""
    t = vtk.reference(0.0)
    x = [0.0, 0.0, 0.0]
    pc = [0.0, 0.0, 0.0]
    sub = vtk.reference(0)
    end = start + length * direction
    if locator.IntersectWithLine(list(map(float, start)), list(map(float, end)), 1e-9, t, x, pc, sub):
        return np.array(x)
    return None


def _refine_by_sections(curve: np.ndarray, surface: vtk.vtkPolyData, step: float = 1.0, iterations: int = 3
                        ) -> np.ndarray:
    """Pull each point of a centreline (but its first) towards the area centroid of the lumen cross-section
    perpendicular to the curve there, then smooth; ``iterations`` times.

    The inverse-radius path is medial but not unique where the medial axis is a sheet (an oval lumen, a flat
    tip); the centroids of perpendicular sections pick the middle of the sheet. Tangents come from the curve
    smoothed over ±2 mm and each move is capped at 1 mm per iteration, which keeps the iteration stable.
    """
    for _ in range(iterations):
        q = _resample_open(curve, step)
        if len(q) < 3:
            return curve
        smooth = _savgol(q, step, 6.0)
        out = [q[0]]
        for i in range(1, len(q)):
            t = smooth[min(i + 2, len(q) - 1)] - smooth[max(i - 2, 0)]
            loop = _enclosing_loop(surface, q[i], t)
            if loop is None:
                out.append(q[i])
                continue
            move = _projected(loop, t)[1] - q[i]
            dist = float(np.linalg.norm(move))
            out.append(q[i] + move * min(1.0, 1.0 / dist) if dist > 0 else q[i])
        curve = _smooth_polyline(np.array(out), step, CENTERLINE_SMOOTHING_MM)
    return curve


def _centerline(closed: _Closed, ostium: np.ndarray, center: np.ndarray, normal: np.ndarray,
                voxel_mm: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centreline in LPS (see the module docstring): its points (the last one the apex on the wall), and its
    unit tangents at the ostium and at the end of its medial part."""
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    u, v = _plane_basis(normal, closed.pts[ostium])
    rot = np.column_stack([u, v, normal])  # the ostium frame: x, y in the plane, z into the LAA
    local = (closed.pts - center) @ rot
    rim_xy = local[ostium][:, :2]
    width = float(np.ptp(rim_xy, axis=0).max())
    # lumen = mesh + small-hole fans + a prism: the rim extruded straight out of the LAA, closed by the flat
    # projection of the ostium cap
    ext = float(np.clip(0.5 * width, 3.0, 15.0))
    nb = len(ostium)
    cap_xy = ((closed.cap_pts - center) @ rot)[:, :2]
    bottom = np.column_stack([cap_xy, np.full(len(cap_xy), -ext)])
    base = len(local)
    j = np.arange(nb)
    k = (j + 1) % nb
    walls = np.vstack([np.column_stack([ostium[j], ostium[k], base + k]),
                       np.column_stack([ostium[j], base + k, base + j])])
    keep = np.ones(len(closed.tris), bool)
    keep[closed.n_mesh_tris:closed.n_mesh_tris + len(closed.cap_tris)] = False
    vox_pts = np.vstack([local, bottom])
    vox_tris = np.vstack([closed.tris[keep], walls, base + closed.cap_local_tris])

    span = np.ptp(vox_pts, axis=0)
    d_ost = 2.0 * math.sqrt(abs(_polygon_area_centroid(rim_xy)[0]) / math.pi)
    h = float(voxel_mm) if voxel_mm else float(np.clip(d_ost / VOXELS_PER_DIAMETER, 0.2, 0.6))
    while np.prod(span / h + 5) > MAX_VOXELS:
        h *= 1.25
    mask, lo = _voxelise(vox_pts, vox_tris, h)
    if mask.sum() < 8:
        raise InputError("The LAA surface encloses no volume at the centreline grid; is it a closed appendage?")
    edt = ndimage.distance_transform_edt(mask, sampling=h)
    flat, a, b, step = _voxel_edges(mask, h)
    kji = np.column_stack(np.unravel_index(flat, mask.shape))
    xyz = lo + kji[:, ::-1] * h
    radius = edt.ravel()[flat]
    start = int(np.argmin(np.linalg.norm(xyz - [0.0, 0.0, -0.6 * ext], axis=1)))
    n = len(flat)
    g_len = coo_matrix((step, (a, b)), shape=(n, n)).tocsr()
    geo = dijkstra(g_len, directed=False, indices=start)
    # the end of the medial path: the lumen voxel beyond the ostium maximising geodesic distance + 2 x radius
    # (geodesic distance grows at most 1:1 away from the medial axis while the radius shrinks 1:1, so the
    # maximum is the centre of the tip's largest inscribed sphere, not a corner of the wall)
    score = np.where(np.isfinite(geo) & (xyz[:, 2] > 0), geo + 2.0 * radius, -np.inf)
    end = int(np.argmax(score))
    if not np.isfinite(score[end]):
        raise InputError("No lumen was found beyond the ostium; the surface does not enclose an appendage.")
    # where the medial axis is a sheet (an oval lumen) the score is nearly flat across it: take the middle of
    # the near-best voxels of the same tip
    top = np.flatnonzero(score >= score[end] - max(2.0 * h, 0.2 * radius[end]))
    top = top[np.linalg.norm(xyz[top] - xyz[end], axis=1) <= 2.0 * radius[end] + h]
    end = int(top[np.argmin(np.linalg.norm(xyz[top] - xyz[top].mean(0), axis=1))])
    cost = 1.0 / np.maximum(radius, h) ** 2
    g_cost = coo_matrix((step * 0.5 * (cost[a] + cost[b]), (a, b)), shape=(n, n)).tocsr()
    _, pred = dijkstra(g_cost, directed=False, indices=start, return_predecessors=True)
    path = [end]
    while path[-1] != start and pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    medial = _smooth_polyline(xyz[np.array(path[::-1])], h, CENTERLINE_SMOOTHING_MM)
    z0 = min(2.0, 0.1 * width)
    above = np.flatnonzero(medial[:, 2] >= z0)
    medial = np.vstack([[0.0, 0.0, 0.0], medial[above[0]:] if len(above) else xyz[end][None]])
    surface = make_polydata(local, closed.tris)
    medial = _refine_by_sections(medial, surface)
    t0 = _start_tangent(medial, TANGENT_FIT_MM)
    t1 = -_start_tangent(medial[::-1], TANGENT_FIT_MM)
    # from the medial end straight on to the wall: the apex on the surface
    loc = vtk.vtkStaticCellLocator()
    loc.SetDataSet(surface)
    loc.BuildLocator()
    tip = _ray_hit(loc, medial[-1], t1, 3.0 * float(radius[end]) + 4.0 * h)
    if tip is None:  # cannot happen inside a closed surface; one inscribed radius on, then
        tip = medial[-1] + t1 * float(radius[end])
    return center + np.vstack([medial, tip]) @ rot.T, rot @ t0, rot @ t1


# -------------------------------------------------------------------------------------- sections
def _cut_loops(surface: vtk.vtkPolyData, origin: np.ndarray, normal: np.ndarray) -> list[np.ndarray]:
    """Closed contours (points) where a plane cuts a closed surface (vtkCutter + vtkStripper)."""
    plane = vtk.vtkPlane()
    plane.SetOrigin(*map(float, origin))
    plane.SetNormal(*map(float, normal))
    cutter = vtk.vtkCutter()
    cutter.SetCutFunction(plane)
    cutter.SetInputData(surface)
    stripper = vtk.vtkStripper()
    stripper.SetInputConnection(cutter.GetOutputPort())
    stripper.JoinContiguousSegmentsOn()
    stripper.Update()
    out = stripper.GetOutput()
    pts = polydata_points(out)
    lines = out.GetLines()
    if lines is None or lines.GetNumberOfCells() == 0:
        return []
    offsets = numpy_support.vtk_to_numpy(lines.GetOffsetsArray())
    conn = numpy_support.vtk_to_numpy(lines.GetConnectivityArray())
    loops = []
    for s, e in zip(offsets[:-1], offsets[1:]):
        ids = conn[s:e]
        if len(ids) < 4:
            continue
        p = pts[ids]
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        gap = float(np.linalg.norm(p[-1] - p[0]))
        if ids[0] == ids[-1] or gap < 1e-9:
            loops.append(p[:-1])
        elif gap <= 2.0 * float(np.median(seg)):  # an unmerged seam: close it
            loops.append(p)
    return loops


def _enclosing_loop(surface: vtk.vtkPolyData, point: np.ndarray, normal: np.ndarray) -> np.ndarray | None:
    """The smallest contour of the plane (point, normal) through a closed surface that encloses ``point``."""
    n = normal / np.linalg.norm(normal)
    best, best_area = None, np.inf
    for loop in _cut_loops(surface, point, n):
        flat = loop - np.outer((loop - point) @ n, n)
        lo, hi = flat.min(0), flat.max(0)
        bounds = [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]), float(lo[2]), float(hi[2])]
        inside = vtk.vtkPolygon.PointInPolygon(list(map(float, point)), len(flat), flat.ravel().tolist(), bounds,
                                               list(map(float, n)))
        if inside != 1:
            continue
        area = float(np.linalg.norm(np.cross(flat, np.roll(flat, -1, 0)).sum(0))) / 2.0
        if area < best_area:
            best, best_area = loop, area
    return best


def _section_at(surface: vtk.vtkPolyData, point: np.ndarray, normal: np.ndarray, depth_mm: float) -> Section | None:
    """The cross-section of a closed surface by the plane (point, normal) around ``point``; None if no
    contour encloses the point."""
    loop = _enclosing_loop(surface, point, normal)
    return None if loop is None else contour_section(loop, normal, depth_mm)


def _point_at(curve: np.ndarray, s_query: float, half_window: float = SECTION_TANGENT_MM) -> tuple[np.ndarray, np.ndarray]:
    """Point and unit tangent of a polyline at arc length ``s_query``: the tangent is the ±``half_window`` chord
    (exact on a circular arc; long enough not to follow the wiggles of a centreline in a bulbous lumen)."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])

    def at(x: float) -> np.ndarray:
        x = float(np.clip(x, 0.0, s[-1]))
        return np.array([np.interp(x, s, curve[:, k]) for k in range(3)])

    d = at(s_query + half_window) - at(s_query - half_window)
    return at(s_query), d / max(float(np.linalg.norm(d)), 1e-12)


# ------------------------------------------------------------------------------------------- main
def _check_depths(landing_depths_mm: Iterable[float]) -> list[float]:
    try:
        depths = [float(d) for d in landing_depths_mm]
    except (TypeError, ValueError) as exc:
        raise InputError(f"Landing-zone depths must be numbers in mm; got {landing_depths_mm!r}.") from exc
    if any(not math.isfinite(d) or d <= 0 for d in depths):
        raise InputError(f"Landing-zone depths must be positive (mm); got {depths}.")
    return depths


def measure_laa(
    mesh_lps: vtk.vtkPolyData,
    *,
    ostium_plane_lps: tuple[Sequence[float], Sequence[float]] | None = None,
    landing_depths_mm: Iterable[float] = DEFAULT_LANDING_DEPTHS_MM,
    profile_step_mm: float = PROFILE_STEP_MM,
    voxel_mm: float | None = None,
) -> LAAMeasurements:
    """Measure an open LAA surface (LPS mm); see the module docstring for every definition.

    ``ostium_plane_lps`` = (origin, normal) re-cuts the surface at a clinician's ostium plane first (distal
    side kept; :class:`InputError` when the plane misses the surface). ``voxel_mm`` sets the centreline grid
    (default: the area-derived ostium diameter / 40, within 0.2–0.6 mm). Deterministic (no randomness).
    """
    depths = _check_depths(landing_depths_mm)
    if not (math.isfinite(profile_step_mm) and profile_step_mm > 0):
        raise InputError(f"The profile step must be a positive number of mm; got {profile_step_mm}.")
    if voxel_mm is not None and not (math.isfinite(voxel_mm) and voxel_mm > 0):
        raise InputError(f"The voxel size must be a positive number of mm; got {voxel_mm}.")
    if ostium_plane_lps is not None:
        origin, normal = ostium_plane_lps
        mesh, loop, warnings = cut_at_plane(mesh_lps, origin, normal)
        holes = [lo for lo in boundary_loops(mesh) if len(lo) >= 3 and set(lo.tolist()) != set(loop.tolist())]
        source = "plane"
    else:
        mesh = _prepare(mesh_lps)
        loop, holes = _longest_loop(mesh)
        warnings, source = [], "boundary"
    pts = polydata_points(mesh)
    ring = pts[loop]
    wire_center, normal = _fitted_plane(mesh, loop)
    areas = triangle_areas(pts, polydata_triangles(mesh))
    sec = contour_section(ring, normal, perimeter_3d=True)
    center = sec.center_lps - ((sec.center_lps - wire_center) @ normal) * normal  # on the fitted plane
    off_plane = (ring - wire_center) @ normal  # RMS by the trapezoid rule along the loop (vertex weights)
    seg = np.linalg.norm(np.roll(ring, -1, 0) - ring, axis=1)
    weight = 0.5 * (seg + np.roll(seg, 1))
    closed = _close(mesh, loop, holes, center, normal)
    ostium = Ostium(**{**sec.__dict__, "center_lps": center, "depth_mm": 0.0},
                    planarity_rms_mm=float(np.sqrt((weight * off_plane**2).sum() / weight.sum())),
                    planarity_max_mm=float(np.abs(off_plane).max()), spanning_area_mm2=closed.span_area_mm2)
    volume_ml = abs(_signed_volume(closed.pts, closed.tris)) / 1000.0
    if ostium.planarity_rms_mm > NONPLANAR_WARNING * ostium.area_derived_diameter_mm:
        warnings.append(f"The ostium contour is far from planar (RMS {ostium.planarity_rms_mm:.1f} mm out of its "
                        "plane): the surface's rim is ragged or joined to a hole. Place the ostium plane for "
                        "reliable figures.")

    line, t0, t1 = _centerline(closed, loop, center, normal, voxel_mm)
    length = _polyline_length(line)
    bend = math.degrees(math.acos(float(np.clip(t0 @ t1, -1.0, 1.0))))
    surface = closed.polydata()
    profile = []
    for s in np.arange(profile_step_mm, length, profile_step_mm):
        p, t = _point_at(line, s)
        cs = _section_at(surface, p, t, float(s))
        if cs is not None:
            profile.append(cs)
    zones: list[Section | None] = []
    cap = make_polydata(closed.pts, closed.cap_tris)
    for d in depths:
        if d >= length:
            zones.append(None)
            warnings.append(f"The landing zone at {d:g} mm lies beyond the apex (centreline length {length:.1f} mm).")
            continue
        p, t = _point_at(line, d)
        z = _section_at(surface, p, t, d)
        if z is None:
            warnings.append(f"No cross-section encloses the centreline at {d:g} mm.")
        elif (unsigned_distance(cap, z.contour_lps) < 1e-4).any():
            warnings.append(f"The landing zone at {d:g} mm crosses the ostium plane (the appendage bends or widens "
                            "within that depth): its contour is partly the ostium.")
        zones.append(z)
    return LAAMeasurements(
        ostium=ostium, landing_zones=zones, landing_depths_mm=depths, profile=profile,
        depth_mm=float(((pts - center) @ normal).max()), apex_depth_mm=float((line[-1] - center) @ normal),
        centerline_length_mm=length, bend_angle_deg=bend, volume_ml=volume_ml,
        surface_area_mm2=float(areas.sum()), apex_lps=line[-1], centerline_lps=line,
        ostium_source=source, warnings=warnings,
    )


# ------------------------------------------------------------------------------------------ compare
def _error_key(name: str) -> str:
    """``max_diameter_mm`` → ``max_diameter_error_mm`` (the unit stays last); ``ovality`` → ``ovality_error``."""
    for unit in ("_mm2", "_mm", "_ml", "_deg"):
        if name.endswith(unit):
            return name[: -len(unit)] + "_error" + unit
    return name + "_error"


def compare_measurements(pred: LAAMeasurements, gt: LAAMeasurements) -> dict[str, float]:
    """How far the measurements of ``pred`` are from those of ``gt`` (same frame): what a clinician uses.

    ``ostium_center_distance_mm`` and ``ostium_normal_angle_deg`` (between the two ostium planes), then every
    figure as a signed error ``pred − gt`` named ``<figure>_error_<unit>`` (``ostium_max_diameter_error_mm``,
    ``landing_10mm_min_diameter_error_mm``, ``depth_error_mm``, ``volume_error_ml``...). Landing zones are
    paired by position (both measured at the same depths); NaN where either side has no value.
    """
    out = {
        "ostium_center_distance_mm": float(np.linalg.norm(pred.ostium.center_lps - gt.ostium.center_lps)),
        "ostium_normal_angle_deg": float(np.degrees(np.arccos(np.clip(pred.ostium.normal_lps @ gt.ostium.normal_lps,
                                                                        -1.0, 1.0)))),
    }
    p_row, g_row = pred.flat_row(), gt.flat_row()
    for key, value in p_row.items():
        if key.startswith(("ostium_center_lps", "ostium_normal_lps")) or key not in g_row:
            continue
        out[_error_key(key)] = float(value - g_row[key])
    return out


def format_comparison(pred: LAAMeasurements, gt: LAAMeasurements) -> str:
    """A readable table: each summary figure for the prediction, the GT and their difference."""
    diffs = compare_measurements(pred, gt)
    lines = [f"{'measurement':<50} {'pred':>10} {'GT':>10} {'pred-GT':>10}",
             f"{'ostium centre distance':<50} {'':>10} {'':>10} {diffs['ostium_center_distance_mm']:10.2f} mm",
             f"{'ostium normal angle':<50} {'':>10} {'':>10} {diffs['ostium_normal_angle_deg']:10.2f} deg"]
    for (label, p, unit), (_, g, _) in zip(pred.summary_rows(), gt.summary_rows()):
        cells = [("n/a" if not math.isfinite(v) else f"{v:.2f}") for v in (p, g, p - g)]
        lines.append(f"{label:<50} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} {unit}".rstrip())
    return "\n".join(lines)


def write_json(data: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a JSON document atomically (NaN written as ``null``)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    p = check_output_path(path, (".json",), overwrite)
    with atomic_output(p, suffix=".json") as tmp:
        tmp.write_text(json.dumps(clean(data), indent=1) + "\n")
    return p
