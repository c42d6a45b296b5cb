"""Reading and writing CT volumes and surface meshes.

A :class:`Volume` holds voxels indexed ``[k, j, i]`` (as SimpleITK and Slicer's ``arrayFromVolume``) and
its geometry in LPS millimetres. Meshes are ``vtkPolyData`` in LPS inside the engine; files are written in
LPS by default (as Slicer does) and tagged ``SPACE=LPS``/``SPACE=RAS`` so readers know the frame.
"""
from __future__ import annotations

import errno
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from .errors import (ImageGeometryError, ImageReadError, InputError, MeshIOError, NUDFError, OutputExistsError,
                     OutputWriteError)
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
        if not _is_orthonormal(self.direction_lps):
            raise ImageGeometryError(
                "The direction matrix must be orthonormal (sheared or scaled voxel axes, e.g. a gantry-tilted "
                "scan): resample the image onto an orthogonal grid first.")

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


def _is_orthonormal(direction: np.ndarray) -> bool:
    """True when the axes are unit length and mutually perpendicular (a rotation, possibly mirrored)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return bool(np.allclose(d.T @ d, np.eye(3), atol=1e-3))


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
    if not _is_orthonormal(np.array(image.GetDirection())):
        raise ImageGeometryError(
            f"{name} has sheared voxel axes (a non-orthonormal direction matrix, e.g. a gantry-tilted scan); "
            "resample it onto an orthogonal grid first (e.g. Slicer's Resample Scalar Volume).")


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
        verify_volume_file(p)  # SimpleITK zero-fills a truncated NIfTI without a word
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
            if p.name.lower().endswith(".gz"):  # ITK blames the reader; the cause is usually the gzip stream
                decoded, failure = _gunzip_report(p)
                if failure is not None:
                    first = f"{failure} after {decoded:,} decoded bytes"
            raise ImageReadError(f"Cannot read {p} as an image ({first[:200]}).") from exc
    _check_scalar_3d(image, str(p))
    return Volume.from_sitk(image)


# ------------------------------------------------------------------------------------ file integrity
#: Bytes per voxel of the MetaImage element types (MetaIO's own table).
_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def verify_volume_file(path: str | os.PathLike) -> None:
    """Check what SimpleITK does not: that a NIfTI/MetaImage file holds all the voxels its header announces
    and declares no negative voxel spacing.

    SimpleITK fills a truncated NIfTI (plain or gzip) with zeros silently, and reads a negative spacing as a
    mirrored axis where other readers drop the sign. Raises :class:`ImageReadError` (truncated or corrupt,
    naming the file and how much is there) or :class:`ImageGeometryError` (negative spacing). A complete
    ``.nii.gz`` costs O(1): the gzip trailer's length is compared with the header's; the whole stream is
    decoded only when they differ. Other formats (NRRD, DICOM) are left to their readers, which already
    refuse truncated data.
    """
    p = Path(path)
    ext = _has_ext(p, VOLUME_EXTENSIONS)
    if ext in (".nii", ".nii.gz"):
        _verify_nifti(p, compressed=ext == ".nii.gz")
    elif ext in (".mha", ".mhd"):
        _verify_metaimage(p)


def _gunzip_report(p: Path) -> tuple[int, str | None]:
    """Decode a whole gzip file (every member, CRCs checked by zlib): (decoded bytes, None), or (bytes
    decoded before it failed, why)."""
    total, fed = 0, False
    inflate = zlib.decompressobj(wbits=31)
    try:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 16):  # small reads: a failure is located to within 64 KB
                while chunk:
                    total += len(inflate.decompress(chunk))
                    fed, chunk = True, b""
                    if inflate.eof:  # a member ended: what follows may be another member
                        chunk, inflate, fed = inflate.unused_data, zlib.decompressobj(wbits=31), False
    except zlib.error as exc:
        return total, f"the gzip stream is corrupt ({exc})"
    if fed or total == 0:
        return total, "the gzip stream ends early"
    return total, None


def _nifti_layout(head: bytes) -> tuple[int, tuple[float, ...]] | None:
    """(byte offset where the voxel data ends, spacing of the first three axes) from a NIfTI-1/2 header.

    None when ``head`` is not a NIfTI header (SimpleITK then says what it is).
    """
    for endian in "<>":
        if len(head) >= 348 and struct.unpack_from(endian + "i", head, 0)[0] == 348:
            dim = struct.unpack_from(endian + "8h", head, 40)
            bitpix = struct.unpack_from(endian + "h", head, 72)[0]
            pixdim = struct.unpack_from(endian + "8f", head, 76)
            offset = max(int(struct.unpack_from(endian + "f", head, 108)[0]), 352)
            break
        if len(head) >= 540 and struct.unpack_from(endian + "i", head, 0)[0] == 540:
            bitpix = struct.unpack_from(endian + "h", head, 14)[0]
            dim = struct.unpack_from(endian + "8q", head, 16)
            pixdim = struct.unpack_from(endian + "8d", head, 104)
            offset = max(int(struct.unpack_from(endian + "q", head, 168)[0]), 544)
            break
    else:
        return None
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 1 for d in dim[1:ndim + 1]):
        return None
    n_voxels = 1
    for d in dim[1:ndim + 1]:
        n_voxels *= int(d)
    return offset + n_voxels * int(bitpix) // 8, tuple(float(v) for v in pixdim[1:min(ndim, 3) + 1])


def _refuse_negative_spacing(p: Path, spacing: Sequence[float], field_name: str) -> None:
    flipped = [axis for axis, s in zip("ijk", spacing) if s < 0]
    if flipped:
        raise ImageGeometryError(
            f"{p} declares a negative voxel spacing ({field_name} {' '.join(f'{s:g}' for s in spacing)}): "
            f"SimpleITK reads it as a mirrored {'/'.join(flipped)} axis, other readers drop the sign, so the "
            "anatomy may be mirrored; NUDF refuses to guess. Make the spacing positive in the header (and negate "
            "that axis of the direction matrix if the flip is meant).")


def _truncated(p: Path, have: int, need: int, reason: str) -> ImageReadError:
    return ImageReadError(
        f"{p} is truncated or corrupt: {reason}; {have:,} of the {need:,} bytes its header announces are there "
        f"({100.0 * have / max(need, 1):.0f} %). Copy or export the file again.")


def _verify_nifti(p: Path, compressed: bool) -> None:
    try:
        with (gzip.open(p, "rb") if compressed else open(p, "rb")) as f:
            head = f.read(544)
    except EOFError as exc:
        raise ImageReadError(f"{p} is truncated: its gzip stream ends inside the NIfTI header.") from exc
    except (OSError, zlib.error):
        return  # not gzip at all: SimpleITK says what it is
    layout = _nifti_layout(head)
    if layout is None:
        return
    data_end, spacing = layout
    _refuse_negative_spacing(p, spacing, "pixdim")
    if not compressed:
        size = p.stat().st_size
        if size < data_end:
            raise _truncated(p, size, data_end, "the file is too short")
        return
    with open(p, "rb") as f:  # the gzip trailer ends with the decoded length mod 2**32
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == data_end % 2**32:
            return
    decoded, failure = _gunzip_report(p)  # multi-member gzip, trailing bytes... or truncated
    if failure is None and decoded >= data_end:
        return
    raise _truncated(p, decoded, data_end, failure or "the decoded data is too short")


def _metaimage_header(p: Path) -> tuple[dict[str, str], int] | None:
    """A MetaImage header's ``Key = value`` fields and the byte offset just after it (ElementDataFile)."""
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if sep:
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return (fields, pos) if pos <= len(head) else None
    return None


def _verify_metaimage(p: Path) -> None:
    parsed = _metaimage_header(p)
    if parsed is None:
        return
    fields, header_end = parsed
    try:
        spacing = [float(v) for v in (fields.get("ElementSpacing") or fields.get("ElementSize") or "").split()]
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        compressed_size = int(fields.get("CompressedDataSize", "0"))
    except ValueError:
        return  # malformed numbers: SimpleITK's own error is precise enough
    _refuse_negative_spacing(p, spacing[:3], "ElementSpacing")
    data_file = fields["ElementDataFile"]
    if data_file.upper().startswith("LIST") or "%" in data_file or fields.get("HeaderSize", "0") != "0":
        return  # slice lists, file patterns, skipped headers: left to MetaIO
    src, start = (p, header_end) if data_file.upper() == "LOCAL" else (p.parent / data_file, 0)
    if not src.is_file():
        raise ImageReadError(f"{p} names its voxel data file {data_file}, which is not beside it.")
    if fields.get("CompressedData", "False").lower() == "true":
        need = compressed_size
    else:
        need = _MET_TYPE_BYTES.get(fields.get("ElementType", ""), 0) * channels * int(np.prod(dims, dtype=np.int64))
    have = src.stat().st_size - start
    if need > 0 and have < need:
        raise _truncated(p, have, need, "the file is too short" if src == p else f"its data file {data_file} is too short")


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


#: What the CLI flag and the Python argument that allow replacing an output are called (said in refusals).
OVERWRITE_HINT = "pass --force (overwrite=True in Python) to replace it"


def check_output_path(path: str | os.PathLike, exts: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Check an output file path before any work, so a long run never fails at its last step.

    Refuses (one-line :class:`NUDFError`) an unsupported extension (when ``exts`` is given), a path that
    is a folder, an existing file unless ``overwrite`` (naming ``--force``), a missing output folder, and
    a folder where no file can be created (read-only, /proc, full...): a temporary file is created there
    and deleted again. Front ends (CLI, Slicer export) call this at argument time.
    """
    p = Path(path)
    if exts is not None and _has_ext(p, exts) is None:
        raise InputError(f"Unsupported output extension for {p.name}: use one of {', '.join(exts)}.")
    if p.is_dir():
        example = f", e.g. {p / ('out' + exts[0])}" if exts else ""
        raise InputError(f"{p} is a folder; give the output a file name{example}.")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{p} already exists; {OVERWRITE_HINT}.")
    if not p.parent.is_dir():
        what = "is not a folder" if p.parent.exists() else "does not exist"
        raise InputError(f"The output folder {p.parent} {what}.")
    _probe_writable(p.parent, p)
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check a folder that outputs will be written into (created later if missing), before any work.

    It must be a folder, or not exist yet under a writable folder; the nearest existing one must accept
    a new file (probed with a temporary file).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} exists and is not a folder.")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"Cannot create the folder {p}: {existing} is not a folder.")
    _probe_writable(existing, p)
    return p


def _os_reason(exc: BaseException) -> str:
    """The OS's own words for an error ('No space left on device'), without the Python wrapping."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__


def _probe_writable(folder: Path, target: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".nudf-write-check.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputWriteError(f"Cannot write {target}: the folder {folder} does not accept new files "
                               f"({_os_reason(exc)}).") from exc


def _commit(tmp: Path, p: Path, overwrite: bool) -> None:
    """Move the finished temporary file to its final name in one step.

    Without ``overwrite`` a hard link is the commit: it fails if the name appeared meanwhile (another
    process writing the same output), so an existing file is never replaced without ``--force``, even
    by a race. Filesystems without hard links fall back to check-then-rename.
    """
    if overwrite:
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p)
    except FileExistsError as exc:
        raise OutputExistsError(f"{p} already exists (written meanwhile by another process?); "
                                f"{OVERWRITE_HINT}.") from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV,
                             errno.EMLINK):
            raise
        if p.exists():
            raise OutputExistsError(f"{p} already exists; {OVERWRITE_HINT}.") from exc
        os.replace(tmp, p)
    else:
        tmp.unlink()


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that becomes ``path`` once the block succeeds.

    A failed or interrupted write (an exception, Ctrl-C, SIGTERM turned into an exception) never leaves
    a partial file under the final name, and the temporary file is removed. An OS error while writing
    (disk full, permission, folder gone) becomes one :class:`OutputWriteError` naming the path and the
    OS's reason. ``overwrite=False`` refuses to replace a file that appeared meanwhile. The new file gets
    the usual permissions for the user's umask (mkstemp's are owner-only).
    """
    p = Path(path)
    if suffix is None:
        suffix = _has_ext(p, VOLUME_EXTENSIONS + MESH_EXTENSIONS) or p.suffix
    try:
        fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    except OSError as exc:
        raise OutputWriteError(f"Cannot write {p}: {_os_reason(exc)}.") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _commit(tmp, p, overwrite)
    except NUDFError:
        raise
    except OSError as exc:
        raise OutputWriteError(f"Cannot write {p}: {_os_reason(exc)}.") from exc
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a volume (NIfTI/NRRD/MHA), compressed; geometry is stored in LPS as these formats require."""
    p = check_output_path(path, VOLUME_EXTENSIONS, overwrite)
    if _has_ext(p, (".mhd", ".nhdr")):
        # Detached header: the header names its data file, so write in place (no temp-file rename);
        # on failure remove what this call created.
        parts = [p] + [p.with_suffix(s) for s in (".raw", ".zraw", ".raw.gz")]
        fresh = [f for f in parts if not f.exists()]
        try:
            sitk.WriteImage(volume.to_sitk(), str(p), useCompression=True)
        except RuntimeError as exc:
            for f in fresh:
                f.unlink(missing_ok=True)
            raise OutputWriteError(f"Cannot write {p}: {_os_reason(exc)}") from exc
        return p
    with atomic_output(p, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
        except RuntimeError as exc:  # ITK's words for disk full, permission...
            raise OutputWriteError(f"Cannot write {p}: {_os_reason(exc)}") from exc
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


def point_array(mesh: vtk.vtkPolyData, name: str) -> np.ndarray | None:
    """A point-data array of ``mesh`` as float64 numpy (a copy), or None when it has none of that name."""
    arr = mesh.GetPointData().GetArray(name)
    return None if arr is None else numpy_support.vtk_to_numpy(arr).astype(np.float64)


def set_point_array(mesh: vtk.vtkPolyData, name: str, values: np.ndarray) -> None:
    """Add, or replace, the float64 point-data array ``name`` (one value per point)."""
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
    arr.SetName(name)
    mesh.GetPointData().RemoveArray(name)
    mesh.GetPointData().AddArray(arr)


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
    string), and the file appears only once completely written. VTK's writers do not all report a full
    disk (PLY and OBJ claim success, STL can abort the process), so the free space is checked first, VTP
    and VTK files are rendered in memory and written by Python (which raises on a full disk), and STL, PLY
    and OBJ files are checked from their bytes before they take the final name.
    """
    frame = check_frame(frame)
    p = check_output_path(path, MESH_EXTENSIONS, overwrite)
    if polydata_lps.GetNumberOfPoints() == 0:
        raise MeshIOError(f"Refusing to write an empty mesh to {p}.")
    # an upper bound of every format's size (binary STL: 50 bytes a triangle; ASCII OBJ: ~40 bytes a line)
    need = 1024 + 64 * (polydata_lps.GetNumberOfPoints() + polydata_lps.GetNumberOfCells())
    free = shutil.disk_usage(p.parent).free
    if free < need:
        raise OutputWriteError(f"Cannot write {p}: {os.strerror(errno.ENOSPC)} (about {need / 1e6:.1f} MB "
                               f"needed, {free / 1e6:.1f} MB free).")
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
    with atomic_output(p, overwrite=overwrite) as tmp:
        writer.SetInputData(data)
        if ext in (".vtp", ".vtk"):  # rendered in memory, written by Python: a full disk raises OSError
            writer.WriteToOutputStringOn()
            _check_vtk_writer(writer, writer.Write(), p)
            text = writer.GetOutputStdString() if ext == ".vtk" else writer.GetOutputString()
            tmp.write_bytes(text.encode())
            return p
        writer.SetFileName(str(tmp))
        _check_vtk_writer(writer, writer.Write(), p)
        if ext == ".obj":  # vtkOBJWriter writes no header: prepend a comment with the frame
            body = tmp.read_bytes()
            tmp.write_bytes(f"# {tag}\n".encode() + body)
        if not _mesh_file_complete(tmp, ext, data):
            raise OutputWriteError(f"Cannot write {p}: the written file is incomplete (disk full?).")
    return p


def _check_vtk_writer(writer: vtk.vtkWriter, ok: int, p: Path) -> None:
    code = writer.GetErrorCode()
    if not ok or code:
        reason = os.strerror(code) if 0 < code < 20000 else vtk.vtkErrorCode.GetStringFromErrorCode(code)
        raise OutputWriteError(f"Cannot write {p}: {reason or 'the VTK writer failed'}.")


#: Bytes of the PLY scalar types.
_PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
                   "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _mesh_file_complete(path: Path, ext: str, data: vtk.vtkPolyData) -> bool:
    """Whether a file that VTK wrote holds all of ``data``, judged from its bytes: VTK's STL, PLY and OBJ
    writers do not report a full disk, and its PLY reader crashes on a truncated file."""
    raw = path.read_bytes()
    if ext == ".stl":  # binary STL: 80-byte header, uint32 triangle count, 50 bytes per triangle
        count = struct.unpack_from("<I", raw, 80)[0] if len(raw) >= 84 else 0
        return count > 0 and len(raw) == 84 + 50 * count
    if ext == ".obj":  # one 'v' line per point and one 'f' line per polygon, the last line complete
        return (raw.endswith(b"\n") and raw.count(b"\nv ") == data.GetNumberOfPoints()
                and raw.count(b"\nf ") == data.GetNumberOfPolys())
    end = raw.find(b"end_header\n")  # binary PLY: the header says how many bytes follow
    if end < 0:
        return False
    size, element = 0, ("", 0)
    for parts in (line.split() for line in raw[:end].decode("ascii", "replace").splitlines()):
        if parts[:1] == ["element"] and len(parts) == 3:
            element = (parts[1], int(parts[2]))
        elif parts[:2] == ["property", "list"] and element[0] == "face" and data.GetNumberOfStrips() == 0:
            polys = data.GetPolys()
            size += (polys.GetNumberOfCells() * _PLY_TYPE_BYTES[parts[2]]
                     + polys.GetNumberOfConnectivityIds() * _PLY_TYPE_BYTES[parts[3]])
        elif parts[:1] == ["property"] and len(parts) == 3 and parts[1] in _PLY_TYPE_BYTES:
            size += element[1] * _PLY_TYPE_BYTES[parts[1]]
        elif parts[:1] == ["property"] or parts[:2] == ["format", "ascii"]:
            return True  # a layout this check does not know: nothing to compare with
    return len(raw) == end + len(b"end_header\n") + size


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
