"""Surface metrics on meshes with known answers, CSV/JSON round trips and the ``nudf evaluate`` CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import vtk

from NUDFCore.cli import main
from NUDFCore.errors import InputError, OutputExistsError
from NUDFCore.meshtools import clip_by_plane
from NUDFCore.io import make_polydata, polydata_points, polydata_triangles, write_mesh
from NUDFCore.metrics import (
    SurfaceMetrics,
    boundary_distance,
    metric_columns,
    read_csv,
    surface_metrics,
    write_csv,
)

N = 20_000  # samples per mesh: enough for 1e-2 relative precision, fast on 2 cores


def sphere(radius: float, res: int = 160, center=(0.0, 0.0, 0.0)) -> vtk.vtkPolyData:
    s = vtk.vtkSphereSource()
    s.SetRadius(radius)
    s.SetCenter(*center)
    s.SetThetaResolution(res)
    s.SetPhiResolution(res)
    s.Update()
    return make_polydata(polydata_points(s.GetOutput()), polydata_triangles(s.GetOutput()))


def square(size: float = 20.0, n: int = 40, z: float = 0.0, origin=(0.0, 0.0)) -> vtk.vtkPolyData:
    """An open, flat, square sheet in the plane z (n x n cells, 2 triangles each)."""
    t = np.linspace(0.0, size, n + 1)
    x, y = np.meshgrid(t + origin[0], t + origin[1], indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return make_polydata(pts, tris)


def disk(radius: float = 10.0, rings: int = 20, sectors: int = 128, shift=(0.0, 0.0, 0.0)) -> vtk.vtkPolyData:
    """An open flat disk (one boundary loop): a centre fan plus quad rings."""
    pts = [np.zeros(3)]
    for r in range(1, rings + 1):
        ang = 2 * np.pi * np.arange(sectors) / sectors
        rr = radius * r / rings
        pts.extend(np.stack([rr * np.cos(ang), rr * np.sin(ang), np.zeros(sectors)], 1))
    pts = np.asarray(pts) + np.asarray(shift)
    tris = []
    for s in range(sectors):
        tris.append([0, 1 + s, 1 + (s + 1) % sectors])
    for r in range(1, rings):
        o0, o1 = 1 + (r - 1) * sectors, 1 + r * sectors
        for s in range(sectors):
            s1 = (s + 1) % sectors
            tris.append([o0 + s, o1 + s, o1 + s1])
            tris.append([o0 + s, o1 + s1, o0 + s1])
    return make_polydata(pts, np.asarray(tris))


def test_sphere_vs_scaled_sphere():
    r, delta = 10.0, 0.5
    m = surface_metrics(sphere(r + delta), sphere(r), n_samples=N, seed=3)
    # Tessellation error of a 160x160 sphere is ~ r(1-cos(pi/160)) < 0.002 mm.
    assert m.msd_mm == pytest.approx(delta, abs=0.01)
    assert m.rms_mm == pytest.approx(delta, abs=0.01)
    assert m.hd95_mm == pytest.approx(delta, abs=0.01)
    assert m.hausdorff_mm == pytest.approx(delta, abs=0.01)
    assert m.accuracy_mean_mm == pytest.approx(delta, abs=0.01)
    assert m.completeness_mean_mm == pytest.approx(delta, abs=0.01)
    assert m.chamfer_mm == pytest.approx(2 * delta, abs=0.02)  # documented: sum of directed means
    assert m.chamfer_l2_mm2 == pytest.approx(2 * delta**2, abs=0.02)
    assert m.normal_consistency > 0.999
    assert m.pred_area_mm2 == pytest.approx(4 * np.pi * (r + delta) ** 2, rel=1e-3)
    assert m.gt_area_mm2 == pytest.approx(4 * np.pi * r**2, rel=1e-3)
    # closed surfaces: no rim
    assert m.pred_boundary_loops == 0 and m.gt_boundary_loops == 0
    assert math.isnan(m.boundary_mean_mm) and math.isnan(m.boundary_max_mm)
    assert m.false_area_fraction == 0.0 and m.completeness_within_2mm == 1.0


@pytest.mark.parametrize("delta", [-0.8, 0.5])
def test_signed_offset_tells_inside_from_outside_of_an_open_cup(delta):
    # GT: an open cup (a sphere cut below z = -3, one boundary loop); prediction: the same cup with the
    # radius changed by delta. Inside the capped cup is negative, so the offset is delta itself, while the
    # mean surface distance is |delta| either way.
    r = 10.0

    def cup(radius):
        return clip_by_plane(sphere(radius), np.array([0.0, 0.0, -3.0]), np.array([0.0, 0.0, 1.0]))

    m = surface_metrics(cup(r + delta), cup(r), n_samples=N, seed=2)
    assert m.gt_boundary_loops == 1
    assert m.signed_offset_mm == pytest.approx(delta, abs=0.02)
    assert m.msd_mm == pytest.approx(abs(delta), abs=0.05)
    far = surface_metrics(sphere(r, center=(40.0, 0.0, 0.0)), cup(r), n_samples=2000, seed=2)
    assert math.isnan(far.signed_offset_mm)  # nothing predicted within 3 mm of the GT


def test_identical_meshes_give_zero_and_are_seed_reproducible():
    s = sphere(8.0, res=60)
    m = surface_metrics(s, s, n_samples=N, seed=1)
    assert m.msd_mm < 1e-6 and m.hausdorff_mm < 1e-6 and m.hd95_mm < 1e-6
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-9)
    # same surface, different tessellation: the error is the depth of the coarse faces below the sphere,
    # at most r(1 - cos(a)) with a the angular circumradius of a face (half the diagonal of a theta x phi cell)
    m2 = surface_metrics(sphere(8.0, res=30), sphere(8.0, res=120), n_samples=N, seed=1)
    depth = 8.0 * (1 - np.cos(np.hypot(np.pi / 30, np.pi / (2 * 29))))
    assert 0.1 * depth < m2.msd_mm < 0.5 * depth
    assert 0.8 * depth < m2.hausdorff_mm <= depth
    again = surface_metrics(sphere(8.0, res=30), sphere(8.0, res=120), n_samples=N, seed=1)
    assert again.to_json() == m2.to_json()  # NaN-safe equality


def test_plane_vs_shifted_plane():
    shift = 1.25
    m = surface_metrics(square(z=shift, n=10), square(z=0.0, n=40), n_samples=N, seed=0)
    assert m.msd_mm == pytest.approx(shift, abs=1e-9)
    assert m.hd95_mm == pytest.approx(shift, abs=1e-9)
    assert m.hausdorff_mm == pytest.approx(shift, abs=1e-9)
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-9)
    assert m.boundary_mean_mm == pytest.approx(shift, abs=1e-9)
    assert m.boundary_max_mm == pytest.approx(shift, abs=1e-9)
    assert m.pred_boundary_loops == 1 and m.gt_boundary_loops == 1


def test_precision_and_completeness_plane_vs_half_plane():
    # GT: the 10 x 10 square z=0. Prediction: its half x <= 5. Every predicted point lies on the GT
    # (precision 100 %); a GT point at x is max(x - 5, 0) from it, so GT within d mm = (5 + d) / 10.
    gt = square(size=10.0, n=40)
    half = make_polydata(polydata_points(square(size=10.0, n=40)) * [0.5, 1.0, 1.0], polydata_triangles(gt))
    m = surface_metrics(half, gt, n_samples=40_000, seed=2)
    assert m.precision_2mm == 100.0 and m.precision_3mm == 100.0
    assert m.completeness_2mm == pytest.approx(70.0, abs=1.0)
    assert m.completeness_3mm == pytest.approx(80.0, abs=1.0)
    assert m.completeness_2mm == pytest.approx(100 * m.completeness_within_2mm)
    # lifted by 2.5 mm: no predicted point within 2 mm, all within 3 mm; a GT point at x <= 5 + sqrt(3² - 2.5²)
    # is within 3 mm
    lifted = make_polydata(polydata_points(half) + [0.0, 0.0, 2.5], polydata_triangles(half))
    m = surface_metrics(lifted, gt, n_samples=40_000, seed=2)
    assert m.precision_2mm == 0.0 and m.precision_3mm == 100.0
    assert m.completeness_2mm == 0.0
    assert m.completeness_3mm == pytest.approx(10 * (5 + math.sqrt(9 - 6.25)), abs=1.0)
    # swapping the roles swaps the figures
    m = surface_metrics(gt, half, n_samples=40_000, seed=2)
    assert m.completeness_3mm == 100.0 and m.precision_2mm == pytest.approx(70.0, abs=1.0)


def test_records_without_the_coverage_fields_read_back_with_nan():
    m = surface_metrics(square(z=0.5, n=8), square(n=8), n_samples=1000)
    old = {k: v for k, v in m.to_dict().items() if not k.startswith(("precision_", "completeness_2", "completeness_3"))}
    back = SurfaceMetrics.from_dict(old)
    assert math.isnan(back.precision_3mm) and back.msd_mm == m.msd_mm
    with pytest.raises(InputError, match="msd_mm"):
        SurfaceMetrics.from_dict({k: v for k, v in old.items() if k != "msd_mm"})


def test_translated_disk_boundary_distance():
    t = 0.8
    m = surface_metrics(disk(shift=(0, 0, t)), disk(), n_samples=N, seed=0)
    assert m.boundary_mean_mm == pytest.approx(t, abs=1e-9)
    assert m.boundary_max_mm == pytest.approx(t, abs=1e-9)
    # in-plane translation: the rim moves by t at most; the mean rim distance is smaller (circles cross)
    b_mean, b_max, n_p, n_g = boundary_distance(disk(shift=(t, 0, 0)), disk())
    assert b_max == pytest.approx(t, abs=1e-3)
    assert 0.4 * t < b_mean < 0.8 * t
    assert (n_p, n_g) == (1, 1)


def test_false_area_on_known_extra_sheet():
    # GT: 10x10 square at z=0. Prediction: the same square plus a vertical wall of height 10 along x=10.
    # A wall point at height z is z mm from the GT, so the part above 3 mm (7x10 = 70 mm2 of 200) is false.
    gt = square(size=10.0, n=20)
    wall_pts = polydata_points(square(size=10.0, n=20))
    wall_pts = np.stack([np.full(len(wall_pts), 10.0), wall_pts[:, 1], wall_pts[:, 0]], 1)
    wall = make_polydata(wall_pts, polydata_triangles(gt))
    app = vtk.vtkAppendPolyData()
    app.AddInputData(gt)
    app.AddInputData(wall)
    app.Update()
    m = surface_metrics(app.GetOutput(), gt, n_samples=40_000, seed=5)
    assert m.pred_area_mm2 == pytest.approx(200.0)
    assert m.false_area_fraction == pytest.approx(0.35, abs=0.01)
    assert m.false_area_mm2 == pytest.approx(70.0, abs=2.0)
    assert m.hausdorff_mm == pytest.approx(10.0, abs=1e-9)  # the wall's top edge (vertices count for the max)
    # the GT is entirely covered by the prediction
    assert m.completeness_mean_mm < 1e-9 and m.completeness_within_2mm == 1.0
    # half of the prediction is perpendicular to the GT
    assert m.normal_consistency == pytest.approx(0.5 * (0.5 + 1.0), abs=0.02)


def test_voxel_units():
    m = surface_metrics(square(z=1.0, n=10), square(n=10), n_samples=2000, spacing_mm=(0.5, 0.5, 0.5))
    assert m.spacing_mm == 0.5
    assert m.msd_vox == pytest.approx(2.0) and m.hd95_vox == pytest.approx(2.0)
    assert m.boundary_mean_vox == pytest.approx(2.0)
    assert surface_metrics(square(z=1.0, n=10), square(n=10), n_samples=2000).msd_vox is None


def test_empty_or_degenerate_meshes_raise_typed_errors():
    good = square(n=4)
    with pytest.raises(InputError, match="predicted mesh is empty"):
        surface_metrics(vtk.vtkPolyData(), good, n_samples=1000)
    with pytest.raises(InputError, match="ground-truth mesh has zero area"):
        surface_metrics(good, make_polydata(np.zeros((3, 3)), np.array([[0, 1, 2]])), n_samples=1000)
    lines = vtk.vtkPolyData()
    lines.SetPoints(good.GetPoints())
    with pytest.raises(InputError, match="no triangles"):
        surface_metrics(good, lines, n_samples=1000)


def test_json_and_csv_round_trip(tmp_path):
    a = surface_metrics(square(z=0.5, n=8), square(n=8), n_samples=1000, case="plane", spacing_mm=0.7)
    b = surface_metrics(sphere(5.2, res=40), sphere(5.0, res=40), n_samples=1000, case="sphere")
    assert math.isnan(b.boundary_mean_mm) and b.msd_vox is None
    # JSON: NaN -> null, read back equal
    text = a.to_json(tmp_path / "a.json")
    assert json.loads(text)["msd_mm"] == pytest.approx(0.5)
    assert SurfaceMetrics.from_json(tmp_path / "a.json") == a
    jb = json.loads(b.to_json(tmp_path / "b.json"))
    assert jb["boundary_mean_mm"] is None and jb["msd_vox"] is None
    rb = SurfaceMetrics.from_json(tmp_path / "b.json")
    assert math.isnan(rb.boundary_mean_mm) and rb.msd_mm == b.msd_mm
    with pytest.raises(OutputExistsError):
        a.to_json(tmp_path / "a.json")
    # CSV: stable header, one row per case, floats exact (repr round trip)
    p = write_csv([a, b], tmp_path / "m.csv")
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == metric_columns() and rows[0][:3] == ["case", "n_samples", "seed"]
    assert [r[0] for r in rows[1:]] == ["plane", "sphere"]
    back = read_csv(p)
    assert back[0] == a
    assert back[1].msd_mm == b.msd_mm and math.isnan(back[1].boundary_max_mm) and back[1].spacing_mm is None
    with pytest.raises(OutputExistsError):
        write_csv([a], p)
    write_csv([b], p, append=True)
    assert [r.case for r in read_csv(p)] == ["plane", "sphere", "sphere"]


def test_cli_evaluate_on_written_files(tmp_path, capsys):
    pred, gt = disk(shift=(3.0, -2.0, 0.6)), disk(shift=(3.0, -2.0, 0.0))
    ref = surface_metrics(pred, gt, n_samples=5000, seed=7)
    write_mesh(pred, tmp_path / "pred.stl")  # LPS, tagged
    write_mesh(gt, tmp_path / "gt_ras.vtp", frame="ras")  # RAS-tagged: read back to LPS by the tag
    rc = main(["evaluate", str(tmp_path / "pred.stl"), str(tmp_path / "gt_ras.vtp"), "--samples", "5000",
               "--seed", "7", "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv"),
               "--spacing", "0.5", "--case", "disk"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mean surface distance" in out and "0.6000 mm" in out
    got = SurfaceMetrics.from_json(tmp_path / "m.json")
    assert got.case == "disk" and got.msd_vox == pytest.approx(1.2, abs=1e-4)
    for name in ("msd_mm", "hd95_mm", "hausdorff_mm", "boundary_mean_mm", "normal_consistency"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), abs=1e-4), name  # float32 STL
    assert read_csv(tmp_path / "m.csv")[0].msd_mm == pytest.approx(got.msd_mm)
    # precision / completeness (percent) reach the table, the JSON and the CSV: 0.6 mm apart, all within 2 mm
    assert "precision: pred area within 2 / 3 mm of GT" in out and "100.00 / 100.00 %" in out
    assert got.precision_2mm == 100.0 and got.completeness_3mm == 100.0
    assert json.loads((tmp_path / "m.json").read_text())["completeness_2mm"] == 100.0
    assert read_csv(tmp_path / "m.csv")[0].precision_3mm == 100.0
    # forcing the wrong frame on the RAS file mirrors x and y: the surfaces no longer match
    rc = main(["evaluate", str(tmp_path / "pred.stl"), str(tmp_path / "gt_ras.vtp"), "--frame-gt", "lps",
               "--samples", "2000", "--json", str(tmp_path / "wrong.json")])
    wrong = SurfaceMetrics.from_json(tmp_path / "wrong.json")  # centre (3, -2) mirrored to (-3, 2)
    assert rc == 0 and wrong.hausdorff_mm == pytest.approx(np.hypot(2 * np.hypot(3.0, 2.0), 0.6), abs=0.02)
    # outputs are not overwritten without --force; bad input gives exit code 2 and one line
    rc = main(["evaluate", str(tmp_path / "pred.stl"), str(tmp_path / "gt_ras.vtp"), "--samples", "2000",
               "--json", str(tmp_path / "m.json")])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = main(["evaluate", str(tmp_path / "pred.stl"), str(tmp_path / "gt_ras.vtp"), "--samples", "2000",
               "--json", str(tmp_path / "m.json"), "--force"])
    assert rc == 0
    rc = main(["evaluate", str(tmp_path / "missing.stl"), str(tmp_path / "gt_ras.vtp")])
    assert rc == 2 and "No such mesh file" in capsys.readouterr().err
