"""``benchmarks/acquisition.py``: re-acquiring a CT on a coarser grid keeps its geometry and its edges in place.

The benchmark's claim ("thick slices do not move the predicted surface") rests on the re-acquired CT showing the
same anatomy in the same place: a blurred, resampled step must still cross its half-way level where it was.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from acquisition import main, reacquire  # noqa: E402

ORIGIN = (-12.0, 30.0, 5.0)
SPACING = (0.5, 0.5, 0.6)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # a left-handed-looking LPS/RAS flip, as in NIfTI
EDGE_I, EDGE_K = 19.5, 30.5  # continuous input indices of a step along i and one along k (half-way between voxels)


def _image() -> sitk.Image:
    k, j, i = np.meshgrid(np.arange(80), np.arange(60), np.arange(70), indexing="ij")
    hu = np.where((i < EDGE_I) & (k < EDGE_K), 400.0, -100.0).astype(np.int16)
    img = sitk.GetImageFromArray(hu)
    img.SetOrigin(ORIGIN)
    img.SetSpacing(SPACING)
    img.SetDirection(DIRECTION)
    return img


def _crossing(profile: np.ndarray) -> float:
    """Continuous index where the profile falls through the mean of its ends."""
    level = 0.5 * (profile[0] + profile[-1])
    i = int(np.flatnonzero(profile < level)[0])
    return i - 1 + (profile[i - 1] - level) / (profile[i - 1] - profile[i])


def test_thick_slices_keep_the_extent_and_the_edges_in_place():
    img = _image()
    out = reacquire(img, (0.7, 0.7, 2.5), slice_fwhm_mm=2.5, blur_mm=1.0)
    assert out.GetSpacing() == (0.7, 0.7, 2.5) and out.GetOrigin() == ORIGIN and out.GetDirection() == DIRECTION
    assert out.GetPixelID() == sitk.sitkInt16
    # same physical box, to within one new voxel
    for n_in, h_in, n_out, h_out in zip(img.GetSize(), SPACING, out.GetSize(), out.GetSpacing()):
        assert 0 <= (n_in - 1) * h_in - (n_out - 1) * h_out < h_out
    arr = sitk.GetArrayFromImage(out).astype(float)  # (k, j, i)
    along_i = arr[2, arr.shape[1] // 2, :]  # far from the k step
    along_k = arr[:, arr.shape[1] // 2, 3]  # far from the i step
    assert abs(_crossing(along_i) * 0.7 - EDGE_I * SPACING[0]) < 0.1
    assert abs(_crossing(along_k) * 2.5 - EDGE_K * SPACING[2]) < 0.3  # linear between 2.5 mm samples: ±0.15
    # and blurred across slices: the last slice inside the edge (0.8 mm) has lost contrast, unlike without a profile
    inside = int((EDGE_K * SPACING[2] - 0.5) // 2.5)
    sharp = sitk.GetArrayFromImage(reacquire(img, (0.7, 0.7, 2.5), slice_fwhm_mm=0.0, blur_mm=0.0))
    assert along_k[inside] < 390 and sharp[inside, sharp.shape[1] // 2, 3] == 400


def test_a_set_is_copied_never_overwritten(tmp_path, capsys):
    import json

    import vtk

    case = tmp_path / "set" / "case_0000"
    case.mkdir(parents=True)
    sitk.WriteImage(_image(), str(case / "ct.nii.gz"))
    sphere = vtk.vtkSphereSource()
    sphere.Update()
    w = vtk.vtkXMLPolyDataWriter()
    w.SetFileName(str(case / "laa.vtp"))
    w.SetInputData(sphere.GetOutput())
    w.Write()
    (case / "meta.json").write_text(json.dumps({"case_id": "case_0000", "seed_lps": [0, 0, 0],
                                                "spacing": list(SPACING), "size_ijk": [70, 60, 80]}))
    out = tmp_path / "chest"
    assert main(["--set", str(tmp_path / "set"), "--out", str(out)]) == 0
    meta = json.loads((out / "case_0000" / "meta.json").read_text())
    assert meta["spacing"] == [0.7, 0.7, 2.5] and meta["acquisition"]["original_spacing"] == list(SPACING)
    assert sitk.ReadImage(str(out / "case_0000" / "ct.nii.gz")).GetSize() == tuple(meta["size_ijk"])
    assert (out / "case_0000" / "laa.vtp").read_bytes() == (case / "laa.vtp").read_bytes()
    try:
        main(["--set", str(tmp_path / "set"), "--out", str(out)])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("an existing --out must be refused")
    assert "exists" in capsys.readouterr().err
    try:
        main(["--set", str(tmp_path / "no_such_set"), "--out", str(tmp_path / "other")])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("a missing --set must be refused")
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "other").exists()
