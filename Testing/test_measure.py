"""LAA occlusion planning measurements (NUDFCore.measure, ``nudf measure``, ``segment --measure``,
``evaluate --measure``).

Known answers on analytic open surfaces (laa_shapes.py), each moved by a random rigid motion and built at two
mesh resolutions; then the CLI on a segmentation of the shared phantom, in LPS and RAS files.
"""
from __future__ import annotations

import csv
import functools
import json
import math

import numpy as np
import pytest
import vtk

from laa_shapes import (
    cone_frustum, elliptic_tube, place, ramanujan_perimeter, random_motion, saddle_tube, torus_arc_end, torus_segment,
)
from NUDFCore import frames
from NUDFCore.cli import main as cli_main
from NUDFCore.errors import InputError
from NUDFCore.io import make_polydata, polydata_points, polydata_triangles, read_mesh, write_mesh
from NUDFCore.measure import CONTOUR_FIELDS, compare_measurements, measure_laa

RESOLUTIONS = (32, 64)  # vertices around the tube: two tessellations of the same shape


def _close(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * abs(expected)


def _check(name: str, value: float, expected: float, rel: float) -> None:
    assert _close(value, expected, rel), f"{name}: {value:.4f} vs {expected:.4f} (> {100 * rel:g} %)"


# ---------------------------------------------------------------------------------------- analytic
A, B, LENGTH, CAP = 12.0, 8.0, 20.0, 6.0  # elliptic tube: semi-axes, straight part, tip height (mm)


@functools.lru_cache(maxsize=None)
def _tube(n_around: int):
    rot, shift = random_motion(100 + n_around)
    mesh = place(elliptic_tube(A, B, LENGTH, CAP, n_around), rot, shift)
    return measure_laa(mesh), rot, shift, mesh


@pytest.fixture(scope="module", params=RESOLUTIONS)
def tube(request):
    """The elliptic tube at both resolutions, measured (for the known-answer test)."""
    return _tube(request.param)


@pytest.fixture(scope="module")
def tube32():
    """The coarser tube only (re-cuts, records and the CLI need no second resolution)."""
    return _tube(RESOLUTIONS[0])


def test_elliptic_tube_ostium_depth_and_volume(tube):
    m, rot, shift, _ = tube
    o = m.ostium
    _check("max diameter", o.max_diameter_mm, 2 * A, 0.01)
    _check("min diameter", o.min_diameter_mm, 2 * B, 0.01)
    _check("area", o.area_mm2, math.pi * A * B, 0.01)
    _check("perimeter", o.perimeter_mm, ramanujan_perimeter(A, B), 0.01)
    _check("perimeter-derived diameter", o.perimeter_derived_diameter_mm, ramanujan_perimeter(A, B) / math.pi, 0.01)
    _check("area-derived diameter", o.area_derived_diameter_mm, 2 * math.sqrt(A * B), 0.01)
    _check("ovality", o.ovality, B / A, 0.015)
    _check("depth", m.depth_mm, LENGTH + CAP, 0.02)
    _check("volume", m.volume_ml * 1000, math.pi * A * B * (LENGTH + 2 * CAP / 3), 0.02)
    # the ostium sits where the motion put the rim's centre, its normal points into the tube
    assert np.linalg.norm(o.center_lps - shift) < 0.05
    assert o.normal_lps @ (rot @ [0.0, 0.0, 1.0]) > 0.9999
    assert o.planarity_rms_mm < 1e-6 and o.planarity_max_mm < 1e-6
    _check("spanning area of a planar loop", o.spanning_area_mm2, o.area_mm2, 1e-6)
    # straight tube: the centreline runs along the axis to the apex
    _check("centreline length", m.centerline_length_mm, LENGTH + CAP, 0.02)
    assert m.bend_angle_deg < 2.0
    assert np.linalg.norm(m.apex_lps - (rot @ [0.0, 0.0, LENGTH + CAP] + shift)) < 0.5


@pytest.mark.parametrize("n_around", RESOLUTIONS)
def test_saddle_loop_planarity_is_its_amplitude(n_around):
    amplitude, radius = 2.0, 10.0
    rot, shift = random_motion(200 + n_around)
    m = measure_laa(place(saddle_tube(radius, amplitude, 25.0, n_around), rot, shift))
    o = m.ostium
    _check("planarity max", o.planarity_max_mm, amplitude, 0.01)  # z = A cos 2θ: farthest from z = 0 by A
    _check("planarity RMS", o.planarity_rms_mm, amplitude / math.sqrt(2), 0.01)
    assert o.normal_lps @ (rot @ [0.0, 0.0, 1.0]) > 0.9999
    _check("projected area", o.area_mm2, math.pi * radius**2, 0.01)
    # the minimal surface over a saddle is larger than its shadow, but not by much for a gentle saddle
    assert o.area_mm2 < o.spanning_area_mm2 < 1.08 * o.area_mm2
    theta = np.linspace(0.0, 2 * math.pi, 100_001)
    speed = np.sqrt(radius**2 + (2 * amplitude * np.sin(2 * theta)) ** 2)  # |r'(θ)| of (R cos θ, R sin θ, A cos 2θ)
    _check("perimeter (3D)", o.perimeter_mm, float(np.trapezoid(speed, theta)), 0.01)


@pytest.mark.parametrize("n_around", RESOLUTIONS)
def test_cone_frustum_landing_zones_follow_the_linear_radius(n_around):
    r0, r1, length = 12.0, 6.0, 30.0
    rot, shift = random_motion(300 + n_around)
    m = measure_laa(place(cone_frustum(r0, r1, length, n_around), rot, shift), landing_depths_mm=(10, 12, 20))

    def diameter(d: float) -> float:
        return 2 * (r0 + (r1 - r0) * d / length)

    assert [z.depth_mm for z in m.landing_zones] == [10.0, 12.0, 20.0]
    for z in m.landing_zones:
        for key in ("max_diameter_mm", "min_diameter_mm", "area_derived_diameter_mm", "perimeter_derived_diameter_mm"):
            _check(f"landing zone {z.depth_mm} mm {key}", getattr(z, key), diameter(z.depth_mm), 0.02)
        assert abs(z.normal_lps @ (rot @ [0.0, 0.0, 1.0])) > 0.999  # perpendicular to the axis
    assert len(m.profile) >= 25
    for s in m.profile[:-3]:  # every mm down the cone (the last few meet the flat end)
        _check(f"profile {s.depth_mm} mm", s.area_derived_diameter_mm, diameter(s.depth_mm), 0.02)
    _check("centreline length", m.centerline_length_mm, length, 0.02)
    assert m.bend_angle_deg < 2.0


@pytest.mark.parametrize("n_around", RESOLUTIONS)
def test_torus_segment_centerline_length_and_bend_angle(n_around):
    bend, radius, angle = 25.0, 7.0, math.radians(90.0)
    rot, shift = random_motion(400 + n_around)
    m = measure_laa(place(torus_segment(bend, radius, angle, n_around), rot, shift))
    # the medial axis is the arc (R·φ) and then the tip hemisphere's radius to the apex
    _check("centreline length", m.centerline_length_mm, bend * angle + radius, 0.03)
    line = m.centerline_lps
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    at_arc_end = np.array([np.interp(bend * angle, s, line[:, k]) for k in range(3)])
    assert np.linalg.norm(at_arc_end - (rot @ torus_arc_end(bend, angle) + shift)) < 0.03 * bend * angle
    _check("bend angle", m.bend_angle_deg, 90.0, 0.03)
    _check("volume (Pappus + hemisphere)", m.volume_ml * 1000,
           math.pi * radius**2 * bend * angle + 2 / 3 * math.pi * radius**3, 0.02)
    for z in m.landing_zones:  # a circular tube: every perpendicular section is a circle of radius r
        _check(f"landing zone {z.depth_mm} mm", z.area_derived_diameter_mm, 2 * radius, 0.02)


# ----------------------------------------------------------------------------------- moving the ostium
def test_ostium_plane_recuts_the_surface_distally(tube32):
    base, rot, shift, mesh = tube32
    axis = rot @ [0.0, 0.0, 1.0]
    for normal in (axis, -axis):  # either orientation: the side away from the current ostium is kept
        m = measure_laa(mesh, ostium_plane_lps=(shift + 5.0 * axis, normal))
        assert m.ostium_source == "plane" and not m.warnings
        assert np.linalg.norm(m.ostium.center_lps - (shift + 5.0 * axis)) < 0.05
        assert m.ostium.normal_lps @ axis > 0.9999
        _check("depth", m.depth_mm, base.depth_mm - 5.0, 0.02)
        _check("volume", m.volume_ml, base.volume_ml - math.pi * A * B * 5.0 / 1000, 0.02)
        _check("max diameter", m.ostium.max_diameter_mm, 2 * A, 0.01)


def test_ostium_plane_outside_the_surface_is_refused_or_flagged(tube32):
    _, rot, shift, mesh = tube32
    axis = rot @ [0.0, 0.0, 1.0]
    with pytest.raises(InputError, match="outside the segmented surface"):
        measure_laa(mesh, ostium_plane_lps=(shift - 3.0 * axis, axis))
    with pytest.raises(InputError, match="beyond the LAA"):
        measure_laa(mesh, ostium_plane_lps=(shift + 40.0 * axis, axis))
    tilted = rot @ np.array([math.sin(0.5), 0.0, math.cos(0.5)])  # crosses the rim: part of it stays the old cut
    m = measure_laa(mesh, ostium_plane_lps=(shift + 2.0 * axis, tilted))
    assert any("partly outside the segmented surface" in w for w in m.warnings)


# ------------------------------------------------------------------------------------------ records
def test_json_keys_are_the_documented_ones(tmp_path, tube32):
    m = tube32[0]
    m.to_json(tmp_path / "m.json")
    d = json.loads((tmp_path / "m.json").read_text())
    contour = {k for k, _, _ in CONTOUR_FIELDS}
    assert {"center_lps", "normal_lps", "perimeter_mm", "area_mm2", "max_diameter_mm", "min_diameter_mm",
            "perimeter_derived_diameter_mm", "area_derived_diameter_mm", "ovality", "planarity_rms_mm"} <= set(d["ostium"])
    assert {"depth_mm", "center_lps", "normal_lps"} | contour <= set(d["landing_zones"][0])
    assert [z["depth_mm"] for z in d["landing_zones"]] == [10.0, 12.0]
    for key in ("depth_mm", "centerline_length_mm", "volume_ml", "surface_area_mm2", "bend_angle_deg"):
        assert isinstance(d[key], float), key
    assert {"depth_mm", "max_diameter_mm", "min_diameter_mm"} <= set(d["profile"][0])
    assert np.allclose(d["ostium"]["center_lps"], m.ostium.center_lps, atol=1e-3)
    assert len(d["centerline_lps"]) == len(m.centerline_lps) and d["schema"].startswith("nudf-laa-measurements/")
    with pytest.raises(Exception, match="already exists"):
        m.to_json(tmp_path / "m.json")


def test_landing_zone_beyond_the_apex_is_null_with_a_warning(tmp_path):
    m = measure_laa(cone_frustum(10.0, 8.0, 8.0, 32), landing_depths_mm=(5, 12))
    assert m.landing_zones[0] is not None and m.landing_zones[1] is None
    assert any("12 mm lies beyond the apex" in w for w in m.warnings)
    d = json.loads(m.to_json())
    assert d["landing_zones"][1]["max_diameter_mm"] is None and d["landing_zones"][1]["depth_mm"] == 12.0


def test_bad_inputs_are_typed_errors():
    closed = vtk.vtkSphereSource()
    closed.Update()
    with pytest.raises(InputError, match="no boundary"):
        measure_laa(closed.GetOutput())
    with pytest.raises(InputError, match="empty"):
        measure_laa(vtk.vtkPolyData())
    with pytest.raises(InputError, match="depths"):
        measure_laa(cone_frustum(10.0, 8.0, 20.0, 16), landing_depths_mm=(10, -1))


def test_compare_measurements_reports_diameter_errors_and_plane_offsets():
    mesh = elliptic_tube(A, B, LENGTH, CAP, 32)
    m = measure_laa(mesh)
    same = compare_measurements(m, m)
    assert all(v == 0 or np.isnan(v) for v in same.values())
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    bigger = measure_laa(make_polydata(pts * [1.1, 1.0, 1.0] + [0.0, 2.0, 0.0], tris))  # 10 % wider, 2 mm aside
    d = compare_measurements(bigger, m)
    assert abs(d["ostium_max_diameter_error_mm"] - 0.1 * 2 * A) < 0.05
    assert abs(d["ostium_min_diameter_error_mm"]) < 0.05
    assert abs(d["ostium_center_distance_mm"] - 2.0) < 0.05 and d["ostium_normal_angle_deg"] < 0.1
    assert abs(d["landing_10mm_max_diameter_error_mm"] - 0.1 * 2 * A) < 0.1
    assert abs(d["volume_error_ml"] - 0.1 * m.volume_ml) < 0.02 * m.volume_ml


# -------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def segmented(tmp_path_factory, phantom_case, model_path):
    """``nudf segment --measure`` on the shared phantom (bundled model; a coarse 1 mm grid keeps it quick)."""
    out = tmp_path_factory.mktemp("measure_cli") / "laa.stl"
    seed = ",".join(f"{v:.3f}" for v in phantom_case.seed_lps)
    code = cli_main(["segment", str(phantom_case.ct_path), f"--seed-lps={seed}", "--out", str(out), "--model",
                     str(model_path), "--device", "cpu", "--resolution", "1.0", "--progress-format", "none",
                     "--measure"])
    assert code == 0
    return out


def test_segment_measure_writes_measurements_beside_the_mesh(segmented, phantom_case):
    d = json.loads(segmented.with_name("laa.measurements.json").read_text())
    seg = measure_laa(read_mesh(segmented))
    assert d["ostium"]["max_diameter_mm"] == pytest.approx(seg.ostium.max_diameter_mm, abs=0.05)  # STL: float32
    assert d["volume_ml"] == pytest.approx(seg.volume_ml, rel=1e-3)
    assert all(np.isfinite(d["ostium"][k]) for k in ("max_diameter_mm", "min_diameter_mm", "area_mm2"))
    gt = measure_laa(phantom_case.load_mesh())
    meta = phantom_case.meta["laa"]
    # the GT mesh measures as the phantom drew it (its axes are extents along the loop's principal directions)
    assert abs(gt.ostium.max_diameter_mm - meta["ostium_long_axis_mm"]) < 0.5
    assert abs(gt.ostium.min_diameter_mm - meta["ostium_short_axis_mm"]) < 0.5
    assert abs(gt.depth_mm - meta["depth_mm"]) < 0.05
    assert not gt.warnings
    diffs = compare_measurements(seg, gt)
    print("segmentation - GT: " + ", ".join(f"{k} {diffs[k]:+.2f}" for k in (
        "ostium_max_diameter_error_mm", "ostium_min_diameter_error_mm", "ostium_center_distance_mm", "depth_error_mm")))


def test_measure_cli_gives_identical_results_for_lps_and_ras_files(segmented, tmp_path, capsys):
    ras = tmp_path / "laa_ras.stl"
    write_mesh(read_mesh(segmented), ras, frame="ras")  # tagged SPACE=RAS; its raw points are mirrored in x, y
    assert cli_main(["measure", str(segmented), "--json", str(tmp_path / "lps.json"), "--csv", str(tmp_path / "c.csv")]) == 0
    table = capsys.readouterr().out
    assert "ostium max diameter (Feret)" in table and "volume (ostium capped)" in table
    assert cli_main(["measure", str(ras), "--json", str(tmp_path / "ras.json"), "--csv", str(tmp_path / "c.csv"),
                     "--append", "--case", "ras"]) == 0
    assert "ostium centre (RAS)" in capsys.readouterr().out
    assert (tmp_path / "lps.json").read_bytes() == (tmp_path / "ras.json").read_bytes()
    rows = list(csv.DictReader(open(tmp_path / "c.csv", newline="")))
    assert [r["case"] for r in rows] == ["laa.stl", "ras"]
    assert rows[0]["ostium_max_diameter_mm"] == rows[1]["ostium_max_diameter_mm"] != ""
    # outputs are never overwritten silently, and errors are one line
    assert cli_main(["measure", str(segmented), "--json", str(tmp_path / "lps.json")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err


def test_measure_cli_ostium_plane_in_both_frames_and_errors(tube32, tmp_path, capsys):
    base, rot, shift, mesh = tube32
    path = tmp_path / "tube.stl"
    write_mesh(mesh, path)
    axis = rot @ [0.0, 0.0, 1.0]
    origin = shift + 4.0 * axis
    for flag, point, normal in (("lps", origin, axis), ("ras", frames.lps_to_ras(origin), frames.lps_to_ras(axis))):
        out = tmp_path / f"plane_{flag}.json"
        plane = ",".join(f"{v:.6f}" for v in np.concatenate([point, normal]))
        assert cli_main(["measure", str(path), f"--ostium-plane-{flag}={plane}", "--json", str(out)]) == 0
        moved = json.loads(out.read_text())
        assert moved["ostium_source"] == "plane" and not moved["warnings"]
        assert np.linalg.norm(np.array(moved["ostium"]["center_lps"]) - origin) < 0.05
        assert moved["depth_mm"] == pytest.approx(base.depth_mm - 4.0, abs=0.05)
    assert "the given plane" in capsys.readouterr().out
    far = ",".join(f"{v:.4f}" for v in np.concatenate([shift - 30.0 * axis, axis]))
    assert cli_main(["measure", str(path), f"--ostium-plane-lps={far}"]) == 2
    err = capsys.readouterr().err
    assert "outside the segmented surface" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse refuses it before any work
        cli_main(["measure", str(path), "--landing-depths", "10,-2"])
    assert exc.value.code == 2 and "positive" in capsys.readouterr().err


def test_evaluate_measure_reports_measurement_differences(segmented, phantom_case, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert cli_main(["evaluate", str(segmented), str(phantom_case.case_dir / "laa.vtp"), "--measure",
                     "--samples", "2000", "--json", str(out)]) == 0
    assert "ostium normal angle" in capsys.readouterr().out
    d = json.loads(out.read_text())
    diffs = d["measurements"]["differences"]
    assert d["msd_mm"] > 0  # the surface metrics are still there
    assert diffs["ostium_center_distance_mm"] >= 0 and 0 <= diffs["ostium_normal_angle_deg"] <= 180
    expected = d["measurements"]["pred"]["ostium_max_diameter_mm"] - d["measurements"]["gt"]["ostium_max_diameter_mm"]
    assert diffs["ostium_max_diameter_error_mm"] == pytest.approx(expected)


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_contours_render_over_the_mesh(backend):
    """The README picture's ingredients: report.render_3d_image draws measurement curves over the surface."""
    from NUDFCore.report import render_3d_image

    mesh = cone_frustum(12.0, 6.0, 30.0, 24)
    rim = measure_laa(mesh, landing_depths_mm=()).ostium.contour_lps
    kwargs = {"size": (200, 150), "view_direction_lps": (1.0, 0.0, -0.6), "backend": backend}
    plain, _ = render_3d_image(mesh, **kwargs)
    drawn, used = render_3d_image(mesh, curves_lps=[(np.vstack([rim, rim[:1]]), (255, 215, 0))], mesh_opacity=0.5,
                                  **kwargs)

    def yellow(img: np.ndarray) -> int:
        r, g, b = (img[..., k].astype(int) for k in range(3))
        return int(((r > 150) & (g > 120) & (b < 100)).sum())

    assert yellow(plain) == 0 and yellow(drawn) > 40, (used, yellow(drawn))
