"""The intensity model: how an anatomy becomes CT voxels (layers, PSF, slices, noise, artefacts)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..io import Volume
from .anatomy import _Anatomy, _Paint
from .sdf import _Grid, _eval_field_grid, _intersect_box


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
    own = {id(p): _intersect_box(boxes[id(p.fld)], grid.index_box(*p.box)) for p in paints if p.box is not None}
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
            if p.box is not None:  # a layer limited to its own box: paint only there
                sub = _intersect_box(own[id(p)], region)
                if sub is None:
                    continue
                f = f[sub[0] - region[0]:sub[1] - region[0], sub[2] - region[2]:sub[3] - region[2],
                      sub[4] - region[4]:sub[5] - region[4]]
                region = sub
            t = np.float32(p.offset) - f
            t *= np.float32(0.5 / hw)
            t += np.float32(0.5)
            np.clip(t, 0, 1, out=t)
            w = t * t
            t *= np.float32(-2)
            t += np.float32(3)
            w *= t  # smoothstep
            v = vol[region[0]:region[1], region[2]:region[3], region[4]:region[5]]
            target = np.float32(p.hu) if p.hu_map is None else p.hu_map(*grid.coords(region))
            diff = target - (v if p.over is None else np.float32(p.over))
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
        _Paint(F["la_body"], hu["myocardium"], offset=w["la"]),
        _Paint(F["la"], hu["myocardium"], offset=w["laa"]),
        *(_Paint(F[pool["field"]], hu["myocardium"], offset=pool["wall_mm"]) for pool in an.septum_pools),
        _Paint(F["lv"], hu["blood"]),
        _Paint(F["rv"], hu["blood_right"]),
        _Paint(F["ra"], hu["blood_right"]),
        _Paint(F["svc"], hu["blood_right"]),
        _Paint(F["ivc"], 0.5 * (hu["blood_right"] + hu["soft_tissue"])),
        _Paint(F["pa"], hu["blood_right"]),
        _Paint(F["aorta"], hu["blood"]),
        _Paint(F["pv"], hu["blood"]),
        *(_Paint(F[pool["field"]], pool["hu"]) for pool in an.septum_pools),
        _Paint(F["la"], hu["blood"]),
        _Paint(F["coronary"], hu["blood"]),
    ]
    if an.laa_blood is not None:
        paints.append(an.laa_blood)
    if "defect" in F:
        paints.append(_Paint(F["defect"], hu["filling_defect"], over=hu["blood"]))  # the LAA blood, darkened
    if "trabeculae" in F:
        paints.append(_Paint(F["trabeculae"], hu["trabeculae"]))
    return paints


def _render_ct(rng, an: _Anatomy, spacing, d, origin, size_ijk, r_pat, t_pat, psf: float, noise_sigma: float,
               progress: bool, artefact_rng: np.random.Generator | None = None) -> Volume:
    """Render the CT of ``an`` on the given LPS grid (heart frame -> LPS by ``r_pat``, ``t_pat``)."""
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
    if "artefacts" in an.styles:
        _artefacts(artefact_rng if artefact_rng is not None else np.random.default_rng(0), vol, grid, spacing, an)
    # correlated noise: white noise low-passed in-plane (reconstruction kernel) and lightly across slices
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    corr_mm = float(rng.uniform(0.3, 1.5))
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


def _artefacts(rng: np.random.Generator, vol: np.ndarray, grid: _Grid, spacing: np.ndarray, an: _Anatomy) -> None:
    """Streaks from dense contrast, slab-to-slab intensity steps and motion-blurred slabs (in place).

    Streaks radiate in-plane from the superior vena cava (where undiluted contrast arrives) and fade
    with distance and along the slice axis; slabs of 15-40 mm (gated acquisitions) get their own
    contrast level, and some are blurred in-plane as by motion. None of them moves an edge, so the
    ground truth stays exact.
    """
    from scipy import ndimage

    nk, nj, ni = vol.shape
    # streaks around the SVC
    svc = an.fields["svc"].ops[0][1].center
    ci, cj, ck = np.linalg.solve(grid.A, svc - grid.b)
    y, x = np.mgrid[0:nj, 0:ni].astype(np.float32)
    x = (x - np.float32(ci)) * np.float32(spacing[0])
    y = (y - np.float32(cj)) * np.float32(spacing[1])
    r = np.sqrt(x * x + y * y)
    pattern = np.zeros((nj, ni), np.float32)
    width = np.float32(rng.uniform(0.5, 1.5))
    for theta in rng.uniform(0, np.pi, int(rng.integers(4, 12))):
        d = x * np.float32(math.sin(theta)) - y * np.float32(math.cos(theta))
        pattern += np.float32(rng.choice([-1, 1]) * rng.uniform(30, 150)) * np.exp(-0.5 * (d / width) ** 2)
    pattern *= np.exp(-r / np.float32(rng.uniform(40, 120)))
    zk = (np.arange(nk) - ck) * spacing[2]
    along = np.exp(-0.5 * (zk / rng.uniform(20, 60)) ** 2).astype(np.float32)
    for k in np.flatnonzero(along > 0.02):
        vol[k] += pattern * along[k]
    # slab steps and motion blur
    slab = max(1, int(round(rng.uniform(15, 40) / spacing[2])))
    for k0 in range(int(rng.integers(0, slab)) - slab, nk, slab):
        a, b = max(k0, 0), min(k0 + slab, nk)
        if b <= a:
            continue
        scale, offset = np.float32(rng.uniform(-0.06, 0.06)), np.float32(rng.uniform(-25, 25))
        blur = rng.uniform(0.3, 1.0) if rng.random() < 0.4 else 0.0
        part = vol[a:b]
        part += offset + scale * np.maximum(part, 0)
        if blur > 0:
            ndimage.gaussian_filter(part, (0, blur / spacing[1], blur / spacing[0]), output=part)
