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
  length 20-45 mm), secondary lobes/lobules and outer lobulations; its mouth is standard, wide and tapered,
  or narrowed to a waist. The LAA is smooth-unioned with the LA body, so it opens into the LA lumen and
  the LA wall (the LA body's cavity field offset by 1-3 mm) collars the neck; beyond it the appendage has
  its own thinner wall (0.3 mm up to the LA wall's thickness, often unresolved in CT, as in real scans)
  with the epicardial fat outside it. Trabeculae never show outside that wall.
* **Domain randomisation** (:mod:`.styles`): everything that does not define the LAA varies per case --
  every tissue's HU (blood pool 150-650 HU), noise, PSF, slices, and named styles drawn independently:
  inhomogeneous opacification, trabeculae inside the cavity (with the dim band of unresolved pectinate
  muscles along the wall), mouth shapes, lobulated LA, close neighbours, other blood pools across a thin
  septum, artefacts, thick slices. A style can be held out of a training set or forced in a test set.
* **Ostium plane**: tangent to the LA ellipsoid at the attachment point, pushed 1.5-3 mm outwards. The LA
  ellipsoid is convex, so it lies entirely on the LA side; the LAA is kept on the appendage side.
* **Ground truth** is the LAA **cavity wall** (the endocardial envelope; trabeculae and contrast pockets
  lie inside it, as in radiologists' and TotalSegmentator's labels): marching cubes of the *analytic*
  LA+LAA cavity field (0.4 mm grid, only around the LAA),
  vertices projected onto the exact zero level by Newton steps (|field| < 0.01 mm), cut exactly at the
  ostium plane and kept on the appendage side: an open mesh with one boundary loop, triangles wound with
  normals pointing out of the lumen. It never comes from the CT voxels.
* **CT render** (:mod:`.render`, the whole intensity model): layers painted back to front (air, body, lung,
  bones, fat, walls, blood, LAA opacification, filling defect, trabeculae), each blended with a smooth step
  of its SDF whose width matches the PSF (sigma 0.4-1.1 mm for sharp to soft kernels; 1.1-2.0 mm in a
  quarter of the cases, the edges smeared by the beating heart in non-gated chest CT) plus in-plane voxel
  averaging, so a structure's edge (50 % level) sits exactly at SDF = 0 where nothing is painted over it;
  the layers that change the LAA's blood (opacification, filling defect) add to the blood layer instead of
  blending on its edge again.
  Thick slices get an extra blur along the slice axis; artefacts (streaks, slab steps, motion blur) change
  intensities, never edges.
  Background layers (body, lungs, bones) are drawn on a ~1.5 mm grid and upsampled. Correlated noise
  (Gaussian-filtered white noise, sigma 10-70 HU, correlation 0.3-1.5 mm) is added; voxels are int16 HU.
* **Geometry**: in-plane spacing 0.3-0.8 mm, slices 0.5-2.5 mm (65 % cardiac CTA 0.5-1.0 mm, 35 % routine
  chest 1-2.5 mm; 1.5-3 mm with the thick-slice style), a random patient pose, a random direction matrix (60 % tilted up to 20 degrees, 25 %
  with axis flips) and a random origin. ``size="full"``: 512x512 in-plane (FOV = 512 x spacing) and
  ~80-280 slices; ``size="compact"``: a 110-130 mm field of view around the LA/LAA (fast datasets).
* Every random choice comes from ``np.random.default_rng(seed)``: the same seed (and style probabilities)
  gives the same case.

Frames: the CT is stored with its LPS geometry; the mesh and all ``*_lps`` metadata are LPS mm,
``seed_ras`` is :func:`NUDFCore.frames.lps_to_ras` of ``seed_lps``.

Where things live
-----------------
``sdf`` (primitives, fields, grids), ``anatomy`` (the patient: LAA families, LA, neighbours, HU per
tissue), ``render`` (the intensity model: layers, PSF, slices, noise, artefacts), ``truth`` (the exact
open ground truth and neighbour clearing), and this module (case geometry, :func:`generate_case`, files).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import vtk

from .. import __version__
from ..errors import InputError, NUDFError, OutputExistsError
from ..frames import lps_to_ras
from ..io import Volume, make_polydata, write_mesh, write_volume
from .anatomy import MORPHOLOGIES, _Anatomy, _Reject, _sample_anatomy
from .render import _render_ct
from .sdf import _random_rotation
from .styles import STYLES, draw_styles, style_probabilities
from .truth import (_GroundTruth, _clear_laa_neighbours, _marching_cubes_gt, _place_septum_pools,
                    _press_lv_against_laa, polydata_boundary_ids)

#: Clinical prevalence of the families (Di Biase et al., JACC 2012), for reference and for callers who
#: want clinically weighted datasets (``generate_case(..., morphology_weights=CLINICAL_PREVALENCE)``).
CLINICAL_PREVALENCE: dict[str, float] = {"chicken_wing": 0.48, "cactus": 0.30, "windsock": 0.19, "cauliflower": 0.03}
#: Default sampling of the families: uniform, so rare shapes are learned too.
MORPHOLOGY_SAMPLING: dict[str, float] = {m: 0.25 for m in MORPHOLOGIES}
SIZES: tuple[str, ...] = ("full", "compact")
CASE_FILES: tuple[str, ...] = ("ct.nii.gz", "laa.vtp", "laa.stl", "meta.json")


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
    thick = float(rng.uniform(1.5, 3.0))
    if "thick_slices" in an.styles:
        sz = thick
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


def _draw_psf(rng: np.random.Generator) -> float:
    """Gaussian PSF sigma (mm): 0.4-1.1 mm in 75 % of cases (sharp to soft reconstruction kernels), else
    1.1-2.0 mm, the broad edges of non-gated chest CT where the beating heart smears every cardiac edge
    over several millimetres. One draw, so the draws after it are unchanged."""
    u = float(rng.random())
    return 0.4 + 0.7 * u / 0.75 if u < 0.75 else 1.1 + 0.9 * (u - 0.75) / 0.25


def generate_case(seed: int, *, size: str = "full", morphology: str | None = None,
                  morphology_weights: dict[str, float] | None = None, case_id: str | None = None,
                  progress: bool = False, styles: Mapping[str, float] | None = None) -> PhantomCase:
    """Generate one synthetic cardiac CTA with its exact open LAA ground truth.

    ``size`` is "full" (512x512 in-plane, realistic FOV) or "compact" (110-130 mm around the LA/LAA);
    ``morphology`` forces an LAA family, else it is drawn with ``morphology_weights`` (default uniform,
    :data:`MORPHOLOGY_SAMPLING`). ``styles`` maps style names to the probability a case draws them
    (default :data:`STYLES`; build one with :func:`style_probabilities` to hold a style out or force it).
    The same ``seed`` and ``styles`` always give the same case.
    """
    if size not in SIZES:
        raise InputError(f"Unknown phantom size {size!r}: use 'full' or 'compact'.")
    if morphology is not None and morphology not in MORPHOLOGIES:
        raise InputError(f"Unknown LAA morphology {morphology!r}: use one of {', '.join(MORPHOLOGIES)}.")
    weights = dict(morphology_weights or MORPHOLOGY_SAMPLING)
    if set(weights) - set(MORPHOLOGIES) or any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
        raise InputError(f"morphology_weights must map {', '.join(MORPHOLOGIES)} to non-negative weights.")
    probs = style_probabilities(base=styles) if styles is not None else dict(STYLES)
    rng = np.random.default_rng(int(seed))
    morph = _draw_morphology(rng, morphology, weights)
    drawn = draw_styles(rng, probs)
    artefact_rng = np.random.default_rng(int(rng.integers(2 ** 62)))
    an, gt, reasons = _draw_anatomy(rng, morph, seed, drawn)
    spacing, d, origin, size_ijk, r_pat, t_pat = _sample_grid(rng, an, gt, size)
    psf = _draw_psf(rng)
    noise_sigma = float(rng.uniform(10, 70))
    vol = _render_ct(rng, an, spacing, d, origin, size_ijk, r_pat, t_pat, psf, noise_sigma, progress, artefact_rng)

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
        "styles": sorted(drawn),
        "mouth": an.laa.mouth,
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
        "walls_mm": {k: round(float(an.walls[k]), 3) for k in ("la", "laa")},
        "pectinate_band": None if an.band is None else
        {"depth_mm": round(an.band.depth_mm, 3), "frac": round(an.band.frac, 3),
         "patchiness": round(an.band.patchiness, 3)},
        "lv_press_mm": None if an.lv_press_mm is None else round(an.lv_press_mm, 3),
        "septum_pools": [{"kind": pool["kind"], "septum_mm": round(pool["septum_mm"], 3), "hu": round(pool["hu"], 2)}
                         for pool in an.septum_pools],
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
        "blood_pools_lps": _blood_pool_points(an, vol, r_pat, t_pat),
        "mesh_frame": "LPS",
        "nudfcore_version": __version__,
    }
    if os.environ.get("NUDF_PHANTOM_DEBUG"):
        print(f"phantom seed {seed}: rejected draws: {reasons}")
    return PhantomCase(volume=vol, mesh_lps=mesh, meta=meta)


#: Blood pools other than the appendage whose deepest point in the image :func:`generate_case` records.
BLOOD_POOLS = {"la": "left atrium", "lv": "left ventricle", "aorta": "aorta", "pa": "pulmonary artery"}


def _blood_pool_points(an: _Anatomy, vol, r_pat: np.ndarray, t_pat: np.ndarray, stride_mm: float = 2.0,
                       edge_mm: float = 12.0) -> dict[str, list[float] | None]:
    """The deepest point (LPS) of the left atrium, left ventricle, aorta and pulmonary artery at least
    ``edge_mm`` inside the image, or None where the image holds no such point: where a user could misplace
    the seed (tests of the misplaced-seed checks use them). No random draws: the case is unchanged."""
    n = np.array(vol.size_ijk)
    step = np.maximum(np.round(stride_mm / np.asarray(vol.spacing)), 1).astype(int)
    margin = np.ceil(edge_mm / np.asarray(vol.spacing)).astype(int)
    axes = [np.arange(margin[a], n[a] - margin[a], step[a]) for a in range(3)]
    if any(len(a) == 0 for a in axes):
        return {k: None for k in BLOOD_POOLS}
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    lps = vol.index_to_lps(ijk)
    heart = (lps - t_pat) @ r_pat  # the inverse of heart @ r_pat.T + t_pat
    out: dict[str, list[float] | None] = {}
    for name in BLOOD_POOLS:
        sdf = an.fields[name].eval_points(heart)
        i = int(np.argmin(sdf))
        out[name] = np.round(lps[i], 3).tolist() if sdf[i] < -2.0 else None
    return out


def _draw_morphology(rng: np.random.Generator, morphology: str | None, weights: dict[str, float]) -> str:
    probs = np.array([weights.get(m, 0.0) for m in MORPHOLOGIES], float)
    drawn = MORPHOLOGIES[int(rng.choice(len(MORPHOLOGIES), p=probs / probs.sum()))]
    return morphology or drawn


def draw_morphology(seed: int, weights: dict[str, float] | None = None) -> str:
    """The LAA family :func:`generate_case` draws for ``seed`` (cheap: nothing else is generated)."""
    return _draw_morphology(np.random.default_rng(int(seed)), None, dict(weights or MORPHOLOGY_SAMPLING))


def ground_truth_surface(seed: int, morphology: str | None = None) -> vtk.vtkPolyData:
    """Only the open LAA surface of an anatomy drawn from ``seed`` (heart frame, mm; no CT is rendered: a
    second or two instead of a whole case). For tests and checks that need realistic LAA shapes quickly; it is
    not the mesh of ``generate_case(seed)``, which draws more before the anatomy."""
    rng = np.random.default_rng(int(seed))
    morph = _draw_morphology(rng, morphology, dict(MORPHOLOGY_SAMPLING))
    _an, gt, _reasons = _draw_anatomy(rng, morph, seed)
    return make_polydata(gt.points, gt.triangles)


def _draw_anatomy(rng: np.random.Generator, morph: str, seed: int = -1,
                  styles: frozenset[str] = frozenset()) -> tuple[_Anatomy, _GroundTruth, list[str]]:
    """Draw anatomies until one gives a clean ground truth (rejection sampling; all from ``rng``)."""
    reasons: list[str] = []
    for _attempt in range(40):
        try:
            an = _sample_anatomy(rng, morph, styles)
            gt = _marching_cubes_gt(an)
        except _Reject as exc:
            reasons.append(str(exc))
            continue
        touching = _clear_laa_neighbours(an, gt.points)
        if touching is None:
            _press_lv_against_laa(an, gt.points)
            _place_septum_pools(an, gt.points)
            return an, gt, reasons
        reasons.append(f"the {touching} touches the LAA")
    raise NUDFError(f"phantom seed {seed}: no valid LAA after 40 draws ({'; '.join(reasons[-3:])}).")


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
                     progress: bool = True, on_case: Callable[[Path], None] | None = None,
                     styles: Mapping[str, float] | None = None, workers: int = 1) -> list[Path]:
    """Write ``count`` cases to ``out/case_0000`` ... (case i uses seed + i); returns the case folders.

    Refuses (before generating anything) when a case folder already exists, unless ``overwrite``.
    ``workers`` > 1 generates cases in that many processes (each case depends only on its seed, so the
    files are the same as with one).
    """
    if int(workers) < 1:
        raise InputError(f"The number of workers must be at least 1 (got {workers}).")
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
    jobs = [(int(seed) + i, size, folders[i], styles) for i in range(int(count))]
    written = []
    if int(workers) == 1:
        done = (_make_case(job) for job in jobs)
    else:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=int(workers))
        done = pool.map(_make_case, jobs)
    try:
        for _ in it:
            folder = next(done)
            written.append(folder)
            if on_case is not None:
                on_case(folder)
    finally:
        if int(workers) > 1:
            pool.shutdown(cancel_futures=True)
    return written


def _make_case(job: tuple) -> Path:
    """Generate and write one case (a top-level function, so worker processes can run it)."""
    seed, size, folder, styles = job
    write_case(generate_case(seed, size=size, case_id=Path(folder).name, styles=styles), folder, overwrite=True)
    return Path(folder)
