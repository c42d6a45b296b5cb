"""Label map → dataset case: the open LAA cavity surface cut at the ostium, its metadata and the CT.

Most real datasets (and TotalSegmentator's output) give voxel label maps, while training and the benchmarks
read an *open* LAA surface mesh cut at the ostium (the layout of :mod:`NUDFCore.data`). This module turns one
into the other, so a labelled scan becomes a case folder like a phantom's::

    <out>/laa.vtp     open LAA cavity surface, LPS mm, one boundary loop (the ostium rim)
    <out>/meta.json   case_id, seed_lps/seed_ras, ostium_center_lps, ostium_normal_lps, spacing, source, ...
    <out>/ct.nii.gz   the CT (copied, or converted from NRRD/MHA/DICOM), only when a CT is given

How the surface is made
-----------------------
* **Sub-voxel smooth surface.** The LAA label (its largest 26-connected part) is cut out of the label map
  with a margin and turned into a signed distance in mm (zero half-way between inside and outside voxel
  centres). Its Gaussian blur (σ = :data:`SIGMA_VOX` × the finest spacing, the same length in mm along every
  axis) is resampled with cubic splines onto a finer grid (``mesh_step_mm``, at most the finest spacing)
  and meshed at its zero level by marching cubes. Interpolating a distance rather than the label itself is
  shape-based interpolation: between thick slices the wall runs as a slope from one slice's outline to the
  next instead of a terrace (on a 0.7 × 0.7 × 2.5 mm grid the mean error to an analytic surface is 0.17 mm
  against 0.28 mm for a blurred label). Vertices go from voxel indices to LPS through the label image's own
  geometry, so anisotropic, oblique and left-handed grids work; faces are wound with their normals out of
  the cavity.
* **Cut at the ostium, from the atrium label.** The ostium is where the LAA label touches the atrium (or
  whole-heart) label. Only the largest contact patch counts (isolated touches elsewhere are ignored). Each
  vertex gets ``d_A``, its distance (mm) to the atrium voxels of that patch, and ``d_O``, its distance to
  every other non-LAA voxel; the surface is clipped where ``d_A = d_O``, keeping ``d_A ≥ d_O``. A wall
  whose outside neighbour is the atrium (the mouth, where the label boundary is only a label boundary) is
  removed, a wall facing anything else is kept, and the cut falls on the line where LAA, atrium and the
  rest meet — no distance threshold to tune. The largest remaining sheet is kept.
* **Or at a plane** (``ostium_plane_lps``: a point and a normal pointing from the atrium into the LAA): the
  closed surface is clipped by :func:`NUDFCore.meshtools.clip_by_plane` and the sheet on the LAA side kept.
* **One boundary loop.** Small extra holes (a gap in the contact patch, a pinhole of the label) are closed
  by a fan from their centroid and counted in ``meta.json`` (``laa.filled_holes``); a second loop longer
  than half the ostium rim means the contact is ambiguous and is refused.
* **Ostium and seed.** The ostium centre and unit normal are the centroid and least-squares (SVD) plane
  normal of the final boundary loop, oriented from the atrium into the LAA. ``seed_lps`` is the LAA voxel
  farthest from both the LAA wall and the ostium plane (the maximum of ``min(distance transform, height
  above the ostium)``): a point deep inside the appendage, the seed ``nudf segment`` needs.

Checks (each a typed :class:`~NUDFCore.errors.NUDFError` with one clear line, and nothing written): the
label map is a 3D scalar image of non-negative integer labels; the LAA (and atrium) label is present; the
LAA touches the atrium label when no plane is given; the CT, when given, shares the label map's physical
space (same orientation and field of view within one voxel; the grids may differ); the output folder is
new or ``force`` is given, and its parent accepts new files (created if missing; checked before any work).
Everything is written into a temporary folder beside the output that is renamed into place at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import vtk
from scipy import ndimage as ndi

from . import __version__
from .errors import ImageGeometryError, ImageReadError, InputError, OutputExistsError
from .frames import lps_to_ras
from .io import (
    Volume,
    check_output_dir,
    make_polydata,
    polydata_points,
    polydata_triangles,
    read_volume,
    write_mesh,
    write_volume,
)
from .meshtools import (
    boundary_loops,
    clip_by_plane,
    clip_by_scalar,
    keep_largest_component,
    loop_length,
    mesh_area,
)

#: Gaussian blur of the LAA label's signed distance before meshing, in units of the finest voxel spacing (the
#: same length in mm along every axis).
SIGMA_VOX = 0.7
#: Finest and coarsest default marching-cubes step (mm); the default is the finest spacing clipped to this range.
MESH_STEP_RANGE_MM = (0.25, 0.5)
#: A hole other than the ostium is filled only when its perimeter is below this share of the ostium rim's.
MAX_FILLED_HOLE_FRACTION = 0.5
#: More distinct values than this in a "label map" means it is an intensity image (a CT given by mistake).
MAX_LABELS = 1000


@dataclass
class PreparedCase:
    """The open LAA surface (LPS mm) and the metadata of one prepared case (not yet written)."""

    mesh_lps: vtk.vtkPolyData
    meta: dict


# ------------------------------------------------------------------------------------------ inputs
def read_label_map(path: str | os.PathLike) -> Volume:
    """Read a 3D label map (any :func:`NUDFCore.io.read_volume` input) and check it holds labels.

    Raises :class:`ImageGeometryError` for a 2D/4D/vector image, :class:`InputError` for negative or
    non-integer values or more than :data:`MAX_LABELS` distinct values (an intensity image, not labels).
    """
    p = Path(path)
    if p.is_file():  # say "label map" for a wrong dimension, before reading the voxels
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unknown error"
            raise ImageReadError(f"Cannot read the label map {p} as an image ({reason}).") from exc
        dim = reader.GetDimension()
        if dim != 3:
            raise ImageGeometryError(
                f"The label map {p} is a {dim}D image (size {reader.GetSize()}); a 3D label map is needed.")
    labels = read_volume(p)
    a = labels.array
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise InputError(f"The label map {p} holds non-integer values: an intensity image, not labels?")
    elif a.dtype.kind not in "iub":
        raise InputError(f"The label map {p} has voxels of type {a.dtype}; integer labels are needed.")
    if a.size and a.min() < 0:
        raise InputError(f"The label map {p} holds negative values ({a.min():g}): a CT given as labels?")
    if a.size and a.max() > MAX_LABELS and len(np.unique(a)) > MAX_LABELS:
        raise InputError(f"The label map {p} holds more than {MAX_LABELS} distinct values: an intensity "
                         "image, not labels?")
    return labels


def _voxel_box_corners_lps(vol: Volume) -> np.ndarray:
    """The 8 corners (LPS) of the box covered by the voxels (their outer faces, not their centres)."""
    n = np.array(vol.size_ijk, float)
    c = np.array([[a, b, d] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for d in (-0.5, n[2] - 0.5)])
    return vol.index_to_lps(c)


def check_same_space(labels: Volume, ct: Volume, *, labels_name: str = "the label map",
                     ct_name: str = "the CT") -> None:
    """Refuse a CT that does not cover the label map's physical space (the grids themselves may differ).

    Same orientation (axis directions within 1e-3) and the same field of view: every corner of the two voxel
    boxes within one voxel (the larger spacing of the two images) of its counterpart.
    """
    d = float(np.abs(labels.direction_lps - ct.direction_lps).max())
    if d > 1e-3:
        raise ImageGeometryError(
            f"{ct_name} and {labels_name} do not share a physical space: their axis directions differ "
            f"(max difference {d:.3g}); resample the labels onto the CT first.")
    tol = float(max(labels.spacing.max(), ct.spacing.max()))
    gap = float(np.linalg.norm(_voxel_box_corners_lps(labels) - _voxel_box_corners_lps(ct), axis=1).max())
    if gap > tol:
        raise ImageGeometryError(
            f"{ct_name} and {labels_name} do not share a physical space: their fields of view differ by up to "
            f"{gap:.1f} mm (tolerance {tol:.2f} mm, one voxel); give the CT the labels were made from.")


def parse_plane(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y, z, nx, ny, nz)`` → (point, unit normal); InputError for a wrong count or a zero normal."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != 6 or not np.all(np.isfinite(v)):
        raise InputError(f"An ostium plane is six numbers x,y,z,nx,ny,nz (LPS mm); got {list(values)}.")
    n = v[3:]
    if np.linalg.norm(n) < 1e-9:
        raise InputError("The ostium plane normal (nx,ny,nz) must not be zero.")
    return v[:3], n / np.linalg.norm(n)


# ------------------------------------------------------------------------------------------ geometry
@dataclass
class _Sub:
    """A padded sub-volume of the label map around the LAA: masks and the index offset of voxel [0,0,0]."""

    laa: np.ndarray  # bool [k, j, i]
    labels: np.ndarray  # the label values (padding = 0)
    offset_kji: np.ndarray  # index (k, j, i) in the full image of sub-voxel (0, 0, 0)
    touches_border: bool
    dropped_voxels: int


def _default_mesh_step(labels: Volume) -> float:
    """The marching-cubes step: the finest spacing, kept within :data:`MESH_STEP_RANGE_MM`."""
    return float(np.clip(labels.spacing.min(), *MESH_STEP_RANGE_MM))


def _margin(sigma_vox: float) -> int:
    """Voxels kept around a label: room for its blur and the marching-cubes border."""
    return int(np.ceil(3 * sigma_vox)) + 3


def _sub_volume(labels: Volume, laa_label: int, margin: int) -> _Sub:
    """Crop around the LAA label with ``margin`` voxels (zero-padded beyond the image) and keep its largest part."""
    full = labels.array
    mask = full == laa_label
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx]) + 1
    shape = np.array(full.shape)
    touches = bool(np.any(lo == 0) or np.any(hi == shape))
    a, b = lo - margin, hi + margin
    ca, cb = np.maximum(a, 0), np.minimum(b, shape)
    sub = np.zeros(tuple(b - a), dtype=full.dtype)
    sub[tuple(slice(x - y, z - y) for x, y, z in zip(ca, a, cb))] = full[tuple(slice(x, z) for x, z in zip(ca, cb))]
    laa = sub == laa_label
    comp, n = ndi.label(laa, structure=np.ones((3, 3, 3)))
    dropped = 0
    if n > 1:
        sizes = np.bincount(comp.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        dropped = int(sizes.sum() - sizes[keep - 1])
        laa = comp == keep
    return _Sub(laa=laa, labels=sub, offset_kji=a, touches_border=touches, dropped_voxels=dropped)


def _sub_index_to_lps(labels: Volume, sub: _Sub, kji: np.ndarray) -> np.ndarray:
    """Continuous (k, j, i) indices of the sub-volume → LPS points."""
    ijk = (np.asarray(kji, float) + sub.offset_kji)[:, ::-1]
    return labels.index_to_lps(ijk)


def _lps_to_sub_index(labels: Volume, sub: _Sub, points_lps: np.ndarray) -> np.ndarray:
    return labels.lps_to_index(points_lps)[:, ::-1] - sub.offset_kji


def _signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    a, b, c = (points[triangles[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _closed_surface(labels: Volume, sub: _Sub, sigma_vox: float, step_mm: float) -> vtk.vtkPolyData:
    """The closed, smooth surface (LPS, normals out of the cavity) of the sub-volume's mask (``sub.laa``).

    Zero level of the label's signed distance (mm, positive inside), blurred by ``sigma_vox`` × the finest
    spacing in mm along every axis and resampled with cubic splines on a ``step_mm`` grid.
    """
    from skimage.measure import marching_cubes

    spacing_kji = labels.spacing[::-1]
    m = sub.laa
    outside = ndi.distance_transform_edt(~m, sampling=spacing_kji) - ndi.distance_transform_edt(m, sampling=spacing_kji)
    sigma_mm = float(sigma_vox) * float(labels.spacing.min())
    field = ndi.gaussian_filter(-outside.astype(np.float32), sigma=tuple(sigma_mm / spacing_kji), mode="nearest")
    step_kji = np.minimum(step_mm / spacing_kji, 1.0)  # fine-grid step in voxels along k, j, i
    axes = [np.arange(0.0, n - 1 + 1e-9, s) for n, s in zip(field.shape, step_kji)]
    grid = np.meshgrid(*axes, indexing="ij")
    fine = ndi.map_coordinates(field, grid, order=3, mode="nearest").astype(np.float32)
    if not fine.max() > 0.0:
        raise InputError("The LAA label is too thin to give a surface (thinner than about one voxel).")
    verts, faces, _, _ = marching_cubes(fine, level=0.0, spacing=tuple(float(s) for s in step_kji))
    points = _sub_index_to_lps(labels, sub, verts)
    faces = faces.astype(np.int64)
    if _signed_volume(points, faces) < 0:
        faces = faces[:, ::-1]
    return keep_largest_component(make_polydata(points, faces))


def closed_label_surface(labels: Volume, label: int, sigma_vox: float = SIGMA_VOX,
                         mesh_step_mm: float | None = None) -> vtk.vtkPolyData:
    """The closed smooth surface (LPS, normals outward) of any one label's largest part, made as the LAA's is.

    For measuring a label map's own conventions on other structures (e.g. where it draws a vessel's wall).
    """
    if not (labels.array == int(label)).any():
        raise InputError(f"The label {int(label)} is not in the label map.")
    if mesh_step_mm is None:
        mesh_step_mm = _default_mesh_step(labels)
    sub = _sub_volume(labels, int(label), _margin(sigma_vox))
    return _closed_surface(labels, sub, sigma_vox, mesh_step_mm)


def _sample(field: np.ndarray, kji: np.ndarray) -> np.ndarray:
    """Trilinear samples of a voxel field at continuous (k, j, i) indices."""
    return ndi.map_coordinates(field, kji.T, order=1, mode="nearest")


def _ostium_atrium_mask(sub: _Sub, atrium_label: int, laa_label: int) -> tuple[np.ndarray, int]:
    """Atrium voxels of the largest patch touching the LAA (face neighbours), and that patch's size."""
    atrium = sub.labels == atrium_label
    touching = atrium & ndi.binary_dilation(sub.laa, structure=ndi.generate_binary_structure(3, 1))
    comp, n = ndi.label(touching, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise InputError(
            f"The LAA label {laa_label} does not touch the atrium label {atrium_label}: no ostium to cut at. "
            "Give the ostium plane instead (--ostium-plane-lps x,y,z,nx,ny,nz).")
    sizes = np.bincount(comp.ravel())[1:]
    return comp == int(np.argmax(sizes)) + 1, int(sizes.max())


def cut_at_contact(labels: Volume, sub: _Sub, closed_lps: vtk.vtkPolyData, atrium_ostium: np.ndarray
                   ) -> vtk.vtkPolyData:
    """Open the closed LAA surface where its outside neighbour is the atrium patch (``d_A < d_O``)."""
    other = ~(sub.laa | atrium_ostium)
    sampling = labels.spacing[::-1]
    d_a = ndi.distance_transform_edt(~atrium_ostium, sampling=sampling)
    d_o = ndi.distance_transform_edt(~other, sampling=sampling)
    kji = _lps_to_sub_index(labels, sub, polydata_points(closed_lps))
    return clip_by_scalar(closed_lps, _sample(d_a, kji) - _sample(d_o, kji))


def _fan(loop: np.ndarray, centre_index: int) -> np.ndarray:
    """Triangles closing a boundary loop with a fan around the point ``centre_index``."""
    return np.stack([np.full(len(loop), centre_index), loop, np.roll(loop, -1)], axis=1)


def single_loop(mesh: vtk.vtkPolyData, where: str) -> tuple[vtk.vtkPolyData, int]:
    """Keep the largest sheet and close every hole but the ostium rim; (mesh, number of holes filled)."""
    if mesh.GetNumberOfCells() == 0:
        raise InputError(f"Cutting {where} left no surface: check the labels and the ostium.")
    mesh = keep_largest_component(mesh)
    pts = polydata_points(mesh)
    loops = boundary_loops(mesh)
    if not loops:
        raise InputError(f"Cutting {where} left a closed surface (no ostium opening); check the labels.")
    loops.sort(key=lambda lp: loop_length(pts, lp), reverse=True)
    rim = loop_length(pts, loops[0])
    extra = loops[1:]
    if not extra:
        return mesh, 0
    second = loop_length(pts, extra[0])
    if second > MAX_FILLED_HOLE_FRACTION * rim:
        raise InputError(
            f"Cutting {where} left {len(loops)} openings, the second {second:.0f} mm around against the ostium "
            f"rim's {rim:.0f} mm: the ostium is ambiguous; give the ostium plane instead.")
    tris = polydata_triangles(mesh)
    new_pts, fans = [pts], [tris]
    for lp in extra:
        new_pts.append(pts[lp].mean(axis=0, keepdims=True))
        fans.append(_fan(lp, sum(len(p) for p in new_pts) - 1))
    return make_polydata(np.vstack(new_pts), np.vstack(fans)), len(extra)


def _fit_loop(points: np.ndarray, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centroid, unit SVD plane normal (unoriented) and mean diameter of a boundary loop."""
    lp = points[loop]
    centre = lp.mean(axis=0)
    normal = np.linalg.svd(lp - centre)[2][2]
    radial = (lp - centre) - np.outer((lp - centre) @ normal, normal)
    return centre, normal / np.linalg.norm(normal), float(2.0 * np.linalg.norm(radial, axis=1).mean())


def deep_seed(labels: Volume, sub: _Sub, center_lps: np.ndarray, normal_lps: np.ndarray) -> np.ndarray:
    """The LAA voxel centre maximising min(distance to the LAA wall, height above the ostium plane), LPS."""
    edt = ndi.distance_transform_edt(np.pad(sub.laa, 1), sampling=labels.spacing[::-1])[1:-1, 1:-1, 1:-1]
    kji = np.argwhere(sub.laa)
    lps = _sub_index_to_lps(labels, sub, kji.astype(float))
    score = np.minimum(edt[tuple(kji.T)], (lps - center_lps) @ normal_lps)
    return lps[int(np.argmax(score))]


# ------------------------------------------------------------------------------------------ the case
def prepare_case(
    labels: Volume,
    laa_label: int,
    *,
    atrium_label: int | None = None,
    ostium_plane_lps: Sequence[float] | None = None,
    sigma_vox: float = SIGMA_VOX,
    mesh_step_mm: float | None = None,
    case_id: str = "case",
) -> PreparedCase:
    """The open LAA surface and metadata from a label map (see the module docstring for the method).

    Give exactly one of ``atrium_label`` (cut where the LAA label touches it) and ``ostium_plane_lps``
    (``x, y, z, nx, ny, nz`` in LPS mm, the normal pointing from the atrium into the LAA).
    """
    if (atrium_label is None) == (ostium_plane_lps is None):
        raise InputError("Give exactly one of the atrium label and the ostium plane to cut the LAA at.")
    if not 0.2 <= float(sigma_vox) <= 2.0:
        raise InputError(f"sigma_vox must be in [0.2, 2] voxels; got {sigma_vox}.")
    laa_label = int(laa_label)
    present = labels.array == laa_label
    if not present.any():
        found = np.unique(labels.array)
        shown = ", ".join(str(int(v)) for v in found[:30]) + (" ..." if len(found) > 30 else "")
        raise InputError(f"The LAA label {laa_label} is not in the label map (labels present: {shown}).")
    if atrium_label is not None:
        atrium_label = int(atrium_label)
        if atrium_label == laa_label:
            raise InputError("The atrium label must differ from the LAA label.")
        if not (labels.array == atrium_label).any():
            raise InputError(f"The atrium label {atrium_label} is not in the label map.")
    plane = None if ostium_plane_lps is None else parse_plane(ostium_plane_lps)
    if mesh_step_mm is None:
        mesh_step_mm = _default_mesh_step(labels)
    if not mesh_step_mm > 0:
        raise InputError(f"mesh_step_mm must be positive; got {mesh_step_mm}.")

    sub = _sub_volume(labels, laa_label, _margin(sigma_vox))
    closed = _closed_surface(labels, sub, sigma_vox, mesh_step_mm)
    laa_kji = np.argwhere(sub.laa).astype(float)
    laa_centroid = _sub_index_to_lps(labels, sub, laa_kji.mean(axis=0, keepdims=True))[0]
    contact_voxels = None
    if plane is not None:
        p0, n0 = plane
        above = (_sub_index_to_lps(labels, sub, laa_kji) - p0) @ n0 > 0
        if above.mean() < 0.5:
            raise InputError("The ostium plane's normal must point from the atrium into the LAA (most of the LAA "
                             "label lies on its other side): flip the sign of nx,ny,nz.")
        opened = clip_by_plane(closed, p0, n0)
        where = "the LAA surface at the ostium plane"
    else:
        atrium_ostium, contact_voxels = _ostium_atrium_mask(sub, atrium_label, laa_label)
        opened = cut_at_contact(labels, sub, closed, atrium_ostium)
        where = f"the LAA surface at its contact with label {atrium_label}"
    mesh, filled = single_loop(opened, where)
    pts = polydata_points(mesh)
    loops = boundary_loops(mesh)
    rim = max(loops, key=lambda lp: loop_length(pts, lp))
    centre, normal, diameter = _fit_loop(pts, rim)
    if plane is not None:
        toward_laa = plane[1]
    else:
        atrium_kji = np.argwhere(atrium_ostium).astype(float).mean(axis=0, keepdims=True)
        toward_laa = centre - _sub_index_to_lps(labels, sub, atrium_kji)[0]
    if float(normal @ toward_laa) < 0:
        normal = -normal
    seed = deep_seed(labels, sub, centre, normal)
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    meta = {
        "case_id": str(case_id),
        "seed_lps": seed.tolist(),
        "seed_ras": lps_to_ras(seed).tolist(),
        "laa_center_lps": laa_centroid.tolist(),
        "ostium_center_lps": centre.tolist(),
        "ostium_normal_lps": normal.tolist(),
        "spacing": labels.spacing.tolist(),
        "label_spacing": labels.spacing.tolist(),
        "source": {
            "kind": "label map",
            "laa_label": laa_label,
            "atrium_label": atrium_label,
            "ostium_plane_lps": None if plane is None else [*plane[0].tolist(), *plane[1].tolist()],
            "cut": "plane" if plane is not None else "label contact",
            "sigma_vox": float(sigma_vox),
            "mesh_step_mm": float(mesh_step_mm),
        },
        "laa": {
            "area_mm2": round(mesh_area(mesh), 3),
            "label_volume_ml": round(float(sub.laa.sum()) * voxel_ml, 4),
            "ostium_diameter_mm": round(diameter, 3),
            "boundary_loops": len(loops),
            "filled_holes": filled,
            "triangles": int(mesh.GetNumberOfCells()),
            "contact_voxels": contact_voxels,
            "dropped_label_voxels": sub.dropped_voxels,
            "touches_image_border": sub.touches_border,
        },
        "mesh_frame": "LPS",
        "nudfcore_version": __version__,
    }
    return PreparedCase(mesh_lps=mesh, meta=meta)


# ------------------------------------------------------------------------------------------ writing
def check_output_folder(out: str | os.PathLike, force: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output that exists (unless ``force``), a parent that cannot be created or
    written into, or (with ``force``) an output folder that holds one of the inputs."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise InputError(f"{o} exists and is not a folder.")
    check_output_dir(o.parent)  # the case is assembled beside its final place: probe that folder
    if o.is_dir() and any(o.iterdir()):
        if not force:
            raise OutputExistsError(f"The case folder {o} already exists; pass --force to replace it.")
        for src in inputs:
            s = Path(src).resolve()
            if s == o.resolve() or o.resolve() in s.parents:
                raise InputError(f"The output folder {o} holds the input {src}; choose another --out.")
    return o


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out`` (replacing an existing one) with renames only."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.resolve().parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _write_ct(ct_path: Path, ct: Volume, dest: Path) -> str:
    """Copy a NIfTI CT as it is, convert anything else (NRRD, MHA, DICOM...) to ct.nii.gz; how it was done."""
    if ct_path.is_file() and ct_path.name.lower().endswith(".nii.gz"):
        shutil.copyfile(ct_path, dest)
        return "copied"
    write_volume(ct, dest)
    return "converted"


def prepare(
    labels_path: str | os.PathLike,
    laa_label: int,
    out: str | os.PathLike,
    *,
    atrium_label: int | None = None,
    ostium_plane_lps: Sequence[float] | None = None,
    ct_path: str | os.PathLike | None = None,
    force: bool = False,
    case_id: str | None = None,
    sigma_vox: float = SIGMA_VOX,
    mesh_step_mm: float | None = None,
) -> Path:
    """Read a label map (and a CT), prepare the case and write ``out/{laa.vtp, meta.json[, ct.nii.gz]}``.

    Nothing is written unless everything succeeds. Returns the case folder.
    """
    inputs = [labels_path] + ([ct_path] if ct_path is not None else [])
    out_dir = check_output_folder(out, force, inputs)
    if (atrium_label is None) == (ostium_plane_lps is None):
        raise InputError("Give exactly one of the atrium label and the ostium plane to cut the LAA at.")
    labels = read_label_map(labels_path)
    ct = None
    if ct_path is not None:
        ct = read_volume(ct_path)
        check_same_space(labels, ct, labels_name=f"the label map {labels_path}", ct_name=f"the CT {ct_path}")
    case = prepare_case(labels, laa_label, atrium_label=atrium_label, ostium_plane_lps=ostium_plane_lps,
                        sigma_vox=sigma_vox, mesh_step_mm=mesh_step_mm,
                        case_id=case_id or Path(out).resolve().name)
    case.meta["source"]["labels"] = str(labels_path)
    case.meta["source"]["ct"] = None if ct_path is None else str(ct_path)
    if ct is not None:
        case.meta["spacing"] = ct.spacing.tolist()
    out_dir.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.resolve().parent))
    try:
        write_mesh(case.mesh_lps, tmp / "laa.vtp")
        if ct is not None:
            case.meta["source"]["ct_written"] = _write_ct(Path(ct_path), ct, tmp / "ct.nii.gz")
        (tmp / "meta.json").write_text(json.dumps(case.meta, indent=2) + "\n")
        _replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
