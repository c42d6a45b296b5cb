"""Synthetic contrast-enhanced cardiac CT (CTA) phantoms with an exact, open LAA ground truth.

Why a phantom: a NUDF model must learn where the left atrial appendage (LAA) wall is from CT intensities,
and the only way to get unlimited cases whose surface is known *exactly* (sub-voxel) is to draw the
anatomy from analytic shapes. A model trained on phantoms alone has to carry over to real CT, so the
surroundings the LAA touches in real scans are drawn too.

How a case is made
------------------
* **Anatomy** lives in a *heart frame* (mm; x to the patient's left, y posterior, z superior, origin near
  the mitral valve). Every structure is a signed distance field (SDF) built from primitives (ellipsoids,
  swept round cones, elliptic cylinders) combined by smooth unions/subtractions. Each primitive is only
  evaluated inside its own bounding box, which keeps a 512x512x250 case fast.
* **Structures**: left atrium body (ellipsoid) with four pulmonary vein stubs, the LAA (see below), left
  ventricle cavity and myocardium, right ventricle and atrium, superior/inferior vena cava, aortic root,
  ascending aorta, arch and descending aorta, pulmonary trunk and both pulmonary arteries, left main,
  left circumflex (in the groove below the LAA ostium), LAD and right coronary arteries, epicardial fat
  and pericardium around all of it, lungs, chest wall (fat, muscle), ribs, sternum, vertebrae with discs
  and spinal canal, posterior mediastinum and the liver dome.
* **LAA** families (Di Biase 2012 prevalences: chicken wing 48 %, cactus 30 %, windsock 19 %,
  cauliflower 3 %) are drawn **uniformly** by default (:data:`MORPHOLOGY_SAMPLING`): a model has to see the
  rare shapes often enough to learn them, and all four appear within a few seeds. Each LAA is a chain of
  overlapping ellipsoids along a bent centreline (oval cross-section at the ostium, long axis 15-30 mm,
  length 20-45 mm), secondary lobes/lobules, outer lobulations and pectinate-muscle-like ridges
  subtracted from the lumen. The LAA is smooth-unioned with the LA body, so it opens into the LA lumen
  and the wall (the lumen field offset by 1.5-3 mm) continues around the neck.
* **Ostium plane**: tangent to the LA ellipsoid at the attachment point, pushed 1.5-3 mm outwards. The LA
  ellipsoid is convex, so it lies entirely on the LA side; the LAA is kept on the appendage side.
* **Ground truth**: marching cubes of the *analytic* LA+LAA field (0.4 mm grid, only around the LAA),
  vertices projected onto the exact zero level by Newton steps (|field| < 0.01 mm), cut exactly at the
  ostium plane and kept on the appendage side: an open mesh with one boundary loop, triangles wound with
  normals pointing out of the lumen. It never comes from the CT voxels.
* **CT render**: layers painted back to front (air, body, lung, bones, fat, walls, blood, filling defect),
  each blended with a smooth step of its SDF whose width matches the PSF (0.5-0.8 mm) plus in-plane voxel
  averaging, so a structure's edge (50 % level) sits exactly at SDF = 0. Thick slices get an extra blur
  along the slice axis. Background layers (body, lungs, bones) are drawn on a ~1.5 mm grid and upsampled.
  Correlated noise (Gaussian-filtered white noise, sigma 15-40 HU) is added; voxels are int16 HU.
* **Geometry**: in-plane spacing 0.3-0.8 mm, slices 0.5-2.5 mm (65 % cardiac CTA 0.5-1.0 mm, 35 % routine
  chest 1-2.5 mm), a random patient pose, a random direction matrix (60 % tilted up to 20 degrees, 25 %
  with axis flips) and a random origin. ``size="full"``: 512x512 in-plane (FOV = 512 x spacing) and
  ~80-280 slices; ``size="compact"``: a 110-130 mm field of view around the LA/LAA (fast datasets).
* Every random choice comes from ``np.random.default_rng(seed)``: the same seed gives the same case.

Frames: the CT is stored with its LPS geometry; the mesh and all ``*_lps`` metadata are LPS mm,
``seed_ras`` is :func:`NUDFCore.frames.lps_to_ras` of ``seed_lps``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

from . import __version__
from .errors import InputError, NUDFError, OutputExistsError
from .frames import lps_to_ras
from .io import Volume, make_polydata, polydata_points, polydata_triangles, write_mesh, write_volume

MORPHOLOGIES: tuple[str, ...] = ("chicken_wing", "cactus", "windsock", "cauliflower")
#: Clinical prevalence of the families (Di Biase et al., JACC 2012), for reference and for callers who
#: want clinically weighted datasets (``generate_case(..., morphology_weights=CLINICAL_PREVALENCE)``).
CLINICAL_PREVALENCE: dict[str, float] = {"chicken_wing": 0.48, "cactus": 0.30, "windsock": 0.19, "cauliflower": 0.03}
#: Default sampling of the families: uniform, so rare shapes are learned too.
MORPHOLOGY_SAMPLING: dict[str, float] = {m: 0.25 for m in MORPHOLOGIES}
SIZES: tuple[str, ...] = ("full", "compact")
CASE_FILES: tuple[str, ...] = ("ct.nii.gz", "laa.vtp", "laa.stl", "meta.json")

_BIG = np.float32(1.0e4)
_MC_SPACING_MM = 0.4
_GAP_MM = 2.2  # minimum distance between the LAA lumen and any other blood pool


# =========================================================================================== primitives
def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _rotation(axis: Sequence[float], angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    a = _unit(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    return _rotation(rng.normal(size=3), math.radians(rng.uniform(0, max_deg)))


def _frame_from_axis(axis: Sequence[float], hint: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotation whose third column is ``axis`` (a local frame for primitives with an axis)."""
    z = _unit(axis)
    h = np.asarray(hint, float)
    if abs(float(np.dot(h, z))) > 0.9:
        h = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = _unit(np.cross(h, z))
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


class Primitive:
    """A shape with its own local frame (``center``, rotation ``rot`` with local axes as columns).

    ``local(x, y, z)`` returns the (approximate) signed distance, negative inside, for local coordinates;
    the zero level is exact, the distance is accurate near it. ``lo``/``hi`` bound the shape (heart frame).
    """

    center: np.ndarray
    rot: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def eval_points(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, np.float64)
        return self.eval_cols(*(np.ascontiguousarray(p[:, a], np.float32) for a in range(3)))

    def eval_cols(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values at heart-frame points given as float32 coordinate columns."""
        c = self.center.astype(np.float32)
        r = self.rot.astype(np.float32)
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        q = [dx * r[0, a] + dy * r[1, a] + dz * r[2, a] for a in range(3)]
        return self.local(q[0], q[1], q[2])


class Offset(Primitive):
    """``prim`` grown by ``d`` mm (its field minus d); follows ``prim`` if that one is moved."""

    def __init__(self, prim: Primitive, d: float) -> None:
        self.prim, self.d = prim, float(d)

    center = property(lambda self: self.prim.center)
    rot = property(lambda self: self.prim.rot)
    lo = property(lambda self: self.prim.lo - self.d)
    hi = property(lambda self: self.prim.hi + self.d)

    def local(self, x, y, z):
        v = self.prim.local(x, y, z)
        v -= np.float32(self.d)
        return v


def _translate(prim: Primitive, v: np.ndarray) -> None:
    """Move a primitive in place (its wrappers follow)."""
    if isinstance(prim, Offset):
        return
    prim.center = prim.center + v
    prim.lo = prim.lo + v
    prim.hi = prim.hi + v
    if isinstance(prim, RoundCone):
        prim.a = prim.a + v
        prim.b = prim.b + v
        prim.center = prim.a


class Ellipsoid(Primitive):
    def __init__(self, center: Sequence[float], radii: Sequence[float], rot: np.ndarray | None = None) -> None:
        self.center = np.asarray(center, float)
        self.radii = np.asarray(radii, float)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, float)
        ext = np.abs(self.rot) @ self.radii
        self.lo, self.hi = self.center - ext, self.center + ext

    def inflated(self, d: float) -> "Ellipsoid":
        return Ellipsoid(self.center, self.radii + d, self.rot)

    def local(self, x, y, z):
        a, b, c = (np.float32(r) for r in self.radii)
        x = x / a
        y = y / b
        z = z / c
        k0 = np.sqrt(x * x + y * y + z * z)
        x /= a
        y /= b
        z /= c
        k1 = np.sqrt(x * x + y * y + z * z)
        np.maximum(k1, np.float32(1e-6), out=k1)
        return k0 * (k0 - 1) / k1


class RoundCone(Primitive):
    """A segment from ``a`` to ``b`` swept by a sphere whose radius goes from ``ra`` to ``rb``."""

    def __init__(self, a: Sequence[float], b: Sequence[float], ra: float, rb: float | None = None) -> None:
        self.a = np.asarray(a, float)
        self.b = np.asarray(b, float)
        self.ra = float(ra)
        self.rb = float(ra if rb is None else rb)
        self.length = max(float(np.linalg.norm(self.b - self.a)), 1e-6)
        self.center = self.a
        self.rot = _frame_from_axis(self.b - self.a)
        r = max(self.ra, self.rb)
        self.lo = np.minimum(self.a, self.b) - r
        self.hi = np.maximum(self.a, self.b) + r

    def inflated(self, d: float) -> "RoundCone":
        return RoundCone(self.a, self.b, self.ra + d, self.rb + d)

    def local(self, x, y, z):
        length = np.float32(self.length)
        t = np.clip(z / length, 0, 1)
        r = np.float32(self.ra) + np.float32(self.rb - self.ra) * t
        t *= length
        np.subtract(z, t, out=t)
        d = np.sqrt(x * x + y * y + t * t)
        d -= r
        return d


class EllipticCylinder(Primitive):
    """An elliptic cylinder along the local z axis, flat-capped at +-``half_height``."""

    def __init__(self, center: Sequence[float], rx: float, ry: float, half_height: float = 1e4,
                 rot: np.ndarray | None = None) -> None:
        self.center = np.asarray(center, float)
        self.rx, self.ry, self.hh = float(rx), float(ry), float(half_height)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, float)
        ext = np.abs(self.rot) @ np.array([self.rx, self.ry, self.hh])
        self.lo, self.hi = self.center - ext, self.center + ext

    def local(self, x, y, z):
        a, b = np.float32(self.rx), np.float32(self.ry)
        x = x / a
        y = y / b
        k0 = np.sqrt(x * x + y * y)
        x /= a
        y /= b
        k1 = np.sqrt(x * x + y * y)
        np.maximum(k1, np.float32(1e-6), out=k1)
        d = k0 * (k0 - 1) / k1
        if self.hh >= 1e3:
            return d
        dz = np.abs(z) - np.float32(self.hh)
        out = np.minimum(np.maximum(d, dz), 0)
        out += np.sqrt(np.maximum(d, 0) ** 2 + np.maximum(dz, 0) ** 2)
        return out


# ================================================================================================ fields
@dataclass
class Field:
    """A signed distance field: primitives combined in order.

    ``ops`` holds ``(mode, primitive, k)`` with mode 'union' (smooth min with blend radius k mm),
    'subtract' (smooth max with minus the primitive) or 'intersect' (smooth max, evaluated everywhere).
    Values start at +BIG, so the first op must be a union.
    """

    ops: list[tuple[str, Primitive, float]] = field(default_factory=list)

    def union(self, prim: Primitive, k: float = 0.0) -> "Field":
        self.ops.append(("union", prim, float(k)))
        return self

    def subtract(self, prim: Primitive, k: float = 0.0) -> "Field":
        self.ops.append(("subtract", prim, float(k)))
        return self

    def intersect(self, prim: Primitive, k: float = 0.0) -> "Field":
        self.ops.append(("intersect", prim, float(k)))
        return self

    @property
    def kmax(self) -> float:
        return max([k for _, _, k in self.ops] + [0.0])

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        los = [p.lo for m, p, _ in self.ops if m == "union"]
        his = [p.hi for m, p, _ in self.ops if m == "union"]
        return np.min(los, axis=0) - margin, np.max(his, axis=0) + margin

    def eval_points(self, points: np.ndarray, margin: float = 3.0) -> np.ndarray:
        """Field value at heart-frame points (N, 3); each primitive is evaluated only near its box."""
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.full(len(pts), _BIG, np.float32)
        if len(pts) == 0:
            return out
        cols = [np.ascontiguousarray(pts[:, a], np.float32) for a in range(3)]
        lo_all, hi_all = pts.min(axis=0), pts.max(axis=0)
        m = margin + self.kmax
        for mode, prim, k in self.ops:
            lo, hi = prim.lo - m, prim.hi + m
            if mode == "intersect":
                sel = None
            else:
                if np.any(lo > hi_all) or np.any(hi < lo_all):
                    continue
                sel = (cols[0] >= lo[0]) & (cols[0] <= hi[0])
                sel &= (cols[1] >= lo[1]) & (cols[1] <= hi[1])
                sel &= (cols[2] >= lo[2]) & (cols[2] <= hi[2])
                sel = np.flatnonzero(sel)
                if len(sel) == 0:
                    continue
            if sel is None:
                _combine(out, prim.eval_cols(*cols), mode, k)
            else:
                o = out[sel]
                _combine(o, prim.eval_cols(cols[0][sel], cols[1][sel], cols[2][sel]), mode, k)
                out[sel] = o
        return out


def _combine(o: np.ndarray, d: np.ndarray, mode: str, k: float) -> None:
    """In-place smooth boolean of the running field ``o`` with a primitive's values ``d``."""
    if mode == "subtract":  # smax(o, -d) = -smin(-o, d)
        np.negative(o, out=o)
        _smin(o, d, k)
        np.negative(o, out=o)
    elif mode == "intersect":  # smax(o, d) = -smin(-o, -d)
        np.negative(d, out=d)
        np.negative(o, out=o)
        _smin(o, d, k)
        np.negative(o, out=o)
    else:
        _smin(o, d, k)


def _smin(o: np.ndarray, d: np.ndarray, k: float) -> None:
    """o <- polynomial smooth minimum of (o, d) with blend radius k (plain min for k = 0)."""
    if k <= 0:
        np.minimum(o, d, out=o)
        return
    kf = np.float32(k)
    h = o - d
    h *= np.float32(0.5) / kf
    h += np.float32(0.5)
    np.clip(h, 0, 1, out=h)  # weight of d
    # o = o + (d - o) h - k h (1 - h)
    diff = d - o
    diff *= h
    o += diff
    h *= np.float32(1) - h
    h *= kf
    o -= h


# ================================================================================================= grids
@dataclass
class _Grid:
    """A voxel grid given by its shape (k, j, i) and the affine (i, j, k) -> heart frame: h = A @ ijk + b."""

    shape: tuple[int, int, int]
    A: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        self.Ainv = np.linalg.inv(self.A)

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
        """(k0, k1, j0, j1, i0, i1) voxel box covering the heart-frame box [lo, hi], clipped; None if empty."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = (corners - self.b) @ self.Ainv.T
        mn = np.floor(ijk.min(axis=0)).astype(np.int64)
        mx = np.ceil(ijk.max(axis=0)).astype(np.int64) + 1
        nk, nj, ni = self.shape
        i0, j0, k0 = np.maximum(mn, 0)
        i1, j1, k1 = np.minimum(mx, [ni, nj, nk])
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return int(k0), int(k1), int(j0), int(j1), int(i0), int(i1)


def _intersect_box(a, b):
    if a is None or b is None:
        return None
    out = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]), max(a[4], b[4]), min(a[5], b[5]))
    if out[1] <= out[0] or out[3] <= out[2] or out[5] <= out[4]:
        return None
    return out


def _local_coords(grid: _Grid, prim: Primitive, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k0, k1, j0, j1, i0, i1 = box
    L = prim.rot.T @ grid.A
    m = prim.rot.T @ (grid.b - prim.center)
    i = np.arange(i0, i1, dtype=np.float64)
    j = np.arange(j0, j1, dtype=np.float64)
    k = np.arange(k0, k1, dtype=np.float64)
    out = []
    for r in range(3):
        kj = (L[r, 2] * k)[:, None, None] + (L[r, 1] * j)[None, :, None]
        ii = (L[r, 0] * i + m[r])[None, None, :]
        out.append((kj.astype(np.float32) + ii.astype(np.float32)))
    return out[0], out[1], out[2]


def _eval_field_grid(fld: Field, grid: _Grid, region, margin: float) -> np.ndarray:
    """The field on a voxel box ``region`` of ``grid`` (float32, +BIG far from every primitive)."""
    k0, k1, j0, j1, i0, i1 = region
    out = np.full((k1 - k0, j1 - j0, i1 - i0), _BIG, np.float32)
    m = margin + fld.kmax
    for mode, prim, k in fld.ops:
        if mode == "intersect":
            box = region
        else:
            box = _intersect_box(grid.index_box(prim.lo - m, prim.hi + m), region)
            if box is None:
                continue
        d = prim.local(*_local_coords(grid, prim, box))
        view = out[box[0] - k0:box[1] - k0, box[2] - j0:box[3] - j0, box[4] - i0:box[5] - i0]
        _combine(view, d, mode, k)
    return out


@dataclass
class _Paint:
    fld: Field
    hu: float
    offset: float = 0.0  # paint where field < offset (walls are lumens offset outwards)


def _render_paints(vol: np.ndarray, grid: _Grid, paints: list[_Paint], blur_mm: float,
                   progress: Callable[[int], None] | None = None) -> None:
    """Blend the paints, in order, into ``vol`` (indexed like ``grid``) slab by slab.

    A paint's weight is a cubic smooth step of its field over +-``blur_mm``*1.88 (matching the slope of a
    Gaussian edge of sigma ``blur_mm``): 0.5 exactly where field = offset.
    """
    hw = 1.88 * blur_mm
    nk, nj, ni = grid.shape
    slab = max(1, int(4_000_000 // max(1, nj * ni)))
    max_off: dict[int, float] = {}
    for p in paints:
        max_off[id(p.fld)] = max(max_off.get(id(p.fld), 0.0), p.offset)
    boxes = {}
    for p in paints:
        key = id(p.fld)
        if key not in boxes:
            margin = max_off[key] + hw + p.fld.kmax + 2.0
            lo, hi = p.fld.bounds(margin)
            boxes[key] = grid.index_box(lo, hi)
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        cache: dict[int, tuple[tuple, np.ndarray]] = {}
        for p in paints:
            key = id(p.fld)
            region = _intersect_box(boxes[key], (k0, k1, 0, nj, 0, ni))
            if region is None:
                continue
            if key not in cache:
                cache[key] = (region, _eval_field_grid(p.fld, grid, region, max_off[key] + hw + 2.0))
            region, f = cache[key]
            t = np.float32(p.offset) - f
            t *= np.float32(0.5 / hw)
            t += np.float32(0.5)
            np.clip(t, 0, 1, out=t)
            w = t * t
            t *= np.float32(-2)
            t += np.float32(3)
            w *= t  # smoothstep
            v = vol[region[0]:region[1], region[2]:region[3], region[4]:region[5]]
            diff = np.float32(p.hu) - v
            diff *= w
            v += diff
        if progress is not None:
            progress(k1 - k0)


def _upsample_linear(coarse: np.ndarray, factors: tuple[int, int, int], out: np.ndarray) -> None:
    """Separable linear interpolation of ``coarse`` (node n <-> fine index n*factor) into ``out``."""

    def axis_weights(n: int, f: int, nc: int):
        pos = np.arange(n, dtype=np.float64) / f
        i0 = np.minimum(np.floor(pos).astype(np.int64), max(nc - 2, 0))
        w = (pos - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, nc - 1)
        return i0, i1, w

    nk, nj, ni = out.shape
    fk, fj, fi = factors
    a = coarse
    i0, i1, w = axis_weights(ni, fi, a.shape[2])
    a = a[:, :, i0] * (1 - w) + a[:, :, i1] * w
    j0, j1, w = axis_weights(nj, fj, a.shape[1])
    a = a[:, j0, :] * (1 - w)[:, None] + a[:, j1, :] * w[:, None]
    k0, k1, w = axis_weights(nk, fk, a.shape[0])
    for k in range(nk):
        np.multiply(a[k0[k]], 1 - w[k], out=out[k])
        if w[k] > 0:
            out[k] += a[k1[k]] * w[k]


# ============================================================================================== anatomy
@dataclass
class _LAA:
    morphology: str
    prims: list[Primitive]          # lumen primitives (for the fat envelope)
    ostium_point: np.ndarray = None  # heart frame, on the ostium plane
    ostium_normal: np.ndarray = None  # heart frame, from LA into LAA
    centerline: np.ndarray = None    # main-lobe centreline points (heart frame)
    lobe_points: np.ndarray = None   # centreline points of all lobes
    lobes: int = 1
    k_neck: float = 3.0
    n_neck: int = 0
    target_long_mm: float = 0.0
    target_short_mm: float = 0.0
    length_mm: float = 0.0
    defect: tuple[np.ndarray, float] | None = None


@dataclass
class _Anatomy:
    fields: dict[str, Field]
    laa: _LAA
    hu: dict
    walls: dict[str, float]
    background: list[_Paint]
    env: Field
    body_center: np.ndarray
    heart_center: np.ndarray
    la_center: np.ndarray
    blood_fields: list[str]


def _chain(points: np.ndarray, radius: Callable[[float], float], k: float, fld: Field) -> list[Primitive]:
    """Round cones along a polyline (radius as a function of arc fraction), smooth-unioned into ``fld``."""
    prims = []
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)]) / max(seg.sum(), 1e-9)
    for n in range(len(points) - 1):
        prim = RoundCone(points[n], points[n + 1], radius(s[n]), radius(s[n + 1]))
        fld.union(prim, k)
        prims.append(prim)
    return prims


def _sweep(rng: np.random.Generator, start: np.ndarray, d0: np.ndarray, e1: np.ndarray, length: float,
           curvature: Callable[[float], float], bend_axis: np.ndarray, ds: float = 2.0,
           twist: float = 0.0, away: np.ndarray | None = None,
           min_dot: float = -1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrate a bent centreline: points, tangents and the transported cross-section axis e1.

    With ``away``, bending stops whenever the tangent would point back along -``away`` more than
    ``min_dot`` allows (an LAA never folds back into the LA).
    """
    n = max(2, int(round(length / ds)) + 1)
    ds = length / (n - 1)
    p, d, e = start.astype(float), _unit(d0), _unit(e1)
    b = _unit(bend_axis - np.dot(bend_axis, d) * d)
    pts, tans, e1s = [p.copy()], [d.copy()], [e.copy()]
    for i in range(1, n):
        s = i * ds
        r = _rotation(b, curvature(s) * ds)
        if away is None or float(np.dot(r @ d, away)) >= min(min_dot, float(np.dot(d, away))):
            d = _unit(r @ d)
            e = _unit(r @ e)
        if twist:
            rt = _rotation(d, twist * ds)
            b = rt @ b
        b = _unit(b - np.dot(b, d) * d)
        e = _unit(e - np.dot(e, d) * d)
        p = p + d * ds
        pts.append(p.copy())
        tans.append(d.copy())
        e1s.append(e.copy())
    return np.array(pts), np.array(tans), np.array(e1s)


def _blob_tube(fld: Field, pts: np.ndarray, tans: np.ndarray, e1s: np.ndarray, ra: np.ndarray, rb: np.ndarray,
               k: float, k_first: float | None = None, n_first: int = 0) -> list[Primitive]:
    """Overlapping ellipsoids along a centreline: an oval tube whose size follows (ra, rb)."""
    prims = []
    step = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean() if len(pts) > 1 else 1.0
    for n in range(len(pts)):
        t = tans[n]
        e1 = e1s[n]
        e2 = np.cross(t, e1)
        rot = np.stack([e1, e2, t], axis=1)
        rt = max(1.3 * step, 0.8 * min(ra[n], rb[n]))
        prim = Ellipsoid(pts[n], (ra[n], rb[n], rt), rot)
        fld.union(prim, k_first if (k_first is not None and n < n_first) else k)
        prims.append(prim)
    return prims


def _sample_laa(rng: np.random.Generator, la: Ellipsoid, morphology: str, fld: Field) -> _LAA:
    """Draw an LAA of ``morphology`` attached to the LA ellipsoid; adds its primitives to ``fld``."""
    # attachment: left, anterior, superior aspect of the LA
    v = _unit(np.array([0.80, -0.45, 0.42]) + rng.normal(0, 0.12, 3))
    q = la.rot.T @ v
    s = 1.0 / np.linalg.norm(q / la.radii)
    p0 = la.center + s * v
    n = _unit(la.rot @ ((la.rot.T @ (p0 - la.center)) / la.radii ** 2))
    delta = rng.uniform(1.5, 3.0)
    ostium = p0 + delta * n
    long_mm = rng.uniform(15.0, 30.0)
    short_mm = long_mm * rng.uniform(0.55, 0.9)
    a0, b0 = 0.5 * long_mm * 0.88, 0.5 * short_mm * 0.88
    d0 = _unit(n + _unit(rng.normal(size=3)) * math.tan(math.radians(rng.uniform(0, 15))))
    e1 = _unit(np.cross(d0, rng.normal(size=3)))
    bend = _unit(np.cross(d0, rng.normal(size=3)))
    start = p0 - 4.0 * d0
    k_neck = rng.uniform(2.5, 4.0)
    k_body = rng.uniform(1.0, 2.0)
    prims: list[Primitive] = []
    lobe_pts = []
    lobes = 1

    def profile(u: np.ndarray, bulge: float, tip: float, power: float) -> np.ndarray:
        return (1 + bulge * np.sin(np.pi * np.clip(u, 0, 1)) ** 1.5) * (1 - (1 - tip) * np.clip(u, 0, 1) ** power)

    if morphology == "chicken_wing":
        length = rng.uniform(32, 46)
        neck = rng.uniform(9, 16)
        bend_len = rng.uniform(6, 12)
        angle = math.radians(rng.uniform(80, 140))
        kappa = angle / bend_len
        curv = lambda s: (kappa if neck + 4 <= s < neck + 4 + bend_len else rng.normal(0, 0.004))
        bulge, tip, power = rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.55), rng.uniform(1.5, 2.5)
    elif morphology == "windsock":
        length = rng.uniform(26, 46)
        total = math.radians(rng.uniform(15, 70))
        kappa = total / length
        curv = lambda s: kappa
        bulge, tip, power = rng.uniform(0.1, 0.35), rng.uniform(0.25, 0.45), rng.uniform(1.5, 3.0)
    elif morphology == "cactus":
        length = rng.uniform(24, 40)
        total = math.radians(rng.uniform(0, 45))
        kappa = total / length
        curv = lambda s: kappa
        bulge, tip, power = rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.55), rng.uniform(1.5, 2.5)
    elif morphology == "cauliflower":
        length = rng.uniform(16, 24)
        total = math.radians(rng.uniform(0, 30))
        kappa = total / length
        curv = lambda s: kappa
        bulge, tip, power = rng.uniform(0.15, 0.35), rng.uniform(0.6, 0.85), rng.uniform(1.0, 2.0)
    else:  # pragma: no cover - checked by the caller
        raise InputError(f"Unknown LAA morphology {morphology!r}: use one of {', '.join(MORPHOLOGIES)}.")

    pts, tans, e1s = _sweep(rng, start, d0, e1, length + 4.0, curv, bend, ds=2.0, twist=rng.normal(0, 0.01),
                            away=n, min_dot=-0.45)
    n_neck = int(math.ceil((4.0 + delta + 1.2 * max(a0, b0)) / 2.0)) + 1
    for _ in range(4):  # shorten a body that comes back within a blend radius of the ostium plane
        u = np.clip((np.arange(len(pts)) * 2.0 - 4.0) / length, 0, 1)
        prof = profile(u, bulge, tip, power)
        ra, rb = a0 * prof, b0 * prof
        low = []
        for i in range(n_neck, len(pts)):
            rot = np.stack([e1s[i], np.cross(tans[i], e1s[i]), tans[i]], axis=1)
            rt = max(2.6, 0.8 * min(ra[i], rb[i]))
            ext = float(np.linalg.norm(np.array([ra[i], rb[i], rt]) * (rot.T @ n)))
            low.append(float(np.dot(pts[i] - ostium, n)) - ext)
        bad = [i for i, v in zip(range(n_neck, len(pts)), low) if v < 1.0 + k_body]
        if not bad:
            break
        cut = bad[0]
        if cut * 2.0 - 4.0 < 15.0:
            raise _Reject("LAA body folds back to the ostium plane")
        length = cut * 2.0 - 4.0 - 2.0
        pts, tans, e1s = pts[: cut], tans[: cut], e1s[: cut]
    n_first = int(math.ceil(8.0 / 2.0))
    prims += _blob_tube(fld, pts, tans, e1s, ra, rb, k_body, k_neck, n_first)
    lobe_pts.append(pts)

    def side_lobe(at: int, lo_len: tuple[float, float], lo_r: tuple[float, float], angle_deg: tuple[float, float],
                  around: float | None = None) -> None:
        nonlocal lobes
        t = tans[at]
        phi = rng.uniform(0, 2 * np.pi) if around is None else around
        e1_ = e1s[at]
        e2_ = np.cross(t, e1_)
        radial = math.cos(phi) * e1_ + math.sin(phi) * e2_
        ang = math.radians(rng.uniform(*angle_deg))
        dirn = _unit(math.cos(ang) * t + math.sin(ang) * radial)
        if float(np.dot(dirn, n)) < 0.2:  # lobes grow away from the LA
            dirn = _unit(dirn + (0.2 - float(np.dot(dirn, n))) * n)
        r0 = rng.uniform(*lo_r)
        llen = rng.uniform(*lo_len)
        st = pts[at] + radial * 0.3 * min(ra[at], rb[at])
        lp, lt, le = _sweep(rng, st, dirn, np.cross(dirn, radial), llen, lambda s: rng.normal(0, 0.02),
                            _unit(rng.normal(size=3)), ds=1.8)
        uu = np.linspace(0, 1, len(lp))
        prof_ = 1 - 0.45 * uu ** 2
        flat = rng.uniform(0.65, 1.0)
        prims.extend(_blob_tube(fld, lp, lt, le, r0 * prof_, r0 * flat * prof_, rng.uniform(1.0, 2.0)))
        lobe_pts.append(lp)
        lobes += 1

    npts = len(pts)
    if morphology == "chicken_wing" and rng.random() < 0.4:
        side_lobe(int(npts * rng.uniform(0.45, 0.7)), (6, 11), (3.0, 4.5), (50, 90))
    elif morphology == "windsock":
        for _ in range(int(rng.integers(0, 3))):
            side_lobe(int(npts * rng.uniform(0.4, 0.85)), (6, 11), (2.8, 4.5), (40, 80))
    elif morphology == "cactus":
        m = int(rng.integers(2, 4))
        base_phi = rng.uniform(0, 2 * np.pi)
        for q_ in range(m):
            phi = base_phi + q_ * (2 * np.pi / m) + rng.normal(0, 0.3)
            side_lobe(int(npts * rng.uniform(0.35, 0.8)), (8, 15), (3.2, 5.5), (65, 100), around=phi)
    elif morphology == "cauliflower":  # a short body with 2-3 lobules: 3-4 lobes, none dominant
        m = int(rng.integers(2, 4))
        base_phi = rng.uniform(0, 2 * np.pi)
        for q_ in range(m):
            phi = base_phi + q_ * (2 * np.pi / m) + rng.normal(0, 0.35)
            side_lobe(int(npts * rng.uniform(0.55, 0.95)), (4, 9), (4.0, 6.5), (20, 70), around=phi)

    # lobulations of the outer wall
    for _ in range(int(rng.integers(2, 7))):
        at = int(rng.integers(n_first + 2, npts))
        phi = rng.uniform(0, 2 * np.pi)
        e2_ = np.cross(tans[at], e1s[at])
        radial = math.cos(phi) * e1s[at] + math.sin(phi) * e2_
        rr = min(ra[at], rb[at])
        c = pts[at] + radial * (math.cos(phi) ** 2 * ra[at] + math.sin(phi) ** 2 * rb[at]) * 0.75
        bump = Ellipsoid(c, (rng.uniform(1.5, 3.0) * min(1.0, rr / 4),) * 2 + (rng.uniform(2.0, 4.0),),
                         _frame_from_axis(tans[at]))
        fld.union(bump, 1.0)
        prims.append(bump)

    # pectinate-muscle-like ridges inside the lumen (not in the neck)
    n_ridges = int(rng.integers(5, 15 if morphology in ("cactus", "cauliflower") else 12))
    for _ in range(n_ridges):
        at = int(rng.integers(max(n_first + 2, int(0.25 * npts)), max(n_first + 3, int(0.92 * npts))))
        at = min(at, npts - 1)
        phi = rng.uniform(0, 2 * np.pi)
        t = tans[at]
        e1_, e2_ = e1s[at], np.cross(t, e1s[at])
        rr = min(ra[at], rb[at])
        wall = pts[at] + 1.0 * (ra[at] * math.cos(phi) * e1_ + rb[at] * math.sin(phi) * e2_)
        circ = _unit(-ra[at] * math.sin(phi) * e1_ + rb[at] * math.cos(phi) * e2_)
        dirn = _unit(circ + rng.uniform(-0.5, 0.5) * t)
        half = 0.5 * rng.uniform(4.0, 10.0)
        r_ridge = rng.uniform(0.5, 0.9) * min(1.0, rr / 5.0)
        fld.subtract(RoundCone(wall - half * dirn, wall + half * dirn, r_ridge), 0.6)

    laa = _LAA(morphology=morphology, prims=prims)
    laa.ostium_point = ostium
    laa.ostium_normal = n
    laa.centerline = pts
    laa.lobe_points = np.concatenate(lobe_pts)
    laa.lobes = lobes
    laa.target_long_mm, laa.target_short_mm = long_mm, short_mm
    laa.length_mm = length
    laa.k_neck = k_neck
    laa.n_neck = n_neck
    return laa


def _laa_clear_of_plane(laa: _LAA) -> bool:
    """Every LAA ellipsoid past the neck stays > 2 mm + blend radius on the appendage side of the plane.

    Otherwise a bent body could fold back across the ostium plane (the cut would open it) or merge with
    the LA body.
    """
    margin = 1.0
    for n, prim in enumerate(laa.prims):
        if n < laa.n_neck or not isinstance(prim, Ellipsoid):
            continue
        ext = float(np.linalg.norm(prim.radii * (prim.rot.T @ laa.ostium_normal)))  # support along the normal
        if float(np.dot(prim.center - laa.ostium_point, laa.ostium_normal)) - ext < margin:
            return False
    return True


def _sample_anatomy(rng: np.random.Generator, morphology: str) -> _Anatomy:
    """All structures of one patient in the heart frame, and their HU."""
    J = lambda s: rng.normal(0, s, 3)
    hu = {
        "blood": float(rng.uniform(250, 450)),
        "myocardium": float(rng.uniform(50, 120)),
        "fat": float(rng.uniform(-115, -75)),
        "lung": float(rng.uniform(-880, -800)),
        "soft_tissue": float(rng.uniform(30, 60)),
        "bone_cortical": float(rng.uniform(600, 1000)),
        "bone_trabecular": float(rng.uniform(150, 300)),
        "liver": float(rng.uniform(60, 120)),
        "air": -1000.0,
    }
    hu["blood_right"] = float(max(130.0, hu["blood"] * rng.uniform(0.55, 1.15)))
    hu["vessel_wall"] = hu["soft_tissue"]
    hu["pericardium"] = hu["soft_tissue"]
    walls = {"la": float(rng.uniform(1.5, 3.0)), "lv": float(rng.uniform(8, 12)), "rv": float(rng.uniform(2.5, 4.0)),
             "ra": float(rng.uniform(1.5, 2.5)), "aorta": float(rng.uniform(1.5, 2.5)),
             "pa": float(rng.uniform(1.2, 2.0)), "pv": float(rng.uniform(0.8, 1.5)), "cava": 1.5}

    F: dict[str, Field] = {}
    # left atrium + LAA
    la = Ellipsoid(np.array([2.0, 28.0, 12.0]) + J(2.5),
                   (rng.uniform(26, 33), rng.uniform(17, 22), rng.uniform(20, 26)), _random_rotation(rng, 10))
    F["la"] = Field().union(la)
    laa = _sample_laa(rng, la, morphology, F["la"])
    # pulmonary veins
    F["pv"] = Field()
    pv_prims = []
    for side, (sx, dz) in {"LS": (1, 1), "LI": (1, -1), "RS": (-1, 1), "RI": (-1, -1)}.items():
        d = _unit(np.array([0.72 * sx, 0.55, 0.45 * dz]) + J(0.12))
        q = la.rot.T @ d
        surf = la.center + d / np.linalg.norm(q / la.radii)
        r = rng.uniform(5.5, 8.5)
        ln = rng.uniform(18, 32)
        pts = np.array([surf - 5 * d, surf + 0.5 * ln * d, surf + ln * _unit(d + J(0.15))])
        pv_prims += _chain(pts, lambda s, r=r: r * (1 - 0.2 * s), 2.0, F["pv"])
    # left ventricle
    u_lv = _unit(np.array([0.55, -0.55, -0.6]) + J(0.08))
    lv_long, lv_short = rng.uniform(36, 46), rng.uniform(19, 25)
    lv_c = np.array([5.0, 0.0, -3.0]) + u_lv * rng.uniform(26, 32) + J(1.5)
    lv_rot = _frame_from_axis(u_lv)
    lv = Ellipsoid(lv_c, (lv_short, lv_short * rng.uniform(0.9, 1.05), lv_long), lv_rot)
    lv_myo = Ellipsoid(lv_c + u_lv * 2.0, lv.radii + walls["lv"], lv_rot)
    F["lv"] = Field().union(lv)
    F["lv_myo"] = Field().union(lv_myo)
    # right ventricle (anterior, wrapped in front of the septum) and right atrium
    rv_c = lv_c + np.array([-28.0, -22.0, 2.0]) + J(3)
    rv = Ellipsoid(rv_c, (rng.uniform(14, 18), rng.uniform(26, 32), lv_long * 0.85),
                   _frame_from_axis(u_lv, hint=(1, -1, 0)) @ _rotation((0, 0, 1), 0.6))
    F["rv"] = Field().union(rv)
    ra_ = Ellipsoid(np.array([-40.0, 8.0, 4.0]) + J(3), (rng.uniform(19, 24), rng.uniform(17, 22), rng.uniform(22, 27)),
                    _random_rotation(rng, 12))
    F["ra"] = Field().union(ra_)
    F["svc"] = Field()
    _chain(np.array([ra_.center + [2, 4, 10], ra_.center + [0, 6, 40], ra_.center + [3, 8, 90]]),
           lambda s: rng.uniform(8.5, 9.5), 2.0, F["svc"])
    F["ivc"] = Field()
    _chain(np.array([ra_.center + [5, 5, -12], ra_.center + [10, 10, -45], ra_.center + [14, 15, -110]]),
           lambda s: 12.0, 2.0, F["ivc"])
    # aorta: root between LA and RV outflow, ascending, arch, descending left of the spine
    ao_r = rng.uniform(13, 16)
    root = np.array([-14.0, -2.0, 6.0]) + J(2)
    desc_x, desc_y = rng.uniform(14, 24), rng.uniform(62, 68)
    ao_pts = np.array([root, root + [-4, -4, 25], root + [-3, -2, 50] + J(2), [-8, 15, 78], [8, 38, 76],
                       [desc_x, desc_y, 55], [desc_x, desc_y + 1, 10], [desc_x - 2, desc_y, -40],
                       [desc_x - 5, desc_y - 4, -120]])
    ao_rad = lambda s: ao_r * (1.08 - 0.3 * min(1.0, s * 2.2))
    F["aorta"] = Field()
    ao_prims = _chain(ao_pts, ao_rad, 3.0, F["aorta"])
    # pulmonary trunk from the RV outflow, bifurcating over the LA roof
    pa_r = rng.uniform(12, 15)
    rvot = np.array([6.0, -32.0, 4.0]) + J(2.5)
    bif = np.array([14.0, -6.0, 52.0]) + J(2.5)
    F["pa"] = Field()
    pa_prims = _chain(np.array([rvot, rvot + [3, 6, 22], bif]), lambda s: pa_r, 3.0, F["pa"])
    lpa = np.array([bif, bif + [20, 14, -3], bif + [38, 32, -10] + J(3)])
    rpa = np.array([bif, bif + [-20, 24, -4], bif + [-55, 28, -7] + J(3)])
    pa_prims += _chain(lpa, lambda s: pa_r * 0.72, 3.0, F["pa"])
    pa_prims += _chain(rpa, lambda s: pa_r * 0.70, 3.0, F["pa"])
    # coronary arteries: left main -> LCx in the groove below the LAA ostium; LAD; RCA
    lm0 = root + ao_r * _unit([0.75, -0.45, 0.35])
    os_c, os_n = laa.ostium_point, laa.ostium_normal
    down = _unit(np.array([0, 0, -1.0]) - np.dot([0, 0, -1.0], os_n) * os_n)
    groove = os_c + down * (0.5 * laa.target_short_mm + rng.uniform(5, 9)) + os_n * rng.uniform(-2, 1)
    lcx = np.array([lm0, lm0 + [8, -3, -1], groove - [6, 4, 0], groove, groove + [6, 14, -6], groove + [8, 30, -14]])
    lad = np.array([lm0 + [8, -3, -1], [14.0, -28, -2], lv_c + u_lv * 10 + [-12, -20, 0],
                    lv_c + u_lv * (lv_long + 2) + [-8, -14, 0]])
    rca = np.array([root + ao_r * _unit([-0.5, -0.8, 0.1]), root + [-26, -14, -6], ra_.center + [12, -16, -20],
                    ra_.center + [22, 0, -32]])
    F["coronary"] = Field()
    r_cor = rng.uniform(1.4, 2.0)
    cor_prims = _chain(lcx, lambda s: r_cor * (1 - 0.3 * s), 1.0, F["coronary"])
    cor_prims += _chain(lad, lambda s: r_cor * (1 - 0.35 * s), 1.0, F["coronary"])
    cor_prims += _chain(rca, lambda s: r_cor * (1 - 0.2 * s), 1.0, F["coronary"])

    # epicardial fat: smooth envelope of the heart, thicker around the LAA and in the grooves
    f = rng.uniform(3.0, 7.0)
    env = Field()
    for prim in [la.inflated(walls["la"] + f), Offset(lv_myo, f * 0.8), Offset(rv, walls["rv"] + f * 0.7),
                 ra_.inflated(walls["ra"] + f * 0.7)]:
        env.union(prim, 8.0)
    for prim in laa.prims:
        if isinstance(prim, Ellipsoid):
            env.union(prim.inflated(walls["la"] + rng.uniform(2.5, 6.0)), 4.0)
    for prim in ao_prims[:4] + pa_prims + pv_prims:
        env.union(Offset(prim, 4.0), 6.0)
    for prim in cor_prims:
        env.union(Offset(prim, rng.uniform(3.0, 6.0)), 3.0)

    # filling defect at the LAA tip (early-phase scans of AF patients)
    if rng.random() < 0.25:
        tip = laa.centerline[-1] - (laa.centerline[-1] - laa.centerline[-2]) * 1.0
        radius = rng.uniform(0.3, 0.5) * laa.length_mm
        laa.defect = (tip, radius)
        hu["filling_defect"] = float(rng.uniform(20, 90))
        dfield = Field(list(F["la"].ops))
        dfield.intersect(_ScaledBall(tip, radius, 3.0), 0.0)
        F["defect"] = dfield

    # background: body, chest wall, lungs, spine, ribs, sternum, liver (drawn on a coarse grid)
    body_c = np.array([-15.0, 22.0, 0.0]) + np.array([rng.normal(0, 4), rng.normal(0, 4), 0])
    brx, bry = rng.uniform(140, 180), rng.uniform(98, 125)
    fat_t, wall_t = rng.uniform(6, 25), rng.uniform(12, 20)
    bg: list[_Paint] = []
    bg.append(_Paint(Field().union(EllipticCylinder(body_c, brx, bry)), hu["fat"]))
    bg.append(_Paint(Field().union(EllipticCylinder(body_c, brx - fat_t, bry - fat_t)), hu["soft_tissue"]))
    cav_rx, cav_ry = brx - fat_t - wall_t, bry - fat_t - wall_t
    cav_c = body_c + [0, 4, 0]
    bg.append(_Paint(Field().union(EllipticCylinder(cav_c, cav_rx, cav_ry - 4)), hu["lung"]))
    spine_c = np.array([body_c[0] + rng.normal(0, 3), body_c[1] + bry - rng.uniform(52, 62), 0.0])
    post_med = Field().union(EllipticCylinder(spine_c + [8, -16, 0], 30, 24), 0)
    bg.append(_Paint(post_med, 0.6 * hu["fat"] + 0.4 * hu["soft_tissue"]))
    # vertebrae, discs, canal and posterior elements
    vb_r = rng.uniform(15, 19)
    level = rng.uniform(24, 30)
    z0 = rng.uniform(0, level)
    vert, disc = Field(), Field()
    for m in range(-10, 11):
        zc = z0 + m * level
        vert.union(EllipticCylinder(spine_c + [0, 0, zc], vb_r, vb_r * 0.85, 0.5 * level - 3.5))
        disc.union(EllipticCylinder(spine_c + [0, 0, zc + 0.5 * level], vb_r, vb_r * 0.85, 3.5))
    canal_c = spine_c + [0, vb_r + 9, 0]
    post = Field().union(EllipticCylinder(canal_c + [0, 4, 0], 18, 14))
    post.union(EllipticCylinder(canal_c + [0, 22, 0], 5, 14))
    bg.append(_Paint(post, hu["bone_cortical"] * 0.8))
    bg.append(_Paint(Field().union(EllipticCylinder(canal_c, 8, 7)), 20.0))
    bg.append(_Paint(vert, hu["bone_cortical"]))
    bg.append(_Paint(vert, hu["bone_trabecular"], offset=-2.0))
    bg.append(_Paint(disc, 80.0))
    # ribs: tilted arcs just inside the chest wall, one per vertebral level on each side
    ribs = Field()
    for m in range(-8, 9):
        zc = z0 + m * level
        for side in (-1, 1):
            ang = np.linspace(0.15 * np.pi, 0.85 * np.pi, 12)
            rr = 0.5 * wall_t
            xs = body_c[0] + side * (brx - fat_t - rr) * np.sin(ang)
            ys = body_c[1] + (bry - fat_t - rr) * np.cos(ang) * 1.0
            zs = zc - 35 * (1 - np.cos(ang)) * 0.5
            _chain(np.stack([xs, ys, zs], 1), lambda s: 4.2, 1.0, ribs)
    bg.append(_Paint(ribs, hu["bone_cortical"] * 0.7))
    sternum = Field().union(EllipticCylinder(body_c + [5, -(bry - fat_t - 7), 0], 14, 6))
    bg.append(_Paint(sternum, hu["bone_trabecular"] + 100))
    liver_c = np.array([-45.0, 25.0, -95.0]) + J(6)
    bg.append(_Paint(Field().union(Ellipsoid(liver_c, (110, 85, 55))), hu["liver"]))
    # descending aorta and the posterior mediastinum are painted with the heart layers

    heart_c = np.array([5.0, 0.0, 5.0])
    return _Anatomy(fields=F, laa=laa, hu=hu, walls=walls, background=bg, env=env, body_center=body_c,
                    heart_center=heart_c, la_center=la.center,
                    blood_fields=["pv", "lv", "rv", "ra", "svc", "ivc", "aorta", "pa", "coronary"])


class _ScaledBall(Primitive):
    """A ball whose distance is divided by ``soft`` (a wider, softer edge when blended)."""

    def __init__(self, center: np.ndarray, radius: float, soft: float) -> None:
        self.center = np.asarray(center, float)
        self.rot = np.eye(3)
        self.radius, self.soft = float(radius), float(soft)
        self.lo, self.hi = self.center - radius, self.center + radius

    def local(self, x, y, z):
        d = np.sqrt(x * x + y * y + z * z)
        d -= np.float32(self.radius)
        d *= np.float32(1.0 / self.soft)
        return d


def _heart_paints(an: _Anatomy) -> list[_Paint]:
    F, hu, w = an.fields, an.hu, an.walls
    paints = [
        _Paint(an.env, hu["pericardium"], offset=1.2),
        _Paint(an.env, hu["fat"]),
        _Paint(F["lv_myo"], hu["myocardium"]),
        _Paint(F["rv"], hu["myocardium"], offset=w["rv"]),
        _Paint(F["ra"], hu["myocardium"], offset=w["ra"]),
        _Paint(F["svc"], hu["vessel_wall"], offset=w["cava"]),
        _Paint(F["ivc"], hu["vessel_wall"], offset=w["cava"]),
        _Paint(F["aorta"], hu["vessel_wall"], offset=w["aorta"]),
        _Paint(F["pa"], hu["vessel_wall"], offset=w["pa"]),
        _Paint(F["pv"], hu["myocardium"], offset=w["pv"]),
        _Paint(F["la"], hu["myocardium"], offset=w["la"]),
        _Paint(F["lv"], hu["blood"]),
        _Paint(F["rv"], hu["blood_right"]),
        _Paint(F["ra"], hu["blood_right"]),
        _Paint(F["svc"], hu["blood_right"]),
        _Paint(F["ivc"], 0.5 * (hu["blood_right"] + hu["soft_tissue"])),
        _Paint(F["pa"], hu["blood_right"]),
        _Paint(F["aorta"], hu["blood"]),
        _Paint(F["pv"], hu["blood"]),
        _Paint(F["la"], hu["blood"]),
        _Paint(F["coronary"], hu["blood"]),
    ]
    if "defect" in F:
        paints.append(_Paint(F["defect"], hu["filling_defect"]))
    return paints


# ========================================================================================= ground truth
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


class _Reject(Exception):
    """This random LAA cannot give a clean ground truth: draw another one."""


def _marching_cubes_gt(an: _Anatomy) -> _GroundTruth:
    from skimage.measure import marching_cubes

    from .meshtools import boundary_loops, clip_by_plane, connected_components

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
    # volume: closed by fanning the ostium loop from its centroid (normals out of the lumen -> positive)
    a, b, c = cpts[ctris[:, 0]], cpts[ctris[:, 1]], cpts[ctris[:, 2]]
    vol6 = np.einsum("ij,ij->i", a, np.cross(b, c)).sum()
    lp = cpts[loops[0]]
    cap = np.einsum("ij,ij->i", np.broadcast_to(lc, lp.shape), np.cross(np.roll(lp, -1, 0), lp))
    # the loop orientation is unknown: pick the cap sign that gives a consistent closed surface
    v1, v2 = (vol6 + cap.sum()) / 6.0, (vol6 - cap.sum()) / 6.0
    volume_mm3 = v1 if abs(v1) > abs(v2) else v2
    if volume_mm3 < 0:
        raise _Reject("inverted ground truth orientation")
    err = float(np.abs(fld.eval_points(cpts)).max())
    # seed: the centreline point deepest inside (far from the wall and from the ostium plane)
    from .meshtools import point_to_mesh_distance

    cand = laa.lobe_points
    hgt = (cand - o) @ nrm
    cand = cand[hgt > 2.0]
    if laa.defect is not None:
        cand = cand[np.linalg.norm(cand - laa.defect[0], axis=1) > laa.defect[1] + 4.0]
    cand = cand[fld.eval_points(cand) < -1.0] if len(cand) else cand
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


def _clear_laa_neighbours(an: _Anatomy, gt_pts: np.ndarray, max_shift_mm: float = 8.0) -> str | None:
    """Keep other blood pools a wall's width from the LAA lumen, so the CT edge is the LAA's own.

    A structure that comes closer than :data:`_GAP_MM` is moved away (up to ``max_shift_mm``), as the
    LAA would push a neighbour aside; returns the name of one that could not be cleared, else None.
    """
    sub = gt_pts[:: max(1, len(gt_pts) // 4000)]
    for name in an.blood_fields:
        fld = an.fields[name]
        moved = 0.0
        for _ in range(5):
            v = fld.eval_points(sub)
            worst = int(np.argmin(v))
            if float(v[worst]) >= _GAP_MM:
                break
            _, g = _value_and_gradient(fld, sub[worst:worst + 1])
            shift = (_GAP_MM - float(v[worst]) + 0.4)
            moved += shift
            if moved > max_shift_mm:
                return name
            direction = -_unit(g[0])
            seen: set[int] = set()
            for fname in _MOVABLE[name]:
                for _, prim, _ in an.fields[fname].ops:
                    if id(prim) not in seen:
                        seen.add(id(prim))
                        _translate(prim, shift * direction)
        else:
            return name
    return None


# ================================================================================================ cases
@dataclass
class PhantomCase:
    """One synthetic CT: int16 HU volume (LPS geometry), the open GT LAA mesh (LPS mm) and JSON metadata."""

    volume: Volume
    mesh_lps: vtk.vtkPolyData
    meta: dict


def _sample_grid(rng: np.random.Generator, an: _Anatomy, gt: _GroundTruth, size: str):
    """Voxel spacing, patient pose, direction, origin and extent of the CT."""
    sx = float(rng.uniform(0.3, 0.8))
    sz = float(rng.uniform(0.5, 1.0)) if rng.random() < 0.65 else float(rng.uniform(1.0, 2.5))
    spacing = np.array([sx, sx, sz])
    r_pat = _random_rotation(rng, 10.0)
    t_pat = np.array([rng.uniform(-30, 30), rng.uniform(-40, 40), rng.uniform(-250, 150)])
    d = _random_rotation(rng, 20.0) if rng.random() < 0.6 else np.eye(3)
    if rng.random() < 0.25:
        flips = np.ones(3)
        while np.all(flips > 0):
            flips = np.where(rng.random(3) < 0.5, -1.0, 1.0)
        d = d @ np.diag(flips)
    if size == "full":
        n_ij = 512
        n_k = int(np.clip(round(rng.uniform(130, 200) / sz), 80, 280))
        fov = n_ij * sx
        lam = float(np.clip((fov - 200.0) / 200.0 + rng.normal(0, 0.1), 0, 1))
        centre = an.heart_center + lam * (an.body_center - an.heart_center)
        centre = centre + np.array([rng.normal(0, 6), rng.normal(0, 6), rng.uniform(-15, 15)])
        centre[2] = an.heart_center[2] + rng.uniform(-15, 15)
        size_ijk = np.array([n_ij, n_ij, n_k])
    else:
        fov = rng.uniform(110, 130, 3)
        centre = 0.5 * (an.la_center + gt.center) + rng.uniform(-8, 8, 3)
        size_ijk = np.maximum(np.round(fov / spacing).astype(int), 8)
    # keep the whole LAA (plus 8 mm) inside the field of view along each grid axis
    axes_h = r_pat.T @ d  # grid axes in the heart frame (columns)
    half = 0.5 * (size_ijk - 1) * spacing
    for _ in range(3):
        rel = (gt.points - centre) @ axes_h
        over = np.maximum(rel.max(axis=0) + 8 - half, 0) - np.maximum(-rel.min(axis=0) + 8 - half, 0)
        centre = centre + axes_h @ over
    centre_lps = r_pat @ centre + t_pat
    origin = centre_lps - d @ (spacing * (size_ijk - 1) / 2.0)
    return spacing, d, origin, size_ijk, r_pat, t_pat


def generate_case(seed: int, *, size: str = "full", morphology: str | None = None,
                  morphology_weights: dict[str, float] | None = None, case_id: str | None = None,
                  progress: bool = False) -> PhantomCase:
    """Generate one synthetic cardiac CTA with its exact open LAA ground truth.

    ``size`` is "full" (512x512 in-plane, realistic FOV) or "compact" (110-130 mm around the LA/LAA);
    ``morphology`` forces an LAA family, else it is drawn with ``morphology_weights`` (default uniform,
    :data:`MORPHOLOGY_SAMPLING`). The same ``seed`` always gives the same case.
    """
    if size not in SIZES:
        raise InputError(f"Unknown phantom size {size!r}: use 'full' or 'compact'.")
    if morphology is not None and morphology not in MORPHOLOGIES:
        raise InputError(f"Unknown LAA morphology {morphology!r}: use one of {', '.join(MORPHOLOGIES)}.")
    weights = dict(morphology_weights or MORPHOLOGY_SAMPLING)
    if set(weights) - set(MORPHOLOGIES) or any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
        raise InputError(f"morphology_weights must map {', '.join(MORPHOLOGIES)} to non-negative weights.")
    rng = np.random.default_rng(int(seed))
    morph = _draw_morphology(rng, morphology, weights)
    an, gt, reasons = _draw_anatomy(rng, morph, seed)
    spacing, d, origin, size_ijk, r_pat, t_pat = _sample_grid(rng, an, gt, size)
    psf = float(rng.uniform(0.5, 0.8))
    noise_sigma = float(rng.uniform(15, 40))
    vol = _render_ct(rng, an, spacing, d, origin, size_ijk, r_pat, t_pat, psf, noise_sigma, progress)

    to_lps = lambda p: np.asarray(p, float) @ r_pat.T + t_pat
    mesh = make_polydata(to_lps(gt.points), gt.triangles)
    seed_lps = to_lps(gt.seed)
    hu = {k: round(v, 2) for k, v in an.hu.items()}
    hu.update(noise_sigma=round(noise_sigma, 2), psf_mm=round(psf, 3))
    meta = {
        "case_id": case_id or f"phantom_{int(seed):06d}",
        "seed": int(seed),
        "size": size,
        "morphology": morph,
        "seed_lps": seed_lps.tolist(),
        "seed_ras": lps_to_ras(seed_lps).tolist(),
        "laa_center_lps": to_lps(gt.center).tolist(),
        "ostium_center_lps": to_lps(gt.points[polydata_boundary_ids(gt.triangles)].mean(axis=0)).tolist(),
        "ostium_normal_lps": (r_pat @ an.laa.ostium_normal).tolist(),
        "spacing": spacing.tolist(),
        "size_ijk": [int(x) for x in size_ijk],
        "origin_lps": origin.tolist(),
        "direction_lps": d.tolist(),
        "hu": hu,
        "filling_defect": an.laa.defect is not None,
        "filling_defect_lps": None if an.laa.defect is None else
        {"center": to_lps(an.laa.defect[0]).tolist(), "radius_mm": round(float(an.laa.defect[1]), 3)},
        "laa": {
            "ostium_long_axis_mm": round(gt.long_mm, 3),
            "ostium_short_axis_mm": round(gt.short_mm, 3),
            "depth_mm": round(gt.depth_mm, 3),
            "length_mm": round(gt.length_mm, 3),
            "lobes": int(an.laa.lobes),
            "volume_ml": round(gt.volume_ml, 4),
            "triangles": int(len(gt.triangles)),
            "max_field_error_mm": gt.max_field_error_mm,
            "draws": len(reasons) + 1,
        },
        "mesh_frame": "LPS",
        "nudfcore_version": __version__,
    }
    if os.environ.get("NUDF_PHANTOM_DEBUG"):
        print(f"phantom seed {seed}: rejected draws: {reasons}")
    return PhantomCase(volume=vol, mesh_lps=mesh, meta=meta)


def _draw_morphology(rng: np.random.Generator, morphology: str | None, weights: dict[str, float]) -> str:
    probs = np.array([weights.get(m, 0.0) for m in MORPHOLOGIES], float)
    drawn = MORPHOLOGIES[int(rng.choice(len(MORPHOLOGIES), p=probs / probs.sum()))]
    return morphology or drawn


def draw_morphology(seed: int, weights: dict[str, float] | None = None) -> str:
    """The LAA family :func:`generate_case` draws for ``seed`` (cheap: nothing else is generated)."""
    return _draw_morphology(np.random.default_rng(int(seed)), None, dict(weights or MORPHOLOGY_SAMPLING))


def _draw_anatomy(rng: np.random.Generator, morph: str, seed: int = -1) -> tuple[_Anatomy, _GroundTruth, list[str]]:
    """Draw anatomies until one gives a clean ground truth (rejection sampling; all from ``rng``)."""
    reasons: list[str] = []
    for _attempt in range(40):
        try:
            an = _sample_anatomy(rng, morph)
            gt = _marching_cubes_gt(an)
        except _Reject as exc:
            reasons.append(str(exc))
            continue
        touching = _clear_laa_neighbours(an, gt.points)
        if touching is None:
            return an, gt, reasons
        reasons.append(f"the {touching} touches the LAA")
    raise NUDFError(f"phantom seed {seed}: no valid LAA after 40 draws ({'; '.join(reasons[-3:])}).")


def polydata_boundary_ids(triangles: np.ndarray) -> np.ndarray:
    """Ids of the vertices on boundary edges (edges used by one triangle)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e.sort(axis=1)
    uniq, cnt = np.unique(e, axis=0, return_counts=True)
    return np.unique(uniq[cnt == 1].ravel())


def _render_ct(rng, an: _Anatomy, spacing, d, origin, size_ijk, r_pat, t_pat, psf: float, noise_sigma: float,
               progress: bool) -> Volume:
    from scipy import ndimage

    ni, nj, nk = (int(x) for x in size_ijk)
    A = r_pat.T @ d @ np.diag(spacing)
    b = r_pat.T @ (origin - t_pat)
    grid = _Grid((nk, nj, ni), A, b)
    vol = np.empty((nk, nj, ni), np.float32)
    blur_xy = math.sqrt(psf ** 2 + spacing[0] ** 2 / 12.0)
    blur_z = math.sqrt(psf ** 2 + spacing[2] ** 2 / 12.0)
    # background on a ~1.5 mm grid
    fi = max(1, int(round(1.5 / spacing[0])))
    fk = max(1, int(round(1.5 / spacing[2])))
    cshape = ((nk - 1) // fk + 2, (nj - 1) // fi + 2, (ni - 1) // fi + 2)
    cgrid = _Grid(cshape, A @ np.diag([fi, fi, fk]), b)
    coarse = np.full(cshape, an.hu["air"], np.float32)
    _render_paints(coarse, cgrid, an.background, max(blur_xy, 0.6 * 1.5))
    _upsample_linear(coarse, (fk, fi, fi), vol)
    del coarse
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=nk, desc="phantom slices", unit="slice", leave=False)
    _render_paints(vol, grid, _heart_paints(an), blur_xy, bar.update if bar else None)
    if bar is not None:
        bar.close()
    # thick slices: extra blur across slices so the edge spread matches the slice sensitivity
    extra = math.sqrt(max(blur_z ** 2 - blur_xy ** 2, 0.0)) / spacing[2]
    if extra > 0.3:
        ndimage.gaussian_filter1d(vol, extra, axis=0, output=vol, mode="nearest")
    # correlated noise: white noise low-passed in-plane (reconstruction kernel) and lightly across slices
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    corr_mm = float(rng.uniform(0.5, 0.9))
    sig = (0.35, corr_mm / spacing[1], corr_mm / spacing[0])
    gain = 1.0
    for ax, s in enumerate(sig):
        ndimage.gaussian_filter1d(noise, s, axis=ax, output=noise, mode="wrap")
        delta = np.zeros(41, np.float32)
        delta[20] = 1
        gain *= float(np.sqrt((ndimage.gaussian_filter1d(delta, s) ** 2).sum()))
    noise *= np.float32(noise_sigma / gain)
    vol += noise
    del noise
    np.rint(vol, out=vol)
    np.clip(vol, -1024, 3071, out=vol)
    return Volume(vol.astype(np.int16), spacing, origin, d)


# ================================================================================================= files
def write_case(case: PhantomCase, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``ct.nii.gz``, ``laa.vtp``, ``laa.stl`` (LPS) and ``meta.json`` into ``folder``."""
    out = Path(folder)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"The case folder {out} already exists and is not empty; use --force/overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    write_volume(case.volume, out / "ct.nii.gz", overwrite=True)
    write_mesh(case.mesh_lps, out / "laa.vtp", overwrite=True)
    write_mesh(case.mesh_lps, out / "laa.stl", overwrite=True)
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(case.meta, indent=2))
    os.replace(tmp, out / "meta.json")
    return out


def case_folder_name(index: int) -> str:
    return f"case_{index:04d}"


def generate_dataset(out: str | os.PathLike, count: int, seed: int, *, size: str = "full", overwrite: bool = False,
                     progress: bool = True, on_case: Callable[[Path], None] | None = None) -> list[Path]:
    """Write ``count`` cases to ``out/case_0000`` ... (case i uses seed + i); returns the case folders.

    Refuses (before generating anything) when a case folder already exists, unless ``overwrite``.
    """
    if int(count) < 1:
        raise InputError(f"The number of cases must be at least 1 (got {count}).")
    if size not in SIZES:
        raise InputError(f"Unknown phantom size {size!r}: use 'full' or 'compact'.")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder.")
    folders = [root / case_folder_name(i) for i in range(int(count))]
    existing = [f for f in folders if f.exists() and any(f.iterdir())]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{len(existing)} case folder(s) already exist in {root} (first: {existing[0].name}); "
            "use --force to overwrite them.")
    root.mkdir(parents=True, exist_ok=True)
    it = range(int(count))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="phantoms", unit="case")
    written = []
    for i in it:
        case = generate_case(int(seed) + i, size=size, case_id=folders[i].name)
        write_case(case, folders[i], overwrite=True)
        written.append(folders[i])
        if on_case is not None:
            on_case(folders[i])
    return written
