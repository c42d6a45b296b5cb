"""Training-point sampling: shape diameter, σ, exact distances, kind mix, hard negatives, determinism, cache."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import vtk
from scipy import ndimage

from NUDFCore import sampling
from NUDFCore.errors import InputError
from NUDFCore.io import Volume, make_polydata, polydata_points, polydata_triangles, write_volume
from NUDFCore.meshtools import clip_by_plane, face_normals

# ------------------------------------------------------------------------------------------------ fixtures


def _triangulated(poly: vtk.vtkPolyData) -> vtk.vtkPolyData:
    t = vtk.vtkTriangleFilter()
    t.SetInputData(poly)
    t.Update()
    return make_polydata(polydata_points(t.GetOutput()), polydata_triangles(t.GetOutput()))


def sphere(radius: float = 10.0, res: int = 40, clip_above: float | None = None, clip_below: float | None = None):
    """A UV sphere (outward winding), optionally opened by removing the part above/below a height."""
    s = vtk.vtkSphereSource()
    s.SetRadius(radius)
    s.SetThetaResolution(res)
    s.SetPhiResolution(res)
    s.Update()
    out = s.GetOutput()
    for z, normal in ((clip_above, (0, 0, -1)), (clip_below, (0, 0, 1))):
        if z is None:
            continue
        out = clip_by_plane(out, (0.0, 0.0, z), normal)
    return _triangulated(out)


def tube(radius_of_z, z0: float = -40.0, z1: float = 40.0, dz: float = 1.0, n_theta: int = 64):
    """An open tube along z with a radius that varies with z; winding normals point out of the lumen."""
    zs = np.arange(z0, z1 + 1e-9, dz)
    th = np.linspace(0.0, 2 * math.pi, n_theta, endpoint=False)
    r = radius_of_z(zs)
    pts = np.stack(
        [r[:, None] * np.cos(th)[None, :], r[:, None] * np.sin(th)[None, :], np.repeat(zs[:, None], n_theta, 1)], -1
    ).reshape(-1, 3)
    tris = []
    for a in range(len(zs) - 1):
        for b in range(n_theta):
            p00, p01 = a * n_theta + b, a * n_theta + (b + 1) % n_theta
            p10, p11 = p00 + n_theta, p01 + n_theta
            tris += [(p00, p01, p11), (p00, p11, p10)]
    tris = np.array(tris)
    n = face_normals(pts, tris)
    cent = pts[tris].mean(axis=1)
    radial = cent.copy()
    radial[:, 2] = 0
    assert np.all(np.einsum("ij,ij->i", n, radial) > 0), "tube winding must point out of the lumen"
    return make_polydata(pts, tris)


def smoothstep_radius(r_thin: float, r_thick: float):
    def f(z):
        t = np.clip((z + 5.0) / 10.0, 0.0, 1.0)
        return r_thin + (r_thick - r_thin) * t * t * (3 - 2 * t)

    return f


def scene_hu(points_lps: np.ndarray) -> np.ndarray:
    """HU of the synthetic scene at LPS points (..., 3)."""
    x, y, z = points_lps[..., 0], points_lps[..., 1], points_lps[..., 2]
    arr = np.full(x.shape, 80.0)
    arr[x**2 + y**2 + z**2 < 100] = 350
    arr[x**2 + y**2 + (z + 22) ** 2 < 400] = 350
    arr[x > 25] = -800
    return arr.astype(np.int16)


def near_known_edge(p: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point to the nearest intensity edge of the scene other than the GT cap."""
    d_slab = np.abs(p[:, 0] - 25.0)
    d_la = np.abs(np.linalg.norm(p - [0, 0, -22], axis=1) - 20.0)
    d_laa = np.abs(np.linalg.norm(p, axis=1) - 10.0)
    return np.minimum(np.minimum(d_slab, d_la), d_laa)


def scene(spacing: float = 1.0, n: int = 80):
    """A small CT-like scene: an LAA-like ball (GT = its surface above the ostium plane z = -4), an LA ball
    below it, and a lung-like slab at x > 25 whose face (x = 25) is an edge far from the GT."""
    g = (np.arange(n) - n / 2 + 0.5) * spacing
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    vol = Volume(scene_hu(np.stack([xx, yy, zz], -1)), [spacing] * 3, [g[0]] * 3)
    mesh = sphere(10.0, res=48, clip_below=-4.0)
    geom = dict(seed_lps=[0.0, 0.0, 3.0], ostium_center_lps=[0.0, 0.0, -4.0], ostium_normal_lps=[0.0, 0.0, 1.0])
    return vol, mesh, geom


def brute_force_distance(points: np.ndarray, pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Independent exact point-to-triangle distance: plane projection if inside, else nearest edge segment."""
    a, b, c = (pts[tris[:, i]] for i in range(3))
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    out = np.empty(len(points))
    for s in range(0, len(points), 256):
        p = points[s : s + 256, None, :]  # (P, 1, 3)
        h = np.einsum("pfc,fc->pf", p - a[None], n)
        q = p - h[..., None] * n[None]  # projection on each plane

        def side(u, v):
            return np.einsum("pfc,fc->pf", np.cross(v[None] - u[None], q - u[None]), n)

        inside = (side(a, b) >= 0) & (side(b, c) >= 0) & (side(c, a) >= 0)
        best = np.where(inside, np.abs(h), np.inf)
        for u, v in ((a, b), (b, c), (c, a)):
            e = v - u
            t = np.clip(np.einsum("pfc,fc->pf", p - u[None], e) / np.einsum("fc,fc->f", e, e)[None], 0.0, 1.0)
            d = np.linalg.norm(p - (u[None] + t[..., None] * e[None]), axis=-1)
            best = np.minimum(best, d)
        out[s : s + 256] = best.min(axis=1)
    return out


# ------------------------------------------------------------------------------------------ shape diameter


def test_shape_diameter_closed_sphere_matches_diameter_with_45deg_cone():
    mesh = sphere(10.0, res=40)
    sd = sampling.shape_diameter(mesh)
    # Rays within 22.5° of the inward normal: chord = D cos θ, mean cos θ ≈ 0.96.
    assert 0.93 * 20 < np.median(sd) < 0.99 * 20
    assert np.percentile(sd, 5) > 0.88 * 20 and sd.max() <= 20.0 + 1e-6
    outside = sampling.shape_diameter(mesh, flip=True, no_hit_cap_mm=35.0)
    np.testing.assert_allclose(outside, 35.0)  # nothing outside a sphere: every ray capped


def test_shape_diameter_open_sphere_caps_faces_looking_through_the_hole():
    mesh = sphere(10.0, res=48, clip_above=8.0)  # hole of radius 6 mm at the top
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    cz = pts[tris].mean(axis=1)[:, 2]
    sd = sampling.shape_diameter(mesh, no_hit_cap_mm=30.0)
    bottom = cz < -9.8  # inward rays go up through the hole: most miss
    equator = np.abs(cz) < 1.5
    assert bottom.sum() > 10 and equator.sum() > 50
    np.testing.assert_allclose(sd[bottom], 30.0)
    assert 0.90 * 20 < np.median(sd[equator]) < 1.0 * 20


def test_shape_diameter_open_plane_is_capped_on_both_sides():
    src = vtk.vtkPlaneSource()
    src.SetOrigin(-20, -20, 0)
    src.SetPoint1(20, -20, 0)
    src.SetPoint2(-20, 20, 0)
    src.SetResolution(20, 20)
    src.Update()
    plane = _triangulated(src.GetOutput())
    for flip in (False, True):
        np.testing.assert_allclose(sampling.shape_diameter(plane, flip=flip, no_hit_cap_mm=12.5), 12.5)


def test_shape_diameter_and_sigma_follow_local_tube_width():
    mesh = tube(smoothstep_radius(2.0, 5.0))
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    cz = pts[tris].mean(axis=1)[:, 2]
    sd = sampling.shape_diameter(mesh)
    thin, thick = (cz > -30) & (cz < -12), (cz > 12) & (cz < 30)
    assert abs(np.median(sd[thin]) - 4.0) < 0.15 * 4.0
    assert abs(np.median(sd[thick]) - 10.0) < 0.15 * 10.0
    # Subsampled faces + nearest-face fill give the same picture.
    sd_sub = sampling.shape_diameter(mesh, max_faces=800, seed=3)
    assert abs(np.median(sd_sub[thin]) - np.median(sd[thin])) < 0.3
    assert abs(np.median(sd_sub[thick]) - np.median(sd[thick])) < 0.5
    sig = sampling.sigma_from_sd(sd)
    assert np.median(sig[thick]) > 2.0 * np.median(sig[thin])

    # The sampled offsets follow σ = SD/4: the median of |N(0, σ)| is 0.674 σ.
    vol = Volume(np.zeros((10, 10, 10), np.int16), [10.0] * 3, [-50.0] * 3)  # no edges at all
    s = sampling.sample_case(
        vol, mesh, seed_lps=[0, 0, 20], ostium_center_lps=[0, 0, -40], ostium_normal_lps=[0, 0, 1],
        n_points=40_000, seed=0, mix={0: 1.0}, n_lumen=200, sd_max_faces=2000,
    )
    z, d = s.points_lps[:, 2], s.distance_mm
    r = np.linalg.norm(s.points_lps[:, :2], axis=1)
    assert np.all(r[(z > 12) & (z < 30)] < 5.0 + 1e-3) and np.all(r[(z > -30) & (z < -12)] < 2.0 + 1e-3)
    med_thin = np.median(d[(z > -30) & (z < -12)])
    med_thick = np.median(d[(z > 12) & (z < 30)])
    assert abs(med_thin - 0.674 * np.median(sig[thin])) < 0.2 * 0.674 * np.median(sig[thin])
    assert abs(med_thick - 0.674 * np.median(sig[thick])) < 0.2 * 0.674 * np.median(sig[thick])
    assert med_thick > 2.0 * med_thin


def test_thin_faces_are_oversampled_and_missing_edges_fall_back_to_uniform(caplog):
    mesh = tube(smoothstep_radius(1.2, 5.0))  # thin part: SD ≈ 2.4 mm < 3.5 mm; thick part ≈ 10 mm
    pts, tris = polydata_points(mesh), polydata_triangles(mesh)
    cz = pts[tris].mean(axis=1)[:, 2]
    area = np.linalg.norm(np.cross(pts[tris[:, 1]] - pts[tris[:, 0]], pts[tris[:, 2]] - pts[tris[:, 0]]), axis=1) / 2
    flat = Volume(np.full((8, 8, 8), 40, np.int16), [12.0] * 3, [-48.0] * 3)  # no intensity edge anywhere
    with caplog.at_level("WARNING", logger="NUDFCore.sampling"):
        s = sampling.sample_case(
            flat, mesh, seed_lps=[0, 0, 20], ostium_center_lps=[0, 0, -40], ostium_normal_lps=[0, 0, 1],
            n_points=20_000, seed=0, mix={0: 0.9, 3: 0.1}, n_lumen=50, thin_weight=10.0, sd_max_faces=2000,
        )
    assert s.counts()[3] == 0 and s.counts()[2] == 2000 and len(s) == 20_000
    assert any("edge hard negatives" in r.getMessage() for r in caplog.records)
    z = s.points_lps[s.kind == 0, 2]
    thin, thick = (-30, -12), (12, 30)
    density = [
        ((z > lo) & (z < hi)).sum() / area[(cz > lo) & (cz < hi)].sum() for lo, hi in (thin, thick)
    ]
    assert 8.0 < density[0] / density[1] < 12.5, density


def test_sigma_is_clamped():
    np.testing.assert_allclose(sampling.sigma_from_sd([0.0, 4.0, 100.0]), [0.1, 1.0, 3.0])


# ------------------------------------------------------------------------------------------- sample_case


@pytest.fixture(scope="module")
def scene_samples():
    vol, mesh, geom = scene()
    s = sampling.sample_case(vol, mesh, n_points=12_000, seed=7, n_lumen=500, **geom)
    return vol, mesh, geom, s


def test_distances_are_exact_point_to_triangle(scene_samples):
    _, mesh, _, s = scene_samples
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(s.kind == k), 150, replace=False) for k in range(5)])
    ref = brute_force_distance(s.points_lps[idx].astype(np.float64), polydata_points(mesh), polydata_triangles(mesh))
    np.testing.assert_allclose(s.distance_mm[idx], ref, atol=2e-4)


def test_kind_mix_matches_requested_shares(scene_samples):
    vol, mesh, geom, s = scene_samples
    n = len(s)
    assert n == 12_000 and s.points_lps.dtype == np.float32 and s.kind.dtype == np.int8
    for k, share in sampling.DEFAULT_MIX.items():
        assert abs(s.counts()[k] / n - share) <= 1.0 / n
    mix = {0: 0.3, 1: 0.2, 2: 0.2, 3: 0.2, 4: 0.1}
    s2 = sampling.sample_case(vol, mesh, n_points=3001, seed=1, mix=mix, n_lumen=50, **geom)
    assert len(s2) == 3001
    for k, share in mix.items():
        assert abs(s2.counts()[k] / 3001 - share) <= 1.0 / 3001


def test_near_surface_samples_are_on_their_side(scene_samples):
    _, _, _, s = scene_samples
    r = np.linalg.norm(s.points_lps.astype(np.float64), axis=1)
    lumen, outer = s.kind == 0, s.kind == 1
    assert np.all(r[lumen] <= 10.0 + 1e-3) and np.mean(r[outer] >= 10.0 - 0.02) > 0.99
    assert np.median(s.distance_mm[lumen]) < 3.0 and np.median(s.distance_mm[outer]) < 3.0
    lo, hi = s.box_lps
    uni = s.points_lps[s.kind == 2]
    assert np.all(uni >= lo) and np.all(uni <= hi) and np.all(hi - lo >= 90.0)


def test_edge_hard_negatives_lie_on_other_strong_edges(scene_samples):
    vol, _, _, s = scene_samples
    p = s.points_lps[s.kind == 3].astype(np.float64)
    assert len(p) == sampling.DEFAULT_MIX[3] * len(s)
    assert np.all(s.distance_mm[s.kind == 3] > 2.0)
    # Independent check 1: on one of the scene's known intensity edges (slab face, LA ball, LAA ball).
    assert np.all(near_known_edge(p) < 2.0)
    d_slab = np.abs(p[:, 0] - 25.0)
    d_la = np.abs(np.linalg.norm(p - [0, 0, -22], axis=1) - 20.0)
    assert np.mean(d_slab < 2.0) > 0.2 and np.mean(d_la < 2.0) > 0.2  # both other structures are used
    # Independent check 2: gradient magnitude of the smoothed CT there is far above the box's typical value.
    sm = ndimage.gaussian_filter(vol.array.astype(np.float64), 1.0)
    gmag = np.sqrt(sum(g**2 for g in np.gradient(sm)))
    at = lambda q: ndimage.map_coordinates(gmag, vol.lps_to_index(q)[:, ::-1].T, order=1)  # noqa: E731
    g_edge = at(p)
    g_uniform = at(s.points_lps[s.kind == 2].astype(np.float64))
    assert np.median(g_edge) > 40.0 and np.median(g_edge) > 10 * np.median(g_uniform)


def test_edge_voxels_with_rotated_anisotropic_volume():
    """Edges are found in patient mm whatever the voxel axes: rotated, flipped, anisotropic."""
    a = math.radians(30)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    direction = rot @ np.diag([1.0, -1.0, -1.0])
    spacing = np.array([0.9, 1.1, 1.6])
    size = (96, 90, 60)  # i, j, k
    centre_index = (np.array(size) - 1) / 2
    origin = -direction @ (spacing * centre_index)
    vol = Volume(np.zeros(size[::-1], np.int16), spacing, origin, direction)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    vol.array = scene_hu(vol.index_to_lps(np.stack([ii, jj, kk], -1)))
    box = np.array([[-30.0, -30.0, -40.0], [30.0, 30.0, 10.0]])
    idx, g, step, thr = sampling.edge_voxels(vol, box)
    p = vol.index_to_lps(idx)
    assert len(p) > 500 and thr >= 30.0 and np.all(g >= thr)
    assert np.all((p >= box[0] - 1e-6) & (p <= box[1] + 1e-6))
    assert np.all(near_known_edge(p) < 2.0)
    slab = np.abs(p[:, 0] - 25.0) < 2.0
    assert slab.sum() > 50 and np.ptp(p[slab, 1]) > 40  # the whole slab face inside the box is found


def test_beyond_ostium_hard_negatives_are_on_the_la_side(scene_samples):
    _, mesh, geom, s = scene_samples
    p = s.points_lps[s.kind == 4].astype(np.float64)
    h = (p - geom["ostium_center_lps"]) @ np.array(geom["ostium_normal_lps"])
    assert np.all(h < 0.0) and np.all(h >= -12.0 - 1.5)
    lateral = np.linalg.norm(p[:, :2], axis=1)
    r_ost = sampling.ostium_radius(mesh, geom["ostium_center_lps"], geom["ostium_normal_lps"])
    assert abs(r_ost - math.sqrt(100 - 16)) < 0.3
    assert np.all(lateral < r_ost + 10.0 + 1.5)
    assert np.median(s.distance_mm[s.kind == 4]) > 2.0  # mostly truly away from the LAA surface


def test_lumen_points_are_inside_the_laa(scene_samples):
    _, _, _, s = scene_samples
    q = s.lumen_points_lps.astype(np.float64)
    assert len(q) == 500
    assert np.all(np.linalg.norm(q, axis=1) < 10.0) and np.all(q[:, 2] > -4.0)


def test_winding_does_not_matter():
    vol, mesh, geom = scene()
    flipped = make_polydata(polydata_points(mesh), polydata_triangles(mesh)[:, ::-1])
    assert sampling.lumen_side_sign(mesh, geom["seed_lps"]) == 1
    assert sampling.lumen_side_sign(flipped, geom["seed_lps"]) == -1
    s = sampling.sample_case(vol, flipped, n_points=2000, seed=2, n_lumen=100, mix={0: 0.5, 1: 0.5}, **geom)
    r = np.linalg.norm(s.points_lps.astype(np.float64), axis=1)
    assert np.all(r[s.kind == 0] <= 10.0 + 1e-3) and np.mean(r[s.kind == 1] >= 10.0 - 0.02) > 0.99
    assert np.all(np.linalg.norm(s.lumen_points_lps, axis=1) < 10.0)


def test_determinism_by_seed(scene_samples):
    vol, mesh, geom, s = scene_samples
    again = sampling.sample_case(vol, mesh, n_points=12_000, seed=7, n_lumen=500, **geom)
    for f in ("points_lps", "distance_mm", "kind", "lumen_points_lps", "box_lps"):
        np.testing.assert_array_equal(getattr(again, f), getattr(s, f))
    other = sampling.sample_case(vol, mesh, n_points=12_000, seed=8, n_lumen=500, **geom)
    assert not np.array_equal(other.points_lps, s.points_lps)


def test_bad_inputs_raise_typed_errors():
    vol, mesh, geom = scene(n=20)
    with pytest.raises(InputError, match="kinds"):
        sampling.sample_case(vol, mesh, n_points=10, mix={7: 1.0}, **geom)
    with pytest.raises(InputError, match="non-negative"):
        sampling.sample_case(vol, mesh, n_points=10, mix={0: -1.0, 1: 2.0}, **geom)
    with pytest.raises(InputError, match="n_points"):
        sampling.sample_case(vol, mesh, n_points=0, **geom)
    with pytest.raises(InputError, match="normal"):
        sampling.sample_case(vol, mesh, n_points=10, **dict(geom, ostium_normal_lps=[0, 0, 0]))


# ------------------------------------------------------------------------------------------- metric, cache


def test_false_surface_rate_on_known_arrays():
    pred = np.array([0.5, 0.2, 2.0, 0.9, 0.99])
    true = np.array([4.0, 0.1, 5.0, 3.5, 3.0])
    # Predicted < 1 mm: indices 0, 1, 3, 4; truly > 3 mm: 0 and 3.
    assert sampling.false_surface_rate(pred, true) == pytest.approx(2 / 4)
    assert sampling.false_surface_rate(np.full(3, 2.0), np.zeros(3)) == 0.0
    assert sampling.false_surface_rate(pred, true, near_mm=0.6, far_mm=0.0) == pytest.approx(1.0)
    with pytest.raises(InputError):
        sampling.false_surface_rate(pred, true[:2])


class FakeCase:
    """The parts of ``data.Case`` that ``load_or_sample`` uses, counting the (expensive) CT loads."""

    def __init__(self, folder: Path):
        self.case_dir = folder
        self._vol, self._mesh, geom = scene(n=60)
        self.ct_path = folder / "ct.nii.gz"
        write_volume(self._vol, self.ct_path)
        self.seed_lps = np.array(geom["seed_lps"])
        self.ostium_center_lps = np.array(geom["ostium_center_lps"])
        self.ostium_normal_lps = np.array(geom["ostium_normal_lps"])
        self.volume_loads = 0

    def load_volume(self) -> Volume:
        self.volume_loads += 1
        return self._vol

    def load_mesh(self):
        return self._mesh


def test_cache_round_trip_and_corrupt_cache_regenerated(tmp_path):
    case = FakeCase(tmp_path)
    first = sampling.load_or_sample(case, n_points=3000, seed=4, n_lumen=100, sd_max_faces=1000)
    files = list(tmp_path.glob("samples_*.npz"))
    assert len(files) == 1 and case.volume_loads == 1
    again = sampling.load_or_sample(case, n_points=3000, seed=4, n_lumen=100, sd_max_faces=1000)
    assert case.volume_loads == 1  # served from the cache
    for f in ("points_lps", "distance_mm", "kind", "lumen_points_lps", "box_lps"):
        np.testing.assert_array_equal(getattr(again, f), getattr(first, f))
    # Other parameters -> another file.
    sampling.load_or_sample(case, n_points=3000, seed=5, n_lumen=100, sd_max_faces=1000)
    assert len(list(tmp_path.glob("samples_*.npz"))) == 2 and case.volume_loads == 2
    # Corrupt (garbage) and truncated caches are detected, regenerated and rewritten.
    raw = files[0].read_bytes()
    for damaged in (b"not a zip file at all", raw[: len(raw) // 2]):
        files[0].write_bytes(damaged)
        with pytest.raises(sampling.SampleCacheError):
            sampling.SampleSet.load(files[0])
        loads = case.volume_loads
        regen = sampling.load_or_sample(case, n_points=3000, seed=4, n_lumen=100, sd_max_faces=1000)
        assert case.volume_loads == loads + 1
        np.testing.assert_array_equal(regen.points_lps, first.points_lps)
        np.testing.assert_array_equal(sampling.SampleSet.load(files[0]).distance_mm, first.distance_mm)
    # A changed CT (its edges place the hard negatives) -> another file, not the stale one.
    changed = dataclasses.replace(case._vol, array=case._vol.array + 1.0)
    write_volume(changed, case.ct_path, overwrite=True)
    loads = case.volume_loads
    sampling.load_or_sample(case, n_points=3000, seed=4, n_lumen=100, sd_max_faces=1000)
    assert case.volume_loads == loads + 1 and len(list(tmp_path.glob("samples_*.npz"))) == 3
    # cache=False neither reads nor writes.
    files[0].unlink()
    sampling.load_or_sample(case, n_points=3000, seed=4, n_lumen=100, sd_max_faces=1000, cache=False)
    assert not files[0].exists()


def test_sampleset_rejects_inconsistent_files(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, points_lps=np.zeros((3, 3)), distance_mm=np.zeros(3), kind=np.zeros(3))
    with pytest.raises(sampling.SampleCacheError, match="lacks"):
        sampling.SampleSet.load(path)
    np.savez(
        path, points_lps=np.zeros((3, 3)), distance_mm=np.zeros(2), kind=np.zeros(3),
        lumen_points_lps=np.zeros((1, 3)), box_lps=np.zeros((2, 3)),
    )
    with pytest.raises(sampling.SampleCacheError, match="Inconsistent"):
        sampling.SampleSet.load(path)
    with pytest.raises(sampling.SampleCacheError, match="No sample file"):
        sampling.SampleSet.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------------ phantom


@pytest.fixture(scope="module")
def phantom_samples():
    phantom = pytest.importorskip("NUDFCore.phantom")
    case = phantom.generate_case(3, size="compact")
    meta = case.meta
    geom = {k: np.asarray(meta[k], float) for k in ("seed_lps", "ostium_center_lps", "ostium_normal_lps")}
    s = sampling.sample_case(case.volume, case.mesh_lps, n_points=20_000, seed=0, n_lumen=300, **geom)
    return case, geom, s


def meta_hu(case, name: str, default: float) -> float:
    return float(case.meta.get("hu", {}).get(name, default))


def test_phantom_samples_are_anatomically_placed(phantom_samples):
    case, geom, s = phantom_samples
    vol, mesh = case.volume, case.mesh_lps
    assert sampling.lumen_side_sign(mesh, geom["seed_lps"]) == 1  # the phantom winds normals out of the lumen

    def hu(p):
        return ndimage.map_coordinates(vol.array.astype(np.float64), vol.lps_to_index(p)[:, ::-1].T, order=1)

    lumen = s.lumen_points_lps.astype(np.float64)
    assert len(lumen) == 300
    assert np.all((lumen - geom["ostium_center_lps"]) @ geom["ostium_normal_lps"] > 0)
    blood, wall = meta_hu(case, "blood", 300.0), meta_hu(case, "myocardium", 80.0)
    middle = 0.5 * (blood + wall)
    if not case.meta.get("filling_defect", False):
        assert np.median(hu(lumen)) > middle and np.mean(hu(lumen) > middle) > 0.9  # blood, not wall
    assert np.median(hu(lumen)) > np.median(hu(s.points_lps[s.kind == 1]))  # brighter than the outer side
    # Exact distances on the real GT mesh (subset vs the independent brute force).
    rng = np.random.default_rng(1)
    idx = np.concatenate([rng.choice(np.flatnonzero(s.kind == k), 20, replace=False) for k in range(5)])
    ref = brute_force_distance(s.points_lps[idx].astype(np.float64), polydata_points(mesh), polydata_triangles(mesh))
    np.testing.assert_allclose(s.distance_mm[idx], ref, atol=2e-4)
    # Hard negatives: far from the GT on strong edges; beyond-ostium ones on the LA side.
    assert np.all(s.distance_mm[s.kind == 3] > 2.0)
    sm = ndimage.gaussian_filter(vol.array.astype(np.float64), 1.0 / vol.spacing[::-1])
    gmag = np.sqrt(sum((g / sp) ** 2 for g, sp in zip(np.gradient(sm), vol.spacing[::-1])))
    g3 = ndimage.map_coordinates(gmag, vol.lps_to_index(s.points_lps[s.kind == 3])[:, ::-1].T, order=1)
    g2 = ndimage.map_coordinates(gmag, vol.lps_to_index(s.points_lps[s.kind == 2])[:, ::-1].T, order=1)
    assert np.median(g3) > 30.0 and np.median(g3) > 4 * np.median(g2)
    beyond = s.points_lps[s.kind == 4].astype(np.float64)
    assert np.all((beyond - geom["ostium_center_lps"]) @ geom["ostium_normal_lps"] < 0)
