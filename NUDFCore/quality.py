"""Can this LAA surface be trusted? Per-vertex confidence, and checks of completeness and plausibility.

A wrong mesh looks as confident as a right one unless it says otherwise. Two answers, both computed from the
result (and the image) without any ground truth; ``docs/quality.md`` gives the reasoning and the measurements.

**Per-vertex confidence** (:func:`vertex_confidence`, point array ``confidence`` in [0, 1], beside
``distance_mm``, the network's distance at the vertex). Three signs that the network is unsure of the wall there,
each mapped to (0, 1] and multiplied:

* the *floor*: an exact UDF is 0 on its surface; the network's distance at the vertex is not, and the less
  sure it is, the higher: ``exp(-distance / FLOOR_SCALE_MM)``;
* the *slope*: across a wall an exact UDF rises with slope 1; a flat valley (the probes of
  :func:`NUDFCore.meshing._probe_valleys` fit its slope) cannot say where in it the wall is: ``min(1, slope)``;
* *agreement between two views*: the same network on a crop shifted by a fraction of a voxel sees the same
  anatomy through different sampling; where its distance at the vertex differs, the wall depends on how the
  crop fell: ``exp(-|d_shifted - d| / AGREEMENT_SCALE_MM)``.

The scales are round numbers chosen on held-out phantoms (``benchmarks/confidence.py`` reports how the vertex
error grows as confidence falls); they do not depend on particular weights.

**Whole-surface checks** (:func:`assess_surface`): an LAA surface is an open sheet whose one rim, the ostium,
is roughly planar, 10–40 mm across and opens into the wider lumen of the left atrium; it has no other holes,
an area and a capped volume in anatomical ranges, and the seed inside it. Each failed check is a
:class:`QualityWarning` in plain words ("the surface may be incomplete near …", "this does not look like a
left atrial appendage: …"); ``nudf segment --strict`` turns warnings into a failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import vtk

from .frames import check_frame, from_lps
from .io import Volume, point_array, polydata_points, polydata_triangles, set_point_array
from .meshing import DISTANCE_ARRAY, SLOPE_ARRAY
from . import meshtools

CONFIDENCE_ARRAY = "confidence"
#: Confidence scales (mm), see the module docstring.
FLOOR_SCALE_MM = 0.5
AGREEMENT_SCALE_MM = 0.5

#: Anatomical ranges (an LAA ostium is 10–40 mm across; LAA volumes are a few mL, rarely above 20 mL).
OSTIUM_DIAMETER_MM = (10.0, 40.0)
#: RMS distance of the rim from its best plane, relative to its diameter, above which it is not an ostium.
OSTIUM_PLANARITY = 0.15
AREA_MM2 = (300.0, 8000.0)
VOLUME_ML = (0.5, 40.0)
#: Holes other than the ostium at least this wide are reported: the diameter of a disk of the hole's area
#: (projected into its best plane), so a thin slit between two strips of surface counts for what it lacks. The
#: meshing fills holes up to 2 mm across on its own.
HOLE_DIAMETER_MM = 4.0
#: A seed farther outside the capped surface than this is not in what was segmented.
SEED_OUTSIDE_MM = 2.0
#: The lumen beyond a true ostium widens into the atrium: at 4–14 mm beyond the rim, at least this fraction of a
#: ring just outside the rim's radius is contrast-filled. Calibrated on training phantoms (seeds 2000–2015):
#: ground-truth rims 0.84–1.0; the same surfaces cut 35 % of the way into the appendage 0.07–1.0, below 0.5 in
#: 9 of 16 (where a bent appendage or a neighbouring lobe lies beyond the cut, the check cannot tell).
OPENS_INTO_ATRIUM = 0.5
#: Share of the area below LOW_CONFIDENCE above which the user is told the network is unsure.
LOW_CONFIDENCE = 0.3
LOW_CONFIDENCE_AREA = 0.25


@dataclass(frozen=True)
class QualityWarning:
    """One failed check: a stable ``code`` for programs and a ``message`` for people."""

    code: str
    message: str
    location_lps: tuple[float, float, float] | None = None

    def __str__(self) -> str:
        return self.message

    def in_frame(self, frame: str = "LPS") -> str:
        """The message with its location in ``frame`` ('LPS' as written, or 'RAS' for Slicer's views)."""
        return message_in_frame(self.message, self.location_lps, frame)


def message_in_frame(message: str, location_lps, frame: str = "LPS") -> str:
    """``message`` with the point it names (``LPS [x, y, z]``, :func:`_where`) rewritten in ``frame``.

    Warnings are written in LPS, the engine's frame; Slicer shows RAS, so its module rewrites them here rather
    than teach the checks two frames.
    """
    frame = check_frame(frame)
    if location_lps is None or frame == "lps":
        return message
    p = np.asarray(location_lps, float).reshape(3)
    return message.replace(_where(p), f"{frame.upper()} {_fmt(from_lps(p, frame))}")


# ------------------------------------------------------------------------------------------- confidence
def vertex_confidence(distance_mm: np.ndarray, slope: np.ndarray | None, other_distance_mm: np.ndarray | None
                      ) -> np.ndarray:
    """Confidence in [0, 1] per vertex from the floor, the valley slope and the agreement of a second view."""
    d = np.maximum(np.asarray(distance_mm, dtype=np.float64), 0.0)
    c = np.exp(-d / FLOOR_SCALE_MM)
    if slope is not None:
        c = c * np.clip(np.asarray(slope, dtype=np.float64), 0.0, 1.0)
    if other_distance_mm is not None:
        c = c * np.exp(-np.abs(np.asarray(other_distance_mm, dtype=np.float64) - d) / AGREEMENT_SCALE_MM)
    return np.clip(np.nan_to_num(c, nan=0.0), 0.0, 1.0)


def attach_confidence(mesh: vtk.vtkPolyData, distance_mm: np.ndarray, slope: np.ndarray | None,
                      other_distance_mm: np.ndarray | None) -> np.ndarray:
    """Write ``distance_mm`` and ``confidence`` on the mesh (and drop the internal slope array); returns the
    confidence."""
    conf = vertex_confidence(distance_mm, slope, other_distance_mm)
    set_point_array(mesh, DISTANCE_ARRAY, distance_mm)
    set_point_array(mesh, CONFIDENCE_ARRAY, conf)
    mesh.GetPointData().RemoveArray(SLOPE_ARRAY)
    return conf


def score_vertices(mesh: vtk.vtkPolyData, udf, other_udf, moved: bool) -> int:
    """Put ``distance_mm`` and ``confidence`` on a segmentation mesh; returns the field queries made.

    ``udf``: the field the mesh was extracted from; ``other_udf``: the same network on a shifted crop (the
    second view); ``moved``: post-processing (smoothing, decimation) changed the vertices after meshing, so the
    distances meshing recorded no longer hold and are queried again (the valley slope is taken from the
    nearest meshed vertex: it describes the field around there, not the exact point).
    """
    pts = polydata_points(mesh)
    if len(pts) == 0:
        return 0
    dist = point_array(mesh, DISTANCE_ARRAY)
    slope = point_array(mesh, SLOPE_ARRAY)
    queries = 0
    if moved or dist is None or len(dist) != len(pts):
        dist = np.asarray(udf(pts), dtype=np.float64)
        queries += len(pts)
    other = np.asarray(other_udf(pts), dtype=np.float64) if other_udf is not None else None
    queries += len(pts) if other is not None else 0
    attach_confidence(mesh, dist, slope if slope is not None and len(slope) == len(pts) else None, other)
    return queries


def carry_slope(before: vtk.vtkPolyData, after: vtk.vtkPolyData) -> None:
    """Copy the valley slope to a post-processed mesh from the nearest vertex of the mesh before it."""
    from scipy.spatial import cKDTree

    slope = point_array(before, SLOPE_ARRAY)
    if slope is None or after.GetNumberOfPoints() == 0:
        return
    _, idx = cKDTree(polydata_points(before)).query(polydata_points(after))
    set_point_array(after, SLOPE_ARRAY, slope[idx])


# ------------------------------------------------------------------------------------------- geometry
def _fmt(p: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in np.asarray(p, float).ravel()) + "]"


def _where(p_lps: np.ndarray) -> str:
    """How a warning names a point: ``LPS [x, y, z]`` (see :func:`message_in_frame`)."""
    return f"LPS {_fmt(p_lps)}"


@dataclass
class Rim:
    """The longest boundary loop and its plane."""

    ids: np.ndarray
    center_lps: np.ndarray
    normal_lps: np.ndarray
    """Unit normal of the best plane, pointing away from the surface (out of the LAA, into the atrium)."""
    axes_lps: np.ndarray
    """Two unit in-plane axes (rows)."""
    diameter_mm: float
    """Largest distance between two rim points (the maximum Feret diameter)."""
    planarity_rms_mm: float
    area_mm2: float
    """Area of the rim projected into its plane."""


def rim_of(mesh: vtk.vtkPolyData, loops: list[np.ndarray] | None = None) -> Rim | None:
    """The ostium candidate: the longest boundary loop, its least-squares plane and size (None if closed)."""
    loops = meshtools.boundary_loops(mesh) if loops is None else loops
    if not loops or len(loops[0]) < 3:
        return None
    pts = polydata_points(mesh)
    rim = pts[loops[0]]
    seg = np.linalg.norm(np.roll(rim, -1, axis=0) - rim, axis=1)
    w = 0.5 * (seg + np.roll(seg, 1)) + 1e-12  # arc-length weights: vertex spacing must not bias the plane
    c = (rim * w[:, None]).sum(axis=0) / w.sum()
    _, _, vt = np.linalg.svd((rim - c) * np.sqrt(w)[:, None], full_matrices=False)
    n = vt[2]
    tris = polydata_triangles(mesh)
    areas = meshtools.triangle_areas(pts, tris)
    centroid = (pts[tris].mean(axis=1) * areas[:, None]).sum(axis=0) / max(areas.sum(), 1e-12)
    if np.dot(centroid - c, n) > 0:
        n = -n
    q = np.stack([(rim - c) @ vt[0], (rim - c) @ vt[1]], axis=1)
    sub = q[:: max(1, len(q) // 400)]
    diameter = float(np.max(np.linalg.norm(sub[:, None] - sub[None], axis=2)))
    area = 0.5 * abs(float(np.dot(q[:, 0], np.roll(q[:, 1], -1)) - np.dot(q[:, 1], np.roll(q[:, 0], -1))))
    plan = float(np.sqrt(np.average(((rim - c) @ n) ** 2, weights=w)))
    return Rim(loops[0], c, n, np.stack([vt[0], vt[1]]), diameter, plan, area)


def capped_volume_ml(mesh: vtk.vtkPolyData, loops: list[np.ndarray] | None = None) -> float:
    """Volume enclosed by the surface with every boundary loop fanned shut (mL)."""
    tris = polydata_triangles(mesh)
    if len(tris) == 0:
        return 0.0
    loops = meshtools.boundary_loops(mesh) if loops is None else loops
    return abs(meshtools.capped_signed_volume(polydata_points(mesh), tris, loops)) / 1000.0


def seed_outside_mm(mesh: vtk.vtkPolyData, seed_lps: Sequence[float], loops: list[np.ndarray]) -> float:
    """0 when the seed lies inside the capped surface, else its distance to the surface (mm)."""
    seed = np.asarray(seed_lps, float).reshape(1, 3)
    if meshtools.inside_closed(meshtools.capped(mesh, loops), seed)[0]:
        return 0.0
    return float(meshtools.point_to_mesh_distance(mesh, seed)[0][0])


def _loop_disk_diameter(loop_pts: np.ndarray) -> float:
    """Diameter (mm) of the disk with the area of a closed loop projected into its least-squares plane."""
    if len(loop_pts) < 3:
        return 0.0
    q = loop_pts - loop_pts.mean(axis=0)
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    x, y = q @ vt[0], q @ vt[1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return 2.0 * float(np.sqrt(area / np.pi))


# ------------------------------------------------------------------------------------------- image
def sample_hu(ct: Volume, points_lps: np.ndarray) -> np.ndarray:
    """Trilinear HU at LPS points (nearest edge value outside the image)."""
    from scipy import ndimage

    ijk = np.asarray(ct.lps_to_index(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)))
    return ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest",
                                   output=np.float64)


def contrast_hu(ct: Volume, mesh: vtk.vtkPolyData, center_lps: np.ndarray, n: int = 3000, seed: int = 0
                ) -> tuple[float, float]:
    """(blood, wall) HU of this scan around the LAA: blood = the 95th percentile of a 30 mm cube around
    ``center_lps`` (its blood pools: the atrium, the appendage), wall = the median 1.5 mm outside the surface.

    Not the median inside the surface: a filling defect (a clot, poor mixing) can darken much of the appendage.
    """
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    normals = meshtools.face_normals(pts, tris)
    pick = np.random.default_rng(seed).choice(len(tris), size=min(n, len(tris)), replace=False)
    cent = pts[tris[pick]].mean(axis=1)
    a = sample_hu(ct, cent - 1.5 * normals[pick])
    b = sample_hu(ct, cent + 1.5 * normals[pick])
    wall = min(float(np.median(a)), float(np.median(b)))
    corners = np.asarray(center_lps, float) + 15.0 * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    ijk = np.asarray(ct.lps_to_index(corners))
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 1, size)
    block = ct.array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    blood = float(np.percentile(block, 95)) if block.size else wall
    return blood, wall


def rim_opens_fraction(ct: Volume, rim: Rim, threshold_hu: float) -> float:
    """How much the lumen beyond the rim widens: the largest contrast-filled share, over planes 4–14 mm beyond
    the rim, of a ring 1.5–5 mm outside the rim's equivalent radius (see OPENS_INTO_ATRIUM)."""
    r = float(np.sqrt(rim.area_mm2 / np.pi))
    radii = np.linspace(r + 1.5, r + 5.0, 4)
    angles = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    ring = (radii[:, None, None] * (np.cos(angles)[None, :, None] * rim.axes_lps[0]
                                    + np.sin(angles)[None, :, None] * rim.axes_lps[1])).reshape(-1, 3)
    best = 0.0
    for depth in (4.0, 6.0, 8.0, 10.0, 12.0, 14.0):
        hu = sample_hu(ct, rim.center_lps + depth * rim.normal_lps + ring)
        best = max(best, float(np.mean(hu > threshold_hu)))
    return best


# ------------------------------------------------------------------------------------------- checks
@dataclass
class Assessment:
    """Figures computed from a result (``metrics``) and the warnings they raise."""

    metrics: dict = field(default_factory=dict)
    warnings: list[QualityWarning] = field(default_factory=list)


def assess_surface(mesh_lps: vtk.vtkPolyData, ct: Volume | None = None, seed_lps: Sequence[float] | None = None
                   ) -> Assessment:
    """Completeness and plausibility of an open LAA surface (LPS mm); the image and seed checks need them."""
    out = Assessment()
    m, warn = out.metrics, out.warnings
    if mesh_lps.GetNumberOfCells() == 0:
        warn.append(QualityWarning("empty", "this does not look like a left atrial appendage: the surface is empty."))
        return out
    pts = polydata_points(mesh_lps)
    loops = meshtools.boundary_loops(mesh_lps)
    area = meshtools.mesh_area(mesh_lps)
    volume = capped_volume_ml(mesh_lps, loops)
    m.update(area_mm2=area, capped_volume_ml=volume, boundary_loops=len(loops))
    rim = rim_of(mesh_lps, loops)
    not_laa = "this does not look like a left atrial appendage: "
    if rim is None:
        warn.append(QualityWarning("no_rim", not_laa + "the surface is closed, it has no opening (ostium)."))
    else:
        m.update(ostium_diameter_mm=rim.diameter_mm, ostium_planarity_rms_mm=rim.planarity_rms_mm,
                 ostium_center_lps=rim.center_lps.tolist())
        lo, hi = OSTIUM_DIAMETER_MM
        if not lo <= rim.diameter_mm <= hi:
            warn.append(QualityWarning(
                "rim_size", not_laa + f"its opening is {rim.diameter_mm:.0f} mm across (an LAA ostium is "
                f"{lo:.0f}–{hi:.0f} mm), near {_where(rim.center_lps)}.", tuple(rim.center_lps)))
        if rim.planarity_rms_mm > OSTIUM_PLANARITY * rim.diameter_mm:
            warn.append(QualityWarning(
                "rim_not_planar", not_laa + f"its opening is not a roughly planar ring (it strays "
                f"{rim.planarity_rms_mm:.1f} mm RMS from a plane), near {_where(rim.center_lps)}.",
                tuple(rim.center_lps)))
    holes = []
    for lp in loops[1:] if rim is not None else []:
        d = _loop_disk_diameter(pts[lp])
        if d >= HOLE_DIAMETER_MM:
            holes.append((d, pts[lp].mean(axis=0)))
    m["holes"] = len(holes)
    if holes:
        d, where = max(holes, key=lambda t: t[0])
        more = f" and {len(holes) - 1} more" if len(holes) > 1 else ""
        warn.append(QualityWarning(
            "holes", f"the surface may be incomplete near {_where(where)}: it has a hole about {d:.0f} mm "
            f"across{more} besides the ostium.", tuple(where)))
    if not AREA_MM2[0] <= area <= AREA_MM2[1]:
        warn.append(QualityWarning("area", not_laa + f"its area is {area / 100:.1f} cm² (an LAA: "
                                   f"{AREA_MM2[0] / 100:.0f}–{AREA_MM2[1] / 100:.0f} cm²)."))
    if not VOLUME_ML[0] <= volume <= VOLUME_ML[1]:
        warn.append(QualityWarning("volume", not_laa + f"it encloses {volume:.1f} mL with its opening capped "
                                   f"(an LAA: {VOLUME_ML[0]:g}–{VOLUME_ML[1]:g} mL)."))
    if seed_lps is not None:
        out_mm = seed_outside_mm(mesh_lps, seed_lps, loops)
        m["seed_outside_mm"] = out_mm
        if out_mm > SEED_OUTSIDE_MM:
            warn.append(QualityWarning(
                "seed_outside", not_laa + f"the seed lies {out_mm:.0f} mm outside the surface found (is the seed "
                "in the appendage, not in the atrium, a ventricle or a vessel?).", tuple(np.asarray(seed_lps, float))))
    if ct is not None and rim is not None:
        blood_hu, wall_hu = contrast_hu(ct, mesh_lps, rim.center_lps)
        m.update(blood_hu=blood_hu, wall_hu=wall_hu)
        if blood_hu - wall_hu > 50.0:  # otherwise the image shows no contrast to judge by
            opens = rim_opens_fraction(ct, rim, 0.5 * (blood_hu + wall_hu))
            m["rim_opens_fraction"] = opens
            if opens < OPENS_INTO_ATRIUM:
                warn.append(QualityWarning(
                    "rim_not_ostium", f"the surface may be incomplete near its opening at {_where(rim.center_lps)}: "
                    "the lumen beyond it does not widen into the atrium (the appendage may continue past where "
                    "the surface ends).", tuple(rim.center_lps)))
    conf = point_array(mesh_lps, CONFIDENCE_ARRAY)
    if conf is not None and len(conf) == len(pts):
        tris = polydata_triangles(mesh_lps)
        fa = meshtools.triangle_areas(pts, tris)
        low_face = conf[tris].mean(axis=1) < LOW_CONFIDENCE
        share = float(fa[low_face].sum() / max(fa.sum(), 1e-12))
        m.update(mean_confidence=float(np.average(conf[tris].mean(axis=1), weights=fa)), low_confidence_area=share)
        if share > LOW_CONFIDENCE_AREA:
            where = (pts[tris[low_face]].mean(axis=1) * fa[low_face, None]).sum(axis=0) / fa[low_face].sum()
            warn.append(QualityWarning(
                "low_confidence", f"the surface may be incomplete near {_where(where)}: the network is unsure "
                f"of {100 * share:.0f} % of it (confidence below {LOW_CONFIDENCE:g}).", tuple(where)))
    return out
