"""Reading and writing CT volumes and surface meshes.

A :class:`Volume` holds voxels indexed ``[k, j, i]`` (as SimpleITK and Slicer's ``arrayFromVolume``) and
its geometry in LPS millimetres. Meshes are ``vtkPolyData`` in LPS inside the engine; files are written in
LPS by default (as Slicer does) and tagged ``SPACE=LPS``/``SPACE=RAS`` so readers know the frame.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from .errors import ImageGeometryError, ImageReadError, InputError, MeshIOError, OutputExistsError
from .frames import LPS_RAS_FLIP, check_frame, from_lps, to_lps

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MESH_EXTENSIONS = (".stl", ".vtp", ".obj", ".ply", ".vtk")


# --------------------------------------------------------------------------------------------- volumes
@dataclass
class Volume:
    """A 3D scalar image with its LPS geometry.

    ``array`` is indexed ``[k, j, i]``; ``spacing`` is (i, j, k) in mm; ``direction_lps`` has the unit
    i, j, k axis directions as *columns*; ``origin_lps`` is the centre of voxel (0, 0, 0).
    """

    array: np.ndarray
    spacing: np.ndarray
    origin_lps: np.ndarray
    direction_lps: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ImageGeometryError(f"A volume must be 3D; got an array of shape {self.array.shape}.")
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin_lps = np.asarray(self.origin_lps, dtype=np.float64).reshape(3)
        self.direction_lps = np.asarray(self.direction_lps, dtype=np.float64).reshape(3, 3)
        if np.any(self.spacing <= 0) or not np.all(np.isfinite(self.spacing)):
            raise ImageGeometryError(f"Voxel spacing must be positive and finite; got {self.spacing}.")
        if abs(abs(np.linalg.det(self.direction_lps)) - 1.0) > 1e-3:
            raise ImageGeometryError("The direction matrix must be orthonormal.")

    # -- geometry --------------------------------------------------------------------------------
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.array.shape
        return (i, j, k)

    def ijk_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping continuous (i, j, k) indices to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_lps @ np.diag(self.spacing)
        m[:3, 3] = self.origin_lps
        return m

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k) to RAS mm: Slicer's IJKToRAS."""
        m = self.ijk_to_lps_matrix()
        m[:3, :] = LPS_RAS_FLIP @ m[:3, :]
        return m

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous indices (..., 3) in (i, j, k) order to LPS points."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction_lps @ np.diag(self.spacing)).T + self.origin_lps

    def lps_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Map LPS points (..., 3) to continuous (i, j, k) indices."""
        p = np.asarray(points_lps, dtype=np.float64) - self.origin_lps
        return (p @ self.direction_lps) / self.spacing

    def index_to_point(self, ijk: np.ndarray, frame: str = "lps") -> np.ndarray:
        """Map continuous (i, j, k) indices to points in ``frame``."""
        return from_lps(self.index_to_lps(ijk), frame)

    def point_to_index(self, points: np.ndarray, frame: str = "lps") -> np.ndarray:
        """Map points given in ``frame`` to continuous (i, j, k) indices."""
        return self.lps_to_index(to_lps(points, frame))

    def contains_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """True where an LPS point lies inside the voxel grid (between first and last voxel centres)."""
        ijk = self.lps_to_index(points_lps)
        size = np.array(self.size_ijk, dtype=np.float64) - 1.0
        return np.all((ijk >= -0.5) & (ijk <= size + 0.5), axis=-1)

    def bounds_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres."""
        n = np.array(self.size_ijk) - 1
        corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
        pts = self.index_to_lps(corners)
        return pts.min(axis=0), pts.max(axis=0)

    # -- SimpleITK --------------------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin_lps))
        img.SetDirection(tuple(float(d) for d in self.direction_lps.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        _check_scalar_3d(image, "image")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=np.array(image.GetSpacing()),
            origin_lps=np.array(image.GetOrigin()),
            direction_lps=np.array(image.GetDirection()).reshape(3, 3),
        )

    @classmethod
    def from_ijk_to_ras(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> "Volume":
        """Build a volume from voxels and a Slicer-style 4x4 IJKToRAS matrix."""
        m = np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
        lin = LPS_RAS_FLIP @ m[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        return cls(array_kji, spacing, LPS_RAS_FLIP @ m[:3, 3], lin / spacing)


def _check_scalar_3d(image: sitk.Image, name: str) -> None:
    dim = image.GetDimension()
    if dim == 2:
        raise ImageGeometryError(f"{name} is a 2D image; a 3D CT volume is needed.")
    if dim == 4:
        raise ImageGeometryError(
            f"{name} is a 4D image (size {image.GetSize()}); pick one 3D phase/frame first."
        )
    if dim != 3:
        raise ImageGeometryError(f"{name} has {dim} dimensions; a 3D CT volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageGeometryError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector or colour "
            "image); a scalar CT in Hounsfield units is needed."
        )
    if min(image.GetSize()) < 2:
        raise ImageGeometryError(f"{name} is a single slice (size {image.GetSize()}); a 3D volume is needed.")


def _has_ext(path: Path, exts: Sequence[str]) -> str | None:
    name = path.name.lower()
    for e in sorted(exts, key=len, reverse=True):
        if name.endswith(e):
            return e
    return None


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT from a NIfTI/NRRD/MHA/MHD file or a DICOM series folder.

    Raises :class:`ImageReadError` for a missing/unreadable file or a DICOM folder with no series or
    several series (pass ``series_uid`` to pick one), :class:`ImageGeometryError` for non-3D or
    non-scalar images.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"No such file or folder: {p}")
    if p.is_dir():
        image = _read_dicom_series(p, series_uid)
    else:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
            raise ImageReadError(f"Cannot read {p} as an image ({first[:200]}).") from exc
    _check_scalar_3d(image, str(p))
    return Volume.from_sitk(image)


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:  # pragma: no cover - GDCM rarely raises here
        raise ImageReadError(f"Cannot scan {folder} for DICOM series: {exc}") from exc
    if not uids:
        raise ImageReadError(f"The folder {folder} holds no DICOM series.")
    if series_uid is None:
        if len(uids) > 1:
            raise ImageReadError(
                f"The folder {folder} mixes {len(uids)} DICOM series ({', '.join(uids[:4])}"
                f"{'...' if len(uids) > 4 else ''}); choose one with its series UID."
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        raise ImageReadError(f"Series {series_uid} is not in {folder} (found: {', '.join(uids)}).")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"Cannot read the DICOM series {series_uid} in {folder}: {exc}") from exc


def check_output_path(path: str | os.PathLike, exts: Sequence[str], overwrite: bool) -> Path:
    """Validate an output path's extension and refuse to overwrite unless ``overwrite``."""
    p = Path(path)
    if _has_ext(p, exts) is None:
        raise InputError(f"Unsupported output extension for {p.name}: use one of {', '.join(exts)}.")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; pass force/overwrite to replace it.")
    if not p.parent.exists():
        raise InputError(f"The output folder {p.parent} does not exist.")
    return p


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it once the block succeeds.

    A failed or interrupted write never leaves a partial file under the final name, and nothing of it
    survives. The new file gets the usual permissions for the user's umask (mkstemp's are owner-only).
    """
    p = Path(path)
    if suffix is None:
        suffix = _has_ext(p, VOLUME_EXTENSIONS + MESH_EXTENSIONS) or p.suffix
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a volume (NIfTI/NRRD/MHA), compressed; geometry is stored in LPS as these formats require."""
    p = check_output_path(path, VOLUME_EXTENSIONS, overwrite)
    if _has_ext(p, (".mhd", ".nhdr")):
        # Detached header: the header names its data file, so write in place (no temp-file rename).
        try:
            sitk.WriteImage(volume.to_sitk(), str(p), useCompression=True)
        except RuntimeError as exc:
            p.unlink(missing_ok=True)
            raise ImageReadError(f"Cannot write {p}: {exc}") from exc
        return p
    with atomic_output(p) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
    return p


# --------------------------------------------------------------------------------------------- meshes
def polydata_points(polydata: vtk.vtkPolyData) -> np.ndarray:
    """The points of a vtkPolyData as an (N, 3) float64 array (a copy)."""
    pts = polydata.GetPoints()
    if pts is None or pts.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(pts.GetData()).astype(np.float64).copy()


def polydata_triangles(polydata: vtk.vtkPolyData) -> np.ndarray:
    """Triangle vertex indices (M, 3) of a polydata whose polys are all triangles."""
    polys = polydata.GetPolys()
    if polys is None or polys.GetNumberOfCells() == 0:
        return np.zeros((0, 3), dtype=np.int64)
    offsets = numpy_support.vtk_to_numpy(polys.GetOffsetsArray())
    conn = numpy_support.vtk_to_numpy(polys.GetConnectivityArray())
    if not np.all(np.diff(offsets) == 3):
        tri = vtk.vtkTriangleFilter()
        tri.SetInputData(polydata)
        tri.Update()
        return polydata_triangles(tri.GetOutput())
    return conn.reshape(-1, 3).astype(np.int64)


def make_polydata(points: np.ndarray, triangles: np.ndarray) -> vtk.vtkPolyData:
    """Build a triangle vtkPolyData from (N, 3) points and (M, 3) vertex indices."""
    pts = vtk.vtkPoints()
    pts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    tris = np.ascontiguousarray(triangles, dtype=np.int64).reshape(-1, 3)
    cells = vtk.vtkCellArray()
    offsets = numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(tris) + 1, 3, dtype=np.int64), deep=True)
    conn = numpy_support.numpy_to_vtkIdTypeArray(tris.ravel(), deep=True)
    cells.SetData(offsets, conn)
    pd = vtk.vtkPolyData()
    pd.SetPoints(pts)
    pd.SetPolys(cells)
    return pd


def transform_polydata_frame(polydata: vtk.vtkPolyData, src: str, dst: str) -> vtk.vtkPolyData:
    """Copy of ``polydata`` with its points mapped from frame ``src`` to ``dst``.

    LPS<->RAS negates x and y: a rotation (det +1), so triangle winding and normals stay consistent.
    """
    out = vtk.vtkPolyData()
    out.DeepCopy(polydata)
    if check_frame(src) != check_frame(dst) and out.GetNumberOfPoints():
        pts = from_lps(to_lps(polydata_points(polydata), src), dst)
        out.GetPoints().SetData(numpy_support.numpy_to_vtk(pts, deep=True))
        normals = out.GetPointData().GetNormals()
        if normals is not None:
            n = numpy_support.vtk_to_numpy(normals).astype(np.float64)
            n[:, :2] *= -1
            arr = numpy_support.numpy_to_vtk(n, deep=True)
            arr.SetName(normals.GetName() or "Normals")
            out.GetPointData().SetNormals(arr)
    return out


def _mesh_writer(ext: str) -> vtk.vtkWriter:
    return {
        ".stl": vtk.vtkSTLWriter,
        ".vtp": vtk.vtkXMLPolyDataWriter,
        ".obj": vtk.vtkOBJWriter,
        ".ply": vtk.vtkPLYWriter,
        ".vtk": vtk.vtkPolyDataWriter,
    }[ext]()


def write_mesh(
    polydata_lps: vtk.vtkPolyData, path: str | os.PathLike, frame: str = "lps", overwrite: bool = False
) -> Path:
    """Write an LPS mesh to STL/VTP/OBJ/PLY/VTK with its points in ``frame`` (LPS by default).

    The frame is recorded as Slicer does (``SPACE=LPS`` in the STL header / a ``SPACE`` field-data
    string), and the file appears only once completely written.
    """
    frame = check_frame(frame)
    p = check_output_path(path, MESH_EXTENSIONS, overwrite)
    if polydata_lps.GetNumberOfPoints() == 0:
        raise MeshIOError(f"Refusing to write an empty mesh to {p}.")
    ext = _has_ext(p, MESH_EXTENSIONS)
    data = transform_polydata_frame(polydata_lps, "lps", frame)
    tag = f"SPACE={frame.upper()}"
    arr = vtk.vtkStringArray()
    arr.SetName("SPACE")
    arr.InsertNextValue(frame.upper())
    data.GetFieldData().AddArray(arr)
    writer = _mesh_writer(ext)
    if ext == ".stl":
        writer.SetFileTypeToBinary()
        writer.SetHeader(tag)
    elif ext == ".vtk":
        writer.SetHeader(tag)
    elif ext == ".ply":
        writer.AddComment(tag)
    with atomic_output(p) as tmp:
        writer.SetFileName(str(tmp))
        writer.SetInputData(data)
        if not writer.Write():
            raise MeshIOError(f"vtk could not write {p}.")
        if ext == ".obj":  # vtkOBJWriter writes no header: prepend a comment with the frame
            body = tmp.read_bytes()
            tmp.write_bytes(f"# {tag}\n".encode() + body)
    return p


def _mesh_reader(ext: str):
    return {
        ".stl": vtk.vtkSTLReader,
        ".vtp": vtk.vtkXMLPolyDataReader,
        ".obj": vtk.vtkOBJReader,
        ".ply": vtk.vtkPLYReader,
        ".vtk": vtk.vtkPolyDataReader,
    }[ext]()


def mesh_file_frame(path: str | os.PathLike) -> str:
    """The frame a mesh file declares (``SPACE=RAS``/``SPACE=LPS`` tag); LPS when it declares none."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512).upper()
    if b"SPACE=RAS" in head:
        return "ras"
    if _has_ext(p, (".vtp",)) and b"SPACE" in p.read_bytes().upper():
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(p))
        reader.Update()
        arr = reader.GetOutput().GetFieldData().GetAbstractArray("SPACE")
        if arr is not None and arr.GetNumberOfValues() and str(arr.GetValue(0)).upper() == "RAS":
            return "ras"
    return "lps"


def read_mesh(path: str | os.PathLike, frame: str | None = None) -> vtk.vtkPolyData:
    """Read a mesh file and return it in LPS.

    ``frame`` says which frame the file's points are in; by default the file's own ``SPACE`` tag decides
    (LPS when untagged, as in Slicer).
    """
    p = Path(path)
    if not p.exists():
        raise MeshIOError(f"No such mesh file: {p}")
    ext = _has_ext(p, MESH_EXTENSIONS)
    if ext is None:
        raise MeshIOError(f"Unsupported mesh extension for {p.name}: use one of {', '.join(MESH_EXTENSIONS)}.")
    reader = _mesh_reader(ext)
    reader.SetFileName(str(p))
    reader.Update()
    out = reader.GetOutput()
    if out is None or out.GetNumberOfPoints() == 0:
        raise MeshIOError(f"{p} holds no mesh (unreadable or empty).")
    src = check_frame(frame) if frame is not None else mesh_file_frame(p)
    return transform_polydata_frame(out, src, "lps")
