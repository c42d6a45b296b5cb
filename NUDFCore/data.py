"""The dataset layout shared by phantoms and real data, and the case list training reads.

A dataset is a folder with one sub-folder per case::

    <root>/<case>/ct.nii.gz | ct.nii | ct.nrrd | ct.mha | ct.mhd | dicom/   the CT (any NUDFCore.io.read_volume input)
    <root>/<case>/laa.vtp | laa.stl | laa.ply | laa.obj | laa.vtk          the open LAA lumen surface
    <root>/<case>/meta.json                                                 optional metadata

* The mesh is in LPS millimetres unless the file says ``SPACE=RAS`` (as Slicer writes it), and is an
  *open* surface cut at the LAA ostium (one boundary loop).
* ``meta.json`` is written for phantoms (:mod:`NUDFCore.phantom`); for real data it is optional. When
  present, ``seed_lps`` (a point inside the LAA lumen), ``ostium_center_lps`` and ``ostium_normal_lps``
  (unit, from the LA into the LAA) are used as given; otherwise they are estimated from the mesh: the
  ostium plane is fitted to the mesh's largest boundary loop, and the seed is the candidate point inside
  the (capped) surface farthest from both the wall and the ostium plane.
* Case folders are listed in sorted order; folders lacking a CT or a mesh are skipped, and a root holding
  no valid case is an :class:`~NUDFCore.errors.InputError` that says what is missing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import vtk

from .errors import InputError
from .io import Volume, make_polydata, polydata_points, polydata_triangles, read_mesh, read_volume

CT_NAMES: tuple[str, ...] = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct.mhd", "dicom")
MESH_NAMES: tuple[str, ...] = ("laa.vtp", "laa.stl", "laa.ply", "laa.obj", "laa.vtk")
META_NAME = "meta.json"


@dataclass
class Case:
    """One case of a dataset: where its CT, mesh and metadata are; geometry loaded on demand."""

    case_dir: Path
    ct_path: Path
    mesh_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.case_dir.name

    def load_volume(self) -> Volume:
        """The CT (HU, LPS geometry)."""
        return read_volume(self.ct_path)

    def load_mesh(self) -> vtk.vtkPolyData:
        """The ground-truth LAA surface in LPS mm."""
        return read_mesh(self.mesh_path)

    @cached_property
    def _mesh_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        mesh = self.load_mesh()
        return polydata_points(mesh), polydata_triangles(mesh)

    @cached_property
    def _fitted_ostium(self) -> tuple[np.ndarray, np.ndarray]:
        pts, tris = self._mesh_geometry
        return fit_ostium(pts, tris, where=str(self.mesh_path))

    @property
    def ostium_center_lps(self) -> np.ndarray:
        """Ostium centre: the metadata's, else the centroid of the mesh's largest boundary loop."""
        if "ostium_center_lps" in self.meta:
            return np.asarray(self.meta["ostium_center_lps"], float)
        return self._fitted_ostium[0]

    @property
    def ostium_normal_lps(self) -> np.ndarray:
        """Unit ostium normal from the LA into the LAA: the metadata's, else a plane fit to the loop."""
        if "ostium_normal_lps" in self.meta:
            n = np.asarray(self.meta["ostium_normal_lps"], float)
            return n / np.linalg.norm(n)
        return self._fitted_ostium[1]

    @cached_property
    def seed_lps(self) -> np.ndarray:
        """A point inside the LAA lumen: the metadata's, else estimated from the mesh."""
        if "seed_lps" in self.meta:
            return np.asarray(self.meta["seed_lps"], float)
        pts, tris = self._mesh_geometry
        return estimate_seed(pts, tris, self.ostium_center_lps, self.ostium_normal_lps, where=str(self.mesh_path))


def _largest_loop(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    from .meshtools import boundary_loops, loop_length

    loops = boundary_loops(make_polydata(points, triangles))
    if not loops:
        return np.zeros(0, dtype=np.int64)
    return max(loops, key=lambda lp: loop_length(points, lp))


def fit_ostium(points: np.ndarray, triangles: np.ndarray, where: str = "the mesh") -> tuple[np.ndarray, np.ndarray]:
    """Ostium (centre, unit normal into the LAA) fitted to an open LAA mesh's largest boundary loop.

    The normal is the loop's least-squares plane normal, oriented towards the bulk of the mesh.
    """
    loop = _largest_loop(points, triangles)
    if len(loop) < 3:
        raise InputError(f"{where} has no boundary loop: an open LAA surface cut at the ostium is expected.")
    lp = points[loop]
    centre = lp.mean(axis=0)
    _, _, vt = np.linalg.svd(lp - centre)
    normal = vt[2]
    if float(np.dot(points.mean(axis=0) - centre, normal)) < 0:
        normal = -normal
    return centre, normal / np.linalg.norm(normal)


def estimate_seed(points: np.ndarray, triangles: np.ndarray, ostium_center: np.ndarray, ostium_normal: np.ndarray,
                  where: str = "the mesh") -> np.ndarray:
    """A lumen point of an open LAA mesh: inside the capped surface, farthest from the wall and the ostium.

    Candidates are points on the ostium axis, between the ostium and the mesh centroid, and vertices moved
    inwards along their normals; robust to bent (chicken-wing) shapes whose centroid lies outside.
    """
    from .meshtools import capped, inside_closed, unsigned_distance, vertex_normals

    n = ostium_normal / np.linalg.norm(ostium_normal)
    depth = max(float(((points - ostium_center) @ n).max()), 1.0)
    cand = [ostium_center + t * n for t in np.linspace(0.05, 0.95, 19) * depth]
    centroid = points.mean(axis=0)
    cand += [ostium_center + t * (centroid - ostium_center) for t in np.linspace(0.1, 1.5, 15)]
    # inward offsets of vertices (normals from the winding; both orientations tried, inside test sorts it)
    vn = vertex_normals(points, triangles)
    sel = np.linspace(0, len(points) - 1, min(len(points), 400)).astype(int)
    for d in (1.5, 3.0, 4.5, 6.0):
        cand += list(points[sel] - d * vn[sel])
        cand += list(points[sel] + d * vn[sel])
    cand = np.asarray(cand, float)
    cand = cand[(cand - ostium_center) @ n > 0.5]
    if len(cand) == 0:
        raise InputError(f"Cannot find a lumen point in {where}.")
    mesh = make_polydata(points, triangles)
    inside = inside_closed(capped(mesh, apex=ostium_center), cand)
    if not inside.any():
        raise InputError(f"Cannot find a lumen point in {where}: is it a closed-but-for-the-ostium LAA surface?")
    cand = cand[inside]
    score = np.minimum(unsigned_distance(mesh, cand), (cand - ostium_center) @ n)
    return cand[int(np.argmax(score))]


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    for nm in names:
        p = folder / nm
        if nm == "dicom":
            if p.is_dir() and any(p.iterdir()):
                return p
        elif p.is_file():
            return p
    return None


def load_case(case_dir: str | os.PathLike) -> Case:
    """One case folder as a :class:`Case` (InputError naming what is missing)."""
    d = Path(case_dir)
    if not d.is_dir():
        raise InputError(f"The case folder {d} does not exist.")
    ct = _find(d, CT_NAMES)
    mesh = _find(d, MESH_NAMES)
    missing = ([] if ct else [f"a CT ({' | '.join(CT_NAMES)})"]) + ([] if mesh else [f"a mesh ({' | '.join(MESH_NAMES)})"])
    if missing:
        raise InputError(f"The case folder {d} lacks {' and '.join(missing)}.")
    meta: dict = {}
    mp = d / META_NAME
    if mp.is_file():
        try:
            meta = json.loads(mp.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{mp} is not valid JSON ({exc}).") from exc
        if not isinstance(meta, dict):
            raise InputError(f"{mp} must hold a JSON object.")
    return Case(case_dir=d, ct_path=ct, mesh_path=mesh, meta=meta)


def list_cases(root: str | os.PathLike) -> list[Case]:
    """All valid cases under ``root``, sorted by folder name.

    Sub-folders without a CT or a mesh are skipped. Raises InputError if ``root`` does not exist, holds no
    valid case (the message says what the sub-folders lack) or a case's meta.json is not a JSON object.
    """
    r = Path(root)
    if not r.exists():
        raise InputError(f"The dataset folder {r} does not exist.")
    if not r.is_dir():
        raise InputError(f"The dataset path {r} is not a folder.")
    cases, problems = [], []
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _find(d, CT_NAMES) is None or _find(d, MESH_NAMES) is None:  # not a case: skipped, reported if none
            try:
                load_case(d)
            except InputError as exc:
                problems.append(str(exc))
            continue
        cases.append(load_case(d))  # a broken meta.json is an error, not a skipped folder
    if not cases:
        detail = f" ({problems[0]}{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''})" if problems else \
            " (it has no case sub-folders)"
        raise InputError(
            f"The dataset folder {r} holds no valid case{detail}. Each case is a sub-folder with a CT "
            f"({', '.join(CT_NAMES)}) and an LAA mesh ({', '.join(MESH_NAMES)}).")
    return cases


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Split by case into (train, validation), deterministically for a given seed.

    The validation set holds round(val_fraction * n) cases (at least one when val_fraction > 0 and there
    are two or more cases); both lists are sorted by case name.
    """
    vf = float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise InputError(f"val_fraction must be in [0, 1) (got {val_fraction}).")
    ordered = sorted(cases, key=lambda c: c.name)
    n = len(ordered)
    n_val = int(round(vf * n))
    if vf > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = min(n_val, max(n - 1, 0))
    perm = np.random.default_rng(int(seed)).permutation(n)
    val_idx = set(int(i) for i in perm[:n_val])
    train = [c for i, c in enumerate(ordered) if i not in val_idx]
    val = [c for i, c in enumerate(ordered) if i in val_idx]
    return train, val
