"""Regenerate the data the Slicer module's self-test ships (``NUDFSegmentation/Resources/Testing/``).

The self-test runs inside an installed Slicer extension, where the phantom generator (a development tool) is
not installed, so it reads a small frozen case instead: an 84 mm cube of a compact phantom CT around its LAA,
resampled to 1 mm (HU rounded to multiples of 4 to keep the file small), the exact LAA surface (decimated,
compressed VTP) and the seed. Run from the repository root with the dev extra installed::

    python Testing/slicer_selftest_data.py [--seed 3]

The phantom seed (3) is the one the test suite segments; the bundled model was not trained on it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "NUDFSegmentation" / "Resources" / "Testing"
EDGE_MM = 84.0
SPACING_MM = 1.0


def make_selftest_case(out_dir: Path = OUT_DIR, seed: int = 3) -> dict:
    """Write ct.nrrd, laa.vtp and case.json into ``out_dir``; returns the case description."""
    import SimpleITK as sitk
    import vtk

    from NUDFCore import phantom
    from NUDFCore.io import Volume, write_mesh

    case = phantom.generate_case(seed, size="compact")
    ct: Volume = case.volume
    mesh_lps, meta = case.mesh_lps, case.meta
    seed_lps = np.asarray(meta["seed_lps"], float)
    centre_lps = 0.5 * (seed_lps + np.asarray(meta["laa_center_lps"], float))
    n = int(round(EDGE_MM / SPACING_MM))
    image = sitk.GetImageFromArray(ct.array)
    image.SetSpacing(tuple(ct.spacing))
    image.SetOrigin(tuple(ct.origin_lps))
    image.SetDirection(tuple(ct.direction_lps.ravel()))
    origin = centre_lps - SPACING_MM * (n - 1) / 2
    crop = sitk.Resample(image, [n] * 3, sitk.Transform(), sitk.sitkLinear, tuple(origin), (SPACING_MM,) * 3,
                         tuple(np.eye(3).ravel()), -1000.0, sitk.sitkFloat32)
    arr = (np.round(sitk.GetArrayFromImage(crop) / 4.0) * 4.0).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(crop)
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(out_dir / "ct.nrrd"), True)

    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(mesh_lps)
    decimate.SetTargetReduction(0.8)
    decimate.Update()
    write_mesh(decimate.GetOutput(), out_dir / "laa.vtp", overwrite=True)
    info = {
        "description": "Self-test case of the NUDF Segmentation module: an 84 mm cube (1 mm voxels) of the "
        f"compact NUDFCore phantom with seed {seed} around its LAA, and its exact LAA surface (LPS, decimated).",
        "phantom_seed": seed,
        "morphology": meta.get("morphology"),
        "seed_lps": seed_lps.tolist(),
    }
    (out_dir / "case.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (default: 3)")
    print(make_selftest_case(seed=parser.parse_args().seed))
