"""Re-acquire a set of cases as a coarser scanner would: thick slices and a broader point-spread function.

Not a test: it writes a *copy* of a case set, for ``generalization.py`` to score. The real validation CT is a
routine chest CT (0.70 × 0.70 × 2.5 mm); our phantoms are mostly cardiac-CTA-like (0.3–0.8 mm, thin slices).
Re-acquiring the same phantoms on the real case's grid asks one question with exact ground truth: does the
acquisition alone (slice thickness, blur) move the predicted surface? The anatomy, the contrast and the ground
truth stay the same; only the CT changes.

For each case: every CT axis is blurred by a Gaussian (``--slice-fwhm`` across slices: the slice sensitivity
profile of a reconstruction with that slice thickness; ``--blur-mm`` sigma in-plane, on top of the case's own
PSF), then resampled linearly onto ``--spacing`` (same origin, directions and physical extent). The CT is read in
any format the dataset reader takes and written as ``ct.nii.gz``; the ground-truth mesh is copied, ``meta.json``
gets the new grid and an ``acquisition`` record; cached training samples are not copied (a re-acquired set is for
testing). Example::

    python benchmarks/acquisition.py --set runs/v4/phantoms_test --out runs/v4/phantoms_test_chest \\
        --spacing 0.7,0.7,2.5 --slice-fwhm 2.5
    python benchmarks/generalization.py --set own=runs/v4/phantoms_test --set own_chest=runs/v4/phantoms_test_chest
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def reacquire(image, spacing_ijk: tuple[float, float, float], slice_fwhm_mm: float, blur_mm: float):
    """``image`` (SimpleITK, slices along k) blurred and resampled onto ``spacing_ijk`` over the same extent."""
    import SimpleITK as sitk
    from scipy import ndimage

    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (k, j, i)
    sp = image.GetSpacing()
    sigmas_mm = (slice_fwhm_mm / FWHM_PER_SIGMA, blur_mm, blur_mm)  # k, j, i
    for axis, (s_mm, h) in enumerate(zip(sigmas_mm, (sp[2], sp[1], sp[0]))):
        if s_mm > 0:
            ndimage.gaussian_filter1d(arr, s_mm / h, axis=axis, output=arr, mode="nearest")
    blurred = sitk.GetImageFromArray(arr)
    blurred.CopyInformation(image)
    size = [max(1, int(math.floor((n - 1) * h / s)) + 1) for n, h, s in zip(image.GetSize(), sp, spacing_ijk)]
    out = sitk.Resample(blurred, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), tuple(spacing_ijk),
                        image.GetDirection(), float(arr.min()), sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", type=Path, required=True, help="a folder of case folders (a CT, an LAA mesh, meta.json)")
    p.add_argument("--out", type=Path, required=True, help="new folder for the re-acquired copy (must not exist)")
    p.add_argument("--spacing", default="0.7,0.7,2.5", help="new voxel spacing i,j,k in mm (default 0.7,0.7,2.5)")
    p.add_argument("--slice-fwhm", type=float, default=2.5,
                   help="FWHM (mm) of the blur across slices, the slice sensitivity profile (default 2.5; 0: none)")
    p.add_argument("--blur-mm", type=float, default=0.0, help="extra in-plane Gaussian sigma in mm (default 0)")
    args = p.parse_args(argv)

    import SimpleITK as sitk

    from NUDFCore.data import list_cases
    from NUDFCore.errors import NUDFError

    try:
        spacing = tuple(float(v) for v in args.spacing.split(","))
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or min(spacing) <= 0:
        p.error(f"--spacing {args.spacing!r}: give three positive numbers, e.g. 0.7,0.7,2.5")
    if args.slice_fwhm < 0 or args.blur_mm < 0:
        p.error("--slice-fwhm and --blur-mm must be ≥ 0")
    if args.out.exists():
        p.error(f"{args.out} exists; choose a new folder (nothing is overwritten)")
    try:
        cases = list_cases(args.set)
    except NUDFError as exc:
        p.error(f"--set {args.set}: {exc}")
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:
        dst = tmp / case.case_dir.name
        dst.mkdir(parents=True)
        img = reacquire(case.load_volume().to_sitk(), spacing, args.slice_fwhm, args.blur_mm)
        sitk.WriteImage(img, str(dst / "ct.nii.gz"), True)
        shutil.copy2(case.mesh_path, dst / case.mesh_path.name)
        meta = json.loads((case.case_dir / "meta.json").read_text())
        meta["acquisition"] = {"from": str(case.case_dir), "original_spacing": meta.get("spacing"),
                               "original_size_ijk": meta.get("size_ijk"), "slice_fwhm_mm": args.slice_fwhm,
                               "blur_mm": args.blur_mm}
        meta["spacing"], meta["size_ijk"] = list(spacing), list(img.GetSize())
        (dst / "meta.json").write_text(json.dumps(meta, indent=2))
        print(f"{case.case_dir.name}: {meta['acquisition']['original_size_ijk']} -> {list(img.GetSize())}", file=sys.stderr)
    tmp.rename(args.out)
    print(f"Wrote {len(cases)} re-acquired cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
