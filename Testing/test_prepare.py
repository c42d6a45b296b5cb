"""``nudf prepare``: a synthetic label map with known geometry → an open LAA mesh on the analytic surface.

The label map is TotalSegmentator-like (LAA 61, heart 51, an unrelated label 7) on an anisotropic (0.7 × 0.9 ×
1.6 mm), oblique, left-handed grid: an "atrium" ball of radius R and an LAA = a capsule of radius r along an
oblique axis, starting inside the ball. The LAA cavity surface is then known exactly: the cylinder wall from
the contact circle (where it leaves the ball, at t0 = sqrt(R² − r²) along the axis) to the cap, and the cap.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from NUDFCore.cli import main
from NUDFCore.data import fit_ostium, load_case
from NUDFCore.errors import ImageGeometryError, InputError, OutputExistsError
from NUDFCore.io import Volume, polydata_points, polydata_triangles, read_mesh, read_volume, write_volume
from NUDFCore.meshtools import boundary_loops, mesh_area, point_to_mesh_distance, sample_surface
from NUDFCore.prepare import check_same_space, closed_label_surface, prepare, prepare_case

LAA, HEART, OTHER = 61, 51, 7
SPACING = np.array([0.7, 0.9, 1.6])
CENTRE = np.array([10.0, -20.0, 30.0])
AXIS = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
R_ATRIUM, R_LAA, LENGTH = 14.0, 5.0, 30.0
T0 = float(np.sqrt(R_ATRIUM**2 - R_LAA**2))  # the contact circle's height along the axis
DIRECTION = Rotation.from_euler("xyz", (20, -35, 50), degrees=True).as_matrix() @ np.diag([1.0, -1.0, 1.0])


def synthetic_labels(atrium_gap_mm: float = 0.0, spacing: np.ndarray = SPACING) -> Volume:
    """The label map; ``atrium_gap_mm`` moves the heart ball away from the LAA (no contact when > a voxel)."""
    spacing = np.asarray(spacing, float)
    n = np.ceil(2 * (LENGTH + R_LAA + 8) / spacing).astype(int)
    origin = CENTRE - DIRECTION @ (spacing * (n - 1) / 2)
    vol = Volume(np.zeros(n[::-1], np.uint8), spacing, origin, DIRECTION)
    k, j, i = np.meshgrid(*[np.arange(m) for m in n[::-1]], indexing="ij")
    q = vol.index_to_lps(np.stack([i, j, k], -1).reshape(-1, 3)) - CENTRE
    t = q @ AXIS
    rho = np.linalg.norm(q - np.outer(t, AXIS), axis=1)
    in_ball = np.linalg.norm(q, axis=1) <= R_ATRIUM
    in_capsule = ((t >= 0) & (t <= LENGTH) & (rho <= R_LAA)) | (np.linalg.norm(q - LENGTH * AXIS, axis=1) <= R_LAA)
    lab = np.zeros(len(q), np.uint8)
    lab[np.linalg.norm(q + atrium_gap_mm * AXIS, axis=1) <= R_ATRIUM] = HEART
    lab[in_capsule & ~in_ball] = LAA
    lab[np.linalg.norm(q + 20.0 * AXIS, axis=1) <= 3.0] = OTHER
    vol.array = lab.reshape(n[::-1])
    return vol


def synthetic_ct(labels: Volume) -> Volume:
    """A CT in HU on the label grid: contrast in the LAA and the heart, soft tissue elsewhere, seeded noise."""
    hu = np.where(np.isin(labels.array, (LAA, HEART)), 350.0, 40.0)
    hu = hu + np.random.default_rng(0).normal(0.0, 20.0, hu.shape)
    return Volume(hu.astype(np.int16), labels.spacing, labels.origin_lps, labels.direction_lps)


def axial(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height along the LAA axis and distance from it."""
    q = np.asarray(points) - CENTRE
    t = q @ AXIS
    return t, np.linalg.norm(q - np.outer(t, AXIS), axis=1)


def distance_to_open_laa(points: np.ndarray) -> np.ndarray:
    """Exact distance to the analytic open LAA surface: cylinder wall for t0 ≤ t ≤ L, hemispherical cap."""
    t, rho = axial(points)
    wall = np.where(t < T0, np.hypot(t - T0, rho - R_LAA),
                    np.where(t > LENGTH, np.hypot(t - LENGTH, rho - R_LAA), np.abs(rho - R_LAA)))
    cap = np.abs(np.linalg.norm(np.asarray(points) - CENTRE - LENGTH * AXIS, axis=1) - R_LAA)
    return np.minimum(wall, np.where(t >= LENGTH, cap, np.inf))


@pytest.fixture(scope="module")
def labels() -> Volume:
    return synthetic_labels()


@pytest.fixture(scope="module")
def prepared(labels):
    return prepare_case(labels, LAA, atrium_label=HEART, case_id="synthetic")


def test_open_mesh_lies_on_the_analytic_laa_surface(prepared):
    mesh = prepared.mesh_lps
    samples, _, _ = sample_surface(mesh, 20_000, seed=0)
    d = distance_to_open_laa(samples)
    mean_vox = float(SPACING.mean())  # 1.07 mm
    assert d.mean() < 0.25 * mean_vox  # measured 0.14 mm (0.13 voxel)
    assert np.percentile(d, 95) < 0.5 * mean_vox  # measured 0.34 mm
    assert d.max() < SPACING.max()
    # ... and covers it: the analytic area is 2πr(L − t0) + 2πr², the mesh misses at most a thin strip at the rim
    analytic_area = 2 * np.pi * R_LAA * (LENGTH - T0) + 2 * np.pi * R_LAA**2
    assert mesh_area(mesh) == pytest.approx(analytic_area, rel=0.04)
    assert prepared.meta["laa"]["area_mm2"] == pytest.approx(mesh_area(mesh), rel=1e-6)


def test_thick_slices_give_a_slope_not_terraces():
    # 2.5 mm slices as in many chest CTs: the signed distance interpolates the wall between slices
    spacing = np.array([0.7, 0.7, 2.5])
    case = prepare_case(synthetic_labels(spacing=spacing), LAA, atrium_label=HEART)
    d = distance_to_open_laa(sample_surface(case.mesh_lps, 20_000, seed=0)[0])
    assert d.mean() < 0.25 * spacing.mean()  # measured 0.18 mm
    assert np.percentile(d, 95) < 0.5 * spacing.mean()  # measured 0.49 mm
    assert len(boundary_loops(case.mesh_lps)) == 1


def test_any_label_gets_a_closed_surface_made_the_same_way(labels):
    """The heart ball (R = 14 mm) comes back closed, on the sphere, wound outward; an absent label is refused."""
    from NUDFCore.meshtools import capped_signed_volume

    ball = closed_label_surface(labels, HEART)
    pts, tris = polydata_points(ball), polydata_triangles(ball)
    assert boundary_loops(ball) == []
    r = np.linalg.norm(pts - CENTRE, axis=1)
    assert abs(float(np.mean(r)) - R_ATRIUM) < 0.15 and float(np.max(np.abs(r - R_ATRIUM))) < 0.6
    volume = capped_signed_volume(pts, tris, [])
    assert volume == pytest.approx(4.0 / 3.0 * np.pi * R_ATRIUM**3, rel=0.03)  # > 0: normals point outward
    with pytest.raises(InputError, match="label 99 is not in the label map"):
        closed_label_surface(labels, 99)


def test_exactly_one_boundary_loop_on_the_contact_with_the_atrium(prepared):
    mesh = prepared.mesh_lps
    loops = boundary_loops(mesh)
    assert len(loops) == 1 and prepared.meta["laa"]["boundary_loops"] == 1
    assert prepared.meta["laa"]["filled_holes"] == 0
    rim = polydata_points(mesh)[loops[0]]
    t, rho = axial(rim)
    to_contact_circle = np.hypot(t - T0, rho - R_LAA)
    assert to_contact_circle.mean() < SPACING.mean()  # measured 0.77 mm: the rounded corner, inside a voxel
    assert to_contact_circle.max() < 1.5 * SPACING.mean()
    # the rim goes once around the axis (not a hole in the side wall)
    u = np.cross(AXIS, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    q = rim - CENTRE
    angles = np.sort(np.arctan2(q @ np.cross(AXIS, u), q @ u))
    assert np.diff(np.concatenate([angles, [angles[0] + 2 * np.pi]])).max() < 0.3


def test_ostium_and_seed(prepared):
    meta = prepared.meta
    normal = np.asarray(meta["ostium_normal_lps"])
    assert np.linalg.norm(normal) == pytest.approx(1.0)
    assert normal @ AXIS > 0.99  # from the atrium into the LAA
    centre = np.asarray(meta["ostium_center_lps"])
    assert np.linalg.norm(centre - (CENTRE + T0 * AXIS)) < SPACING.mean()
    assert meta["laa"]["ostium_diameter_mm"] == pytest.approx(2 * R_LAA, abs=2 * SPACING.mean())
    t, rho = axial(np.asarray([meta["seed_lps"]]))
    assert rho[0] < R_LAA - 2.5 and T0 + 2.5 < t[0] < LENGTH + R_LAA - 2.5  # deep inside the LAA
    assert meta["seed_ras"] == pytest.approx([-meta["seed_lps"][0], -meta["seed_lps"][1], meta["seed_lps"][2]])
    assert meta["spacing"] == pytest.approx(SPACING.tolist()) and meta["case_id"] == "synthetic"
    assert meta["laa"]["contact_voxels"] > 0 and not meta["laa"]["touches_image_border"]


def test_cut_at_a_given_plane(labels):
    p0 = CENTRE + (T0 + 4.0) * AXIS
    case = prepare_case(labels, LAA, ostium_plane_lps=[*p0, *(2.0 * AXIS)])
    pts = polydata_points(case.mesh_lps)
    loops = boundary_loops(case.mesh_lps)
    assert len(loops) == 1
    rim = pts[loops[0]]
    assert np.abs((rim - p0) @ AXIS).max() < 1e-6  # exactly on the plane
    assert np.abs(axial(rim)[1] - R_LAA).mean() < 0.25 * SPACING.mean()
    assert ((pts - p0) @ AXIS >= -1e-6).all()
    assert np.linalg.norm(np.asarray(case.meta["ostium_center_lps"]) - p0) < 0.3
    assert np.asarray(case.meta["ostium_normal_lps"]) @ AXIS > 0.999
    assert case.meta["source"]["cut"] == "plane"
    with pytest.raises(InputError, match="flip the sign"):
        prepare_case(labels, LAA, ostium_plane_lps=[*p0, *(-AXIS)])


def _coarser_same_space(vol: Volume) -> Volume:
    """The CT resampled onto a twice coarser grid covering the same box (different grid, same space)."""
    spacing = 2 * vol.spacing
    n = np.ceil(np.array(vol.size_ijk) / 2).astype(int)
    corner = vol.index_to_lps(np.array([-0.5, -0.5, -0.5]))
    origin = corner + vol.direction_lps @ (spacing / 2)
    ref = Volume(np.zeros(n[::-1], np.int16), spacing, origin, vol.direction_lps)
    img = sitk.Resample(vol.to_sitk(), ref.to_sitk(), sitk.Transform(), sitk.sitkLinear, -1000.0)
    return Volume.from_sitk(img)


def test_prepare_writes_a_case_that_the_readers_load(tmp_path, labels, prepared):
    write_volume(labels, tmp_path / "labels.nii.gz")
    ct = synthetic_ct(labels)
    write_volume(ct, tmp_path / "ct.nrrd")  # another format: converted to ct.nii.gz
    out = prepare(tmp_path / "labels.nii.gz", LAA, tmp_path / "c1",
                  atrium_label=HEART, ct_path=tmp_path / "ct.nrrd")
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "laa.vtp", "meta.json"]
    case = load_case(out)  # the dataset reader of training and the benchmarks
    back_ct = case.load_volume()
    assert np.array_equal(back_ct.array, ct.array)
    assert np.allclose(back_ct.direction_lps, DIRECTION) and np.allclose(back_ct.origin_lps, ct.origin_lps)
    mesh = case.load_mesh()
    # the label file stores its geometry in float32 (NIfTI): the same mesh to 1e-4 mm
    assert np.allclose(polydata_points(mesh), polydata_points(prepared.mesh_lps), atol=1e-4)
    assert np.array_equal(polydata_triangles(mesh), polydata_triangles(prepared.mesh_lps))
    assert len(boundary_loops(mesh)) == 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["case_id"] == "c1" and meta["source"]["ct_written"] == "converted"
    assert np.allclose(case.seed_lps, prepared.meta["seed_lps"])
    assert ct.contains_lps(case.seed_lps[None])[0] and back_ct.array[tuple(
        np.round(back_ct.lps_to_index(case.seed_lps)[::-1]).astype(int))] > 200  # the seed is in contrast
    centre, normal = fit_ostium(polydata_points(mesh), polydata_triangles(mesh))  # the data module's own fit
    assert np.allclose(centre, meta["ostium_center_lps"], atol=1e-6)
    assert normal @ np.asarray(meta["ostium_normal_lps"]) > 0.999
    # a NIfTI CT on a different grid (same space) is copied byte for byte; spacing is the CT's
    coarse = _coarser_same_space(ct)
    write_volume(coarse, tmp_path / "coarse.nii.gz")
    out2 = prepare(tmp_path / "labels.nii.gz", LAA, tmp_path / "c2", atrium_label=HEART,
                   ct_path=tmp_path / "coarse.nii.gz")
    assert (out2 / "ct.nii.gz").read_bytes() == (tmp_path / "coarse.nii.gz").read_bytes()
    assert json.loads((out2 / "meta.json").read_text())["spacing"] == pytest.approx((2 * SPACING).tolist())
    # --force replaces a case folder; without it, nothing changes
    before = (out / "meta.json").read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        prepare(tmp_path / "labels.nii.gz", LAA, out, ostium_plane_lps=[*(CENTRE + 20 * AXIS), *AXIS])
    assert (out / "meta.json").read_bytes() == before
    prepare(tmp_path / "labels.nii.gz", LAA, out, ostium_plane_lps=[*(CENTRE + 20 * AXIS), *AXIS], force=True)
    assert sorted(p.name for p in out.iterdir()) == ["laa.vtp", "meta.json"]
    assert json.loads((out / "meta.json").read_text())["source"]["cut"] == "plane"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # missing parent folders are created
    prepare(tmp_path / "labels.nii.gz", LAA, tmp_path / "new" / "deeper" / "c3", atrium_label=HEART)
    assert len(boundary_loops(read_mesh(tmp_path / "new" / "deeper" / "c3" / "laa.vtp"))) == 1


def _write_image(array: np.ndarray, path, spacing=None) -> None:
    img = sitk.GetImageFromArray(array, isVector=False)
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def test_bad_inputs_raise_one_clear_error_and_write_nothing(tmp_path, labels):
    write_volume(labels, tmp_path / "labels.nii.gz")
    write_volume(synthetic_labels(atrium_gap_mm=3.0), tmp_path / "apart.nii.gz")
    ct = synthetic_ct(labels)
    shifted = Volume(ct.array, ct.spacing, ct.origin_lps + [0.0, 0.0, 20.0], ct.direction_lps)
    write_volume(shifted, tmp_path / "shifted_ct.nii.gz")
    turned = Volume(ct.array, ct.spacing, ct.origin_lps, np.eye(3))
    write_volume(turned, tmp_path / "turned_ct.nii.gz")
    write_volume(ct, tmp_path / "ct.nii.gz")
    _write_image(np.zeros((40, 40), np.uint8), tmp_path / "flat.nii.gz")
    four = sitk.JoinSeries([labels.to_sitk(), labels.to_sitk()])
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    lab = tmp_path / "labels.nii.gz"
    cases = [
        (dict(labels_path=lab, laa_label=99, atrium_label=HEART), InputError, "LAA label 99 is not in the label map"),
        (dict(labels_path=lab, laa_label=LAA, atrium_label=52), InputError, "atrium label 52 is not in"),
        (dict(labels_path=tmp_path / "apart.nii.gz", laa_label=LAA, atrium_label=HEART), InputError,
         "does not touch the atrium label 51"),
        (dict(labels_path=tmp_path / "flat.nii.gz", laa_label=LAA, atrium_label=HEART), ImageGeometryError, "2D"),
        (dict(labels_path=tmp_path / "four.nii.gz", laa_label=LAA, atrium_label=HEART), ImageGeometryError, "4D"),
        (dict(labels_path=tmp_path / "ct.nii.gz", laa_label=LAA, atrium_label=HEART), InputError, "negative values"),
        (dict(labels_path=lab, laa_label=LAA, atrium_label=HEART, ct_path=tmp_path / "shifted_ct.nii.gz"),
         ImageGeometryError, "fields of view differ by up to 20"),
        (dict(labels_path=lab, laa_label=LAA, atrium_label=HEART, ct_path=tmp_path / "turned_ct.nii.gz"),
         ImageGeometryError, "axis directions differ"),
        (dict(labels_path=lab, laa_label=LAA, atrium_label=HEART, ostium_plane_lps=[0, 0, 0, 0, 0, 1]), InputError,
         "exactly one of"),
        (dict(labels_path=lab, laa_label=LAA), InputError, "exactly one of"),
        (dict(labels_path=lab, laa_label=LAA, ostium_plane_lps=[0, 0, 0, 0, 0, 0]), InputError, "must not be zero"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as info:
            prepare(out=tmp_path / "case", **kwargs)
        assert "\n" not in str(info.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, kwargs  # nothing written, no temp folder
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        prepare(lab, LAA, tmp_path / "a_file", atrium_label=HEART)
    with pytest.raises(InputError, match="is not a folder"):
        prepare(lab, LAA, tmp_path / "a_file" / "case", atrium_label=HEART)
    # --force never deletes the inputs it reads
    (tmp_path / "holder").mkdir()
    write_volume(labels, tmp_path / "holder" / "labels.nii.gz")
    with pytest.raises(InputError, match="holds the input"):
        prepare(tmp_path / "holder" / "labels.nii.gz", LAA, tmp_path / "holder", atrium_label=HEART, force=True)
    assert (tmp_path / "holder" / "labels.nii.gz").exists()


def test_check_same_space_accepts_another_grid_of_the_same_box(labels):
    check_same_space(labels, _coarser_same_space(synthetic_ct(labels)))  # no error
    with pytest.raises(ImageGeometryError):
        check_same_space(labels, Volume(labels.array, labels.spacing * 1.1, labels.origin_lps, labels.direction_lps))


def test_cli_prepare(tmp_path, labels, capsys):
    write_volume(labels, tmp_path / "labels.nrrd")
    write_volume(synthetic_ct(labels), tmp_path / "ct.nii.gz")
    rc = main(["prepare", "--labels", str(tmp_path / "labels.nrrd"), "--laa-label", str(LAA), "--atrium-label",
               str(HEART), "--ct", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "case")])
    assert rc == 0
    assert "1 boundary loop" in capsys.readouterr().out
    assert len(boundary_loops(read_mesh(tmp_path / "case" / "laa.vtp"))) == 1
    assert read_volume(tmp_path / "case" / "ct.nii.gz").array.shape == labels.array.shape
    # user mistakes: exit code 2, one line on stderr, nothing written
    for out, argv, message in [
        ("new", ["--laa-label", "5", "--atrium-label", str(HEART)], "LAA label 5 is not in the label map"),
        ("case", ["--laa-label", str(LAA), "--atrium-label", str(HEART)], "already exists"),
    ]:
        rc = main(["prepare", "--labels", str(tmp_path / "labels.nrrd"), "--out", str(tmp_path / out), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("nudf prepare: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    rc = main(["prepare", "--labels", str(tmp_path / "labels.nrrd"), "--laa-label", str(LAA),
               f"--ostium-plane-lps={','.join(str(v) for v in [*(CENTRE + 20 * AXIS), *AXIS])}",
               "--out", str(tmp_path / "plane_case")])
    assert rc == 0 and json.loads((tmp_path / "plane_case" / "meta.json").read_text())["source"]["cut"] == "plane"
    assert not os.path.exists(tmp_path / "plane_case" / "ct.nii.gz")
