"""Pictures: slice overlays (geometry and orientation checked pixel by pixel) and off-screen 3D renders."""
from __future__ import annotations

import numpy as np
import pytest
import vtk

from NUDFCore.errors import InputError, OutputExistsError
from NUDFCore.io import Volume, make_polydata, polydata_points, polydata_triangles
from NUDFCore.meshtools import submesh
from NUDFCore.report import (
    APPENDAGE_RGB,
    GT_RGB,
    read_png,
    render_3d,
    render_3d_image,
    render_slice_overlay,
    slice_overlay_image,
)

SPACING = 0.8
ORIGIN = np.array([-20.0, -20.0, -20.0])


def sphere(r: float, res: int = 48) -> vtk.vtkPolyData:
    s = vtk.vtkSphereSource()
    s.SetRadius(r)
    s.SetThetaResolution(res)
    s.SetPhiResolution(res)
    s.Update()
    return make_polydata(polydata_points(s.GetOutput()), polydata_triangles(s.GetOutput()))


def cap(r: float, z_cut: float = -3.0) -> vtk.vtkPolyData:
    """An open spherical cap (the part of a sphere above z_cut): one boundary loop, like an LAA."""
    m = sphere(r)
    p, t = polydata_points(m), polydata_triangles(m)
    return submesh(m, p[t].mean(axis=1)[:, 2] > z_cut)


@pytest.fixture(scope="module")
def ct() -> Volume:
    """48^3 voxels of 0.8 mm: a bright ball (r=10 mm, 400 HU) at the origin, a small 1000 HU blob at
    LPS x=+12 (patient left) and another at z=+14 (superior), in -100 HU."""
    k, j, i = np.mgrid[0:48, 0:48, 0:48]
    x, y, z = (ORIGIN[a] + idx * SPACING for a, idx in enumerate((i, j, k)))
    arr = np.where(x**2 + y**2 + z**2 < 100.0, 400.0, -100.0).astype(np.float32)
    arr[(x - 12) ** 2 + y**2 + z**2 < 4.0] = 1000.0
    arr[x**2 + y**2 + (z - 14) ** 2 < 4.0] = 1000.0
    return Volume(arr, [SPACING] * 3, ORIGIN)


def _mask(img: np.ndarray, rgb) -> np.ndarray:
    return np.all(img[..., :3] == np.asarray(rgb, np.uint8), axis=-1)


def test_slice_overlay_contours_and_orientation(ct, tmp_path):
    pred, gt = sphere(10.0), sphere(12.0)
    img, info = slice_overlay_image(ct, pred, gt_mesh_lps=gt, plane="axial", through_lps=(0, 0, 0),
                                    fov_mm=40.0, size_px=400)
    assert img.shape == (400, 400, 3) and info["pixel_mm"] == pytest.approx(0.1)
    # contours are circles of radius 10 and 12 mm around the slice centre
    rows, cols = np.nonzero(_mask(img, APPENDAGE_RGB))
    rad = np.hypot(rows - 199.5, cols - 199.5) * info["pixel_mm"]
    assert len(rad) > 500 and np.all(np.abs(rad - 10.0) < 0.35)
    rows, cols = np.nonzero(_mask(img, GT_RGB))
    assert np.all(np.abs(np.hypot(rows - 199.5, cols - 199.5) * 0.1 - 12.0) < 0.35)
    # window (-200, 600): ball 400 HU -> 191, background -100 HU -> 32; the blob at patient left (LPS +x) is
    # on the image right in the radiological convention
    assert img[200, 200, 0] == pytest.approx(191, abs=2)
    assert img[30, 30, 0] == pytest.approx(32, abs=2)
    assert img[200, 200 + 126, 0] == 255 and img[200, 200 - 126, 0] == 32  # 12.6 mm: off the GT contour
    # coronal: superior at the top
    cor, _ = slice_overlay_image(ct, pred, plane="coronal", through_lps=(0, 0, 0), fov_mm=40.0, size_px=400)
    assert cor[200 - 140, 200, 0] == 255 and cor[200 + 140, 200, 0] == 32
    # sagittal: the plane x=0 misses the x=+12 blob, sees the superior one
    sag, _ = slice_overlay_image(ct, pred, plane="sagittal", through_lps=(0, 0, 0), fov_mm=40.0, size_px=400)
    assert sag[200 - 140, 200, 0] == 255 and _mask(sag, APPENDAGE_RGB).sum() > 500
    # written PNG reads back identical (row order preserved)
    p = render_slice_overlay(ct, pred, tmp_path / "axial.png", gt_mesh_lps=gt, through_lps=(0, 0, 0),
                             fov_mm=40.0, size_px=400)
    back = read_png(p)
    assert back.shape == (400, 400, 3) and np.array_equal(back, img)
    with pytest.raises(OutputExistsError):
        render_slice_overlay(ct, pred, p)


def test_slice_overlay_defaults_and_errors(ct, tmp_path):
    m = cap(10.0)
    img, info = slice_overlay_image(ct, m)  # default: through the mesh's bounding-box centre
    lo, hi = polydata_points(m).min(0), polydata_points(m).max(0)
    assert np.allclose(info["through_lps"], 0.5 * (lo + hi))
    assert img.std() > 10 and info["contour_pixels"]["mesh"] > 100
    with pytest.raises(InputError, match="Unknown plane"):
        slice_overlay_image(ct, m, plane="oblique")
    with pytest.raises(InputError, match="window"):
        slice_overlay_image(ct, m, window=(600, -200))
    with pytest.raises(InputError, match="empty"):
        slice_overlay_image(ct, vtk.vtkPolyData())
    with pytest.raises(InputError, match="extension"):
        render_slice_overlay(ct, m, tmp_path / "x.jpg")


@pytest.mark.parametrize("backend", ["vtk", "numpy"])
def test_render_3d(backend, tmp_path):
    pred, gt = cap(10.0), cap(11.5)
    if backend == "vtk":
        try:
            img, used = render_3d_image(pred, gt_mesh_lps=gt, size=(320, 240), backend="vtk")
        except RuntimeError as exc:  # no OpenGL on this machine: the numpy backend covers it
            pytest.skip(f"vtk off-screen rendering unavailable: {exc}")
    else:
        img, used = render_3d_image(pred, gt_mesh_lps=gt, size=(320, 240), backend="numpy")
    assert used == backend and img.shape == (240, 320, 3)
    r, g, b = (img[..., c].astype(int) for c in range(3))
    white = (r > 250) & (g > 250) & (b > 250)
    reddish = (r > g + 25) & (r > b + 25)  # the appendage, shaded, seen through the translucent GT
    greenish = (g > r + 25) & (g > b + 10)  # the GT shell beyond the prediction
    assert img.std() > 20
    assert 0.1 < reddish.mean() < 0.8 and greenish.sum() > 100
    assert white[:5].all() and white[:, :5].all()  # background at the borders, mesh framed inside
    # the appendage is in the middle of the picture
    rows, cols = np.nonzero(reddish)
    assert abs(cols.mean() - 160) < 40 and abs(rows.mean() - 120) < 50
    # without GT there is no green
    solo, _ = render_3d_image(pred, size=(160, 120), backend=backend)
    sr, sg, sb = (solo[..., c].astype(int) for c in range(3))
    assert not ((sg > sr + 25) & (sg > sb + 10)).any()
    # file output
    p = render_3d(pred, tmp_path / f"{backend}.png", gt_mesh_lps=gt, size=(320, 240), backend=backend)
    back = read_png(p)
    assert back.shape == (240, 320, 3) and np.array_equal(back, img)


def test_render_3d_errors(tmp_path):
    with pytest.raises(InputError, match="empty"):
        render_3d_image(vtk.vtkPolyData())
    with pytest.raises(InputError, match="backend"):
        render_3d_image(cap(5.0), backend="opengl")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(OutputExistsError):
        render_3d(cap(5.0), tmp_path / "x.png")
