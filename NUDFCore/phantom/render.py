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
