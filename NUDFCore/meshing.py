"""Open-surface meshing of an unsigned distance field (UDF).

Marching cubes on a level ``u = eps`` of a UDF gives a closed *double* layer around an open surface. Here the
zero level is extracted as a single open sheet by *pseudo-sign* marching cubes (after MeshUDF / GeoUDF):

1. **Adaptive evaluation** (:func:`extract_open_surface`): ``u`` is evaluated on a coarse lattice, and only
   cells whose corner values say the surface may pass through them (``min u <= half diagonal + margin``) are
   split, level by level, down to the final resolution. A dense fine grid is never evaluated.
2. **Pseudo-signs**: on the corners of the narrow-band cubes, the unit gradients of ``u`` decide which side of
   the surface each corner lies on. Two lattice neighbours with opposite gradients (``g_a . g_b < 0``) lie on
   opposite sides. Signs are propagated over a maximum-agreement spanning tree of the band (the most
   reliable neighbour pairs first, as in Hoppe's normal orientation), so all cubes share *one* sign field and
   the surface has no cracks. The unavoidable sign seam of an open surface ends up beyond its rim, where the
   gradients turn and agreement is weakest.
3. **Marching cubes** with a 256-case table on those signs; vertices are shared through global edge keys
   and placed at ``t = u_a / (u_a + u_b)`` (exact for a plane).
4. **Face filter**: ``u`` is re-queried at the vertices; faces with a vertex farther than
   ``face_filter * h`` from the surface (the seam, spurious sign flips) are dropped.
5. **Clean-up**: duplicate faces, consistent winding, the component near a seed / no small fragments,
   tiny holes filled, optional projection of the vertices onto the zero level.

The field is any callable on points (the network in :mod:`NUDFCore.infer`, an analytic UDF in the tests);
this module never imports torch. Coordinates are in the frame of the points given to the callables (LPS mm
in the engine).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import vtk

from .errors import InputError, SegmentationCancelled, SegmentationError
from .io import make_polydata, polydata_points, polydata_triangles

UDFFn = Callable[[np.ndarray], np.ndarray]
"""(N, 3) points -> (N,) unsigned distances (mm, >= 0; negative values are clamped to 0)."""
UDFGradFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]
"""(N, 3) points -> (u (N,), gradient of u (N, 3))."""
ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]

_SQRT3 = math.sqrt(3.0)
# Corner b of a cube sits at (b & 1, b >> 1 & 1, b >> 2 & 1) (the marching-cubes table's convention).
_CORNERS = np.array([[b & 1, (b >> 1) & 1, (b >> 2) & 1] for b in range(8)], dtype=np.int64)


def _edge_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Axis and lower-corner offset of the 12 local cube edges (id = axis * 4 + other coords as bits)."""
    axes, offsets = [], []
    for a in range(3):
        others = [d for d in range(3) if d != a]
        for code in range(4):
            off = [0, 0, 0]
            off[others[0]] = code & 1
            off[others[1]] = (code >> 1) & 1
            axes.append(a)
            offsets.append(off)
    return np.array(axes, dtype=np.int64), np.array(offsets, dtype=np.int64)


_EDGE_AXIS, _EDGE_OFFSET = _edge_geometry()
_MC_TABLE: np.ndarray | None = None  # (256, 15) local edge ids, -1 padded; built once from mc_table.py


def generate_mc_table() -> list[tuple[int, ...]]:
    """Regenerate the marching-cubes table from scikit-image (the source of ``NUDFCore/mc_table.py``).

    Every two-valued 2x2x2 configuration is meshed by ``skimage.measure.marching_cubes(method='lorensen')``;
    its vertices (at edge midpoints) are mapped back to local edge ids. Kept as code so the committed table
    can be checked against its source.
    """
    from skimage.measure import marching_cubes

    rows: list[tuple[int, ...]] = [()]
    for config in range(1, 255):
        vol = np.empty((2, 2, 2))
        for b, (i, j, k) in enumerate(_CORNERS):
            vol[i, j, k] = 1.0 if (config >> b) & 1 else -1.0
        verts, faces, _, _ = marching_cubes(vol, 0.0, method="lorensen")
        ids = []
        for p in verts:
            axis = int(np.argmin(np.abs(p - 0.5)))
            others = [d for d in range(3) if d != axis]
            ids.append(axis * 4 + int(round(p[others[0]])) + 2 * int(round(p[others[1]])))
        rows.append(tuple(int(e) for e in np.asarray(ids)[faces].ravel()))
    rows.append(())
    return rows


def mc_table() -> np.ndarray:
    """The (256, 15) table of local edge ids per configuration, -1 padded (cached)."""
    global _MC_TABLE
    if _MC_TABLE is None:
        from .mc_table import MC_TRIANGLES

        table = -np.ones((256, 15), dtype=np.int64)
        for c, row in enumerate(MC_TRIANGLES):
            table[c, : len(row)] = row
        _MC_TABLE = table
    return _MC_TABLE


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

    Edge cost = 1 - |g_a . g_b| (unit gradients, scaled down where a gradient is short, i.e. unreliable): the
    spanning forest links first the neighbour pairs whose gradients are clearly parallel (same side) or
    clearly opposite (across the surface); a pair's parity is ``g_a . g_b < 0``. Labels are the parity of the
    tree path to each component's root, computed by pointer jumping (no per-node Python loop).
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
    rows, cols = [], []
    for a in range(3):
        nb = ijk.copy()
        nb[:, a] += 1
        inside = nb[:, a] <= lat.n[a]
        kb = lat.key(nb[inside])
        idx = np.minimum(np.searchsorted(node_keys, kb), n - 1)
        hit = node_keys[idx] == kb
        rows.append(np.nonzero(inside)[0][hit])
        cols.append(idx[hit])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    dots = np.einsum("ij,ij->i", unit[r], unit[c])
    cost = 1.0 + 1e-6 - np.abs(dots) * rel[r] * rel[c]
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
    parity[:n][real] = np.einsum("ij,ij->i", unit[real], unit[parent[real]]) < 0
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
    """Marching cubes on a global sign field over the given cubes: (points (V, 3), triangles (F, 3))."""
    table = mc_table()
    corner_keys = lat.key(cubes[:, None, :] + _CORNERS[None])  # (C, 8)
    corner_idx = np.searchsorted(node_keys, corner_keys)
    config = (signs[corner_idx].astype(np.int64) << np.arange(8)).sum(axis=1)
    local = table[config].reshape(len(cubes), 5, 3)
    cube_of, slot = np.nonzero(local[:, :, 0] >= 0)
    if len(cube_of) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    le = local[cube_of, slot]  # (F, 3) local edge ids
    lower = cubes[cube_of][:, None, :] + _EDGE_OFFSET[le]  # (F, 3, 3)
    ekey = lat.key(lower) * 3 + _EDGE_AXIS[le]
    uniq, inv = np.unique(ekey.ravel(), return_inverse=True)
    axis = uniq % 3
    ka = uniq // 3
    kb = ka + lat.strides[axis]
    ua = node_u[np.searchsorted(node_keys, ka)]
    ub = node_u[np.searchsorted(node_keys, kb)]
    floor = 1e-3 * lat.h
    ua, ub = np.maximum(ua, floor), np.maximum(ub, floor)
    t = ua / (ua + ub)
    pts = lat.points(lat.ijk(ka))
    pts[np.arange(len(uniq)), axis] += t * lat.h
    return pts, inv.reshape(-1, 3).astype(np.int64)


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


def _consistent_winding(mesh: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """Make neighbouring faces agree in orientation (no global re-orientation: the surface is open)."""
    f = vtk.vtkPolyDataNormals()
    f.SetInputData(mesh)
    f.ConsistencyOn()
    f.AutoOrientNormalsOff()
    f.SplittingOff()
    f.NonManifoldTraversalOff()
    f.ComputePointNormalsOff()
    f.ComputeCellNormalsOff()
    f.Update()
    return make_polydata(polydata_points(f.GetOutput()), polydata_triangles(f.GetOutput()))


def _with_udf(mesh: vtk.vtkPolyData, u: np.ndarray | None) -> vtk.vtkPolyData:
    if u is not None and len(u) == mesh.GetNumberOfPoints():
        from vtk.util import numpy_support

        arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(u, dtype=np.float64), deep=True)
        arr.SetName("udf")
        mesh.GetPointData().AddArray(arr)
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
    cu = store.value_or_bound(lat.key(cells[:, None, :] + _CORNERS[None]))
    floor = estimate_floor(cu.min(axis=1)) if field_floor is None else float(field_floor)
    stats["field_floor"] = floor
    cubes = cells[_candidate_cubes(cu, h, candidate_slack, floor)]
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
    return _with_udf(_consistent_winding(make_polydata(p, t)), None if vu is None else vu[used])


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
) -> tuple[_Store, np.ndarray]:
    """Coarse-to-fine narrow band: the final-resolution cells the surface may cross, and u at their corners.

    A cell of size s is split while ``min corner u <= s sqrt(3)/2 + band_margin`` (a surface point in the cell
    is within half a diagonal of a corner). A new lattice point is evaluated only if it may matter: with
    ``lipschitz`` L, ``u(x) >= u(c) - L |x - c|`` for the parent's corners c; points whose bound already
    exceeds every threshold still to come are skipped and only their bound is kept.
    """
    store = _Store()
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
    max_hole_edges: int = 12,
    band_margin: float | None = None,
    candidate_slack: float = 0.25,
    lipschitz: float | None = 1.0,
    field_floor: float | None = None,
    batch_size: int = 200_000,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> MeshingResult:
    """Extract the zero level of an unsigned distance field in a box as a single-layer open surface.

    ``resolution`` (mm) is the final cell size; ``coarse_resolution`` the first level's (default: the largest
    power-of-two multiple of ``resolution`` not above 2 mm, below a typical network's clamp of ~3.5 mm). Cells
    are split while ``min corner u <= half diagonal + band_margin + 10 % of the cell size`` (``band_margin``
    default: ``resolution``; raise it for a field that underestimates). Gradients for the pseudo-signs come
    from ``udf_grad`` at the band corners, or from lattice finite differences when it is None (cheaper: most
    neighbours are already known). ``face_filter``: faces with a vertex whose re-queried u exceeds
    ``face_filter * resolution`` are dropped. ``keep_point``: keep only the component closest to it (the seed);
    otherwise components smaller than ``min_component_fraction`` of the area are dropped. Holes of at most
    ``max_hole_edges`` boundary edges are filled. ``project_steps``: moves ``p <- p - u grad/|grad|`` kept only
    where u decreases. The lattice is centred on the box and may overhang it by less than one coarse cell.

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
    store, cells = _refine(lat, levels, ev, margin, final_threshold, field_floor, lipschitz, stats, timings)
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
    ev.report("cleanup", 0.0)
    mesh = _consistent_winding(make_polydata(pts, tris))
    mesh = _with_udf(mesh, vu)
    if keep_point is not None:
        mesh = keep_component_near(mesh, keep_point, min_component_fraction)
    if min_component_fraction > 0:
        mesh = remove_small_components(mesh, min_component_fraction)
    mesh, n_filled = fill_small_holes(mesh, max_hole_edges)
    stats["holes_filled"] = n_filled
    timings["cleanup"] = time.perf_counter() - t0
    ev.report("cleanup", 1.0)

    t0 = time.perf_counter()
    vu = _point_array(mesh, "udf")
    if project_steps > 0:
        mesh, vu = _project(mesh, ev, project_steps, vu)
    else:
        vu = ev.u(polydata_points(mesh), "vertex distances") if vu is None else vu
    mesh = _with_udf(make_polydata(polydata_points(mesh), polydata_triangles(mesh)), vu)
    timings["projection"] = time.perf_counter() - t0
    timings["field_eval"] = ev.seconds
    timings["total"] = time.perf_counter() - t_start
    stats["faces"] = mesh.GetNumberOfCells()
    stats["vertices"] = mesh.GetNumberOfPoints()
    return MeshingResult(mesh, ev.n_queries, ev.n_grad_queries, n_dense, timings, stats)


def _point_array(mesh: vtk.vtkPolyData, name: str) -> np.ndarray | None:
    arr = mesh.GetPointData().GetArray(name)
    if arr is None:
        return None
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(arr).astype(np.float64)


def _vertex_normals(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals from the faces' winding."""
    fn = np.cross(pts[tris[:, 1]] - pts[tris[:, 0]], pts[tris[:, 2]] - pts[tris[:, 0]])
    vn = np.zeros_like(pts)
    for i in range(3):
        np.add.at(vn, tris[:, i], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def _undo_folds(old: np.ndarray, new: np.ndarray, tris: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Revert moved vertices of faces whose orientation flipped (a fold would make a local double layer)."""
    from .meshtools import face_normals

    n_old = face_normals(old, tris)
    for _ in range(10):
        pts = np.where(moved[:, None], new, old)
        flipped = np.einsum("ij,ij->i", n_old, face_normals(pts, tris)) < 0.0
        if not flipped.any():
            break
        moved[tris[flipped].ravel()] = False
    return moved


def _project(
    mesh: vtk.vtkPolyData, ev: _Evaluator, steps: int, u: np.ndarray | None
) -> tuple[vtk.vtkPolyData, np.ndarray]:
    """Move vertices onto the zero level; a move is kept only where u decreases and no face folds.

    With a gradient callable: ``p - u grad/|grad|`` (1 gradient + 1 value query per vertex). Without one,
    the surface normal comes from the mesh itself and both ``p -/+ u n`` are tried (2 value queries per
    vertex instead of 6 for finite differences; the mesh normal is also less noisy than a noisy gradient).
    """
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    for s in range(steps):
        ev.check_cancel()
        stage = f"projection {s + 1}/{steps}"
        if ev.udf_grad is not None:
            u, g = ev.grad(pts, stage)
            norm = np.linalg.norm(g, axis=1, keepdims=True)
            cand = pts - np.divide(g, norm, out=np.zeros_like(g), where=norm > 0) * u[:, None]
            u_new = ev.u(cand, stage)
        else:
            if u is None:
                u = ev.u(pts, stage)
            step = _vertex_normals(pts, tris) * u[:, None]
            both = ev.u(np.concatenate([pts - step, pts + step]), stage).reshape(2, -1)
            pick = both[1] < both[0]
            cand = np.where(pick[:, None], pts + step, pts - step)
            u_new = np.where(pick, both[1], both[0])
        moved = _undo_folds(pts, cand, tris, u_new < u) if len(tris) else u_new < u
        pts = np.where(moved[:, None], cand, pts)
        u = np.where(moved, u_new, u)
    return make_polydata(pts, tris), u


# ------------------------------------------------------------------------------------------- clean-up
def keep_component_near(mesh: vtk.vtkPolyData, point: Sequence[float], min_fraction: float = 0.0) -> vtk.vtkPolyData:
    """The face-connected component whose surface passes closest to ``point`` (e.g. the seed region).

    Only components with at least ``min_fraction`` of the total area compete (the largest always does): a
    seed sits inside the lumen, where a few-face speck of noise can be nearer than the wall itself.
    Point data arrays are carried over.
    """
    from .meshtools import cell_locator, connected_components, triangle_areas

    if mesh.GetNumberOfCells() == 0:
        return mesh
    labels = connected_components(mesh)
    area = np.bincount(labels, weights=triangle_areas(polydata_points(mesh), polydata_triangles(mesh)))
    eligible = area >= min_fraction * area.sum()
    eligible[int(np.argmax(area))] = True
    candidates = _submesh_keep_data(mesh, eligible[labels])
    cand_labels = labels[eligible[labels]]
    loc = cell_locator(candidates)
    closest = [0.0, 0.0, 0.0]
    cid, sid, d2 = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    loc.FindClosestPoint([float(x) for x in np.asarray(point, dtype=np.float64).reshape(3)], closest, cid, sid, d2)
    return _submesh_keep_data(mesh, labels == cand_labels[int(cid)])


def remove_small_components(mesh: vtk.vtkPolyData, min_fraction: float) -> vtk.vtkPolyData:
    """Drop face-connected components whose area is below ``min_fraction`` of the total area."""
    from .meshtools import connected_components, triangle_areas

    tris = polydata_triangles(mesh)
    if len(tris) == 0 or min_fraction <= 0:
        return mesh
    labels = connected_components(mesh)
    area = np.bincount(labels, weights=triangle_areas(polydata_points(mesh), tris))
    big = area >= min_fraction * area.sum()
    big[int(np.argmax(area))] = True
    return _submesh_keep_data(mesh, big[labels])


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


def fill_small_holes(mesh: vtk.vtkPolyData, max_edges: int) -> tuple[vtk.vtkPolyData, int]:
    """Close boundary loops of at most ``max_edges`` edges with a fan around their centroid.

    The largest loop of each mesh is never filled (it is the open rim). New faces follow the winding of the
    faces around the hole; the centroid gets the mean ``udf`` of the loop. Returns (mesh, holes filled).
    """
    from .meshtools import boundary_loops

    if max_edges < 3 or mesh.GetNumberOfCells() == 0:
        return mesh, 0
    loops = boundary_loops(mesh)
    small = [lp for lp in loops[1:] if 3 <= len(lp) <= max_edges and len(np.unique(lp)) == len(lp)]
    if not small:
        return mesh, 0
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    udf = _point_array(mesh, "udf")
    directed = {(int(a), int(b)) for t in tris for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    new_pts, new_tris, new_u = [], [], []
    for lp in small:
        c = len(pts) + len(new_pts)
        new_pts.append(pts[lp].mean(axis=0))
        if udf is not None:
            new_u.append(float(udf[lp].mean()))
        forward = (int(lp[0]), int(lp[1])) in directed
        nxt = np.roll(lp, -1)
        if forward:  # the existing faces run lp[i] -> lp[i+1]; the patch must run the other way
            new_tris.append(np.stack([np.full(len(lp), c), nxt, lp], axis=1))
        else:
            new_tris.append(np.stack([np.full(len(lp), c), lp, nxt], axis=1))
    out = make_polydata(np.vstack([pts, np.array(new_pts)]), np.vstack([tris] + new_tris))
    if udf is not None:
        _with_udf(out, np.concatenate([udf, np.array(new_u)]))
    return out, len(small)


def smooth_windowed_sinc(mesh: vtk.vtkPolyData, iterations: int = 20, passband: float = 0.1) -> vtk.vtkPolyData:
    """Low-pass smoothing that does not shrink (windowed sinc); boundary vertices stay exactly where they are.

    Non-manifold smoothing must be off: with it on, VTK 9.6 also moves the vertices of the open rim.
    """
    from .meshtools import boundary_edges

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


def project_to_zero_level(
    mesh: vtk.vtkPolyData, udf_grad: UDFGradFn, steps: int = 1, udf: UDFFn | None = None
) -> vtk.vtkPolyData:
    """Move vertices along ``-u grad/|grad|`` onto the zero level, keeping a move only where u decreases.

    The check needs u at the moved point: ``udf`` if given, else the u returned by ``udf_grad``.
    """
    u_fn: UDFFn = udf if udf is not None else (lambda p: udf_grad(p)[0])
    ev = _Evaluator(u_fn, udf_grad, 1 << 30, None, None)
    out, u = _project(mesh, ev, steps, None)
    return _with_udf(out, u)
