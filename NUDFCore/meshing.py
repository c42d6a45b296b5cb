"""Open-surface meshing of an unsigned distance field (UDF).

Marching cubes on a level ``u = eps`` of a UDF gives a closed *double* layer around an open surface. Here the
zero level is extracted as a single open sheet by *pseudo-sign* marching cubes (after MeshUDF / GeoUDF);
``docs/meshing.md`` says why each step is as it is.

1. **Adaptive evaluation** (:func:`_refine`): ``u`` is evaluated on a coarse lattice, and only cells whose
   corner values say the surface may pass through them are split, level by level, down to the final
   resolution. A dense fine grid is never evaluated.
2. **Pseudo-signs** (:func:`_propagate_signs`): on the corners of the narrow-band cubes, the unit gradients of
   ``u`` decide which side of the surface each corner lies on: neighbours whose gradients diverge lie across
   a valley of u (the surface), converging ones across a ridge (same side). Signs are propagated over a
   maximum-agreement spanning tree of the band, so all cubes share *one* sign field and the surface has no
   cracks.
3. **Marching cubes** (:func:`_march`): VTK's flying edges on the pseudo-signed field, restricted to the band.
4. **Vertex tests** (:func:`extract_open_surface`): u re-queried at the vertices (far seams), and probed at
   ±h along the normal (:func:`_probe_valleys`): ridges, stray flips beside a sheet, flanges beyond the rim.
5. **Clean-up** with VTK filters: the component near a seed / no small fragments, small holes filled,
   consistent winding; then one projection step onto the fitted valley bottom (the field's floor).

The field is any callable on points (the network in :mod:`NUDFCore.infer`, an analytic UDF in the tests);
this module never imports torch. Coordinates are in the frame of the points given to the callables (LPS mm
in the engine). Extracted meshes carry point data ``distance_mm`` (u at the vertex) and ``valley_slope``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import vtk

from .errors import InputError, SegmentationCancelled, SegmentationError
from .io import make_polydata, polydata_points, polydata_triangles, set_point_array
from .meshtools import (boundary_edges, boundary_loops, cell_locator, connected_components, face_normals, triangle_areas,
                        vertex_normals)

UDFFn = Callable[[np.ndarray], np.ndarray]
"""(N, 3) points -> (N,) unsigned distances (mm, >= 0; negative values are clamped to 0)."""
UDFGradFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]
"""(N, 3) points -> (u (N,), gradient of u (N, 3))."""
ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]

_SQRT3 = math.sqrt(3.0)
#: Point-data arrays of every extracted mesh: u at the vertex, and the fitted |grad u| of its valley.
DISTANCE_ARRAY = "distance_mm"
SLOPE_ARRAY = "valley_slope"
# Corner b of a cube sits at (b & 1, b >> 1 & 1, b >> 2 & 1) (the marching-cubes table's convention).
_CORNERS = np.array([[b & 1, (b >> 1) & 1, (b >> 2) & 1] for b in range(8)], dtype=np.int64)


@dataclass
class MeshingResult:
    """The extracted surface and what it cost."""

    mesh: vtk.vtkPolyData
    """Triangles in the frame/units of the points given to the field callables; point data ``udf``."""
    n_queries: int
    """u evaluations made (all levels, finite differences and vertex re-queries included)."""
    n_grad_queries: int
    """Gradient evaluations made through ``udf_grad`` (0 when gradients came from finite differences)."""
    n_dense_queries: int
    """What a dense lattice at the final resolution over the box would have cost."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage; ``field_eval`` is the part spent inside the callables."""
    stats: dict[str, float] = field(default_factory=dict)
    """Sizes: band cells per level, candidate cubes, faces before/after filtering, holes filled..."""
    lattice_values: tuple[np.ndarray, np.ndarray] | None = None
    """(points (N, 3), u) of every lattice point evaluated: ``known_values`` for a finer pass over the same box."""

    @property
    def query_ratio(self) -> float:
        """Dense-equivalent queries per query actually made (how much the adaptive evaluation saved)."""
        return self.n_dense_queries / max(1, self.n_queries + self.n_grad_queries)


# ------------------------------------------------------------------------------------------ evaluation
class _Evaluator:
    """Calls the field in batches, counts queries, reports progress and polls for cancellation."""

    def __init__(
        self,
        udf: UDFFn,
        udf_grad: UDFGradFn | None,
        batch_size: int,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.udf, self.udf_grad = udf, udf_grad
        self.batch_size = int(batch_size)
        self.progress, self.cancel = progress, cancel
        self.n_queries = 0
        self.n_grad_queries = 0
        self.seconds = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise SegmentationCancelled("Surface extraction was cancelled.")

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, float(min(1.0, max(0.0, fraction))))

    def u(self, points: np.ndarray, stage: str) -> np.ndarray:
        pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.empty(len(pts))
        for s in range(0, len(pts), self.batch_size):
            self.check_cancel()
            e = min(len(pts), s + self.batch_size)
            t0 = time.perf_counter()
            v = np.asarray(self.udf(pts[s:e]), dtype=np.float64).reshape(-1)
            self.seconds += time.perf_counter() - t0
            if v.shape[0] != e - s:
                raise SegmentationError(f"The distance field returned {v.shape[0]} values for {e - s} points.")
            out[s:e] = v
            self.n_queries += e - s
            self.report(stage, e / len(pts))
        return _checked(out, "distance")

    def grad(self, points: np.ndarray, stage: str) -> tuple[np.ndarray, np.ndarray]:
        assert self.udf_grad is not None
        pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        u, g = np.empty(len(pts)), np.empty((len(pts), 3))
        for s in range(0, len(pts), self.batch_size):
            self.check_cancel()
            e = min(len(pts), s + self.batch_size)
            t0 = time.perf_counter()
            ub, gb = self.udf_grad(pts[s:e])
            self.seconds += time.perf_counter() - t0
            u[s:e] = np.asarray(ub, dtype=np.float64).reshape(-1)
            g[s:e] = np.asarray(gb, dtype=np.float64).reshape(-1, 3)
            self.n_grad_queries += e - s
            self.report(stage, e / len(pts))
        if not np.all(np.isfinite(g)):
            raise SegmentationError("The distance field returned non-finite gradients.")
        return _checked(u, "distance"), g


def _checked(u: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(u)):
        raise SegmentationError(f"The {what} field returned non-finite values (NaN/inf).")
    return np.maximum(u, 0.0)


# ----------------------------------------------------------------------------------------------- lattice
class _Lattice:
    """Integer lattice: point (i, j, k), 0 <= i <= n[0]..., sits at ``origin + h * (i, j, k)``."""

    def __init__(self, origin: np.ndarray, h: float, n_cells: Sequence[int]) -> None:
        self.origin = np.asarray(origin, dtype=np.float64)
        self.h = float(h)
        self.n = np.asarray(n_cells, dtype=np.int64)
        d = self.n + 1
        self.strides = np.array([d[1] * d[2], d[2], 1], dtype=np.int64)

    def key(self, ijk: np.ndarray) -> np.ndarray:
        return np.asarray(ijk, dtype=np.int64) @ self.strides

    def ijk(self, key: np.ndarray) -> np.ndarray:
        key = np.asarray(key, dtype=np.int64)
        i = key // self.strides[0]
        r = key - i * self.strides[0]
        j = r // self.strides[1]
        return np.stack([i, j, r - j * self.strides[1]], axis=-1)

    def points(self, ijk: np.ndarray) -> np.ndarray:
        return self.origin + self.h * np.asarray(ijk, dtype=np.float64)


class _Store:
    """Values of u at lattice keys (sorted arrays; lookups by binary search)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.vals = np.zeros(0)
        # Points skipped because a Lipschitz bound proves them far: key -> lower bound of u.
        self.bound_keys = np.zeros(0, dtype=np.int64)
        self.bound_vals = np.zeros(0)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into the store, found mask) for each key."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(self.keys) == 0:
            return np.zeros(keys.shape, dtype=np.int64), np.zeros(keys.shape, dtype=bool)
        idx = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return idx, self.keys[idx] == keys

    def get(self, keys: np.ndarray) -> np.ndarray:
        idx, found = self.find(keys)
        if not np.all(found):
            raise RuntimeError("internal: lattice value requested before evaluation")
        return self.vals[idx]

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        k = np.concatenate([self.keys, keys])
        v = np.concatenate([self.vals, vals])
        order = np.argsort(k, kind="stable")
        self.keys, self.vals = k[order], v[order]

    def add_bounds(self, keys: np.ndarray, lower: np.ndarray) -> None:
        """Record lower bounds of u at points left unevaluated (the largest bound of a key wins)."""
        k = np.concatenate([self.bound_keys, keys])
        v = np.concatenate([self.bound_vals, lower])
        if len(k) == 0:
            return
        order = np.lexsort((v, k))
        k, v = k[order], v[order]
        last = np.r_[k[1:] != k[:-1], True]
        self.bound_keys, self.bound_vals = k[last], v[last]

    def value_or_bound(self, keys: np.ndarray) -> np.ndarray:
        """u where evaluated, else its recorded lower bound."""
        idx, found = self.find(keys)
        out = np.where(found, self.vals[idx] if len(self.vals) else 0.0, np.nan)
        if not np.all(found):
            keys = np.asarray(keys, dtype=np.int64)
            miss = ~found
            if len(self.bound_keys) == 0:
                raise RuntimeError("internal: lattice value requested before evaluation")
            bi = np.minimum(np.searchsorted(self.bound_keys, keys[miss]), len(self.bound_keys) - 1)
            if not np.all(self.bound_keys[bi] == keys[miss]):
                raise RuntimeError("internal: lattice value requested before evaluation")
            out[miss] = self.bound_vals[bi]
        return out

    def evaluate_missing(self, lat: _Lattice, keys: np.ndarray, ev: _Evaluator, stage: str) -> None:
        keys = np.unique(keys)
        _, found = self.find(keys)
        todo = keys[~found]
        if len(todo):
            self.add(todo, ev.u(lat.points(lat.ijk(todo)), stage))


# ------------------------------------------------------------------------------------------ pseudo-signs
def _grid_gradients(
    lat: _Lattice, store: _Store, node_ijk: np.ndarray, ev: _Evaluator | None, floor: float = 0.0
) -> np.ndarray:
    """Gradient of u at lattice nodes from lattice differences (missing neighbours evaluated when possible).

    Per axis: the central difference, except where the two one-sided differences disagree in sign (the node
    is within a step of the surface along that axis and the difference toward it straddles the zero level):
    then the one-sided difference pointing *away* from the surface, i.e. the larger in magnitude, which is
    exact for a plane. Central differences alone shrink to ``d / h`` near the surface and lose the direction
    under noise.
    """
    g = np.zeros((len(node_ijk), 3))
    kc = lat.key(node_ijk)
    ic, _ = store.find(kc)
    uc = store.vals[ic]
    for a in range(3):
        lo = node_ijk.copy()
        hi = node_ijk.copy()
        lo[:, a] -= 1
        hi[:, a] += 1
        has_lo = lo[:, a] >= 0
        has_hi = hi[:, a] <= lat.n[a]
        klo = np.where(has_lo, lat.key(np.maximum(lo, 0)), kc)
        khi = np.where(has_hi, lat.key(np.minimum(hi, lat.n)), kc)
        if ev is not None:
            # Away from the surface a one-sided difference is as good: fetch missing neighbours only for
            # nodes within a step of the surface, where the straddle test needs both sides.
            _, klo_known = store.find(klo)
            _, khi_known = store.find(khi)
            near = uc < lat.h + floor
            want = np.concatenate([klo[has_lo & near & ~klo_known], khi[has_hi & near & ~khi_known]])
            want = np.concatenate([want, klo[has_lo & ~klo_known & ~(has_hi & khi_known)]])
            store.evaluate_missing(lat, want, ev, "gradients")
        ilo, flo = store.find(klo)
        ihi, fhi = store.find(khi)
        flo &= has_lo
        fhi &= has_hi
        back = np.where(flo, (uc - store.vals[ilo]) / lat.h, np.nan)
        fwd = np.where(fhi, (store.vals[ihi] - uc) / lat.h, np.nan)
        central = 0.5 * (back + fwd)
        straddle = back * fwd < 0
        one_sided = np.where(np.abs(back) >= np.abs(fwd), back, fwd)
        ga = np.where(straddle, one_sided, central)
        ga = np.where(np.isnan(ga), np.where(np.isnan(back), fwd, back), ga)
        g[:, a] = np.nan_to_num(ga, nan=0.0)
    return g


def _propagate_signs(lat: _Lattice, node_keys: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """One side label (bool) per node from gradient agreement, over a maximum-agreement spanning forest.

    A neighbour pair a -> b (lattice step e) with opposite gradients lies across a *valley* of u (the surface)
    when they diverge, ``(g_b - g_a) . e > 0``, and across a *ridge* (midway between two sheets, the axis of a
    thin lobe's fold) when they converge: only the first flips the side. Flipping at ridges too (MeshUDF's
    ``g_a . g_b < 0``) cannot be made consistent around a fold — outside, through a sheet, the ridge and the
    other sheet back outside is three flips — so the tree had to break somewhere, leaving holes in the folds
    of thin lobes. Edge cost = 1 - reliability (|g_a . g_b|, scaled down for short gradients and, for opposite
    ones, for a small divergence): the spanning forest links the clearest pairs first. Labels are the parity
    of the tree path to each component's root, computed by pointer jumping (no per-node Python loop).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

    n = len(node_keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    norm = np.linalg.norm(grads, axis=1)
    unit = np.divide(grads, norm[:, None], out=np.zeros_like(grads), where=norm[:, None] > 0)
    rel = np.clip(norm / 0.25, 0.0, 1.0)
    ijk = lat.ijk(node_keys)
    rows, cols, axes = [], [], []
    for a in range(3):
        nb = ijk.copy()
        nb[:, a] += 1
        inside = nb[:, a] <= lat.n[a]
        kb = lat.key(nb[inside])
        idx = np.minimum(np.searchsorted(node_keys, kb), n - 1)
        hit = node_keys[idx] == kb
        rows.append(np.nonzero(inside)[0][hit])
        cols.append(idx[hit])
        axes.append(np.full(int(hit.sum()), a))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    ax = np.concatenate(axes)  # the step r -> c is +h along axis ax
    dots = np.einsum("ij,ij->i", unit[r], unit[c])
    diverge = unit[c, ax] - unit[r, ax]
    clarity = np.where(dots < 0, np.clip(np.abs(diverge), 0.0, 1.0), 1.0)
    cost = 1.0 + 1e-6 - np.abs(dots) * rel[r] * rel[c] * clarity
    graph = coo_matrix((cost, (r, c)), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(graph).tocoo()
    # Root every tree of the forest at a virtual node n, then walk it once breadth-first.
    _, comp = connected_components(tree, directed=False)
    _, roots = np.unique(comp, return_index=True)
    tr = np.concatenate([tree.row, np.full(len(roots), n)])
    tc = np.concatenate([tree.col, roots])
    aug = coo_matrix((np.ones(len(tr)), (tr, tc)), shape=(n + 1, n + 1)).tocsr()
    _, pred = breadth_first_order(aug, n, directed=False, return_predecessors=True)
    parent = pred[:n].astype(np.int64)
    parent[parent < 0] = n
    parity = np.zeros(n + 1, dtype=bool)
    real = parent < n
    child = np.nonzero(real)[0]
    par = parent[real]
    step = ijk[child] - ijk[par]  # a unit lattice step (either direction)
    opposite = np.einsum("ij,ij->i", unit[child], unit[par]) < 0
    parity[:n][real] = opposite & (np.einsum("ij,ij->i", unit[child] - unit[par], step) > 0)
    anc = np.concatenate([parent, [n]])
    while np.any(anc[:n] != n):
        parity = parity ^ parity[anc]
        anc = anc[anc]
    return ~parity[:n]


# -------------------------------------------------------------------------------------- marching cubes
def _candidate_cubes(cu: np.ndarray, h: float, slack: float, floor: float = 0.0) -> np.ndarray:
    """Cubes the surface may cross (MeshUDF's test, loosened by ``slack * h`` for noisy fields).

    A surface through a cube is within a diagonal (sqrt(3) h) of every corner, and the corners' mean
    distance is at most ~0.87 h for a plane (MeshUDF uses 1.05 h). ``floor``: the field's value on its
    own surface (0 for an exact UDF; a network's minimum often stays above 0).
    """
    return (cu.max(axis=1) <= (_SQRT3 + slack) * h + floor) & (cu.mean(axis=1) <= (1.05 + slack) * h + floor)


def estimate_floor(cell_min_u: np.ndarray) -> float:
    """The value a field takes on its own zero level, from the corner minima of the narrow-band cells.

    An exact UDF gives 0; a smoothed or biased one (a network that never quite reaches 0) gives roughly
    its minimum. The 5th percentile of the per-cell minima is robust to noise (it undershoots by about the
    noise level) and to the many band cells that do not touch the surface.
    """
    if len(cell_min_u) == 0:
        return 0.0
    return float(max(0.0, np.percentile(cell_min_u, 5)))


def _march(
    lat: _Lattice, cubes: np.ndarray, node_keys: np.ndarray, node_u: np.ndarray, signs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on a global sign field over the given cubes only: (points (V, 3), triangles (F, 3)).

    The library part is vtkFlyingEdges3D on the *pseudo-signed* field ``±max(u, 1e-3 h)`` of the band nodes,
    written into a dense image over the band's bounding box; nodes outside the band get +1 mm. Flying edges
    has no mask, so the triangles of cubes outside ``cubes`` (they touch unevaluated nodes) are then dropped:
    every marching-cubes triangle lies strictly inside its cube, so its centroid names the cube. A vertex on
    an edge of a kept cube depends only on that edge's two band nodes: it sits at ``t = u_a / (u_a + u_b)``
    (exact for a plane), and neighbouring cubes share it. What no library does — the adaptive evaluation and
    the pseudo-signs — is ours (:func:`_refine`, :func:`_propagate_signs`).
    """
    if len(cubes) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    lo = cubes.min(axis=0)
    dims = cubes.max(axis=0) + 2 - lo  # nodes per axis of the bounding box
    ijk = lat.ijk(node_keys) - lo
    inside = np.all((ijk >= 0) & (ijk < dims), axis=1)
    vol = np.ones(tuple(dims[::-1]), dtype=np.float32)  # [k, j, i]: x fastest, as vtkImageData stores it
    value = np.maximum(node_u, 1e-3 * lat.h) * np.where(signs, 1.0, -1.0)
    vol[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]] = value[inside]
    img = vtk.vtkImageData()
    img.SetDimensions(*[int(d) for d in dims])
    img.SetOrigin(*[float(v) for v in lat.points(lo)])
    img.SetSpacing(lat.h, lat.h, lat.h)
    from vtk.util import numpy_support

    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(vol.ravel(), deep=False))
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.0)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.InterpolateAttributesOff()
    fe.Update()
    out = fe.GetOutput()
    if out.GetNumberOfCells() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    pts = polydata_points(out)
    tris = polydata_triangles(out)
    cube_of = np.floor((pts[tris].mean(axis=1) - lat.origin) / lat.h).astype(np.int64)
    wanted = np.zeros(tuple(dims - 1), dtype=bool)
    wanted[tuple((cubes - lo).T)] = True
    rel = cube_of - lo
    ok = np.all((rel >= 0) & (rel < dims - 1), axis=1)
    ok[ok] = wanted[tuple(rel[ok].T)]
    p, t, _ = _compact(pts, tris, ok)
    return p, t


def _compact(points: np.ndarray, tris: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces ``keep``, unused points dropped; also returns the old index of each kept point."""
    tris = tris[keep]
    used, inv = np.unique(tris.ravel(), return_inverse=True)
    return points[used], inv.reshape(-1, 3), used


def _drop_degenerate_and_duplicates(tris: np.ndarray) -> np.ndarray:
    """Mask of faces to keep: no repeated vertex, no second copy of the same vertex set."""
    ok = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    s = np.sort(tris, axis=1)
    _, first = np.unique(s, axis=0, return_index=True)
    unique_mask = np.zeros(len(tris), dtype=bool)
    unique_mask[first] = True
    return ok & unique_mask


def _consistent_winding(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Triangles re-wound so neighbours agree (vtkPolyDataNormals consistency; no global re-orientation: the
    surface is open). Points and their order are unchanged."""
    f = vtk.vtkPolyDataNormals()
    f.SetInputData(make_polydata(points, tris))
    f.ConsistencyOn()
    f.AutoOrientNormalsOff()
    f.SplittingOff()
    f.NonManifoldTraversalOff()
    f.ComputePointNormalsOff()
    f.ComputeCellNormalsOn()  # with both normals off, vtkPolyDataNormals skips the consistency pass too
    f.Update()
    if f.GetOutput().GetNumberOfPoints() != len(points):
        raise RuntimeError("internal: vtkPolyDataNormals changed the points")
    return polydata_triangles(f.GetOutput())


def _with_arrays(mesh: vtk.vtkPolyData, **arrays: np.ndarray | None) -> vtk.vtkPolyData:
    """Attach per-vertex float arrays (skipping None and arrays of the wrong length); returns ``mesh``."""
    for name, values in arrays.items():
        if values is not None and len(values) == mesh.GetNumberOfPoints():
            set_point_array(mesh, name, values)
    return mesh


def _band_to_mesh(
    lat: _Lattice,
    store: _Store,
    cells: np.ndarray,
    ev: _Evaluator | None,
    *,
    candidate_slack: float,
    use_grad_fn: bool,
    field_floor: float | None,
    stats: dict,
    timings: dict,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pseudo-sign marching cubes over the narrow-band cells: raw (points, triangles, floor) before filtering."""
    h = lat.h
    t0 = time.perf_counter()
    corner_keys = lat.key(cells[:, None, :] + _CORNERS[None])
    cu = store.value_or_bound(corner_keys)
    floor = estimate_floor(cu.min(axis=1)) if field_floor is None else float(field_floor)
    stats["field_floor"] = floor
    evaluated = store.find(corner_keys)[1].all(axis=1)  # never mesh on Lipschitz bounds
    cubes = cells[_candidate_cubes(cu, h, candidate_slack, floor) & evaluated]
    stats["candidate_cubes"] = int(len(cubes))
    if len(cubes) == 0:
        raise SegmentationError("No surface found: the distance field never comes close to zero in the box.")
    node_keys = np.unique(lat.key(cubes[:, None, :] + _CORNERS[None]))
    node_u = store.get(node_keys)
    node_ijk = lat.ijk(node_keys)
    stats["sign_nodes"] = int(len(node_keys))
    if use_grad_fn:
        assert ev is not None
        _, grads = ev.grad(lat.points(node_ijk), "gradients")
    else:
        grads = _grid_gradients(lat, store, node_ijk, ev, floor)
    t1 = time.perf_counter()
    timings["gradients"] = t1 - t0
    signs = _propagate_signs(lat, node_keys, grads)
    t2 = time.perf_counter()
    timings["signs"] = t2 - t1
    pts, tris = _march(lat, cubes, node_keys, np.maximum(node_u - floor, 0.0), signs)
    timings["marching_cubes"] = time.perf_counter() - t2
    stats["raw_faces"] = int(len(tris))
    return pts, tris, floor


# ---------------------------------------------------------------------------------------- dense version
def mesh_udf_grid(
    u: np.ndarray,
    grad: np.ndarray | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    spacing: float = 1.0,
    *,
    valid: np.ndarray | None = None,
    udf: UDFFn | None = None,
    face_filter: float = 0.5,
    candidate_slack: float = 0.25,
    field_floor: float | None = None,
) -> vtk.vtkPolyData:
    """Single-layer open surface from a UDF sampled on a regular grid ``u[i, j, k]`` at ``origin + spacing*(i,j,k)``.

    ``grad`` (..., 3): gradients at the grid points (None: central differences of ``u``). ``valid``: mask of
    the grid points that were evaluated (cubes touching an invalid point are skipped). ``udf``: optional field
    to re-query at the vertices for the face filter; without it a face is dropped when one of its crossing
    edges is implausible (``u_a + u_b > (1 + face_filter) * spacing``: no zero crossing fits on that edge).
    Returns the mesh with consistent winding, no component selection (see :func:`extract_open_surface`).
    """
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 3 or min(u.shape) < 2:
        raise InputError(f"mesh_udf_grid needs a 3D grid of at least 2x2x2 values, got shape {u.shape}.")
    if spacing <= 0:
        raise InputError(f"spacing must be > 0, got {spacing}.")
    if valid is None:
        valid = np.isfinite(u)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(u)
    if grad is not None and np.asarray(grad).shape != u.shape + (3,):
        raise InputError(f"grad must have shape {u.shape + (3,)}, got {np.asarray(grad).shape}.")
    lat = _Lattice(np.asarray(origin, dtype=np.float64), float(spacing), np.array(u.shape) - 1)
    all_ijk = np.argwhere(valid)
    store = _Store()
    store.add(lat.key(all_ijk), np.maximum(u[valid], 0.0))
    # Cells whose 8 corners are all valid.
    cv = valid[:-1, :-1, :-1].copy()
    for di, dj, dk in _CORNERS[1:]:
        cv &= valid[di : di + u.shape[0] - 1, dj : dj + u.shape[1] - 1, dk : dk + u.shape[2] - 1]
    cells = np.argwhere(cv)
    # The same narrow band as the adaptive path (which also makes the floor estimate meaningful).
    cmin = store.get(lat.key(cells[:, None, :] + _CORNERS[None])).min(axis=1)
    cells = cells[cmin <= (0.5 * _SQRT3 + 1.0) * spacing + (field_floor or 0.0)]
    stats: dict = {}
    timings: dict = {}
    if grad is None:
        pts, tris, floor = _band_to_mesh(
            lat, store, cells, None, candidate_slack=candidate_slack, use_grad_fn=False, field_floor=field_floor,
            stats=stats, timings=timings,
        )
    else:
        g = np.asarray(grad, dtype=np.float64)
        ev = _Evaluator(lambda p: np.zeros(len(p)), lambda p: _grid_lookup(lat, g, p), 1 << 30, None, None)
        pts, tris, floor = _band_to_mesh(
            lat, store, cells, ev, candidate_slack=candidate_slack, use_grad_fn=True, field_floor=field_floor,
            stats=stats, timings=timings,
        )
    if len(tris) == 0:
        return make_polydata(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    if udf is not None:
        vu = _checked(np.asarray(udf(pts), dtype=np.float64).reshape(-1), "distance")
        keep = vu[tris].max(axis=1) <= floor + face_filter * spacing
    else:
        keep = _plausible_faces(lat, store, pts, tris, face_filter, floor)
        vu = None
    keep &= _drop_degenerate_and_duplicates(tris)
    p, t, used = _compact(pts, tris, keep)
    if len(t) == 0:
        return make_polydata(p, t)
    return _with_arrays(make_polydata(p, _consistent_winding(p, t)), distance_mm=None if vu is None else vu[used])


def _grid_lookup(lat: _Lattice, g: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ijk = np.rint((points - lat.origin) / lat.h).astype(np.int64)
    return np.zeros(len(points)), g[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def _plausible_faces(
    lat: _Lattice, store: _Store, pts: np.ndarray, tris: np.ndarray, face_filter: float, floor: float
) -> np.ndarray:
    """Faces all of whose vertices sit on edges where a zero crossing is geometrically possible."""
    h = lat.h
    base = np.floor((pts - lat.origin) / h + 1e-9).astype(np.int64)
    frac = (pts - lat.origin) / h - base
    axis = np.argmax(np.abs(frac - np.rint(frac)), axis=1)  # the coordinate that is not on the lattice
    lo = base.copy()
    hi = base.copy()
    hi[np.arange(len(hi)), axis] += 1
    hi = np.minimum(hi, lat.n)
    s = store.get(lat.key(lo)) + store.get(lat.key(hi))
    ok_v = s <= (1.0 + face_filter) * h + 2.0 * floor
    return ok_v[tris].all(axis=1)


# ------------------------------------------------------------------------------------------- adaptive
def _choose_levels(h: float, coarse_resolution: float | None) -> int:
    coarse = coarse_resolution if coarse_resolution is not None else min(2.0, 16.0 * h)
    if coarse < h:
        raise InputError(f"coarse_resolution ({coarse}) must be >= resolution ({h}).")
    return max(0, int(math.floor(math.log2(coarse / h) + 1e-9)))


# The 27 lattice points of a cell split in 8, in units of the child step, and their distances to the
# parent's corners in units of the child step.
_LOCAL27 = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], dtype=np.int64)
_DIST27 = np.linalg.norm(_LOCAL27[:, None, :] - 2 * _CORNERS[None, :, :], axis=2)


def _refine(
    lat: _Lattice,
    levels: int,
    ev: _Evaluator,
    band_margin: float,
    final_threshold: float,
    floor_allowance: float | None,
    lipschitz: float | None,
    stats: dict,
    timings: dict,
    store: _Store | None = None,
) -> tuple[_Store, np.ndarray]:
    """Coarse-to-fine narrow band: the final-resolution cells the surface may cross, and u at their corners.

    A cell of size s is split while ``min corner u <= s sqrt(3)/2 + band_margin`` (a surface point in the cell
    is within half a diagonal of a corner). A new lattice point is evaluated only if it may matter: with
    ``lipschitz`` L, ``u(x) >= u(c) - L |x - c|`` for the parent's corners c; points whose bound already
    exceeds every threshold still to come are skipped and only their bound is kept. ``store``: values already
    known on this lattice (a previous pass over the same box), never evaluated again.
    """
    store = _Store() if store is None else store
    step = 1 << levels
    t0 = time.perf_counter()
    axes = [np.arange(0, lat.n[a] + 1, step, dtype=np.int64) for a in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    store.evaluate_missing(lat, lat.key(grid), ev, "coarse")
    cells = np.stack(np.meshgrid(*[a[:-1] for a in axes], indexing="ij"), axis=-1).reshape(-1, 3)
    timings["coarse"] = time.perf_counter() - t0
    level = 0
    t0 = time.perf_counter()

    def keep_threshold(step_: int) -> float:
        return 0.5 * _SQRT3 * step_ * lat.h + band_margin

    skipped = 0
    while True:
        cu = store.value_or_bound(lat.key(cells[:, None, :] + step * _CORNERS[None]))
        keep = cu.min(axis=1) <= keep_threshold(step)
        cells, cu = cells[keep], cu[keep]
        stats[f"band_cells_level{level}"] = int(len(cells))
        if step == 1 or len(cells) == 0:
            break
        step //= 2
        level += 1
        if step == 1 and floor_allowance is None:
            # Last split: the field's floor, estimated on the parent cells, bounds what the candidates need.
            final_threshold += estimate_floor(cu.min(axis=1)) + 0.25 * lat.h
        elif step == 1:
            final_threshold += floor_allowance
        local = lat.key(cells[:, None, :] + step * _LOCAL27[None]).ravel()
        if lipschitz is None:
            store.evaluate_missing(lat, local, ev, f"refine {level}/{levels}")
        else:
            lower = (cu[:, None, :] - lipschitz * step * lat.h * _DIST27[None]).max(axis=2).ravel()
            order = np.lexsort((lower, local))
            k, lb = local[order], lower[order]
            last = np.r_[k[1:] != k[:-1], True]
            k, lb = k[last], lb[last]  # per point, the largest (tightest) bound
            needed = lb <= max(keep_threshold(step), final_threshold)
            store.evaluate_missing(lat, k[needed], ev, f"refine {level}/{levels}")
            _, known = store.find(k[~needed])
            store.add_bounds(k[~needed][~known], lb[~needed][~known])
            skipped += int((~needed).sum())
        cells = (cells[:, None, :] + step * _CORNERS[None]).reshape(-1, 3)
        ev.check_cancel()
    stats["skipped_points"] = skipped
    timings["refine"] = time.perf_counter() - t0
    return store, cells


RIM_TOLERANCE_NETWORK = 1.0  # cells; see network_field_settings


def network_field_settings(resolution: float, tolerance_mm: float) -> dict[str, float]:
    """The :func:`extract_open_surface` settings for a network's field (what ``segment`` uses).

    An exact field is 0 on its surface; a network's is not, and less so where it is unsure (near the ostium,
    in thin lobes). ``tolerance_mm`` is how far above the field's floor a valley may lie and still count as
    surface: it widens the band, the candidate cubes and the vertex filter. (An exact-field tolerance, MeshUDF's
    ~h/6, punched 30–40 mm holes into phantom segmentations; 1 mm closed them.) The valley probes then reject
    what that tolerance lets through: ridges between sheets, sign seams off their lattice edge.

    A lenient rim test (one cell; sharp fields use a quarter): a network's valley fades out *before* its rim (the
    bundled model's rim lay ~1.3 mm short of the ground-truth ostium on a held-out phantom at 0.5 mm), and a
    strict test only moved it further in (0.25 cell: +1 mm; one cell: +0.3 mm, the same mean surface distance).
    Holes up to 1 mm in radius are filled: a network leaves such pin-holes where its field is flat.
    """
    h, tol = float(resolution), float(tolerance_mm)
    return {"face_filter": max(2.0, tol / h), "candidate_slack": tol / h, "band_margin": tol, "project_steps": 1,
            "rim_tolerance": RIM_TOLERANCE_NETWORK, "max_hole_radius": max(1.5, 1.0 / h)}


def extract_open_surface(
    udf: UDFFn,
    udf_grad: UDFGradFn | None,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: float,
    *,
    coarse_resolution: float | None = None,
    keep_point: Sequence[float] | None = None,
    face_filter: float = 0.5,
    project_steps: int = 1,
    min_component_fraction: float = 0.01,
    max_hole_radius: float = 1.5,
    rim_tolerance: float | None = 0.25,
    known_values: tuple[np.ndarray, np.ndarray] | None = None,
    band_margin: float | None = None,
    candidate_slack: float = 0.25,
    lipschitz: float | None = 1.0,
    field_floor: float | None = None,
    batch_size: int = 200_000,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> MeshingResult:
    """Extract the zero level of an unsigned distance field in a box as a single-layer open surface.

    ``resolution`` (mm) is the final cell size h; ``coarse_resolution`` the first level's (default: the largest
    power-of-two multiple of h not above 2 mm, below a typical network's clamp of ~3.5 mm). Cells are split
    while ``min corner u <= half diagonal + band_margin + 10 % of the cell size`` (``band_margin`` default: h;
    raise it for a field that underestimates). Gradients for the pseudo-signs come from ``udf_grad`` at the
    band corners, or from lattice finite differences when it is None (cheaper: most neighbours are known).

    Vertices then pass these tests, each a reason a pseudo-sign crossing is not the surface:

    * ``face_filter``: u re-queried at the vertex exceeds ``floor + face_filter * h`` (a sign seam far out);
    * **valley probes** (:func:`_probe_valleys`, 2 queries per vertex at ``±h`` along the normal): u is a
      ridge there (midway between two sheets of a thin lobe), or its valley does not cross the lattice edge the
      vertex came from (a stray sign flip beside a sheet: it would be projected onto the sheet as a second,
      back-to-back layer). Only coherent patches are dropped (a majority of the 2-ring): a network's
      small-scale roughness flags scattered vertices, and dropping those would punch holes;
    * **rim test** (``rim_tolerance``, None = off): near the border, the fitted valley bottom lies more than
      ``rim_tolerance * h`` above the lowest bottom within three edges — the flange a sign seam leaves beyond
      an open rim of a sharp field, where u rises again. Off for networks (:func:`network_field_settings`).

    ``keep_point``: keep only the component closest to it (the seed); otherwise components smaller than
    ``min_component_fraction`` of the area are dropped. Holes whose bounding radius is at most
    ``max_hole_radius * h`` are filled (never the largest loop, the rim). ``project_steps``: moves to the
    fitted valley bottom (the field's *floor*, not its zero: a network rarely reaches 0), each kept only
    where the re-queried u decreases. The lattice is centred on the box and may overhang it by less than one
    coarse cell. ``known_values``: (points, u) from an earlier pass over the same field (its
    ``lattice_values``); those on this lattice are not evaluated again. Point data: ``distance_mm`` (u at the vertex) and ``valley_slope`` (the fitted ``|∇u|`` of
    the valley, 1 for an exact UDF).

    Raises SegmentationCancelled when ``cancel()`` turns true (polled between batches), SegmentationError
    when no surface is found.
    """
    h = float(resolution)
    lo = np.asarray(bounds_min, dtype=np.float64).reshape(3)
    hi = np.asarray(bounds_max, dtype=np.float64).reshape(3)
    if not h > 0:
        raise InputError(f"resolution must be > 0, got {resolution}.")
    if np.any(hi <= lo):
        raise InputError(f"Empty box: bounds_min {lo.tolist()} must be below bounds_max {hi.tolist()}.")
    if face_filter <= 0:
        raise InputError(f"face_filter must be > 0, got {face_filter}.")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    stats: dict[str, float] = {}
    ev = _Evaluator(udf, udf_grad, batch_size, progress, cancel)
    levels = _choose_levels(h, coarse_resolution)
    fine = np.ceil((hi - lo) / h - 1e-9).astype(np.int64)
    n_dense = int(np.prod(fine + 1))
    unit = 1 << levels
    n_cells = (np.ceil(fine / unit) * unit).astype(np.int64)
    origin = 0.5 * (lo + hi) - 0.5 * h * n_cells
    lat = _Lattice(origin, h, n_cells)
    stats["levels"] = levels + 1
    margin = h if band_margin is None else float(band_margin)

    final_threshold = (_SQRT3 + candidate_slack) * h
    known = _Store()
    if known_values is not None:
        kp, kv = known_values
        f = (np.asarray(kp, dtype=np.float64).reshape(-1, 3) - lat.origin) / h
        ijk = np.rint(f).astype(np.int64)
        on = np.all(np.abs(f - ijk) < 1e-6, axis=1) & np.all((ijk >= 0) & (ijk <= lat.n), axis=1)
        keys, first = np.unique(lat.key(ijk[on]), return_index=True)
        known.add(keys, np.maximum(np.asarray(kv, dtype=np.float64).reshape(-1)[on][first], 0.0))
        stats["reused_values"] = int(len(keys))
    store, cells = _refine(lat, levels, ev, margin, final_threshold, field_floor, lipschitz, stats, timings,
                           store=known)
    if len(cells) == 0:
        raise SegmentationError("No surface found: the distance field never comes close to zero in the box.")
    pts, tris, floor = _band_to_mesh(
        lat,
        store,
        cells,
        ev,
        candidate_slack=candidate_slack,
        use_grad_fn=udf_grad is not None,
        field_floor=field_floor,
        stats=stats,
        timings=timings,
    )
    if len(tris) == 0:
        raise SegmentationError("No surface found: the pseudo-signs never change in the narrow band.")

    t0 = time.perf_counter()
    vu = ev.u(pts, "face filter")
    keep = (vu[tris].max(axis=1) <= floor + face_filter * h) & _drop_degenerate_and_duplicates(tris)
    pts, tris, used = _compact(pts, tris, keep)
    vu = vu[used]
    stats["filtered_faces"] = int(len(tris))
    timings["face_filter"] = time.perf_counter() - t0
    if len(tris) == 0:
        raise SegmentationError("No surface found: every candidate face was farther than the filter allows.")

    t0 = time.perf_counter()
    normals = vertex_normals(pts, tris)
    valley = _probe_valleys(pts, normals, vu, ev, h, "valley probes")
    off_edge = valley.is_valley & ~_valley_crosses_edge(lat, pts, normals, valley)
    # vote: a seam or ridge is a coherent patch; scattered flags are a network's small-scale roughness
    unclear = ~valley.is_valley & ~valley.is_ridge
    flag = off_edge | valley.is_ridge | unclear
    drop = _majority_on_mesh(flag, tris, hops=2) & flag
    good = ~drop & (valley.bottom <= floor + face_filter * h)
    stats["ridge_vertices"] = int(valley.is_ridge.sum())
    stats["valley_off_edge_vertices"] = int(off_edge.sum())
    stats["unclear_vertices"] = int(unclear.sum())
    # rim test (sharp fields only), on what the other tests keep and only near its border (a flange hangs on
    # it; interior noise must never punch holes); twice, since cutting a flange can expose the next row of it
    n_good = int(good.sum())
    for _ in range(2 if rim_tolerance is not None else 0):
        kept = tris[good[tris].all(axis=1)]
        rise = valley.bottom - _local_min_on_mesh(valley.bottom, kept, hops=3)
        good &= ~(_near_border(kept, len(pts), hops=4) & (rise > float(rim_tolerance) * h))
    stats["beyond_rim_vertices"] = n_good - int(good.sum())
    pts, tris, used = _compact(pts, tris, good[tris].all(axis=1))
    vu, normals, valley = vu[used], normals[used], valley.take(used)
    stats["valley_faces"] = int(len(tris))
    timings["valley_probes"] = time.perf_counter() - t0
    if len(tris) == 0:
        raise SegmentationError("No surface found: no candidate face lies in a valley of the distance field.")

    t0 = time.perf_counter()
    ev.report("cleanup", 0.0)
    face_keep = _component_mask(pts, tris, keep_point, min_component_fraction)
    pts, tris, used = _compact(pts, tris, face_keep)
    vu, normals, valley = vu[used], normals[used], valley.take(used)
    tris, n_filled = _fill_holes(pts, tris, max_hole_radius * h)
    tris = _consistent_winding(pts, tris)
    stats["holes_filled"] = n_filled
    timings["cleanup"] = time.perf_counter() - t0
    ev.report("cleanup", 1.0)

    t0 = time.perf_counter()
    for step in range(max(0, int(project_steps))):
        ev.check_cancel()
        if step > 0:
            normals = vertex_normals(pts, tris)
            valley = _probe_valleys(pts, normals, vu, ev, h, f"projection {step + 1}/{project_steps}")
        pts, vu = _move_to_valley_bottoms(pts, tris, normals, vu, valley, ev, h, f"projection {step + 1}/{project_steps}")
    mesh = _with_arrays(make_polydata(pts, tris), **{DISTANCE_ARRAY: vu, SLOPE_ARRAY: valley.slope})
    timings["projection"] = time.perf_counter() - t0
    timings["field_eval"] = ev.seconds
    timings["total"] = time.perf_counter() - t_start
    stats["faces"] = mesh.GetNumberOfCells()
    stats["vertices"] = mesh.GetNumberOfPoints()
    return MeshingResult(mesh, ev.n_queries, ev.n_grad_queries, n_dense, timings, stats,
                         (lat.points(lat.ijk(store.keys)), store.vals.copy()))



# ------------------------------------------------------------------------------------------ valley probes
@dataclass
class _Valley:
    """What u at ``x = -δ, 0, +δ`` along a vertex normal says about the field there (one entry per vertex)."""

    offset: np.ndarray
    """Signed distance (mm) along the normal from the vertex to the fitted valley bottom."""
    slope: np.ndarray
    """Fitted ``|∇u|`` away from the bottom (1 for an exact UDF; lower where the network is unsure)."""
    bottom: np.ndarray
    """Fitted u at the bottom (mm): 0 for an exact UDF, the field's local floor for a network."""
    is_valley: np.ndarray
    """A clear valley: u² convex along the normal with its bottom within reach (``|offset| <= 1.5 δ``)."""
    is_ridge: np.ndarray
    """A clear ridge: u higher at the vertex than on both sides by more than 5 % of δ (midway between two
    sheets). Neither flag: a flat or lopsided stretch where the field cannot say (the vertex stays put)."""

    def take(self, idx: np.ndarray) -> "_Valley":
        return _Valley(self.offset[idx], self.slope[idx], self.bottom[idx], self.is_valley[idx], self.is_ridge[idx])


def _probe_valleys(
    pts: np.ndarray, normals: np.ndarray, u: np.ndarray, ev: _Evaluator, delta: float, stage: str
) -> _Valley:
    """Fit ``u² = k² (x - s)² + c²`` along each vertex normal from u at ``x = -δ, 0, +δ`` (2 queries per vertex).

    Why u² and not u: u² is *exactly* this parabola for an exact UDF (c = 0) and for the blurred valley of a
    network, ``sqrt(d² + b²)`` (c = b), so one step lands on the bottom of both; for a V with a hard floor
    ``|d| + b`` (where marching cubes already places the vertex exactly) it moves half-way at most. A ridge
    (u higher at the vertex than on both sides: midway between two sheets) has no such fit (k² <= 0).
    """
    d = float(delta)
    both = ev.u(np.concatenate([pts - d * normals, pts + d * normals]), stage).reshape(2, -1)
    a2, b2, c2 = both[0] ** 2, both[1] ** 2, u**2
    curv = a2 + b2 - 2.0 * c2  # = 2 k² δ²
    has_normal = np.linalg.norm(normals, axis=1) > 0.5
    convex = (curv > 1e-12 * d * d) & has_normal
    safe = np.where(convex, curv, 1.0)
    offset = np.where(convex, d * (a2 - b2) / (2.0 * safe), 0.0)
    k2 = np.where(convex, curv / (2.0 * d * d), 0.0)
    bottom = np.sqrt(np.maximum(c2 - k2 * offset**2, 0.0))
    is_valley = convex & (np.abs(offset) <= 1.5 * d)
    is_ridge = has_normal & (u > np.maximum(both[0], both[1]) + 0.05 * d)
    bottom = np.where(is_valley, bottom, u)
    return _Valley(offset, np.sqrt(k2), bottom, is_valley, is_ridge)


def _valley_crosses_edge(
    lat: _Lattice, pts: np.ndarray, normals: np.ndarray, valley: _Valley, slack: float = 0.25
) -> np.ndarray:
    """Whether the fitted valley bottom (a plane through ``p + offset n`` with normal n) crosses the lattice edge
    the vertex was interpolated on, within ``slack`` cells.

    A pseudo-sign flip between two nodes on the *same* side of a sheet (e.g. a node inside a thin lobe whose
    gradient is noise) makes a vertex a few tenths of a cell from a real valley: the probes find that valley,
    and projecting the vertex onto it would lay a second, back-to-back layer on the sheet.
    """
    f = (pts - lat.origin) / lat.h
    axis = np.argmax(np.abs(f - np.rint(f)), axis=1)  # the one coordinate that is not on the lattice
    rows = np.arange(len(pts))
    a = np.rint(f)
    a[rows, axis] = np.floor(f[rows, axis])
    node_a = lat.origin + lat.h * a
    node_b = node_a.copy()
    node_b[rows, axis] += lat.h
    bottom = pts + valley.offset[:, None] * normals
    da = np.einsum("ij,ij->i", node_a - bottom, normals)
    db = np.einsum("ij,ij->i", node_b - bottom, normals)
    return (da * db <= 0.0) | (np.minimum(np.abs(da), np.abs(db)) <= slack * lat.h)


def _near_border(tris: np.ndarray, n_points: int, hops: int) -> np.ndarray:
    """Vertices within ``hops`` edges of a boundary edge of the mesh."""
    near = np.zeros(n_points, dtype=bool)
    if len(tris) == 0:
        return near
    near[boundary_edges(tris).ravel()] = True
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    for _ in range(hops):
        nxt = near.copy()
        nxt[e[near[e[:, 0]], 1]] = True
        nxt[e[near[e[:, 1]], 0]] = True
        near = nxt
    return near


def _majority_on_mesh(flag: np.ndarray, tris: np.ndarray, hops: int) -> np.ndarray:
    """Whether most of each vertex's ``hops``-ring (itself included) is flagged: coherent patches survive,
    scattered flags (a network's small-scale roughness) do not."""
    from scipy.sparse import coo_matrix, identity

    n = len(flag)
    if len(tris) == 0:
        return flag.copy()
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    adj = coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    ring = identity(n, format="csr") + adj
    reach = ring
    for _ in range(hops - 1):
        reach = reach @ ring
        reach.data[:] = 1.0
    votes = reach @ flag.astype(float)
    return votes >= 0.5 * np.asarray(reach.sum(axis=1)).ravel()


def _local_min_on_mesh(values: np.ndarray, tris: np.ndarray, hops: int) -> np.ndarray:
    """Minimum of a per-vertex value over each vertex's ``hops``-ring on the mesh (edges of the faces)."""
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    out = values.copy()
    for _ in range(hops):
        nxt = out.copy()
        np.minimum.at(nxt, e[:, 0], out[e[:, 1]])
        np.minimum.at(nxt, e[:, 1], out[e[:, 0]])
        out = nxt
    return out


def _undo_folds(old: np.ndarray, new: np.ndarray, tris: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Revert moved vertices of faces whose orientation flipped (a fold would make a local double layer)."""
    n_old = face_normals(old, tris)
    for _ in range(10):
        pts = np.where(moved[:, None], new, old)
        flipped = np.einsum("ij,ij->i", n_old, face_normals(pts, tris)) < 0.0
        if not flipped.any():
            break
        moved[tris[flipped].ravel()] = False
    return moved


def _move_to_valley_bottoms(
    pts: np.ndarray, tris: np.ndarray, normals: np.ndarray, u: np.ndarray, valley: _Valley, ev: _Evaluator,
    delta: float, stage: str
) -> tuple[np.ndarray, np.ndarray]:
    """One projection step onto the fitted valley bottoms (1 query per vertex to check it).

    The step accounts for the field's floor: it goes to where u is *lowest* along the normal, not ``u`` mm
    toward a zero the field may never reach. A move is kept only where the re-queried u does not grow and no
    face folds.
    """
    step = np.clip(valley.offset, -delta, delta) * valley.is_valley
    cand = pts + step[:, None] * normals
    u_new = ev.u(cand, stage)
    moved = valley.is_valley & (u_new <= u)
    if len(tris):
        moved = _undo_folds(pts, cand, tris, moved)
    return np.where(moved[:, None], cand, pts), np.where(moved, u_new, u)


# ------------------------------------------------------------------------------------------- clean-up
def _component_mask(
    pts: np.ndarray, tris: np.ndarray, keep_point: Sequence[float] | None, min_fraction: float
) -> np.ndarray:
    """Faces to keep: the component passing closest to ``keep_point`` (among those with at least
    ``min_fraction`` of the area; the largest always competes), or every component that large."""
    if len(tris) == 0:
        return np.zeros(0, dtype=bool)
    labels = connected_components(make_polydata(pts, tris))
    area = np.bincount(labels, weights=triangle_areas(pts, tris))
    eligible = area >= min_fraction * area.sum()
    eligible[int(np.argmax(area))] = True
    if keep_point is None:
        return eligible[labels]
    # A seed sits inside the lumen, where a few-face speck of noise can be nearer than the wall itself.
    cand = np.nonzero(eligible[labels])[0]
    loc = cell_locator(make_polydata(pts, tris[cand]))
    closest = [0.0, 0.0, 0.0]
    cid, sid, d2 = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    loc.FindClosestPoint([float(x) for x in np.asarray(keep_point, dtype=np.float64).reshape(3)], closest, cid, sid, d2)
    return labels == labels[cand[int(cid)]]


def keep_component_near(mesh: vtk.vtkPolyData, point: Sequence[float], min_fraction: float = 0.0) -> vtk.vtkPolyData:
    """The face-connected component whose surface passes closest to ``point`` (e.g. the seed region).

    Only components with at least ``min_fraction`` of the total area compete (the largest always does): a
    seed sits inside the lumen, where a few-face speck of noise can be nearer than the wall itself.
    Point data arrays are carried over.
    """
    if mesh.GetNumberOfCells() == 0:
        return mesh
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    return _submesh_keep_data(mesh, _component_mask(pts, tris, point, min_fraction))


def remove_small_components(mesh: vtk.vtkPolyData, min_fraction: float) -> vtk.vtkPolyData:
    """Drop face-connected components whose area is below ``min_fraction`` of the total area."""
    if mesh.GetNumberOfCells() == 0 or min_fraction <= 0:
        return mesh
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    return _submesh_keep_data(mesh, _component_mask(pts, tris, None, min_fraction))


def _submesh_keep_data(mesh: vtk.vtkPolyData, face_mask: np.ndarray) -> vtk.vtkPolyData:
    p, t, used = _compact(polydata_points(mesh), polydata_triangles(mesh), np.asarray(face_mask, bool))
    out = make_polydata(p, t)
    pd = mesh.GetPointData()
    from vtk.util import numpy_support

    for i in range(pd.GetNumberOfArrays()):
        arr = pd.GetArray(i)
        if arr is None:
            continue
        a = numpy_support.vtk_to_numpy(arr)[used]
        na = numpy_support.numpy_to_vtk(np.ascontiguousarray(a), deep=True)
        na.SetName(arr.GetName())
        out.GetPointData().AddArray(na)
    return out


def _fill_holes(pts: np.ndarray, tris: np.ndarray, max_radius: float) -> tuple[np.ndarray, int]:
    """vtkFillHolesFilter on the holes of bounding radius <= ``max_radius``, never on the largest loop (the
    rim). No point is added, so per-vertex data stays valid; winding is made consistent by the caller."""
    if max_radius <= 0 or len(tris) == 0:
        return tris, 0
    mesh = make_polydata(pts, tris)
    loops = boundary_loops(mesh)
    if len(loops) < 2:
        return tris, 0
    radii = np.array([np.linalg.norm(pts[lp] - pts[lp].mean(axis=0), axis=1).max() for lp in loops])
    if not np.any(radii[1:] <= max_radius):
        return tris, 0
    # vtk sizes a hole by an approximate bounding sphere (up to ~20 % larger than ours); keep the rim clear
    fill = vtk.vtkFillHolesFilter()
    fill.SetInputData(mesh)
    fill.SetHoleSize(min(1.25 * float(max_radius), 0.8 * float(radii[0])))
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(fill.GetOutputPort())
    tri.PassLinesOff()
    tri.PassVertsOff()
    tri.Update()
    if tri.GetOutput().GetNumberOfPoints() != len(pts):
        raise RuntimeError("internal: vtkFillHolesFilter added points")
    out = polydata_triangles(tri.GetOutput())
    return out, len(loops) - len(boundary_loops(make_polydata(pts, out)))


def fill_small_holes(mesh: vtk.vtkPolyData, max_radius_mm: float) -> tuple[vtk.vtkPolyData, int]:
    """Close boundary loops of bounding radius at most ``max_radius_mm`` (never the largest loop, the open
    rim) with vtkFillHolesFilter, re-wound to match their neighbours. Point data is kept. Returns
    (mesh, holes filled)."""
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    new, n = _fill_holes(pts, tris, max_radius_mm)
    if n == 0:
        return mesh, 0
    out = make_polydata(pts, _consistent_winding(pts, new))
    pd = mesh.GetPointData()
    for i in range(pd.GetNumberOfArrays()):
        out.GetPointData().AddArray(pd.GetArray(i))
    return out, n


def smooth_windowed_sinc(mesh: vtk.vtkPolyData, iterations: int = 20, passband: float = 0.1) -> vtk.vtkPolyData:
    """Low-pass smoothing that does not shrink (windowed sinc); boundary vertices stay exactly where they are.

    Non-manifold smoothing must be off: with it on, VTK 9.6 also moves the vertices of the open rim.
    """
    f = vtk.vtkWindowedSincPolyDataFilter()
    f.SetInputData(mesh)
    f.SetNumberOfIterations(int(iterations))
    f.SetPassBand(float(passband))
    f.BoundarySmoothingOff()
    f.FeatureEdgeSmoothingOff()
    f.NonManifoldSmoothingOff()
    f.NormalizeCoordinatesOn()
    f.Update()
    pts = polydata_points(f.GetOutput())
    tris = polydata_triangles(f.GetOutput())
    rim = np.unique(boundary_edges(tris)) if len(tris) else np.zeros(0, dtype=np.int64)
    pts[rim] = polydata_points(mesh)[rim]  # undo the round-off drift of coordinate normalisation
    return make_polydata(pts, tris)


def decimate(mesh: vtk.vtkPolyData, reduction: float) -> vtk.vtkPolyData:
    """Reduce the face count by about ``reduction`` (0..1) keeping the topology and the open boundary.

    vtkDecimatePro with topology preservation and no boundary-vertex deletion: the rim stays exactly where
    it was, at the price of sometimes reaching less than the requested reduction.
    """
    if not 0.0 <= reduction < 1.0:
        raise InputError(f"reduction must be in [0, 1), got {reduction}.")
    f = vtk.vtkDecimatePro()
    f.SetInputData(mesh)
    f.SetTargetReduction(float(reduction))
    f.PreserveTopologyOn()
    f.BoundaryVertexDeletionOff()
    f.SplittingOff()
    f.Update()
    return make_polydata(polydata_points(f.GetOutput()), polydata_triangles(f.GetOutput()))
