"""Small, exact mesh utilities shared by sampling, meshing, metrics and tests.

Everything here works on triangle ``vtkPolyData`` in one frame (LPS mm in the engine) and returns numpy arrays.
Distances are exact point-to-triangle distances (vtkStaticCellLocator), never distances to vertices or voxels.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import vtk
from vtk.util import numpy_support

from .io import make_polydata, polydata_points, polydata_triangles


def cell_locator(mesh: vtk.vtkPolyData) -> vtk.vtkStaticCellLocator:
    """A built static cell locator (reuse it when querying the same mesh many times)."""
    loc = vtk.vtkStaticCellLocator()
    loc.SetDataSet(mesh)
    loc.BuildLocator()
    return loc


def closest_points(
    locator: vtk.vtkStaticCellLocator, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact distance from each point (N, 3) to the located mesh, the closest points and the closest cell ids.

    vtk's ``FindClosestPoint`` returns the *squared* distance; this returns the distance.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    d2 = np.empty(n)
    closest = np.empty((n, 3))
    cell_ids = np.empty(n, dtype=np.int64)
    c = [0.0, 0.0, 0.0]
    cid = vtk.reference(0)
    sid = vtk.reference(0)
    dd = vtk.reference(0.0)
    cell = vtk.vtkGenericCell()
    for i in range(n):
        locator.FindClosestPoint(pts[i], c, cell, cid, sid, dd)
        d2[i] = dd.get()
        closest[i] = c
        cell_ids[i] = cid.get()
    return np.sqrt(np.maximum(d2, 0.0)), closest, cell_ids


def point_to_mesh_distance(
    mesh: vtk.vtkPolyData, points: np.ndarray, locator: vtk.vtkStaticCellLocator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact unsigned distance from each point (N, 3) to the triangles of ``mesh``, and the closest points."""
    if mesh.GetNumberOfCells() == 0:
        raise ValueError("point_to_mesh_distance: the mesh has no cells.")
    if len(np.asarray(points).reshape(-1, 3)) == 0:
        return np.zeros(0), np.zeros((0, 3))
    dist, closest, _ = closest_points(locator if locator is not None else cell_locator(mesh), points)
    return dist, closest


def signed_distance(mesh: vtk.vtkPolyData, points: np.ndarray) -> np.ndarray:
    """Exact point-to-surface distance, negative on the side opposite the winding normals.

    Vectorised through vtkImplicitPolyDataDistance (one C++ call for all points). For an open mesh the sign
    is only meaningful near the surface.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(0)
    impl = vtk.vtkImplicitPolyDataDistance()
    impl.SetInput(mesh)
    out = vtk.vtkDoubleArray()
    impl.FunctionValue(numpy_support.numpy_to_vtk(pts, deep=True), out)
    return numpy_support.vtk_to_numpy(out).astype(np.float64)


def unsigned_distance(mesh: vtk.vtkPolyData, points: np.ndarray) -> np.ndarray:
    """Exact unsigned point-to-surface distance (the fast path when closest points are not needed)."""
    return np.abs(signed_distance(mesh, points))


def triangle_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area of each triangle."""
    a, b, c = (points[triangles[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def mesh_area(mesh: vtk.vtkPolyData) -> float:
    """Total surface area (mm²)."""
    return float(triangle_areas(polydata_points(mesh), polydata_triangles(mesh)).sum())


def face_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unit normal of each triangle from its winding (zero for degenerate faces)."""
    a, b, c = (points[triangles[:, i]] for i in range(3))
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)


def vertex_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals from the triangles' own winding (zero where they cancel).

    No re-orientation: on an open surface the winding is the only orientation there is; callers that need
    "outward" decide it themselves (e.g. with :func:`inside_closed` on the capped surface).
    """
    fn = np.cross(points[triangles[:, 1]] - points[triangles[:, 0]], points[triangles[:, 2]] - points[triangles[:, 0]])
    vn = np.zeros_like(points, dtype=float)
    for i in range(3):
        np.add.at(vn, triangles[:, i], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def sample_on_faces(
    points: np.ndarray, triangles: np.ndarray, weights: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on the faces drawn with probability ∝ ``weights`` (uniform inside a face): points, face ids."""
    if n == 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    fid = rng.choice(len(triangles), size=n, p=weights / weights.sum())
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    a, b, c = (points[triangles[fid, i]] for i in range(3))
    return (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c, fid


def sample_surface(
    mesh: vtk.vtkPolyData, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on the surface: (points, face normals, face ids)."""
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    areas = triangle_areas(pts, tris)
    if areas.sum() <= 0:
        raise ValueError("sample_surface: the mesh has zero area.")
    samples, fid = sample_on_faces(pts, tris, areas, n, np.random.default_rng(seed))
    return samples, face_normals(pts, tris)[fid], fid


def edge_face_counts(triangles: np.ndarray) -> dict[tuple[int, int], int]:
    """How many faces use each undirected edge."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for t in triangles:
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            counts[(min(a, b), max(a, b))] += 1
    return counts


def boundary_edges(triangles: np.ndarray) -> np.ndarray:
    """Undirected edges (E, 2) used by exactly one face."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e.sort(axis=1)
    uniq, cnt = np.unique(e, axis=0, return_counts=True)
    return uniq[cnt == 1]


def non_manifold_edge_count(triangles: np.ndarray) -> int:
    """Number of edges shared by more than two faces."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e.sort(axis=1)
    _, cnt = np.unique(e, axis=0, return_counts=True)
    return int((cnt > 2).sum())


def _with_ids(mesh: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """A shallow copy of ``mesh`` carrying its point and cell ids as data arrays ``nudf_pid`` / ``nudf_cid``.

    vtk filters renumber points and cells; these arrays map their output back to the input. (vtkIdFilter was
    renamed vtkGenerateIds in VTK 9.4; adding the arrays by hand works with the VTK of every Slicer ≥ 5.4.)
    """
    out = vtk.vtkPolyData()
    out.ShallowCopy(mesh)
    for data, n, name in ((out.GetPointData(), mesh.GetNumberOfPoints(), "nudf_pid"),
                          (out.GetCellData(), mesh.GetNumberOfCells(), "nudf_cid")):
        arr = numpy_support.numpy_to_vtkIdTypeArray(np.arange(n, dtype=np.int64), deep=True)
        arr.SetName(name)
        data.AddArray(arr)
    return out


def boundary_loops(mesh: vtk.vtkPolyData) -> list[np.ndarray]:
    """Closed boundary loops as ordered arrays of point ids, longest first.

    vtkFeatureEdges (boundary edges only) chained into polylines by vtkStripper; a loop's repeated end
    point is dropped. Where loops touch at a vertex the stripper decides how they are split. Collapsed
    triangles (a repeated vertex) bound nothing and crash vtkFeatureEdges, so they are left out first.
    """
    if mesh.GetNumberOfCells() == 0:
        return []
    tris = polydata_triangles(mesh)
    proper = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    if not proper.any():
        return []
    if not proper.all() or len(tris) != mesh.GetNumberOfCells():
        mesh = make_polydata(polydata_points(mesh), tris[proper])  # same points, so the ids still hold
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(_with_ids(mesh))
    edges.BoundaryEdgesOn()
    edges.FeatureEdgesOff()
    edges.NonManifoldEdgesOff()
    edges.ManifoldEdgesOff()
    edges.ColoringOff()
    strip = vtk.vtkStripper()
    strip.SetInputConnection(edges.GetOutputPort())
    strip.JoinContiguousSegmentsOn()
    strip.Update()
    lines = strip.GetOutput()
    if lines.GetNumberOfLines() == 0:
        return []
    pid = numpy_support.vtk_to_numpy(lines.GetPointData().GetArray("nudf_pid")).astype(np.int64)
    conn = numpy_support.vtk_to_numpy(lines.GetLines().GetConnectivityArray()).astype(np.int64)
    offsets = numpy_support.vtk_to_numpy(lines.GetLines().GetOffsetsArray()).astype(np.int64)
    loops = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        ids = pid[conn[a:b]]
        if len(ids) > 1 and ids[-1] == ids[0]:
            ids = ids[:-1]
        loops.append(ids)
    loops.sort(key=len, reverse=True)
    return loops


def capped_signed_volume(points: np.ndarray, triangles: np.ndarray, loops: list[np.ndarray],
                         strict: bool = False) -> float:
    """Signed volume (mm³) of an open surface closed over its boundary ``loops`` by fans from their centroids.

    Each cap is wound from its rim, not from the size of the result: a boundary edge a→b as the surface's
    triangles run it is run b→a by the cap, so surface and caps form one consistently wound closed surface and
    the divergence theorem gives its volume: positive when the triangles' normals point out of it, negative
    when they point in (``abs`` is the volume). ``strict`` (exact ground truths): raise ``ValueError`` when a
    directed edge is used twice or a loop is not wholly a boundary of the surface; otherwise (network meshes,
    which may be locally inconsistent) each loop runs the way most of its edges say.
    """
    pts = np.asarray(points, dtype=np.float64)
    tris = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    if strict and len(np.unique(e, axis=0)) != len(e):
        raise ValueError("inconsistent winding (a directed edge is used by two triangles)")
    directed = set(map(tuple, e.tolist()))
    # volume = sum of det(a, b, c) / 6 about a reference point (the vertex mean, for precision)
    ref = pts.mean(axis=0) if len(pts) else np.zeros(3)
    p = pts - ref
    a, b, c = [p[tris[:, 0]]], [p[tris[:, 1]]], [p[tris[:, 2]]]
    for loop in loops:
        loop = np.asarray(loop, dtype=np.int64)
        if len(loop) < 3:
            if strict:
                raise ValueError("the boundary loop has fewer than 3 points")
            continue
        nxt = np.roll(loop, -1)
        along = sum((int(i), int(j)) in directed for i, j in zip(loop, nxt))
        against = sum((int(j), int(i)) in directed for i, j in zip(loop, nxt))
        if strict and not ((along == len(loop) and against == 0) or (against == len(loop) and along == 0)):
            raise ValueError("the loop is not a consistently oriented boundary loop of the surface")
        ring = loop[::-1] if along > against else loop  # the surface runs loop[i] -> loop[i+1]: the cap runs back
        apex = p[loop].mean(axis=0)
        a.append(np.broadcast_to(apex, (len(ring), 3)))
        b.append(p[ring])
        c.append(p[np.roll(ring, -1)])
    a, b, c = np.concatenate(a), np.concatenate(b), np.concatenate(c)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def capped(mesh: vtk.vtkPolyData, loops: list[np.ndarray] | None = None,
           apex: np.ndarray | None = None) -> vtk.vtkPolyData:
    """The surface with each boundary loop fanned shut (for inside/outside tests; winding is not fixed).

    Each fan's apex is its loop's centroid, or the one point ``apex`` for every loop (an open LAA's ostium
    centre, when it is known better than the rim's centroid).
    """
    pts = polydata_points(mesh)
    tris = [polydata_triangles(mesh)]
    loops = boundary_loops(mesh) if loops is None else loops
    extra = []
    for lp in loops:
        if len(lp) < 3:
            continue
        if apex is None or not extra:
            extra.append(pts[lp].mean(axis=0) if apex is None else np.asarray(apex, float).reshape(3))
        apex_id = len(pts) + len(extra) - 1
        tris.append(np.stack([np.full(len(lp), apex_id), lp, np.roll(lp, -1)], axis=1))
    return make_polydata(np.vstack([pts] + ([np.array(extra)] if extra else [])), np.vstack(tris))


def inside_closed(closed: vtk.vtkPolyData, points: np.ndarray) -> np.ndarray:
    """Which ``points`` lie inside the closed surface ``closed`` (vtkSelectEnclosedPoints; bool per point)."""
    pts = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    if len(pts) == 0:
        return np.zeros(0, bool)
    vp = vtk.vtkPoints()
    vp.SetData(numpy_support.numpy_to_vtk(pts, deep=True))
    probe = vtk.vtkPolyData()
    probe.SetPoints(vp)
    enc = vtk.vtkSelectEnclosedPoints()
    enc.SetInputData(probe)
    enc.SetSurfaceData(closed)
    enc.CheckSurfaceOff()  # a fanned cap may leave small non-manifold spots; the ray test still answers
    enc.SetTolerance(1e-6)
    enc.Update()
    return numpy_support.vtk_to_numpy(enc.GetOutput().GetPointData().GetArray("SelectedPoints")).astype(bool)


def loop_length(points: np.ndarray, loop: np.ndarray) -> float:
    """Perimeter of a closed loop of point ids (mm)."""
    p = points[loop]
    return float(np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1).sum())


def connected_components(mesh: vtk.vtkPolyData) -> np.ndarray:
    """Component label per triangle (faces connected through shared vertices), labels by decreasing size.

    vtkPolyDataConnectivityFilter (all regions, coloured) labels the points; a face takes its first vertex's
    label. Labels are then renumbered by decreasing face count (0 = the largest component).
    """
    n_cells = mesh.GetNumberOfCells()
    if n_cells == 0:
        return np.zeros(0, dtype=np.int64)
    conn = vtk.vtkPolyDataConnectivityFilter()
    conn.SetInputData(_with_ids(mesh))
    conn.SetExtractionModeToAllRegions()
    conn.ColorRegionsOn()
    conn.Update()
    out = conn.GetOutput()
    n_out = out.GetNumberOfPoints()
    pid = numpy_support.vtk_to_numpy(out.GetPointData().GetArray("nudf_pid"))[:n_out].astype(np.int64)
    region = numpy_support.vtk_to_numpy(out.GetPointData().GetArray("RegionId"))[:n_out].astype(np.int64)
    point_region = np.full(mesh.GetNumberOfPoints(), -1, dtype=np.int64)
    point_region[pid] = region
    labels = point_region[polydata_triangles(mesh)[:, 0]]
    if np.any(labels < 0):
        raise RuntimeError("internal: vtkPolyDataConnectivityFilter left a face unlabelled")
    order = np.argsort(-np.bincount(labels), kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return remap[labels]


def submesh(mesh: vtk.vtkPolyData, face_mask: np.ndarray) -> vtk.vtkPolyData:
    """The faces selected by ``face_mask`` with unused points removed (point data is not kept)."""
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)[np.asarray(face_mask, bool)]
    used, inv = np.unique(tris.ravel(), return_inverse=True)
    return make_polydata(pts[used], inv.reshape(-1, 3))


def keep_largest_component(mesh: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """The largest face-connected component."""
    labels = connected_components(mesh)
    return submesh(mesh, labels == 0) if len(labels) else mesh


def back_to_back_face_pairs(mesh: vtk.vtkPolyData, tol_mm: float | None = None) -> int:
    """Count pairs of faces lying on top of each other with opposite orientation (a double layer).

    Two faces count as a pair when their centroids lie within ``tol_mm`` of each other and their normals are
    opposite (dot < -0.9). Shared-edge neighbours on a flat sheet have equal, not opposite, normals, so a
    single layer scores 0. Slivers (area below 1 % of the median face) are left out: marching cubes makes
    them where the surface passes within a hair of a grid node, and their normals are round-off, not a layer.
    Default tolerance: 1/4 of the median edge length.
    """
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    if len(tris) < 2:
        return 0
    areas = triangle_areas(pts, tris)
    tris = tris[areas >= 0.01 * np.median(areas)]
    if len(tris) < 2:
        return 0
    normals = face_normals(pts, tris)
    cent = pts[tris].mean(axis=1)
    if tol_mm is None:
        e = np.linalg.norm(pts[tris[:, 0]] - pts[tris[:, 1]], axis=1)
        tol_mm = 0.25 * float(np.median(e))
    from scipy.spatial import cKDTree

    tree = cKDTree(cent)
    pairs = tree.query_pairs(r=max(tol_mm, 1e-9), output_type="ndarray")
    if len(pairs) == 0:
        return 0
    dots = np.einsum("ij,ij->i", normals[pairs[:, 0]], normals[pairs[:, 1]])
    return int((dots < -0.9).sum())


def clip_by_plane(mesh: vtk.vtkPolyData, origin: np.ndarray, normal: np.ndarray) -> vtk.vtkPolyData:
    """The part of a triangle mesh on the side the normal points to (``(p − origin)·normal ≥ 0``).

    Cut triangles are split exactly at the plane and re-triangulated; coincident points are merged, so the
    cut edge becomes one boundary loop (how an LAA surface is opened at its ostium plane).
    """
    plane = vtk.vtkPlane()
    plane.SetOrigin(*[float(v) for v in np.asarray(origin, dtype=np.float64).reshape(3)])
    plane.SetNormal(*[float(v) for v in np.asarray(normal, dtype=np.float64).reshape(3)])
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(mesh)
    clip.SetClipFunction(plane)
    return _clipped(clip)


def clip_by_scalar(mesh: vtk.vtkPolyData, values: np.ndarray) -> vtk.vtkPolyData:
    """The part of a triangle mesh where the per-point ``values`` are ≥ 0, cut exactly (linearly) at their zero
    crossing; as :func:`clip_by_plane`, the cut edge is one boundary loop. Point data is not kept."""
    data = vtk.vtkPolyData()
    data.SetPoints(mesh.GetPoints())
    data.SetPolys(mesh.GetPolys())
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
    arr.SetName("keep")
    data.GetPointData().SetScalars(arr)
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(data)
    out = _clipped(clip)
    out.GetPointData().Initialize()
    return out


def _clipped(clip: vtk.vtkClipPolyData) -> vtk.vtkPolyData:
    """Run a configured vtkClipPolyData (kept where the function/scalars ≥ 0) → triangles, points merged."""
    clip.SetValue(0.0)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(clip.GetOutputPort())
    tri.PassLinesOff()
    tri.PassVertsOff()
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(tri.GetOutputPort())
    clean.PointMergingOn()
    clean.SetTolerance(0.0)
    clean.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(clean.GetOutput())
    return out
