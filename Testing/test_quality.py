"""Completeness and plausibility checks (NUDFCore.quality) on ground-truth LAA surfaces, intact and damaged,
and the refusal of seeds placed in another blood pool."""
from __future__ import annotations

import numpy as np
import pytest

from NUDFCore import meshtools, phantom
from NUDFCore.errors import SegmentationError
from NUDFCore.infer import SegmentOptions, segment
from NUDFCore.io import make_polydata, polydata_points, polydata_triangles
from NUDFCore.quality import CONFIDENCE_ARRAY, assess_surface, capped_volume_ml, vertex_confidence


def _codes(assessment) -> set[str]:
    return {w.code for w in assessment.warnings}


@pytest.fixture(scope="module")
def ct(phantom_case):
    return phantom_case.load_volume()


@pytest.fixture(scope="module")
def gt(phantom_case):
    return phantom_case.load_mesh()


def _axis(phantom_case) -> tuple[np.ndarray, np.ndarray, float]:
    """Ostium centre, unit axis into the LAA, and the LAA's depth along it (mm)."""
    o = np.asarray(phantom_case.meta["ostium_center_lps"])
    pts = polydata_points(phantom_case.load_mesh())
    axis = np.asarray(phantom_case.meta["laa_center_lps"]) - o
    axis /= np.linalg.norm(axis)
    return o, axis, float(((pts - o) @ axis).max())


@pytest.mark.parametrize("morphology", phantom.MORPHOLOGIES)
def test_intact_ground_truth_of_every_morphology_raises_no_warning(morphology):
    for seed in (11, 12):
        a = assess_surface(phantom.ground_truth_surface(seed, morphology))
        assert a.warnings == [], (seed, [str(w) for w in a.warnings])
        assert 10.0 <= a.metrics["ostium_diameter_mm"] <= 40.0 and a.metrics["holes"] == 0


def test_intact_ground_truth_with_its_image_and_seed_raises_no_warning(gt, ct, phantom_case):
    a = assess_surface(gt, ct, phantom_case.seed_lps)
    assert a.warnings == [], [str(w) for w in a.warnings]
    assert a.metrics["seed_outside_mm"] == 0.0 and a.metrics["rim_opens_fraction"] > 0.8


def test_proximal_part_missing_is_reported_as_incomplete(gt, ct, phantom_case):
    """The failure seen on unseen scans: the surface starts half-way into the appendage, so its rim lies in
    bright lumen that does not widen into the atrium."""
    o, axis, depth = _axis(phantom_case)
    distal = meshtools.keep_largest_component(meshtools.clip_by_plane(gt, o + 0.45 * depth * axis, axis))
    a = assess_surface(distal, ct)
    assert "rim_not_ostium" in _codes(a), [str(w) for w in a.warnings]
    msg = next(str(w) for w in a.warnings if w.code == "rim_not_ostium")
    assert msg.startswith("the surface may be incomplete near its opening at LPS [")


def test_tip_cut_off_and_a_punched_hole_are_reported(gt, ct, phantom_case):
    o, axis, depth = _axis(phantom_case)
    proximal = meshtools.clip_by_plane(gt, o + 0.6 * depth * axis, -axis)
    a = assess_surface(proximal, ct)
    # two openings: whichever is taken for the ostium, the other is a hole (and a cut through the lumen may
    # be the longer one, then it is also reported as not opening into the atrium)
    assert "holes" in _codes(a) and _codes(a) <= {"holes", "rim_not_ostium"}, [str(w) for w in a.warnings]
    # a hole about 6 mm across in the middle of the appendage's wall
    pts, tris = polydata_points(gt), polydata_triangles(gt)
    mid = pts[np.argmin(np.abs((pts - o) @ axis - 0.5 * depth))]
    keep = np.linalg.norm(pts[tris].mean(axis=1) - mid, axis=1) > 3.0
    holed = make_polydata(pts, tris[keep])
    a = assess_surface(holed, ct)
    assert _codes(a) == {"holes"}, [str(w) for w in a.warnings]
    assert "may be incomplete near LPS [" in str(a.warnings[0])
    assert np.linalg.norm(np.asarray(a.warnings[0].location_lps) - mid) < 3.0
    # Slicer shows RAS: the same warning names the same point there, x and y negated
    w = a.warnings[0]
    x, y, z = w.location_lps
    ras = w.in_frame("RAS")
    assert f"near RAS [{-x:.1f}, {-y:.1f}, {z:.1f}]" in ras and "LPS" not in ras
    assert ras.replace(f"RAS [{-x:.1f}, {-y:.1f}, {z:.1f}]", f"LPS [{x:.1f}, {y:.1f}, {z:.1f}]") == w.message
    assert w.in_frame("LPS") == w.message


def test_shapes_that_are_no_appendage_are_called_so():
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(10.0)
    sphere.SetThetaResolution(40)
    sphere.SetPhiResolution(40)
    sphere.Update()
    closed = make_polydata(polydata_points(sphere.GetOutput()), polydata_triangles(sphere.GetOutput()))
    assert "no_rim" in _codes(assess_surface(closed))
    plane = vtk.vtkPlaneSource()  # a flat 80 mm sheet: far too wide an opening, no volume
    plane.SetOrigin(0, 0, 0)
    plane.SetPoint1(80, 0, 0)
    plane.SetPoint2(0, 80, 0)
    plane.SetResolution(40, 40)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(plane.GetOutputPort())
    tri.Update()
    a = assess_surface(tri.GetOutput())
    assert {"rim_size", "volume"} <= _codes(a)
    assert all(str(w).startswith("this does not look like a left atrial appendage: ") for w in a.warnings
               if w.code in ("rim_size", "volume"))


def test_capped_volume_of_a_hemisphere_in_both_windings():
    import vtk

    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(10.0)
    sphere.SetThetaResolution(120)
    sphere.SetPhiResolution(120)
    sphere.Update()
    pts, tris = polydata_points(sphere.GetOutput()), polydata_triangles(sphere.GetOutput())
    upper = pts[tris].mean(axis=1)[:, 2] > 0
    expected = 2.0 / 3.0 * np.pi * 10.0 ** 3 / 1000.0
    for t in (tris[upper], tris[upper][:, ::-1]):
        hemi = meshtools.submesh(make_polydata(pts, t), np.ones(len(t), bool))
        assert capped_volume_ml(hemi) == pytest.approx(expected, rel=0.01)


def test_confidence_falls_with_floor_flat_valleys_and_disagreement():
    d = np.array([0.0, 0.5, 0.0, 0.0, np.nan])
    c = vertex_confidence(d, np.array([1.0, 1.0, 0.2, 1.0, 1.0]), np.array([0.0, 0.5, 0.0, 1.0, 0.0]))
    assert c[0] == pytest.approx(1.0) and c[1] < 0.5 and c[2] == pytest.approx(0.2) and c[3] < 0.2
    assert np.all((c >= 0) & (c <= 1))  # NaN gives 0, never NaN
    assert CONFIDENCE_ARRAY == "confidence"


@pytest.mark.parametrize("pool", sorted(phantom.BLOOD_POOLS))
def test_seed_in_another_blood_pool_is_refused(phantom_case, ct, model_path, pool):
    """The commonest user error: the seed in the left atrium, left ventricle, aorta or pulmonary artery.
    These pools are as bright as the LAA, so the input checks accept the seed; the network finds no surface
    there, or one that does not enclose it, and segment refuses with a plain message that points at the seed."""
    seed = phantom_case.meta["blood_pools_lps"][pool]
    assert seed is not None, f"the shared phantom's image holds no {pool}"
    with pytest.raises(SegmentationError, match="does not look like a seed in the left atrial appendage|"
                       "Check that the seed is inside the contrast-filled LAA"):
        segment(ct, seed_lps=seed, model=model_path, options=SegmentOptions(resolution_mm=1.0, device="cpu"))
