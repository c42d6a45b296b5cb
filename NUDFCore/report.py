"""Pictures of a segmentation for the demo and the docs: a CT slice with contours, and a 3D view.

- :func:`render_slice_overlay` resamples one CT slice with SimpleITK, cuts the meshes with the slice plane
  (vtkCutter) and draws the intersection contours on it with numpy — no OpenGL needed, so it works on any
  headless machine and its pixels can be tested exactly. Slices follow the radiological convention
  (patient's right on the image left; anterior/superior at the top).
- :func:`render_3d` renders the mesh opaque over the ground truth (translucent) off-screen with vtk
  (EGL/OSMesa when there is no display). If OpenGL rendering is unavailable or returns a blank image, a small
  numpy renderer (dense surface splats, z-buffer, Lambert shading) draws the same view instead.

Coordinates are LPS mm; PNGs are written atomically (no partial file is left on failure).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .io import Volume, atomic_output, check_output_path, polydata_points, polydata_triangles
from .meshtools import mesh_area, sample_surface

APPENDAGE_RGB = (220, 70, 50)  # the mesh (a warm red)
GT_RGB = (40, 200, 90)  # the ground truth (green)
RIM_RGB = (30, 30, 30)  # the predicted ostium rim in 3D views
BACKGROUND_RGB = (255, 255, 255)

# Image axes (columns to the right, rows downward) in LPS for each plane, radiological convention.
_PLANES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # columns -> L, rows -> P (viewed from the feet)
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # columns -> L, rows -> I (viewed from the front)
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # columns -> P, rows -> I (viewed from the left)
}


# ----------------------------------------------------------------------------------------------- PNG
def write_png(rgb: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write an (H, W, 3) uint8 image (row 0 at the top) as PNG with vtkPNGWriter, atomically."""
    p = check_output_path(path, (".png",), overwrite)
    img = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"An RGB image of shape (H, W, 3) is needed; got {img.shape}.")
    h, w, _ = img.shape
    data = vtk.vtkImageData()
    data.SetDimensions(w, h, 1)
    arr = numpy_support.numpy_to_vtk(np.flipud(img).reshape(-1, 3).copy(), deep=True)  # vtk rows go up
    arr.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(arr)
    with atomic_output(p, suffix=".png") as tmp:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(data)
        writer.Write()
        if tmp.stat().st_size == 0:
            raise OSError(f"vtk could not write {p}.")
    return p


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG back as an (H, W, C) uint8 array, row 0 at the top (vtkPNGReader)."""
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    out = reader.GetOutput()
    w, h, _ = out.GetDimensions()
    arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars())
    return np.flipud(arr.reshape(h, w, -1)).copy()


# -------------------------------------------------------------------------------------- slice overlay
def plane_axes(plane: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit LPS vectors (column direction, row direction, slice normal) of a named plane."""
    if plane not in _PLANES:
        raise InputError(f"Unknown plane {plane!r}: use one of {', '.join(_PLANES)}.")
    u, v = (np.array(a) for a in _PLANES[plane])
    return u, v, np.cross(u, v)


def _cut_segments(mesh_lps: vtk.vtkPolyData, origin: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Line segments (S, 2, 3) where the plane cuts the mesh."""
    pl = vtk.vtkPlane()
    pl.SetOrigin(*origin)
    pl.SetNormal(*normal)
    cut = vtk.vtkCutter()
    cut.SetCutFunction(pl)
    cut.SetInputData(mesh_lps)
    cut.Update()
    out = cut.GetOutput()
    pts = polydata_points(out)
    lines = out.GetLines()
    if lines is None or lines.GetNumberOfCells() == 0:
        return np.zeros((0, 2, 3))
    offsets = numpy_support.vtk_to_numpy(lines.GetOffsetsArray())
    conn = numpy_support.vtk_to_numpy(lines.GetConnectivityArray())
    segs = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        ids = conn[a:b]
        segs.extend(zip(ids[:-1], ids[1:]))
    if not segs:
        return np.zeros((0, 2, 3))
    s = np.asarray(segs)
    return np.stack([pts[s[:, 0]], pts[s[:, 1]]], axis=1)


def _draw_segments(img: np.ndarray, seg_px: np.ndarray, rgb: Sequence[int], width_px: int) -> int:
    """Rasterise (S, 2, 2) segments given as (col, row) pixel coordinates; return pixels painted."""
    if len(seg_px) == 0:
        return 0
    h, w, _ = img.shape
    a, b = seg_px[:, 0], seg_px[:, 1]
    n = np.maximum(np.ceil(np.linalg.norm(b - a, axis=1) * 2).astype(int), 1)
    pts = [a[i] + (b[i] - a[i]) * (np.arange(n[i] + 1)[:, None] / n[i]) for i in range(len(a))]
    p = np.round(np.concatenate(pts)).astype(int)
    r = max(int(width_px) // 2, 0)
    offs = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if dx * dx + dy * dy <= r * r + r]
    cols = np.concatenate([p[:, 0] + dx for dx, _ in offs])
    rows = np.concatenate([p[:, 1] + dy for _, dy in offs])
    ok = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    idx = np.unique(rows[ok] * w + cols[ok])
    img.reshape(-1, 3)[idx] = np.asarray(rgb, dtype=np.uint8)
    return int(len(idx))


def slice_overlay_image(
    volume: Volume,
    mesh_lps: vtk.vtkPolyData,
    *,
    gt_mesh_lps: vtk.vtkPolyData | None = None,
    plane: str = "axial",
    through_lps: Sequence[float] | None = None,
    window: tuple[float, float] = (-200.0, 600.0),
    fov_mm: float | None = None,
    size_px: int = 512,
    line_px: int = 2,
) -> tuple[np.ndarray, dict]:
    """The picture of :func:`render_slice_overlay` as an (H, W, 3) uint8 array, and its geometry.

    The slice passes through ``through_lps`` (default: the centre of the mesh's bounding box) and is
    ``fov_mm`` wide (default: 1.6 × the meshes' in-plane extent, at least 40 mm), centred on that point.
    The returned dict holds ``origin_lps`` (centre of the top-left pixel), ``pixel_mm``, ``axes_lps`` (column,
    row, normal) and the number of contour pixels drawn per mesh.
    """
    if mesh_lps is None or mesh_lps.GetNumberOfPoints() == 0:
        raise InputError("The mesh to overlay is empty.")
    lo, hi = (float(x) for x in window)
    if not hi > lo:
        raise InputError(f"The window must be (low, high) with high > low; got {window}.")
    if size_px < 16:
        raise InputError(f"size_px must be at least 16; got {size_px}.")
    u, v, n = plane_axes(plane)
    pts = polydata_points(mesh_lps)
    if gt_mesh_lps is not None and gt_mesh_lps.GetNumberOfPoints():
        pts_all = np.concatenate([pts, polydata_points(gt_mesh_lps)])
    else:
        pts_all = pts
    centre = (
        0.5 * (pts.min(axis=0) + pts.max(axis=0)) if through_lps is None else np.asarray(through_lps, float)
    )
    if fov_mm is None:
        extent = max(np.ptp(pts_all @ u), np.ptp(pts_all @ v))
        fov_mm = max(40.0, 1.6 * float(extent))
    px = float(fov_mm) / size_px
    origin = centre - u * px * (size_px - 1) / 2 - v * px * (size_px - 1) / 2
    direction = np.column_stack([u, v, n])
    sl = sitk.Resample(
        sitk.Cast(volume.to_sitk(), sitk.sitkFloat32),
        [size_px, size_px, 1],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [px, px, px],
        direction.ravel().tolist(),
        -1024.0,
        sitk.sitkFloat32,
    )
    hu = sitk.GetArrayFromImage(sl)[0]  # [row, col]
    grey = np.clip((hu - lo) / (hi - lo), 0.0, 1.0) * 255.0
    img = np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)

    def to_px(seg: np.ndarray) -> np.ndarray:
        d = seg - origin
        return np.stack([d @ u, d @ v], axis=-1) / px

    drawn = {}
    if gt_mesh_lps is not None and gt_mesh_lps.GetNumberOfPoints():
        drawn["gt"] = _draw_segments(img, to_px(_cut_segments(gt_mesh_lps, centre, n)), GT_RGB, line_px)
    drawn["mesh"] = _draw_segments(img, to_px(_cut_segments(mesh_lps, centre, n)), APPENDAGE_RGB, line_px)
    info = {"origin_lps": origin, "pixel_mm": px, "axes_lps": (u, v, n), "through_lps": centre,
            "contour_pixels": drawn}
    return img, info


def render_slice_overlay(
    volume: Volume,
    mesh_lps: vtk.vtkPolyData,
    out_png: str | os.PathLike,
    *,
    gt_mesh_lps: vtk.vtkPolyData | None = None,
    plane: str = "axial",
    through_lps: Sequence[float] | None = None,
    window: tuple[float, float] = (-200.0, 600.0),
    fov_mm: float | None = None,
    size_px: int = 512,
    overwrite: bool = False,
) -> Path:
    """Write a PNG of a CT slice (``window`` in HU) with the mesh's contour (red) and the GT's (green).

    See :func:`slice_overlay_image` for the slice placement. A slice that misses the mesh still gives a
    picture (without contour), so check ``through_lps`` when the contour is absent.
    """
    check_output_path(out_png, (".png",), overwrite)  # fail before the work
    img, _ = slice_overlay_image(volume, mesh_lps, gt_mesh_lps=gt_mesh_lps, plane=plane,
                                 through_lps=through_lps, window=window, fov_mm=fov_mm, size_px=size_px)
    return write_png(img, out_png, overwrite=overwrite)


# -------------------------------------------------------------------------------------------- 3D view
DEFAULT_VIEW_LPS = (1.0, -1.0, 0.6)  # camera towards patient left, anterior, a little superior: sees the LAA


def _view_basis(view_direction_lps: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of a camera placed along ``view_direction_lps``, superior up."""
    d = np.asarray(view_direction_lps, dtype=np.float64)
    if np.linalg.norm(d) == 0:
        raise InputError("view_direction_lps must be a non-zero vector.")
    f = -d / np.linalg.norm(d)
    up = np.array([0.0, 0.0, 1.0])
    if abs(f @ up) > 0.99:
        up = np.array([0.0, -1.0, 0.0])  # looking along S/I: anterior up
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    return r, np.cross(r, f), f


def _offscreen_window() -> vtk.vtkRenderWindow:
    """An off-screen render window; EGL (then OSMesa) when Linux has no display, to avoid the X fallback."""
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless:
        from vtkmodules import vtkRenderingOpenGL2 as gl

        for name in ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow"):
            cls = getattr(gl, name, None)
            if cls is not None:
                w = cls()
                w.SetOffScreenRendering(1)
                return w
    w = vtk.vtkRenderWindow()
    w.SetOffScreenRendering(1)
    return w


def _polyline_segments(curves) -> list[tuple[np.ndarray, Sequence[int]]]:
    """(segments (S, 2, 3), rgb) of each (points, rgb) polyline (a closed one repeats its first point)."""
    out = []
    for points, rgb in curves:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(p) >= 2:
            out.append((np.stack([p[:-1], p[1:]], axis=1), rgb))
    return out


def _solid_actor(port, rgb: Sequence[int]) -> vtk.vtkActor:
    """An actor drawing a pipeline's output in one colour (no scalar colouring)."""
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(port)
    mapper.ScalarVisibilityOff()
    a = vtk.vtkActor()
    a.SetMapper(mapper)
    a.GetProperty().SetColor(*(c / 255.0 for c in rgb))
    return a


def _render_3d_vtk(mesh_lps, gt_mesh_lps, size, view_direction_lps, curves=(), mesh_opacity=1.0) -> np.ndarray:
    ren = vtk.vtkRenderer()
    ren.SetBackground(*(c / 255.0 for c in BACKGROUND_RGB))
    ren.SetTwoSidedLighting(True)
    ren.SetUseDepthPeeling(False)  # depth peeling drops translucent actors under EGL (tested, vtk 9.6)

    def actor(mesh, rgb, opacity):
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(mesh)
        normals.SplittingOff()
        normals.ConsistencyOn()
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        a = vtk.vtkActor()
        a.SetMapper(mapper)
        prop = a.GetProperty()
        prop.SetColor(*(c / 255.0 for c in rgb))
        prop.SetOpacity(opacity)
        prop.SetSpecular(0.15)
        prop.SetSpecularPower(20)
        prop.BackfaceCullingOff()
        return a

    ren.AddActor(actor(mesh_lps, APPENDAGE_RGB, mesh_opacity))
    if gt_mesh_lps is not None:
        ren.AddActor(actor(gt_mesh_lps, GT_RGB, 0.3))
    edges = vtk.vtkFeatureEdges()  # the open rim, drawn dark so the ostium reads at a glance
    edges.SetInputData(mesh_lps)
    edges.BoundaryEdgesOn()
    edges.FeatureEdgesOff()
    edges.NonManifoldEdgesOff()
    edges.ManifoldEdgesOff()
    rim = _solid_actor(edges.GetOutputPort(), RIM_RGB)
    rim.GetProperty().SetLineWidth(3)
    ren.AddActor(rim)

    pts = polydata_points(mesh_lps)
    if gt_mesh_lps is not None:
        pts = np.concatenate([pts, polydata_points(gt_mesh_lps)])
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    for segs, rgb in _polyline_segments(curves):  # measurement contours etc. as tubes
        line = vtk.vtkPolyData()
        line.SetPoints(vtk.vtkPoints())
        line.GetPoints().SetData(numpy_support.numpy_to_vtk(np.vstack([segs[:, 0], segs[-1:, 1]]), deep=True))
        cells = vtk.vtkCellArray()
        cells.InsertNextCell(len(segs) + 1)
        for i in range(len(segs) + 1):
            cells.InsertCellPoint(i)
        line.SetLines(cells)
        tube = vtk.vtkTubeFilter()
        tube.SetInputData(line)
        tube.SetRadius(max(0.2, 0.005 * float(np.ptp(pts, axis=0).max())))
        tube.SetNumberOfSides(12)
        ren.AddActor(_solid_actor(tube.GetOutputPort(), rgb))
    r, up, f = _view_basis(view_direction_lps)
    cam = ren.GetActiveCamera()
    cam.SetFocalPoint(*centre)
    cam.SetPosition(*(centre - f * 10 * max(np.ptp(pts, axis=0).max(), 1.0)))
    cam.SetViewUp(*up)
    ren.ResetCamera()
    cam.Zoom(1.15)

    win = _offscreen_window()
    win.SetSize(int(size[0]), int(size[1]))
    win.SetMultiSamples(4)
    win.AddRenderer(ren)
    try:
        win.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(win)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        out = grab.GetOutput()
        w, h, _ = out.GetDimensions()
        arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
        return np.flipud(arr).copy()
    finally:
        win.Finalize()


def _render_3d_numpy(mesh_lps, gt_mesh_lps, size, view_direction_lps, seed: int = 0, curves=(),
                     mesh_opacity=1.0) -> np.ndarray:
    """Dense area-weighted surface splats, z-buffered, Lambert-shaded; GT blended translucent on top."""
    w, h = int(size[0]), int(size[1])
    r, up, f = _view_basis(view_direction_lps)
    meshes = [mesh_lps] + ([gt_mesh_lps] if gt_mesh_lps is not None else [])
    allp = np.concatenate([polydata_points(m) for m in meshes])
    x, y = allp @ r, allp @ up
    xc, yc = 0.5 * (x.min() + x.max()), 0.5 * (y.min() + y.max())
    scale = 0.84 * min(w / max(np.ptp(x), 1e-6), h / max(np.ptp(y), 1e-6))  # pixels per mm
    light = -f + 0.3 * up
    light /= np.linalg.norm(light)

    def layer(mesh, s):
        n = int(np.clip(10 * mesh_area(mesh) * scale**2, 20_000, 3_000_000))
        p, nrm, _ = sample_surface(mesh, n, s)
        col = np.round((p @ r - xc) * scale + (w - 1) / 2).astype(np.int64)
        row = np.round((h - 1) / 2 - (p @ up - yc) * scale).astype(np.int64)
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        pix, depth = (row * w + col)[ok], (p @ f)[ok]
        shade = 0.25 + 0.75 * np.abs(nrm[ok] @ light)
        order = np.lexsort((depth, pix))
        first = order[np.unique(pix[order], return_index=True)[1]]
        zbuf = np.full(w * h, np.inf)
        sbuf = np.zeros(w * h)
        zbuf[pix[first]] = depth[first]
        sbuf[pix[first]] = shade[first]
        return zbuf, sbuf

    img = np.tile(np.asarray(BACKGROUND_RGB, np.float64), (w * h, 1))
    zp, sp = layer(mesh_lps, seed)
    hit = np.isfinite(zp)
    img[hit] = mesh_opacity * sp[hit, None] * np.asarray(APPENDAGE_RGB, np.float64) + (1 - mesh_opacity) * img[hit]
    if gt_mesh_lps is not None:
        zg, sg = layer(gt_mesh_lps, seed + 1)
        front = np.isfinite(zg) & (zg < zp)
        gt_col = sg[front, None] * np.asarray(GT_RGB, np.float64)
        img[front] = 0.3 * gt_col + 0.7 * img[front]
    out = np.clip(np.round(img), 0, 255).astype(np.uint8).reshape(h, w, 3)
    for segs, rgb in _polyline_segments(curves):  # drawn on top (no depth test)
        px = np.stack([(segs @ r - xc) * scale + (w - 1) / 2, (h - 1) / 2 - (segs @ up - yc) * scale], axis=-1)
        _draw_segments(out, px, rgb, 3)
    return out


def render_3d_image(
    mesh_lps: vtk.vtkPolyData,
    *,
    gt_mesh_lps: vtk.vtkPolyData | None = None,
    size: tuple[int, int] = (800, 600),
    view_direction_lps: Sequence[float] = DEFAULT_VIEW_LPS,
    backend: str = "auto",
    curves_lps: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
    mesh_opacity: float = 1.0,
) -> tuple[np.ndarray, str]:
    """The picture of :func:`render_3d` as (H, W, 3) uint8, and the backend that drew it ("vtk"/"numpy")."""
    if mesh_lps is None or mesh_lps.GetNumberOfPoints() == 0 or len(polydata_triangles(mesh_lps)) == 0:
        raise InputError("The mesh to render is empty.")
    if gt_mesh_lps is not None and gt_mesh_lps.GetNumberOfPoints() == 0:
        gt_mesh_lps = None
    if backend not in ("auto", "vtk", "numpy"):
        raise InputError(f"Unknown backend {backend!r}: use auto, vtk or numpy.")
    if min(size) < 16:
        raise InputError(f"The image size must be at least 16x16; got {size}.")
    if backend in ("auto", "vtk"):
        try:
            img = _render_3d_vtk(mesh_lps, gt_mesh_lps, size, view_direction_lps, curves_lps, mesh_opacity)
            if img.shape[:2] == (size[1], size[0]) and img.std() > 1.0:
                return img, "vtk"
            reason = "blank image"
        except Exception as exc:  # noqa: BLE001 - any OpenGL failure means: use the fallback
            reason = str(exc)
        if backend == "vtk":
            raise RuntimeError(f"vtk off-screen rendering failed ({reason}).")
    return _render_3d_numpy(mesh_lps, gt_mesh_lps, size, view_direction_lps, curves=curves_lps,
                            mesh_opacity=mesh_opacity), "numpy"


def render_3d(
    mesh_lps: vtk.vtkPolyData,
    out_png: str | os.PathLike,
    *,
    gt_mesh_lps: vtk.vtkPolyData | None = None,
    size: tuple[int, int] = (800, 600),
    view_direction_lps: Sequence[float] = DEFAULT_VIEW_LPS,
    backend: str = "auto",
    overwrite: bool = False,
    curves_lps: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
    mesh_opacity: float = 1.0,
) -> Path:
    """Write an off-screen 3D render: the mesh opaque (red, dark rim) over the GT (translucent green).

    The camera sits along ``view_direction_lps`` from the scene centre (default: left-anterior-superior,
    the usual view of the LAA), superior up, framing both meshes. ``backend="auto"`` uses vtk/OpenGL and
    falls back to the numpy renderer when OpenGL is unavailable. ``curves_lps`` adds (points, RGB) polylines
    drawn as tubes (e.g. measurement contours; repeat the first point to close one); ``mesh_opacity`` < 1
    lets what lies inside the mesh show (e.g. a centreline).
    """
    check_output_path(out_png, (".png",), overwrite)  # fail before the work
    img, _ = render_3d_image(mesh_lps, gt_mesh_lps=gt_mesh_lps, size=size,
                             view_direction_lps=view_direction_lps, backend=backend, curves_lps=curves_lps,
                             mesh_opacity=mesh_opacity)
    return write_png(img, out_png, overwrite=overwrite)
