"""Crop mapping exactness: patient mm ↔ normalised crop coordinates ↔ resampled voxels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from NUDFCore.crop import (
    CropGeometry,
    HUWindow,
    extract_crop,
    random_rotation,
    rotation_matrix,
    subvolume_around,
)
from NUDFCore.errors import InputError
from NUDFCore.io import Volume

torch.set_num_threads(2)

# An oblique direction matrix (columns = i, j, k axes) and anisotropic spacing.
DIRECTION = rotation_matrix([1.0, 2.0, -0.5], np.deg2rad(27.0))
SPACING = np.array([0.7, 0.45, 1.3])
ORIGIN = np.array([-40.0, 12.0, 250.0])
COEF = np.array([3.0, -2.0, 1.5])  # HU per mm


def _linear_volume(shape_kji=(80, 150, 110)) -> Volume:
    """A CT whose HU is an exact linear function of the LPS position (trilinear interpolation is exact)."""
    vol = Volume(np.zeros(shape_kji, np.float32), SPACING, ORIGIN, DIRECTION)
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape_kji], indexing="ij")
    pts = vol.index_to_lps(np.stack([i, j, k], axis=-1))
    vol.array = (pts @ COEF - (vol.index_to_lps(np.array([55.0, 75.0, 40.0])) @ COEF)).astype(np.float32)
    return vol


def _hu(points_lps, vol):
    return np.asarray(points_lps) @ COEF - vol.index_to_lps(np.array([55.0, 75.0, 40.0])) @ COEF


def test_geometry_mapping_round_trip_and_spacing():
    rot = rotation_matrix([0.3, -1, 0.2], 0.4)
    g = CropGeometry([10.0, -5.0, 100.0], size_mm=70.0, n=65, rotation_lps=rot)
    assert g.spacing_mm == pytest.approx(70.0 / 64)
    grid = g.grid_points_lps()
    # first/last voxel centres are exactly size_mm apart along each crop axis, and map to ±1
    np.testing.assert_allclose(np.linalg.norm(grid[0, 0, -1] - grid[0, 0, 0]), 70.0, atol=1e-9)
    np.testing.assert_allclose(g.lps_to_normalized(grid[0, 0, 0]), [-1, -1, -1], atol=1e-12)
    np.testing.assert_allclose(g.lps_to_normalized(grid[-1, 0, 0]), [-1, -1, 1], atol=1e-12)  # z is axis 0
    np.testing.assert_allclose(g.lps_to_normalized(g.center_lps), [0, 0, 0], atol=1e-12)
    p = np.random.default_rng(0).normal(size=(100, 3)) * 20 + g.center_lps
    np.testing.assert_allclose(g.normalized_to_lps(g.lps_to_normalized(p)), p, atol=1e-9)
    # the x axis of the crop runs along rotation column 0
    np.testing.assert_allclose(grid[0, 0, 1] - grid[0, 0, 0], rot[:, 0] * g.spacing_mm, atol=1e-9)


def test_jacobian_turns_normalised_gradient_into_lps_gradient():
    g = CropGeometry([1.0, 2.0, 3.0], 50.0, 33, rotation_matrix([1, 1, 0], 0.3))
    a = np.array([0.3, -1.2, 2.0])  # u(p) = a·p, ∇u = a in LPS
    # the same function in normalised coordinates: u(q) = a·(R q h + c) → ∂u/∂q = h Rᵀ a
    grad_norm = g.half_size_mm * g.rotation_lps.T @ a
    np.testing.assert_allclose(g.normalized_gradient_to_lps(grad_norm), a, atol=1e-12)


@pytest.mark.parametrize("rotated", [False, True])
def test_crop_values_match_analytic_volume_through_grid_sample(rotated):
    vol = _linear_volume()
    centre = vol.index_to_lps(np.array([55.0, 75.0, 40.0])) + np.array([1.3, -0.7, 2.1])
    rot = rotation_matrix([0.2, 0.9, -0.4], np.deg2rad(9.0)) if rotated else np.eye(3)
    g = CropGeometry(centre, size_mm=40.0, n=41, rotation_lps=rot)
    window = HUWindow(-1e5, 1e5, 100.0)  # no clipping: values stay linear
    crop = extract_crop(vol, g, window)
    assert crop.shape == (41, 41, 41) and crop.dtype == np.float32
    # every voxel centre holds the value at its LPS position
    np.testing.assert_allclose(crop, _hu(g.grid_points_lps(), vol) / 100.0, atol=1e-3)
    # grid_sample(align_corners=True) at lps_to_normalized(p) gives the value at arbitrary points p
    p = centre + np.random.default_rng(1).uniform(-15, 15, size=(500, 3))
    q = torch.as_tensor(g.lps_to_normalized(p), dtype=torch.float32).view(1, 1, 1, -1, 3)
    vals = F.grid_sample(torch.from_numpy(crop)[None, None], q, align_corners=True).view(-1).numpy()
    np.testing.assert_allclose(vals, _hu(p, vol) / 100.0, atol=2e-3)


def test_bright_sphere_lands_at_its_lps_position():
    vol = Volume(np.zeros((70, 120, 90), np.float32), SPACING, ORIGIN, DIRECTION)
    k, j, i = np.meshgrid(*[np.arange(s) for s in vol.array.shape], indexing="ij")
    pts = vol.index_to_lps(np.stack([i, j, k], axis=-1))
    c = vol.index_to_lps(np.array([40.0, 60.0, 30.0]))
    vol.array[:] = np.where(np.linalg.norm(pts - c, axis=-1) < 6.0, 400.0, -900.0)
    g = CropGeometry(c + [3.0, -4.0, 2.0], size_mm=50.0, n=64, rotation_lps=rotation_matrix([0, 0, 1], 0.15))
    crop = extract_crop(vol, g)  # default window: clip −1000..1000, /1000
    assert crop.min() >= -1.0 and crop.max() <= 1.0
    bright = crop > 0.0
    centroid = g.grid_points_lps()[bright].mean(axis=0)
    np.testing.assert_allclose(centroid, c, atol=0.3)  # well below a crop voxel (0.79 mm)


def test_outside_ct_is_air_and_subvolume_cache_is_equivalent():
    vol = _linear_volume()
    centre = vol.index_to_lps(np.array([55.0, 75.0, 40.0]))
    g = CropGeometry(centre, 30.0, 24, rotation_lps=random_rotation(np.random.default_rng(3), 10))
    full = extract_crop(vol, g, HUWindow(-1e5, 1e5, 1.0))
    sub = subvolume_around(vol, centre[None], margin_mm=30.0 * np.sqrt(3) / 2 + 2)
    assert np.prod(sub.GetSize()) < vol.array.size
    np.testing.assert_allclose(extract_crop(sub, g, HUWindow(-1e5, 1e5, 1.0)), full, atol=1e-3)
    far = CropGeometry(centre + 1000.0, 30.0, 8)
    np.testing.assert_array_equal(extract_crop(vol, far), -1.0)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        CropGeometry([0, 0, 0], size_mm=-1)
    with pytest.raises(InputError):
        CropGeometry([0, 0, 0], n=2)
    with pytest.raises(InputError):
        CropGeometry([0, 0, 0], rotation_lps=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(InputError):
        HUWindow(100, -100)
