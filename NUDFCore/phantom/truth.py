"""Exact open ground truth of the LAA cavity surface, cut at the ostium, and neighbour clearing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import meshtools
from ..io import make_polydata, polydata_points, polydata_triangles
from .anatomy import _Anatomy, _Reject, _laa_clear_of_plane
from .sdf import (Ellipsoid, Field, RoundCone, Within, _BIG, _MC_SPACING_MM, _Grid, _eval_field_grid,
                  _random_rotation, _translate, _unit)


@dataclass
class _GroundTruth:
    points: np.ndarray      # heart frame
    triangles: np.ndarray
    seed: np.ndarray        # heart frame
    center: np.ndarray
    volume_ml: float
    long_mm: float
    short_mm: float
    depth_mm: float
    length_mm: float
    max_field_error_mm: float


def _marching_cubes_gt(an: _Anatomy) -> _GroundTruth:
    from skimage.measure import marching_cubes

    from ..meshtools import boundary_loops, clip_by_plane, connected_components

    laa = an.laa
    fld = an.fields["la"]
    o, nrm = laa.ostium_point, laa.ostium_normal
    if not _laa_clear_of_plane(laa):
        raise _Reject("LAA folds back to the ostium plane")
    lo = np.min([p.lo for p in laa.prims], axis=0) - 3.0
    hi = np.max([p.hi for p in laa.prims], axis=0) + 3.0
    h = _MC_SPACING_MM
    shape_ijk = np.ceil((hi - lo) / h).astype(int) + 1
    grid = _Grid((int(shape_ijk[2]), int(shape_ijk[1]), int(shape_ijk[0])), np.eye(3) * h, lo)
    vals = _eval_field_grid(fld, grid, (0, grid.shape[0], 0, grid.shape[1], 0, grid.shape[2]), 3.0)
    # the appendage side of the plane only; the LA side is closed off (then cut exactly below)
    vals = np.pad(vals, 1, constant_values=_BIG)
    verts, faces, _, _ = marching_cubes(vals, level=0.0, spacing=(h, h, h), allow_degenerate=False)
    pts = verts[:, ::-1] + (lo - h)  # (k, j, i) -> (x, y, z)
    pts = _project_to_zero(fld, pts)
    # orient: normals out of the lumen = along the field gradient
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    fn = np.cross(b - a, c - a)
    cen = (a + b + c) / 3
    _, g = _value_and_gradient(fld, cen)
    if np.sum(np.einsum("ij,ij->i", fn, g) > 0) < 0.5 * len(faces):
        faces = faces[:, ::-1]
    out = clip_by_plane(make_polydata(pts, faces), o, nrm)
    cpts, ctris = polydata_points(out), polydata_triangles(out)
    # drop slivers left by the cut
    a, b, c = cpts[ctris[:, 0]], cpts[ctris[:, 1]], cpts[ctris[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    ctris = ctris[area > 1e-10]
    used, inv = np.unique(ctris.ravel(), return_inverse=True)
    cpts, ctris = cpts[used], inv.reshape(-1, 3)
    mesh = make_polydata(cpts, ctris)
    labels = connected_components(mesh)
    if len(labels) and labels.max() > 0:  # drop specks (< 2 mm²) where the field barely dips below zero
        a, b, c = cpts[ctris[:, 0]], cpts[ctris[:, 1]], cpts[ctris[:, 2]]
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
        keep = np.isin(labels, np.flatnonzero(np.bincount(labels, weights=area) >= 2.0))
        ctris = ctris[keep]
        used, inv = np.unique(ctris.ravel(), return_inverse=True)
        cpts, ctris = cpts[used], inv.reshape(-1, 3)
        mesh = make_polydata(cpts, ctris)
        labels = connected_components(mesh)
    if len(labels) == 0 or labels.max() > 0:
        raise _Reject(f"ground truth has {labels.max() + 1 if len(labels) else 0} components")
    loops = boundary_loops(mesh)
    if len(loops) != 1:
        raise _Reject(f"ground truth has {len(loops)} boundary loops")
    loop = cpts[loops[0]]
    if np.abs((loop - o) @ nrm).max() > 1e-3:
        raise _Reject("boundary loop is not on the ostium plane")
    # ostium axes from the loop (principal directions within the plane)
    lc = loop.mean(axis=0)
    _, _, vt = np.linalg.svd(loop - lc)
    ext = [float(np.ptp((loop - lc) @ vt[i])) for i in range(2)]
    long_mm, short_mm = max(ext), min(ext)
    if long_mm > 1.6 * laa.target_long_mm + 4:
        raise _Reject("ostium much wider than drawn (the cut caught the LA body)")
    # volume: the ostium closed by a fan from the loop centroid, wound from the rim (normals out of the lumen -> +)
    try:
        signed_mm3 = capped_signed_volume(cpts, ctris, loops[0])
    except ValueError as exc:
        raise _Reject(f"ground truth: {exc}") from None
    if signed_mm3 < 0:
        raise _Reject("inverted ground truth orientation")
    volume_mm3 = abs(signed_mm3)
    err = float(np.abs(fld.eval_points(cpts)).max())
    # seed: the centreline point deepest inside (far from the wall and from the ostium plane)
    from ..meshtools import point_to_mesh_distance

    cand = laa.lobe_points
    hgt = (cand - o) @ nrm
    cand = cand[hgt > 2.0]
    if laa.defect is not None:
        cand = cand[np.linalg.norm(cand - laa.defect[0], axis=1) > laa.defect[1] + 4.0]
    cand = cand[fld.eval_points(cand) < -1.0] if len(cand) else cand
    if "trabeculae" in an.fields and len(cand):  # the seed sits in blood, not in a muscle
        cand = cand[an.fields["trabeculae"].eval_points(cand) > 1.5]
    if len(cand) == 0:
        raise _Reject("no lumen point for the seed")
    dist, _ = point_to_mesh_distance(mesh, cand)
    score = np.minimum(dist, (cand - o) @ nrm)
    best = int(np.argmax(score))
    if score[best] < 2.0:
        raise _Reject("LAA lumen too thin for a seed 2 mm from the wall")
    seed = cand[best]
    depth = float(((cpts - o) @ nrm).max())
    length = float(np.linalg.norm(cpts - lc, axis=1).max())
    # lumen centroid from the grid (appendage side)
    inside = np.argwhere(vals[1:-1, 1:-1, 1:-1] < 0)[:, ::-1] * h + lo
    inside = inside[(inside - o) @ nrm > 0]
    center = inside.mean(axis=0)
    return _GroundTruth(cpts, ctris, seed, center, volume_mm3 / 1000.0, long_mm, short_mm, depth, length, err)


def capped_signed_volume(points: np.ndarray, triangles: np.ndarray, loop: np.ndarray) -> float:
    """Signed volume (mm³) of the ground-truth surface closed over its ostium ``loop``; strict: raises
    ``ValueError`` on an inconsistent winding or a loop that is not a boundary (see
    :func:`NUDFCore.meshtools.capped_signed_volume`)."""
    return meshtools.capped_signed_volume(points, triangles, [loop], strict=True)


def _value_and_gradient(fld: Field, pts: np.ndarray, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Field values and forward-difference gradients at points, in one field evaluation."""
    n = len(pts)
    stacked = np.concatenate([pts, pts + [eps, 0, 0], pts + [0, eps, 0], pts + [0, 0, eps]])
    v = fld.eval_points(stacked).astype(np.float64)
    f = v[:n]
    g = np.stack([(v[n * (a + 1):n * (a + 2)] - f) / eps for a in range(3)], axis=1)
    return f, g


def _project_to_zero(fld: Field, pts: np.ndarray, iters: int = 3) -> np.ndarray:
    """Newton steps p -= f grad f / |grad f|^2 onto the exact zero level (clamped to 0.3 mm per step)."""
    p = pts.astype(np.float64).copy()
    for _ in range(iters):
        f, g = _value_and_gradient(fld, p)
        gn2 = np.maximum((g * g).sum(axis=1), 1e-6)
        step = (f / gn2)[:, None] * g
        sn = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, 0.3 / np.maximum(sn, 1e-12))
        p -= step
    return p


_MOVABLE = {"pv": ("pv",), "lv": ("lv", "lv_myo"), "rv": ("rv",), "ra": ("ra",), "svc": ("svc",),
            "ivc": ("ivc",), "aorta": ("aorta",), "pa": ("pa",), "coronary": ("coronary",)}


def _translate_fields(an: _Anatomy, names: tuple[str, ...], v: np.ndarray) -> None:
    """Move every primitive of the named fields by ``v`` (heart frame, mm), each once (fields share some)."""
    seen: set[int] = set()
    for name in names:
        for _, prim, _ in an.fields[name].ops:
            if id(prim) not in seen:
                seen.add(id(prim))
                _translate(prim, v)


def _clear_laa_neighbours(an: _Anatomy, gt_pts: np.ndarray, max_shift_mm: float = 8.0) -> str | None:
    """Keep other blood pools a wall's width from the LAA lumen, so the CT edge is the LAA's own.

    A structure that comes closer than ``an.min_gap_mm`` is moved away (up to ``max_shift_mm``), as the
    LAA would push a neighbour aside; returns the name of one that could not be cleared, else None.
    """
    sub = gt_pts[:: max(1, len(gt_pts) // 4000)]
    for name in an.blood_fields:
        fld = an.fields[name]
        moved = 0.0
        for _ in range(5):
            v = fld.eval_points(sub)
            worst = int(np.argmin(v))
            if float(v[worst]) >= an.min_gap_mm:
                break
            _, g = _value_and_gradient(fld, sub[worst:worst + 1])
            shift = (an.min_gap_mm - float(v[worst]) + 0.4)
            moved += shift
            if moved > max_shift_mm:
                return name
            _translate_fields(an, _MOVABLE[name], -shift * _unit(g[0]))
        else:
            return name
    return None


def _press_lv_against_laa(an: _Anatomy, gt_pts: np.ndarray, max_shift_mm: float = 15.0) -> None:
    """Style "tight_neighbours": move the LV until its free wall reaches ``an.lv_press_mm`` into the LAA.

    In many patients the appendage lies on the LV free wall with no fat between them, so on that side the
    cavity's edge is blood against myocardium. The LAA blood is painted over the LV muscle, so the cavity
    (and the ground truth) is unchanged; the LV blood stays ``an.min_gap_mm`` away. Where the LV lies farther
    than ``max_shift_mm`` or pressing would bring its blood too close, it stays put and ``an.lv_press_mm``
    becomes None.
    """
    if an.lv_press_mm is None:
        return
    sub = gt_pts[:: max(1, len(gt_pts) // 4000)]
    myo = an.fields["lv_myo"]
    moved = np.zeros(3)
    for _ in range(6):
        v = myo.eval_points(sub)
        worst = int(np.argmin(v))
        err = float(v[worst]) + an.lv_press_mm
        if abs(err) < 0.2:
            break
        _, g = _value_and_gradient(myo, sub[worst:worst + 1])
        step = err * _unit(g[0])  # the field grows away from the LV: along +g is toward the appendage
        _translate_fields(an, _MOVABLE["lv"], step)
        moved = moved + step
        if float(np.linalg.norm(moved)) > max_shift_mm:
            break
    if float(np.linalg.norm(moved)) > max_shift_mm or float(an.fields["lv"].eval_points(sub).min()) < an.min_gap_mm:
        _translate_fields(an, _MOVABLE["lv"], -moved)
        an.lv_press_mm = None


def _pool_surface_points(prims: list, rng: np.random.Generator, n: int = 600) -> np.ndarray:
    """Points on the surface of a pool made of round cones or ellipsoids (where its blood ends)."""
    out = []
    for prim in prims:
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        if isinstance(prim, Ellipsoid):
            out.append(prim.center + (u * prim.radii) @ prim.rot.T)
        else:  # round cone: spheres along its axis
            t = rng.random((n, 1))
            out.append(prim.a + t * (prim.b - prim.a) + u * (prim.ra + t * (prim.rb - prim.ra)))
    return np.concatenate(out)


def _place_septum_pools(an: _Anatomy, gt_pts: np.ndarray, max_shift_mm: float = 10.0) -> None:
    """Style "septum": one or two other blood pools against the appendage, across a thin septum.

    In real scans the appendage often lies on another contrast-filled structure (the left superior pulmonary
    vein at the ridge, a fold of the LA body, the pulmonary artery, a second lobe): beyond the cavity wall
    the HU dips over 1-3.5 mm of wall and fat, then rises to blood again. Each pool is drawn outside a random
    point of the appendage, its blood a septum (1.2-3.5 mm) from the LA and LAA cavity, so the cavity and
    the ground truth are unchanged. It is a *sheet* that follows the cavity's own shape over a patch
    8-16 mm in radius (3-10 mm deep; a long contact, as a vein or a fold lying along the appendage), a
    *vessel* (a bent tube, radius 4-9 mm) or a *chamber* (an ellipsoid, 8-18 mm radii); the last two are
    pushed out along the normal until no point of their blood is closer than the septum, and dropped if
    that takes more than ``max_shift_mm``.
    """
    rng = an.septum_rng
    if rng is None:
        return
    cav = an.fields["la"]
    o, n_os = an.laa.ostium_point, an.laa.ostium_normal
    sub = gt_pts[:: max(1, len(gt_pts) // 4000)]
    cand = sub[(sub - o) @ n_os > 3.0]
    if len(cand) == 0:
        return
    for i in range(int(rng.integers(1, 3))):
        p = cand[int(rng.integers(len(cand)))]
        _, g = _value_and_gradient(cav, p[None])
        nrm = _unit(g[0])
        gap = float(rng.uniform(1.2, 3.5))
        wall = float(rng.uniform(0.6, min(2.0, gap - 0.3)))
        hu = float(an.hu["blood_right"] if rng.random() < 0.3 else an.hu["blood"] * rng.uniform(0.85, 1.1))
        fld = Field()
        u = float(rng.random())
        if u < 0.5:
            kind, depth, radius = "sheet", float(rng.uniform(3.0, 10.0)), float(rng.uniform(8.0, 16.0))
            fld.union(Ellipsoid(p + nrm * (gap + 0.5 * depth), (radius, radius, radius)))
            fld.intersect(Within(cav, gap + depth), 1.0)
            fld.subtract(Within(cav, gap), 1.0)  # smooth subtraction only widens the septum
            closest = gap
        else:
            if u < 0.8:
                kind, r = "vessel", float(rng.uniform(4.0, 9.0))
                t = _unit(np.cross(nrm, rng.normal(size=3)))
                half = 0.5 * float(rng.uniform(25.0, 45.0))
                c = p + nrm * (gap + r)
                pts = np.array([c - half * t + rng.normal(0, 3, 3), c, c + half * t + rng.normal(0, 3, 3)])
                prims = [RoundCone(pts[k], pts[k + 1], r) for k in range(2)]
            else:
                kind = "chamber"
                rot = _random_rotation(rng, 180)
                radii = rng.uniform(8.0, 18.0, 3)
                support = float(np.linalg.norm(radii * (rot.T @ nrm)))
                prims = [Ellipsoid(p + nrm * (gap + support), radii, rot)]
            moved = 0.0
            for _ in range(8):
                closest = float(cav.eval_points(_pool_surface_points(prims, rng)).min())
                if closest >= gap - 0.2:
                    break
                step = gap - closest + 0.2
                moved += step
                for prim in prims:
                    _translate(prim, step * nrm)
            else:
                continue
            if moved > max_shift_mm:
                continue
            for k, prim in enumerate(prims):
                fld.union(prim, 2.0 if k else 0.0)
        an.env.union(Within(fld, wall + 1.0), 4.0)  # the pool sits in the epicardial fat, as the heart does
        name = f"septum_pool_{i}"
        an.fields[name] = fld
        an.septum_pools.append({"field": name, "hu": hu, "wall_mm": wall, "septum_mm": closest, "kind": kind})


def polydata_boundary_ids(triangles: np.ndarray) -> np.ndarray:
    """Ids of the vertices on boundary edges (edges used by one triangle)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e.sort(axis=1)
    uniq, cnt = np.unique(e, axis=0, return_counts=True)
    return np.unique(uniq[cnt == 1].ravel())

