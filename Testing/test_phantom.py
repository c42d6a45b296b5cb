"""The synthetic CTA phantom: determinism, exact open ground truth, CT consistent with it, files."""
from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
import vtk
from scipy import ndimage

from NUDFCore import io, meshtools, phantom
from NUDFCore.errors import InputError, OutputExistsError
from NUDFCore.frames import lps_to_ras

SEED = 4  # a compact case without filling defect, tilted direction matrix
#: every domain-randomisation style off: a clean lumen, so the CT edge can be checked against the GT exactly
PLAIN = phantom.style_probabilities(exclude=list(phantom.STYLES))
#: only the styles that change intensities inside an unchanged cavity
INTENSITY_ONLY = phantom.style_probabilities(exclude=["wide_mouth", "narrow_neck", "la_lobes", "tight_neighbours",
                                                      "thick_slices"], only=["mixing", "trabeculae", "artefacts"])


@pytest.fixture(scope="module")
def case() -> phantom.PhantomCase:
    return phantom.generate_case(SEED, size="compact", styles=PLAIN)


@pytest.fixture(scope="module")
def styled(case) -> phantom.PhantomCase:
    return phantom.generate_case(SEED, size="compact", styles=INTENSITY_ONLY)


def _sample_ct(volume: io.Volume, points_lps: np.ndarray) -> np.ndarray:
    ijk = volume.lps_to_index(points_lps)
    return ndimage.map_coordinates(volume.array.astype(np.float32), ijk[:, ::-1].T, order=1, mode="nearest")


def _vertex_normals(mesh: vtk.vtkPolyData) -> np.ndarray:
    return meshtools.vertex_normals(io.polydata_points(mesh), io.polydata_triangles(mesh))


def _depth_past_ostium(case: phantom.PhantomCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT vertices, their outward normals and their depth (mm) past the ostium plane along its normal."""
    pts, normals = io.polydata_points(case.mesh_lps), _vertex_normals(case.mesh_lps)
    o, n = np.array(case.meta["ostium_center_lps"]), np.array(case.meta["ostium_normal_lps"])
    return pts, normals, (pts - o) @ n


def _inside_capped(mesh: vtk.vtkPolyData, centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    return meshtools.inside_closed(meshtools.capped(mesh, apex=centre), points)


def test_same_seed_same_case_and_different_seeds_differ(case):
    again = phantom.generate_case(SEED, size="compact", styles=PLAIN)
    assert again.volume.array.dtype == np.int16
    np.testing.assert_array_equal(again.volume.array, case.volume.array)
    np.testing.assert_array_equal(io.polydata_points(again.mesh_lps), io.polydata_points(case.mesh_lps))
    np.testing.assert_array_equal(again.volume.direction_lps, case.volume.direction_lps)
    assert again.meta == case.meta
    other = phantom.generate_case(SEED + 3, size="compact", styles=PLAIN)
    assert other.meta["seed_lps"] != case.meta["seed_lps"]
    assert other.volume.array.shape != case.volume.array.shape or not np.array_equal(
        other.volume.array, case.volume.array)


def test_ground_truth_is_open_with_one_loop_on_the_ostium_plane(case):
    mesh = case.mesh_lps
    pts, tris = io.polydata_points(mesh), io.polydata_triangles(mesh)
    assert 10_000 <= len(tris) <= 60_000
    labels = meshtools.connected_components(mesh)
    assert labels.max() == 0
    loops = meshtools.boundary_loops(mesh)
    assert len(loops) == 1
    assert meshtools.non_manifold_edge_count(tris) == 0
    o = np.array(case.meta["ostium_center_lps"])
    n = np.array(case.meta["ostium_normal_lps"])
    assert abs(np.linalg.norm(n) - 1) < 1e-9
    loop = pts[loops[0]]
    assert np.abs((loop - o) @ n).max() < 1e-3  # exactly on the plane
    np.testing.assert_allclose(loop.mean(axis=0), o, atol=0.5)
    assert ((pts - o) @ n).min() > -1e-3  # the whole mesh lies on the appendage side
    assert ((pts - o) @ n).max() > 15.0
    ext = np.linalg.svd(loop - loop.mean(axis=0), compute_uv=False)
    assert ext[2] < 1e-6 * ext[0] + 1e-4
    laa = case.meta["laa"]
    assert 10.0 <= laa["ostium_short_axis_mm"] <= laa["ostium_long_axis_mm"] <= 36.0
    assert 0.8 <= laa["volume_ml"] <= 25.0
    assert laa["max_field_error_mm"] < 0.02


def test_meta_volume_is_the_capped_volume_of_the_mesh(case):
    """meta.json's ``laa.volume_ml`` is the volume of the GT mesh closed at its ostium, as NUDFCore.measure (its
    own spanning-surface cap) and a voxel count of the fan-capped mesh (vtkPolyDataToImageStencil, no winding
    involved) measure it. The generator used to choose its cap's sign by the size of the result: up to 3x too
    large (median +49 % over 270 seeds), depending on where the LAA lay relative to the heart-frame origin."""
    from NUDFCore.measure import _voxelise, measure_laa

    mesh = case.mesh_lps
    meta_ml = case.meta["laa"]["volume_ml"]
    assert meta_ml == pytest.approx(measure_laa(mesh).volume_ml, rel=1e-3)
    pts, tris = io.polydata_points(mesh), io.polydata_triangles(mesh)
    loop = meshtools.boundary_loops(mesh)[0]
    fan = np.column_stack([np.full(len(loop), len(pts)), loop, np.roll(loop, -1)])
    h = 0.25
    mask, _ = _voxelise(np.vstack([pts, pts[loop].mean(axis=0)]), np.vstack([tris, fan]), h)
    voxels = int(mask.sum())
    assert meta_ml == pytest.approx(voxels * h**3 / 1000.0, rel=0.01)


def _hemisphere(radius: float, n_around: int = 48, n_rings: int = 12) -> vtk.vtkPolyData:
    """An open hemisphere (rim = the equator, z = 0; pole at +z), wound with normals pointing outwards."""
    from laa_shapes import tube_from_rings

    theta = np.linspace(0.0, 2.0 * np.pi, n_around, endpoint=False)
    rings = [np.column_stack([radius * np.cos(a) * np.cos(theta), radius * np.cos(a) * np.sin(theta),
                              np.full(n_around, radius * np.sin(a))])
             for a in np.linspace(0.0, 0.5 * np.pi, n_rings + 1)[:-1]]
    return tube_from_rings(rings, np.array([0.0, 0.0, radius]))


@pytest.mark.parametrize("motion_seed", [0, 1])
def test_capped_volume_of_an_open_hemisphere_in_both_windings(motion_seed):
    """2/3 π r³, wherever the hemisphere lies (the cap's winding comes from the rim, not from the result),
    with either winding (the sign says which) and either direction of the loop."""
    from laa_shapes import place, random_motion
    from scipy.spatial import ConvexHull

    from NUDFCore.phantom.truth import capped_signed_volume

    r = 12.0
    mesh = place(_hemisphere(r), *random_motion(motion_seed, max_shift_mm=150.0))
    pts, tris = io.polydata_points(mesh), io.polydata_triangles(mesh)
    loops = meshtools.boundary_loops(mesh)
    assert len(loops) == 1
    hull = ConvexHull(pts).volume  # the capped polyhedron is convex: exactly its volume
    assert hull == pytest.approx(2.0 / 3.0 * np.pi * r**3, rel=0.02)
    normals_out = np.cross(pts[tris[:, 1]] - pts[tris[:, 0]], pts[tris[:, 2]] - pts[tris[:, 0]])
    assert np.einsum("ij,ij->i", normals_out, pts[tris].mean(axis=1) - pts.mean(axis=0)).min() > 0
    for loop in (loops[0], loops[0][::-1]):
        assert capped_signed_volume(pts, tris, loop) == pytest.approx(hull, rel=1e-9)
        assert capped_signed_volume(pts, tris[:, ::-1], loop) == pytest.approx(-hull, rel=1e-9)
    # an inconsistently wound surface, or a loop that is not its boundary, is refused
    flipped = tris.copy()
    flipped[0] = flipped[0, ::-1]
    with pytest.raises(ValueError, match="inconsistent winding"):
        capped_signed_volume(pts, flipped, loops[0])
    with pytest.raises(ValueError, match="boundary loop"):
        capped_signed_volume(pts, tris, np.roll(loops[0], 1)[::2])


def test_ground_truth_sits_on_the_lumen_edge_of_the_ct(case):
    """CT along the mesh normals: blood inside, wall/fat outside, the edge (steepest drop) at the surface."""
    mesh = case.mesh_lps
    pts = io.polydata_points(mesh)
    normals = _vertex_normals(mesh)
    o = np.array(case.meta["ostium_center_lps"])
    n = np.array(case.meta["ostium_normal_lps"])
    sel = np.flatnonzero((pts - o) @ n > 4.0)[::7]
    offsets = np.arange(-3.0, 3.01, 0.25)
    profile = np.array([np.median(_sample_ct(case.volume, pts[sel] + t * normals[sel])) for t in offsets])
    blood = case.meta["hu"]["blood"]
    inside, outside = profile[offsets == -2.5][0], profile[offsets == 2.5][0]
    assert inside > 0.8 * blood, profile
    assert outside < case.meta["hu"]["myocardium"] + 40, profile
    steepest = offsets[:-1][np.argmin(np.diff(profile))] + 0.125
    assert abs(steepest) <= 0.5, (steepest, profile)
    # the wall side is darker than the lumen side right at the surface, by most of the contrast
    assert profile[offsets == -1.0][0] - profile[offsets == 1.0][0] > 0.4 * (blood - case.meta["hu"]["myocardium"])


def test_normals_point_out_of_the_lumen(case):
    mesh = case.mesh_lps
    pts = io.polydata_points(mesh)
    normals = _vertex_normals(mesh)
    o = np.array(case.meta["ostium_center_lps"])
    sub = np.arange(0, len(pts), 97)
    probe_in = pts[sub] - 0.4 * normals[sub]
    probe_out = pts[sub] + 0.4 * normals[sub]
    assert _inside_capped(mesh, o, probe_in).mean() > 0.97
    assert _inside_capped(mesh, o, probe_out).mean() < 0.03


def test_seed_is_deep_inside_the_lumen(case):
    seed = np.array(case.meta["seed_lps"])
    np.testing.assert_allclose(case.meta["seed_ras"], lps_to_ras(seed))
    o = np.array(case.meta["ostium_center_lps"])
    n = np.array(case.meta["ostium_normal_lps"])
    assert _inside_capped(case.mesh_lps, o, seed[None])[0]
    dist, _ = meshtools.point_to_mesh_distance(case.mesh_lps, seed[None])
    assert dist[0] >= 2.0
    assert float((seed - o) @ n) >= 2.0
    assert not case.meta["filling_defect"]
    hu = _sample_ct(case.volume, seed[None])[0]
    assert hu > 0.6 * case.meta["hu"]["blood"]
    assert case.volume.contains_lps(seed[None])[0]


def test_ct_intensities_and_geometry_are_plausible(case):
    m = case.meta
    a = case.volume.array
    assert a.min() >= -1024 and a.max() <= 3071
    hu = m["hu"]
    assert 150 <= hu["blood"] <= 650 and 40 <= hu["myocardium"] <= min(170, hu["blood"] - 60)
    assert -150 <= hu["fat"] <= -50 and -950 <= hu["lung"] <= -750
    assert 10 <= hu["noise_sigma"] <= 70 and 0.4 <= hu["psf_mm"] <= 2.0
    sp = np.array(m["spacing"])
    assert 0.3 <= sp[0] == sp[1] <= 0.8 and 0.5 <= sp[2] <= 3.0
    np.testing.assert_allclose(case.volume.spacing, sp)
    assert list(case.volume.size_ijk) == m["size_ijk"]
    fov = sp * (np.array(m["size_ijk"]) - 1)
    assert np.all((fov > 100) & (fov < 140))  # compact: ~110-130 mm
    # lung, fat and contrast blood all present; noise of the stated size in a flat region (lung)
    assert np.mean(a < -700) > 0.02 and np.mean(a > 0.6 * hu["blood"]) > 0.02
    assert np.mean((a > hu["fat"] - 30) & (a < hu["fat"] + 30)) > 0.01
    assert abs(abs(np.linalg.det(case.volume.direction_lps)) - 1) < 1e-9


def test_orientation_spacing_and_field_of_view_vary_with_the_seed():
    an, gt, _ = phantom._draw_anatomy(np.random.default_rng(5), "windsock", 5)
    grids = [phantom._sample_grid(np.random.default_rng(s), an, gt, "full") for s in range(16)]
    dirs = [g[1] for g in grids]
    assert any(not np.allclose(d, np.eye(3)) for d in dirs)  # tilted or flipped directions appear
    assert any(np.allclose(d, np.eye(3)) for d in dirs)  # and plain axial ones
    assert any(np.any(np.diag(d) < 0) for d in dirs)  # axis flips
    for spacing, d, origin, size_ijk, r_pat, t_pat in grids:
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
        assert 0.3 <= spacing[0] <= 0.8 and 0.5 <= spacing[2] <= 3.0
        assert tuple(size_ijk[:2]) == (512, 512) and 80 <= size_ijk[2] <= 280
        # the whole LAA is inside the field of view
        pts_lps = gt.points @ r_pat.T + t_pat
        ijk = (pts_lps - origin) @ d / spacing
        assert np.all(ijk >= 0) and np.all(ijk <= np.asarray(size_ijk) - 1)
    assert len({round(float(g[0][0]), 6) for g in grids}) == len(grids)


def test_all_four_morphologies_are_drawn_and_each_builds():
    drawn = {phantom.draw_morphology(s) for s in range(12)}
    assert drawn == set(phantom.MORPHOLOGIES)
    for i, morph in enumerate(phantom.MORPHOLOGIES):
        rng = np.random.default_rng(100 + i)
        an, gt, _ = phantom._draw_anatomy(rng, morph, 100 + i)
        mesh = io.make_polydata(gt.points, gt.triangles)
        assert len(meshtools.boundary_loops(mesh)) == 1
        assert an.laa.morphology == morph
        assert 1 <= an.laa.lobes <= 4
        assert (morph != "cauliflower" or an.laa.lobes >= 3) and (morph != "cactus" or an.laa.lobes >= 3)
        assert 12.0 <= gt.long_mm <= 36.0 and gt.depth_mm >= 12.0


def test_forced_morphology_and_bad_arguments():
    with pytest.raises(InputError, match="size"):
        phantom.generate_case(0, size="huge")
    with pytest.raises(InputError, match="morphology"):
        phantom.generate_case(0, size="compact", morphology="banana")


def test_write_case_reads_back(case, tmp_path):
    folder = phantom.write_case(case, tmp_path / "c")
    assert sorted(p.name for p in folder.iterdir()) == sorted(phantom.CASE_FILES)
    vol = io.read_volume(folder / "ct.nii.gz")
    np.testing.assert_array_equal(vol.array, case.volume.array)
    np.testing.assert_allclose(vol.spacing, case.volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(vol.origin_lps, case.volume.origin_lps, atol=1e-4)
    np.testing.assert_allclose(vol.direction_lps, case.volume.direction_lps, atol=1e-6)
    pts = io.polydata_points(case.mesh_lps)
    np.testing.assert_allclose(io.polydata_points(io.read_mesh(folder / "laa.vtp")), pts, atol=1e-9)
    stl = io.polydata_points(io.read_mesh(folder / "laa.stl"))
    assert np.abs(stl.min(axis=0) - pts.min(axis=0)).max() < 1e-3
    assert len(meshtools.boundary_loops(io.read_mesh(folder / "laa.vtp"))) == 1
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == json.loads(json.dumps(case.meta))
    for key in ("case_id", "seed", "morphology", "seed_lps", "seed_ras", "laa_center_lps", "ostium_center_lps",
                "ostium_normal_lps", "spacing", "size_ijk", "origin_lps", "direction_lps", "hu", "filling_defect",
                "laa", "nudfcore_version"):
        assert key in meta
    with pytest.raises(OutputExistsError):
        phantom.write_case(case, folder)
    phantom.write_case(case, folder, overwrite=True)


def test_full_size_case_is_fast_and_small():
    tracemalloc.start()
    t0 = time.perf_counter()
    big = phantom.generate_case(4, size="full")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert big.volume.array.shape[1:] == (512, 512)
    assert 80 <= big.volume.array.shape[0] <= 280
    assert elapsed < 25.0, f"full-size phantom took {elapsed:.1f} s"
    assert peak < 4e9, f"peak memory {peak / 1e9:.2f} GB"
    assert big.volume.contains_lps(np.array(big.meta["seed_lps"])[None])[0]


# ------------------------------------------------------------------------------------ domain randomisation
def test_styles_can_be_held_out_or_forced_and_bad_names_are_refused():
    out = phantom.style_probabilities(exclude=["narrow_neck"])
    forced = phantom.style_probabilities(only=["narrow_neck", "mixing"])
    drawn_out = [phantom.draw_styles(np.random.default_rng(s), out) for s in range(60)]
    drawn_forced = [phantom.draw_styles(np.random.default_rng(s), forced) for s in range(60)]
    assert not any("narrow_neck" in d for d in drawn_out)
    assert all({"narrow_neck", "mixing"} <= d and "wide_mouth" not in d for d in drawn_forced)
    # every style does occur with the defaults, and the two mouth shapes never together
    default = [phantom.draw_styles(np.random.default_rng(s), phantom.STYLES) for s in range(60)]
    assert set().union(*default) == set(phantom.STYLES)
    assert not any({"wide_mouth", "narrow_neck"} <= d for d in default)
    with pytest.raises(InputError, match="Unknown phantom style"):
        phantom.style_probabilities(exclude=["banana"])
    with pytest.raises(InputError, match="both excluded and forced"):
        phantom.style_probabilities(exclude=["mixing"], only=["mixing"])
    with pytest.raises(InputError, match="wide mouth and a narrow neck"):
        phantom.style_probabilities(only=["wide_mouth", "narrow_neck"])


def test_intensity_styles_change_the_ct_but_not_the_cavity_wall(case, styled):
    """Trabeculae, mixing and artefacts live inside an unchanged cavity: same GT mesh, different CT."""
    assert {"mixing", "trabeculae", "artefacts"} <= set(styled.meta["styles"]) and not case.meta["styles"]
    np.testing.assert_array_equal(io.polydata_points(styled.mesh_lps), io.polydata_points(case.mesh_lps))
    np.testing.assert_array_equal(io.polydata_triangles(styled.mesh_lps), io.polydata_triangles(case.mesh_lps))
    assert styled.volume.array.shape == case.volume.array.shape
    # inside the cavity, 1 mm from its wall: the plain lumen is blood; with trabeculae and mixing it is darker
    pts, normals, deep = _depth_past_ostium(case)
    distal = np.flatnonzero(deep > 0.5 * deep.max())[::5]
    plain_in = _sample_ct(case.volume, pts[distal] - 1.0 * normals[distal])
    styled_in = _sample_ct(styled.volume, pts[distal] - 1.0 * normals[distal])
    assert np.median(plain_in) > 0.8 * case.meta["hu"]["blood"]
    assert np.median(styled_in) < np.median(plain_in) - 0.1 * (case.meta["hu"]["blood"] - case.meta["hu"]["myocardium"])
    assert np.std(styled_in) > 1.5 * np.std(plain_in)


def test_a_held_out_style_leaves_the_other_draws_of_the_seed():
    """Excluding a style does not change the seed's morphology or its other styles (a held-out test set
    differs from the training distribution in that style only)."""
    with_neck = phantom.generate_case(7, size="compact", styles=phantom.style_probabilities(only=["narrow_neck"]))
    without = phantom.generate_case(7, size="compact", styles=phantom.style_probabilities(exclude=["narrow_neck"]))
    assert with_neck.meta["mouth"] == "narrow" and without.meta["mouth"] != "narrow"
    assert with_neck.meta["morphology"] == without.meta["morphology"]
    assert set(with_neck.meta["styles"]) - {"narrow_neck", "wide_mouth"} == set(without.meta["styles"]) - {"wide_mouth"}
    assert 10.0 <= with_neck.meta["laa"]["ostium_short_axis_mm"] <= with_neck.meta["laa"]["ostium_long_axis_mm"] <= 36.0


def test_phantom_cli_refuses_an_unknown_style(tmp_path, capsys):
    from NUDFCore.cli import main

    assert main(["phantom", "--out", str(tmp_path / "p"), "--exclude-style", "banana"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "banana" in err
    assert not (tmp_path / "p").exists()


def test_the_appendage_wall_is_thinner_than_the_la_wall_and_fat_lies_beyond_it():
    """The LAA has its own wall, 0.3 mm up to the LA wall's thickness: with a thin one, the CT a little
    beyond the cavity wall is already the epicardial fat, as in routine scans; the LA body keeps its wall."""
    cases = [phantom.generate_case(seed, size="compact", styles=PLAIN) for seed in range(4, 10)]
    walls = [c.meta["walls_mm"] for c in cases]
    assert all(0.3 <= w["laa"] <= w["la"] <= 3.0 for w in walls), walls
    assert min(w["laa"] for w in walls) < 0.6 and max(w["laa"] for w in walls) > 1.2, walls
    thin = min(cases, key=lambda c: c.meta["walls_mm"]["laa"])
    assert thin.meta["hu"]["myocardium"] - thin.meta["hu"]["fat"] > 80
    pts, normals, deep = _depth_past_ostium(thin)
    distal = np.flatnonzero(deep > 0.5 * deep.max())[::3]
    w, hu = thin.meta["walls_mm"], thin.meta["hu"]
    at = w["laa"] + 1.2  # beyond the appendage's wall, well inside where the LA's wall would still be
    outside = np.median(_sample_ct(thin.volume, pts[distal] + at * normals[distal]))
    assert outside < 0.5 * (hu["fat"] + hu["myocardium"]), (outside, hu, w)
    # still the cavity wall: the steepest drop of the profile is at the ground truth
    offsets = np.arange(-2.0, 2.01, 0.25)
    profile = np.array([np.median(_sample_ct(thin.volume, pts[distal] + t * normals[distal])) for t in offsets])
    assert profile[0] > 0.8 * hu["blood"], profile
    assert abs(offsets[:-1][np.argmin(np.diff(profile))] + 0.125) <= 0.5, profile


def test_the_pectinate_band_dims_the_blood_along_the_distal_wall_but_not_in_the_neck(case):
    """Unresolved pectinate muscles dim the last millimetres of blood before the cavity wall of the distal
    appendage (style "trabeculae"); the smooth neck keeps its blood, and the ground truth does not move."""
    banded = phantom.generate_case(SEED, size="compact", styles=phantom.style_probabilities(
        exclude=[s for s in phantom.STYLES if s != "trabeculae"], only=["trabeculae"]))
    band, hu = banded.meta["pectinate_band"], case.meta["hu"]
    assert case.meta["pectinate_band"] is None and band is not None
    assert 1.0 <= band["depth_mm"] <= 4.0 and 0.15 <= band["frac"] <= 0.7 and 0.0 <= band["patchiness"] <= 1.0
    np.testing.assert_array_equal(io.polydata_points(banded.mesh_lps), io.polydata_points(case.mesh_lps))
    pts, normals, deep = _depth_past_ostium(case)
    distal, neck = np.flatnonzero(deep > 0.5 * deep.max())[::3], np.flatnonzero(deep < 0.5)
    contrast = hu["blood"] - hu["myocardium"]

    def dimming(ids: np.ndarray, inside_mm: float) -> float:
        at = pts[ids] - inside_mm * normals[ids]
        return float(np.median(_sample_ct(case.volume, at) - _sample_ct(banded.volume, at)))

    expected = band["frac"] * (1.0 - 0.5 * band["patchiness"]) * contrast  # mean pull at the wall
    assert dimming(distal, 0.3) > 0.3 * expected, (dimming(distal, 0.3), band, hu)
    assert abs(dimming(neck, 0.3)) < 0.1 * expected, (dimming(neck, 0.3), band, hu)


def test_a_layer_over_the_blood_keeps_the_cavity_edge_where_the_blood_put_it():
    """The LAA's own blood (mixing, pectinate band) and the filling defect change the blood layer painted
    before them on the same edge: painting the same HU "over" it changes nothing, a darker one darkens the
    inside only, and the edge stays at the field's zero level (blending twice would move it outwards)."""
    from NUDFCore.phantom.anatomy import _Paint
    from NUDFCore.phantom.render import _render_paints
    from NUDFCore.phantom.sdf import Ellipsoid, Field, _Grid

    grid = _Grid((40, 40, 40), np.eye(3) * 0.5, np.zeros(3))
    cavity = Field().union(Ellipsoid(np.full(3, 10.0), (6.0, 6.0, 6.0)))
    below = [_Paint(cavity, 100.0, offset=1.0), _Paint(cavity, 500.0)]
    once = np.full(grid.shape, -100.0, np.float32)
    _render_paints(once, grid, below, 0.6)
    again = np.full(grid.shape, -100.0, np.float32)
    _render_paints(again, grid, below + [_Paint(cavity, 500.0, over=500.0)], 0.6)
    np.testing.assert_allclose(again, once, atol=1e-3)
    darker = np.full(grid.shape, -100.0, np.float32)
    _render_paints(darker, grid, below + [_Paint(cavity, 300.0, over=500.0)], 0.6)
    line = darker[20, 20, :]  # along x, 1 mm from the centre: the edge at x = 16 mm, voxel 32
    assert abs(line[22] - 300.0) < 1e-3 and abs(line[32] - (once[20, 20, 32] - 0.5 * 200.0)) < 1e-3, line


def test_a_quarter_of_the_cases_get_the_broad_edges_of_non_gated_ct():
    """PSF sigma 0.4-1.1 mm (reconstruction kernels) in three cases out of four, 1.1-2.0 mm (cardiac motion
    of non-gated chest CT) in the rest, from one draw so that the draws after it keep their values."""
    rng = np.random.default_rng(0)
    psf = np.array([phantom._draw_psf(rng) for _ in range(4000)])
    assert psf.min() >= 0.4 and psf.max() <= 2.0 and psf.max() > 1.9
    assert abs(np.mean(psf > 1.1) - 0.25) < 0.03
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    phantom._draw_psf(a)
    b.random()
    assert a.random() == b.random()


@pytest.mark.parametrize("seed", [4, 6])
def test_tight_neighbours_press_the_lv_free_wall_against_the_appendage(seed):
    """Style "tight_neighbours": the LV is moved until its myocardium reaches the drawn depth into the LAA
    (no fat between them on that side); its blood stays clear of the cavity; the ground truth is the same."""
    plain_rng, tight_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    an, gt, _ = phantom._draw_anatomy(tight_rng, "windsock", seed, frozenset({"tight_neighbours"}))
    _, gt_plain, _ = phantom._draw_anatomy(plain_rng, "windsock", seed)
    assert an.lv_press_mm is not None and 0.0 <= an.lv_press_mm <= 4.0
    sub = gt.points[::5]
    myo = an.fields["lv_myo"].eval_points(sub)
    assert abs(float(myo.min()) + an.lv_press_mm) < 0.3, (myo.min(), an.lv_press_mm)
    assert np.mean(myo < 0.5) > 0.03  # a patch of the appendage lies on the LV wall, not a point
    assert float(an.fields["lv"].eval_points(sub).min()) >= an.min_gap_mm
    np.testing.assert_array_equal(gt.points, gt_plain.points)


def test_a_style_added_later_leaves_every_earlier_draw_of_the_seed():
    """Styles added after the first eight (``septum``) take their uniforms from a generator of their own: the
    first eight styles and every later draw of the case's generator keep their values."""
    first = list(phantom.STYLES)[:8]
    assert "septum" in phantom.STYLES and "septum" not in first
    for s in range(40):
        a, b = np.random.default_rng(s), np.random.default_rng(s)
        drawn = phantom.draw_styles(a, phantom.STYLES)
        u = b.random(8)
        old = {name for name, x in zip(first, u) if x < phantom.STYLES[name]}
        if {"wide_mouth", "narrow_neck"} <= old:
            old.discard("narrow_neck")
        assert drawn - {"septum"} == old
        assert a.random() == b.random()


@pytest.mark.parametrize("seed", [4, 11])
def test_septum_pools_lie_on_the_appendage_across_a_thin_septum(seed):
    """Style "septum": other blood pools against a patch of the appendage, their blood 1.2-3.5 mm from the
    cavity; the CT along the normal goes blood, dip, blood; the ground truth and the rest of the case stay."""
    only = phantom.style_probabilities(exclude=[s for s in phantom.STYLES if s != "septum"], only=["septum"])
    with_pool = phantom.generate_case(seed, size="compact", styles=only)
    plain = phantom.generate_case(seed, size="compact", styles=PLAIN)
    pools = with_pool.meta["septum_pools"]
    assert with_pool.meta["styles"] == ["septum"] and plain.meta["septum_pools"] == [] and pools
    assert all(1.0 <= p["septum_mm"] <= 4.5 and p["kind"] in ("sheet", "vessel", "chamber") for p in pools), pools
    np.testing.assert_array_equal(io.polydata_points(with_pool.mesh_lps), io.polydata_points(plain.mesh_lps))
    # the pool changed the CT outside the cavity only: 1 mm inside the wall the two CTs agree
    pts, normals, _ = _depth_past_ostium(plain)
    inside = pts - 1.0 * normals
    hu = plain.meta["hu"]
    diff = np.abs(_sample_ct(with_pool.volume, inside) - _sample_ct(plain.volume, inside))
    assert np.percentile(diff, 99) < 0.1 * (hu["blood"] - hu["fat"]), np.percentile(diff, 99)
    # a patch of the appendage (not a point) has blood again beyond a dip
    beyond = _sample_ct(with_pool.volume, pts + 4.5 * normals) - _sample_ct(plain.volume, pts + 4.5 * normals)
    patch = beyond > 0.5 * (hu["blood"] - hu["fat"])
    assert patch.mean() > 0.03, patch.mean()
    profile = [np.median(_sample_ct(with_pool.volume, pts[patch] + t * normals[patch])) for t in (-1.5, 1.0, 4.5)]
    assert profile[1] < profile[0] - 50 and profile[1] < profile[2] - 50, profile
