"""Anatomy of one synthetic patient in the heart frame: the LAA families, the LA and its neighbours."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError
from .sdf import (Ellipsoid, EllipticCylinder, Field, Offset, Primitive, RoundCone, Within, _frame_from_axis,
                  _random_rotation, _rotation, _ScaledBall, _unit)

MORPHOLOGIES: tuple[str, ...] = ("chicken_wing", "cactus", "windsock", "cauliflower")


class _Reject(Exception):
    """This random LAA cannot give a clean ground truth: draw another one."""


@dataclass
class _Paint:
    """One layer of the render: ``hu`` where ``fld`` < ``offset``, blended over what is below it.

    ``hu_map``, when given, replaces the constant ``hu`` by a function of heart-frame coordinates (float32
    columns x, y, z) and ``box`` (heart-frame lo, hi) limits where the layer is painted at all.

    ``over``, when given, makes the layer a change of a layer already painted with the same field edge and
    that constant HU (the LAA's own blood over the cavity's blood): it adds ``weight x (hu - over)`` instead
    of blending again, so the cavity edge keeps its 50 % level at field = offset. Blending a second layer
    on the same edge would count its weight twice and move the CT edge off the ground truth.
    """

    fld: Field
    hu: float
    offset: float = 0.0  # paint where field < offset (walls are lumens offset outwards)
    hu_map: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
    box: tuple[np.ndarray, np.ndarray] | None = None
    over: float | None = None


def _wave_sum(waves: np.ndarray, phases: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Sum of plane waves cos(k . p + phase) at the points (x, y, z): a smooth random pattern for swirls and patches."""
    out = np.zeros(np.shape(x), np.float32)
    for k, ph in zip(waves.astype(np.float32), phases):
        out += np.cos(k[0] * x + k[1] * y + k[2] * z + np.float32(ph))
    return out


@dataclass
class _Opacification:
    """HU of LAA blood with slow-flow dimming toward the tip, swirls of mixing and low-contrast pockets.

    Depth is measured from the ostium plane along its normal; ``u`` = depth / length in [0, 1]. The blood
    pool value is kept at the ostium (u = 0), dimmed by ``dim`` x u^``power`` toward the tip; swirls are a
    few plane waves whose amplitude grows with u; each pocket pulls the HU toward its own target with a
    Gaussian weight. The cavity wall does not move: only the contrast inside it changes.

    ``band`` (style "trabeculae") adds the pectinate layer: real appendages are lined by a comb of pectinate
    muscles, 1-3 mm ridges too fine to resolve at CT resolution, so the blood pool dims gradually over the
    last millimetres before the cavity wall (their partial volume with blood), while the labelled cavity wall
    is the envelope outside them. Within ``band.depth_mm`` of the wall the HU is pulled toward the
    myocardium by up to ``band.frac`` (linear in depth, full at the wall), patchy, and absent in the smooth
    neck next to the ostium.
    """

    blood: float
    origin: np.ndarray
    normal: np.ndarray
    length: float
    dim: float
    power: float
    waves: np.ndarray          # (M, 3) wave vectors, rad/mm
    phases: np.ndarray         # (M,)
    swirl_hu: float
    pockets: list[tuple[np.ndarray, float, float]]  # (centre, sigma mm, target HU)
    floor_hu: float = 30.0
    band: "_PectinateBand | None" = None

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        o, n = self.origin.astype(np.float32), self.normal.astype(np.float32)
        u = ((x - o[0]) * n[0] + (y - o[1]) * n[1] + (z - o[2]) * n[2]) / np.float32(self.length)
        np.clip(u, 0, 1, out=u)
        hu = np.float32(self.blood) * (1 - np.float32(self.dim) * u ** np.float32(self.power))
        if self.swirl_hu > 0 and len(self.waves):
            swirl = _wave_sum(self.waves, self.phases, x, y, z)
            hu += np.float32(self.swirl_hu / np.sqrt(len(self.waves))) * np.sqrt(u) * swirl
        for c, sigma, target in self.pockets:
            r2 = (x - np.float32(c[0])) ** 2 + (y - np.float32(c[1])) ** 2 + (z - np.float32(c[2])) ** 2
            w = np.exp(r2 * np.float32(-0.5 / sigma ** 2))
            hu += w * (np.float32(target) - hu)
        if self.band is not None:
            hu -= self.band.pull(x, y, z, u) * (hu - np.float32(self.band.myocardium_hu))
        return np.maximum(hu, np.float32(self.floor_hu))


@dataclass
class _PectinateBand:
    """The dim band of unresolved pectinate muscles just inside the LAA cavity wall (see :class:`_Opacification`)."""

    cavity: Field              # the LA + LAA cavity field (< 0 inside)
    myocardium_hu: float
    depth_mm: float            # how far inside the wall the band reaches
    frac: float                # pull toward the myocardium at the wall, 0..1
    patchiness: float          # 0: uniform band; 1: the pull varies from 0 to frac over the wall
    waves: np.ndarray          # (M, 3) wave vectors of the patchiness, rad/mm
    phases: np.ndarray
    neck_u: float              # depth (fraction of the LAA length) where the band starts past the ostium

    def pull(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Fraction (0..frac) of the way from the blood HU to the myocardium's at each point."""
        pts = np.stack([np.ravel(x), np.ravel(y), np.ravel(z)], axis=1)
        inside = -self.cavity.eval_points(pts, margin=self.depth_mm + 3.0).reshape(np.shape(x))
        w = np.clip(1.0 - inside / np.float32(self.depth_mm), 0.0, 1.0)
        w *= np.clip((u - np.float32(self.neck_u)) / np.float32(0.15), 0.0, 1.0)
        if self.patchiness > 0 and len(self.waves):
            patch = _wave_sum(self.waves, self.phases, x, y, z)
            patch = 0.5 + 0.5 * np.clip(patch / np.float32(np.sqrt(len(self.waves))), -1.0, 1.0)
            w *= np.float32(1.0 - self.patchiness) + np.float32(self.patchiness) * patch
        return w * np.float32(self.frac)


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
    mouth: str = "standard"
    trabeculae: list[Primitive] = field(default_factory=list)  # inside the cavity, not part of its field


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
    styles: frozenset[str] = frozenset()
    min_gap_mm: float = 2.2            # closest any other blood pool may come to the LAA cavity
    lv_press_mm: float | None = None   # style "tight_neighbours": the LV free wall pressed this deep into the LAA
    laa_blood: _Paint | None = None    # LAA blood: inhomogeneous opacification ("mixing"), pectinate band
    band: "_PectinateBand | None" = None  # the pectinate band (style "trabeculae")
    septum_rng: np.random.Generator | None = None  # style "septum": draws of the pools placed by truth.py
    septum_pools: list[dict] = field(default_factory=list)  # style "septum": {field, hu, wall_mm, septum_mm, kind}


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


def _sample_laa(rng: np.random.Generator, la: Ellipsoid, morphology: str, fld: Field, mouth: str = "standard",
                mouth_rng: np.random.Generator | None = None,
                trab_rng: np.random.Generator | None = None) -> _LAA:
    """Draw an LAA of ``morphology`` attached to the LA ellipsoid; adds its cavity primitives to ``fld``.

    ``mouth`` shapes the part next to the LA: "standard", "wide" (flared, tapered, no narrowing) or
    "narrow" (a waist just beyond the ostium); its parameters come from ``mouth_rng``. Trabeculae
    (pectinate ridges and cords) are drawn from ``trab_rng`` into ``laa.trabeculae``: they lie inside the
    cavity and are *not* part of ``fld``, whose zero level (the ground truth) is the cavity wall.
    """
    mouth_rng = mouth_rng if mouth_rng is not None else np.random.default_rng(0)
    trab_rng = trab_rng if trab_rng is not None else np.random.default_rng(1)
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
    flare, flare_len = mouth_rng.uniform(0.3, 0.8), mouth_rng.uniform(6.0, 14.0)
    waist, waist_at, waist_w = mouth_rng.uniform(0.2, 0.4), mouth_rng.uniform(2.0, 6.0), mouth_rng.uniform(2.0, 4.0)
    k_wide = mouth_rng.uniform(4.0, 7.0)
    if mouth == "wide":  # the mouth is the widest part (the drawn ostium size); the body tapers from it
        k_neck = k_wide
        a0, b0 = a0 / (1 + flare), b0 / (1 + flare)
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
    n_neck = int(math.ceil((4.0 + delta + 1.2 * max(a0, b0) * (1 + flare * (mouth == "wide"))) / 2.0)) + 1

    def mouth_factor(arc_mm: np.ndarray) -> np.ndarray:
        past = arc_mm - (4.0 + delta)  # mm beyond the ostium along the centreline
        if mouth == "wide":
            return 1.0 + flare * np.clip(1.0 - past / flare_len, 0.0, 1.0)
        if mouth == "narrow":
            return 1.0 - waist * np.exp(-(((past - waist_at) / waist_w) ** 2))
        return np.ones_like(arc_mm)

    for _ in range(4):  # shorten a body that comes back within a blend radius of the ostium plane
        u = np.clip((np.arange(len(pts)) * 2.0 - 4.0) / length, 0, 1)
        prof = profile(u, bulge, tip, power) * mouth_factor(np.arange(len(pts)) * 2.0)
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
    tubes = [(pts, tans, e1s, ra, rb, max(n_first + 2, int(0.25 * len(pts))))]  # where trabeculae may sit

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
        tubes.append((lp, lt, le, r0 * prof_, r0 * flat * prof_, 1))
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

    trabeculae = _trabeculae(trab_rng, tubes, morphology)

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
    laa.mouth = mouth
    laa.trabeculae = trabeculae
    return laa


def _trabeculae(rng: np.random.Generator, tubes: list, morphology: str) -> list[Primitive]:
    """Pectinate muscles and cords inside the cavity (not in the smooth neck).

    Ridges run roughly around the wall, centred on it, so about half of each lies inside the cavity (the
    rest is inside the wall, also myocardium); cords cross the distal lumen between two wall points. They
    are painted at myocardial HU over the blood and change nothing of the cavity wall, which stays the
    ground truth. ``tubes`` holds (points, tangents, e1, ra, rb, first index) of the main body and lobes.
    """
    out: list[Primitive] = []
    lengths = np.array([max(len(t[0]) - t[5], 1) for t in tubes], float)
    n_ridges = int(rng.integers(8, 26 if morphology in ("cactus", "cauliflower") else 20))
    for _ in range(n_ridges):
        pts, tans, e1s, ra, rb, first = tubes[int(rng.choice(len(tubes), p=lengths / lengths.sum()))]
        npts = len(pts)
        at = min(int(rng.integers(min(first, npts - 1), max(min(first, npts - 1) + 1, int(0.95 * npts)))), npts - 1)
        phi = rng.uniform(0, 2 * np.pi)
        t = tans[at]
        e1_, e2_ = e1s[at], np.cross(t, e1s[at])
        rr = min(ra[at], rb[at])
        wall = pts[at] + ra[at] * math.cos(phi) * e1_ + rb[at] * math.sin(phi) * e2_
        circ = _unit(-ra[at] * math.sin(phi) * e1_ + rb[at] * math.cos(phi) * e2_)
        dirn = _unit(circ + rng.uniform(-0.6, 0.6) * t)
        half = 0.5 * rng.uniform(4.0, 12.0)
        r_ridge = rng.uniform(0.6, 1.6) * min(1.0, rr / 4.0)
        out.append(RoundCone(wall - half * dirn, wall + half * dirn, r_ridge))
    for _ in range(int(rng.integers(0, 5))):  # cords across the distal lumen
        pts, tans, e1s, ra, rb, first = tubes[int(rng.integers(len(tubes)))]
        npts = len(pts)
        at = min(int(rng.integers(int(0.4 * npts), max(int(0.4 * npts) + 1, int(0.9 * npts)))), npts - 1)
        e1_, e2_ = e1s[at], np.cross(tans[at], e1s[at])
        phi = rng.uniform(0, 2 * np.pi)
        dphi = rng.uniform(0.6, 1.0) * np.pi
        a = pts[at] + 0.9 * (ra[at] * math.cos(phi) * e1_ + rb[at] * math.sin(phi) * e2_)
        b = pts[at] + 0.9 * (ra[at] * math.cos(phi + dphi) * e1_ + rb[at] * math.sin(phi + dphi) * e2_)
        b = b + tans[at] * rng.uniform(-3, 3)
        out.append(RoundCone(a, b, rng.uniform(0.4, 0.9)))
    return out


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


def _sample_anatomy(rng: np.random.Generator, morphology: str, styles: frozenset[str] = frozenset()) -> _Anatomy:
    """All structures of one patient in the heart frame, and their HU (see :mod:`.styles` for ``styles``).

    Each style's own parameters come from a child generator drawn unconditionally here, so turning a
    style off leaves the other draws of this anatomy unchanged.
    """
    J = lambda s: rng.normal(0, s, 3)
    child = {name: np.random.default_rng(int(rng.integers(2 ** 62))) for name in
             ("mouth", "trabeculae", "mixing", "la_lobes", "tight_neighbours", "tissue")}
    blood = float(rng.uniform(150, 650))
    hu = {
        "blood": blood,
        "myocardium": float(rng.uniform(40.0, min(170.0, blood - 60.0))),
        "fat": float(rng.uniform(-150, -50)),
        "lung": float(rng.uniform(-950, -750)),
        "soft_tissue": float(rng.uniform(20, 80)),
        "bone_cortical": float(rng.uniform(500, 1200)),
        "bone_trabecular": float(rng.uniform(120, 350)),
        "liver": float(rng.uniform(50, 130)),
        "air": -1000.0,
    }
    hu["blood_right"] = float(max(100.0, hu["blood"] * rng.uniform(0.4, 1.2)))
    hu["vessel_wall"] = hu["soft_tissue"]
    hu["pericardium"] = hu["soft_tissue"]
    hu["trabeculae"] = float(hu["myocardium"] * child["tissue"].uniform(0.8, 1.3))
    tight = "tight_neighbours" in styles
    tn = child["tight_neighbours"]
    groove_mm, fat_mm, laa_fat_mm = tn.uniform(1.5, 4.0), tn.uniform(0.3, 2.0), tn.uniform(0.2, 1.5)
    # how deep the LV free wall presses into the appendage's side (drawn after the others: they keep their values)
    lv_press_mm = float(tn.uniform(0.0, 4.0))
    # style "septum": its own generator, drawn last and whatever the styles (every draw above keeps its value)
    septum_seed = int(tn.integers(2 ** 62))
    walls = {"la": float(rng.uniform(1.0, 3.0)), "lv": float(rng.uniform(8, 12)), "rv": float(rng.uniform(2.5, 4.0)),
             "ra": float(rng.uniform(1.5, 2.5)), "aorta": float(rng.uniform(1.5, 2.5)),
             "pa": float(rng.uniform(1.2, 2.0)), "pv": float(rng.uniform(0.8, 1.5)), "cava": 1.5}
    # The appendage wall is thinner than the LA body's (often under 1 mm, and unresolved in routine CT,
    # where blood then meets epicardial fat): drawn from 0.3 mm up to the LA wall's thickness. From the
    # "tissue" child, so every other draw of the seed is unchanged.
    walls["laa"] = float(child["tissue"].uniform(0.3, walls["la"]))

    F: dict[str, Field] = {}
    # left atrium + LAA
    la = Ellipsoid(np.array([2.0, 28.0, 12.0]) + J(2.5),
                   (rng.uniform(26, 33), rng.uniform(17, 22), rng.uniform(20, 26)), _random_rotation(rng, 10))
    F["la"] = Field().union(la)
    mouth = "wide" if "wide_mouth" in styles else "narrow" if "narrow_neck" in styles else "standard"
    laa = _sample_laa(rng, la, morphology, F["la"], mouth, child["mouth"], child["trabeculae"])
    n_laa_end = len(F["la"].ops)
    if "la_lobes" in styles:
        _add_la_lobes(child["la_lobes"], la, laa, F["la"])
    # the LA body without its appendage: it carries the thicker LA wall, which also collars the ostium
    F["la_body"] = Field([F["la"].ops[0]] + F["la"].ops[n_laa_end:])
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
    groove_gap = rng.uniform(5, 9)
    groove = os_c + down * (0.5 * laa.target_short_mm + (groove_mm if tight else groove_gap)) + os_n * rng.uniform(-2, 1)
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
    f = rng.uniform(2.0, 8.0)
    f = fat_mm if tight else f
    env = Field()
    for prim in [la.inflated(walls["la"] + f), Offset(lv_myo, f * 0.8), Offset(rv, walls["rv"] + f * 0.7),
                 ra_.inflated(walls["ra"] + f * 0.7)]:
        env.union(prim, 8.0)
    for prim in laa.prims:
        if isinstance(prim, Ellipsoid):
            laa_fat = rng.uniform(1.5, 6.0)
            env.union(prim.inflated(walls["laa"] + (laa_fat_mm if tight else laa_fat)), 4.0)
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

    if "trabeculae" in styles and laa.trabeculae:
        F["trabeculae"] = Field()
        for prim in laa.trabeculae:
            F["trabeculae"].union(prim, 0.5)
        # pectinate muscles line the cavity: nothing of them shows outside the (thin) appendage wall
        F["trabeculae"].intersect(Within(F["la"], walls["laa"]), 0.0)
    # the pectinate layer's own generator, drawn whatever the styles so that no other draw moves
    band_rng = np.random.default_rng(int(child["trabeculae"].integers(2 ** 62)))
    band = _pectinate_band(band_rng, F["la"], hu["myocardium"]) if "trabeculae" in styles else None
    laa_blood = None
    if "mixing" in styles:
        laa_blood = _opacification(child["mixing"], laa, hu["blood"], F["la"], band)
    elif band is not None:
        laa_blood = _uniform_opacification(laa, hu["blood"], F["la"], band)

    heart_c = np.array([5.0, 0.0, 5.0])
    return _Anatomy(fields=F, laa=laa, hu=hu, walls=walls, background=bg, env=env, body_center=body_c,
                    heart_center=heart_c, la_center=la.center,
                    blood_fields=["pv", "lv", "rv", "ra", "svc", "ivc", "aorta", "pa", "coronary"],
                    styles=frozenset(styles), min_gap_mm=1.2 if tight else 2.2, laa_blood=laa_blood,
                    band=band, lv_press_mm=lv_press_mm if tight else None,
                    septum_rng=np.random.default_rng(septum_seed) if "septum" in styles else None)


def _add_la_lobes(rng: np.random.Generator, la: Ellipsoid, laa: _LAA, fld: Field) -> None:
    """One to three bulges of the LA body, away from the appendage and behind its ostium plane."""
    v_laa = _unit(laa.ostium_point - la.center)
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(6):
            v = _unit(rng.normal(size=3))
            if float(np.dot(v, v_laa)) > 0.2:  # keep well away from the appendage
                continue
            surf = la.center + v / np.linalg.norm((la.rot.T @ v) / la.radii)
            radii = rng.uniform(9.0, 17.0, 3)
            bump = Ellipsoid(surf - v * rng.uniform(0.3, 0.6) * radii.min(), radii, _random_rotation(rng, 180))
            support = float(np.linalg.norm(bump.radii * (bump.rot.T @ laa.ostium_normal)))
            behind = float(np.dot(bump.center - laa.ostium_point, laa.ostium_normal)) + support
            if behind > -4.0 or float(bump.eval_points(laa.lobe_points).min()) < 6.0:
                continue
            fld.union(bump, float(rng.uniform(5.0, 9.0)))
            break


def _pectinate_band(rng: np.random.Generator, cavity: Field, myocardium_hu: float) -> _PectinateBand:
    """Random :class:`_PectinateBand`: 1-4 mm deep, pulling the HU 15-70 % of the way to the myocardium."""
    m = 4
    dirs = rng.normal(size=(m, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return _PectinateBand(cavity=cavity, myocardium_hu=float(myocardium_hu), depth_mm=float(rng.uniform(1.0, 4.0)),
                          frac=float(rng.uniform(0.15, 0.7)), patchiness=float(rng.uniform(0.0, 1.0)),
                          waves=dirs * (2 * np.pi / rng.uniform(6.0, 20.0, (m, 1))),
                          phases=rng.uniform(0, 2 * np.pi, m), neck_u=float(rng.uniform(0.05, 0.25)))


def _laa_box(laa: _LAA) -> tuple[np.ndarray, np.ndarray]:
    """Heart-frame box around the appendage: where its own blood layer is painted."""
    lo = np.min([p.lo for p in laa.prims], axis=0) - 3.0
    hi = np.max([p.hi for p in laa.prims], axis=0) + 3.0
    return lo, hi


def _uniform_opacification(laa: _LAA, blood_hu: float, cavity: Field, band: _PectinateBand) -> _Paint:
    """The LAA blood of a well-mixed appendage (no dimming, swirls or pockets) with its pectinate band."""
    opac = _Opacification(blood=blood_hu, origin=laa.ostium_point, normal=laa.ostium_normal,
                          length=max(laa.length_mm, 10.0), dim=0.0, power=1.0, waves=np.zeros((0, 3)),
                          phases=np.zeros(0), swirl_hu=0.0, pockets=[], band=band)
    return _Paint(cavity, blood_hu, hu_map=opac, box=_laa_box(laa), over=blood_hu)


def _opacification(rng: np.random.Generator, laa: _LAA, blood_hu: float, cavity: Field,
                   band: _PectinateBand | None = None) -> _Paint:
    """The "mixing" layer: LAA cavity blood with :class:`_Opacification` HU, painted over the LA blood."""
    n = laa.ostium_normal
    m = 6
    dirs = rng.normal(size=(m, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * (2 * np.pi / rng.uniform(5.0, 15.0, (m, 1)))
    pts = laa.lobe_points[(laa.lobe_points - laa.ostium_point) @ n > 3.0]
    pockets = []
    for _ in range(int(rng.integers(0, 5))):
        if len(pts):
            c = pts[int(rng.integers(len(pts)))] + rng.normal(0, 1.5, 3)
            pockets.append((c, float(rng.uniform(1.5, 4.0)), float(blood_hu - rng.uniform(50, 300))))
    if laa.lobes > 1 and rng.random() < 0.35:  # a poorly filled lobe
        tip = laa.lobe_points[-1]
        pockets.append((tip, float(rng.uniform(4.0, 7.0)), float(rng.uniform(60, 200))))
    opac = _Opacification(blood=blood_hu, origin=laa.ostium_point, normal=n, length=max(laa.length_mm, 10.0),
                          dim=float(rng.uniform(0.1, 0.6)), power=float(rng.uniform(1.0, 3.0)), waves=waves,
                          phases=rng.uniform(0, 2 * np.pi, m), swirl_hu=float(rng.uniform(20, 150)),
                          pockets=pockets, band=band)
    return _Paint(cavity, blood_hu, hu_map=opac, box=_laa_box(laa), over=blood_hu)

