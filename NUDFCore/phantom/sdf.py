"""Signed distance primitives and fields: the shapes every phantom structure is built from.

A primitive returns an (approximate) signed distance, negative inside, exact at the zero level; a
:class:`Field` combines primitives by smooth booleans and evaluates each one only near its bounding box,
which keeps a 512x512x250 render fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

_BIG = np.float32(1.0e4)
_MC_SPACING_MM = 0.4

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


class Within(Primitive):
    """The region where ``fld`` < ``d`` as a primitive (heart frame), to clip another field to it by
    ``Field.intersect``; e.g. keep trabeculae inside the appendage wall."""

    def __init__(self, fld: "Field", d: float) -> None:
        self.fld, self.d = fld, float(d)
        self.center, self.rot = np.zeros(3), np.eye(3)
        self.lo, self.hi = fld.bounds(self.d)

    def local(self, x, y, z):
        pts = np.stack([np.ravel(x), np.ravel(y), np.ravel(z)], axis=1)
        v = self.fld.eval_points(pts, margin=self.d + 3.0).reshape(np.shape(x))
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

    def coords(self, region: tuple[int, int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heart-frame x, y, z (float32 arrays shaped like the voxel box ``region``)."""
        k0, k1, j0, j1, i0, i1 = region
        k, j, i = np.meshgrid(np.arange(k0, k1, dtype=np.float32), np.arange(j0, j1, dtype=np.float32),
                              np.arange(i0, i1, dtype=np.float32), indexing="ij")
        A, b = self.A.astype(np.float32), self.b.astype(np.float32)
        return tuple(A[r, 0] * i + A[r, 1] * j + A[r, 2] * k + b[r] for r in range(3))

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

