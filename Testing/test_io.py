"""CT and mesh IO: round trips through real files and real readers, frames, and every bad-input error."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from NUDFCore import frames
from NUDFCore.errors import ImageGeometryError, ImageReadError, InputError, MeshIOError, OutputExistsError
from NUDFCore.io import (
    Volume,
    make_polydata,
    mesh_file_frame,
    polydata_points,
    polydata_triangles,
    read_mesh,
    read_volume,
    write_mesh,
    write_volume,
)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture()
def oblique_volume() -> Volume:
    rng = np.random.default_rng(3)
    arr = rng.integers(-1000, 1500, size=(7, 9, 11)).astype(np.int16)  # [k, j, i]
    return Volume(arr, spacing=[0.4, 0.7, 2.5], origin_lps=[-120.5, 33.25, 410.0], direction_lps=_rotation(0.2, -0.3, 0.5))


# --------------------------------------------------------------------------------------------- frames
def test_lps_ras_hand_computed():
    p_lps = np.array([[10.0, -20.0, 30.0], [0.0, 0.0, -5.0]])
    assert np.array_equal(frames.lps_to_ras(p_lps), [[-10.0, 20.0, 30.0], [0.0, 0.0, -5.0]])
    assert np.array_equal(frames.ras_to_lps(frames.lps_to_ras(p_lps)), p_lps)
    assert np.array_equal(frames.to_lps([1.0, 2.0, 3.0], "RAS"), [-1.0, -2.0, 3.0])
    with pytest.raises(InputError, match="frame"):
        frames.check_frame("xyz")


def test_index_physical_hand_computed():
    # direction: i -> +P (y), j -> +L (x), k -> -S; spacing (0.5, 2, 3); origin (1, 2, 3)
    d = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    v = Volume(np.zeros((4, 4, 4), np.int16), [0.5, 2.0, 3.0], [1.0, 2.0, 3.0], d)
    p = v.index_to_lps([2.0, 1.0, 1.0])
    assert np.allclose(p, [1.0 + 2.0, 2.0 + 1.0, 3.0 - 3.0])
    assert np.allclose(v.lps_to_index(p), [2.0, 1.0, 1.0])
    # Slicer's IJKToRAS = [[F·D·diag(s), F·o]] (docs/coordinates.md)
    m = v.ijk_to_ras_matrix()
    assert np.allclose(m[:3, 3], [-1.0, -2.0, 3.0])
    assert np.allclose(m[:3, :3] @ [2, 1, 1] + m[:3, 3], frames.lps_to_ras(p))
    assert np.allclose(v.index_to_point([2, 1, 1], "ras"), [-3.0, -3.0, 0.0])
    back = Volume.from_ijk_to_ras(v.array, m)
    assert np.allclose(back.spacing, v.spacing) and np.allclose(back.direction_lps, d)
    assert np.allclose(back.origin_lps, v.origin_lps)


def test_matches_simpleitk_physical_points(oblique_volume):
    img = oblique_volume.to_sitk()
    for ijk in [(0, 0, 0), (3, 5, 2), (10, 8, 6)]:
        assert np.allclose(oblique_volume.index_to_lps(ijk), img.TransformIndexToPhysicalPoint(ijk))
        cont = oblique_volume.lps_to_index(img.TransformIndexToPhysicalPoint(ijk))
        assert np.allclose(cont, ijk)


# --------------------------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha", "ct.mhd"])
def test_volume_round_trip(tmp_path, oblique_volume, name):
    path = write_volume(oblique_volume, tmp_path / name)
    back = read_volume(path)
    assert np.array_equal(back.array, oblique_volume.array)
    assert np.allclose(back.spacing, oblique_volume.spacing, atol=1e-5)
    assert np.allclose(back.origin_lps, oblique_volume.origin_lps, atol=1e-4)
    assert np.allclose(back.direction_lps, oblique_volume.direction_lps, atol=1e-5)
    with pytest.raises(OutputExistsError):
        write_volume(oblique_volume, tmp_path / name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def _write_dicom_series(volume: Volume, folder, series_uid: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(volume.to_sitk(), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        origin = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0032": "\\".join(f"{x:.6f}" for x in origin),
            "0020|0037": "\\".join(f"{x:.6f}" for x in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
            "0020|0013": str(k + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_round_trip(tmp_path, oblique_volume):
    _write_dicom_series(oblique_volume, tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.1001")
    back = read_volume(tmp_path / "dcm")
    assert np.array_equal(back.array, oblique_volume.array)
    assert np.allclose(back.spacing, oblique_volume.spacing, atol=1e-4)
    assert np.allclose(back.origin_lps, oblique_volume.origin_lps, atol=1e-3)
    assert np.allclose(back.direction_lps, oblique_volume.direction_lps, atol=1e-4)


def test_dicom_errors(tmp_path, oblique_volume):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_volume(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    _write_dicom_series(oblique_volume, mixed, "1.2.826.0.1.3680043.2.1125.2001")
    _write_dicom_series(oblique_volume, mixed, "1.2.826.0.1.3680043.2.1125.2002")
    with pytest.raises(ImageReadError, match="mixes 2 DICOM series"):
        read_volume(mixed)
    picked = read_volume(mixed, series_uid="1.2.826.0.1.3680043.2.1125.2002")
    assert picked.array.shape == oblique_volume.array.shape


def test_bad_volume_inputs(tmp_path):
    with pytest.raises(ImageReadError, match="No such file"):
        read_volume(tmp_path / "missing.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not a nifti file" * 10)
    with pytest.raises(ImageReadError, match="Cannot read"):
        read_volume(corrupt)
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(ImageGeometryError, match="2D"):
        read_volume(tmp_path / "slice.nrrd")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(ImageGeometryError, match="4D"):
        read_volume(tmp_path / "cine.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "vec.nrrd"))
    with pytest.raises(ImageGeometryError, match="components"):
        read_volume(tmp_path / "vec.nrrd")
    with pytest.raises(ImageGeometryError):
        Volume(np.zeros((4, 4)), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ImageGeometryError, match="spacing"):
        Volume(np.zeros((4, 4, 4)), [1, 0, 1], [0, 0, 0])


# --------------------------------------------------------------------------------------------- meshes
def _tetra_sheet() -> vtk.vtkPolyData:
    pts = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30], [5, 5, 5]], float) + [100.0, -50.0, 20.0]
    return make_polydata(pts, np.array([[0, 1, 2], [0, 1, 3], [1, 2, 4]]))


_READERS = {".stl": vtk.vtkSTLReader, ".vtp": vtk.vtkXMLPolyDataReader, ".obj": vtk.vtkOBJReader, ".ply": vtk.vtkPLYReader, ".vtk": vtk.vtkPolyDataReader}


@pytest.mark.parametrize("ext", [".stl", ".vtp", ".obj", ".ply", ".vtk"])
@pytest.mark.parametrize("frame", ["lps", "ras"])
def test_mesh_write_frames_read_back_by_plain_vtk(tmp_path, ext, frame):
    mesh = _tetra_sheet()
    path = write_mesh(mesh, tmp_path / f"m{ext}", frame=frame)
    reader = _READERS[ext]()
    reader.SetFileName(str(path))
    reader.Update()
    raw = polydata_points(reader.GetOutput())
    expected = frames.from_lps(polydata_points(mesh), frame)
    # STL/PLY/OBJ may reorder/merge points: compare as sets
    assert len(raw) >= 5
    d = np.linalg.norm(raw[:, None, :] - expected[None, :, :], axis=2)
    assert d.min(axis=1).max() < 1e-4 and d.min(axis=0).max() < 1e-4
    assert mesh_file_frame(path) == frame
    back = read_mesh(path)  # honours the SPACE tag: back in LPS
    bd = np.linalg.norm(polydata_points(back)[:, None, :] - polydata_points(mesh)[None], axis=2)
    assert bd.min(axis=1).max() < 1e-4
    assert len(polydata_triangles(back)) == 3


def test_mesh_errors(tmp_path):
    mesh = _tetra_sheet()
    write_mesh(mesh, tmp_path / "a.stl")
    with pytest.raises(OutputExistsError):
        write_mesh(mesh, tmp_path / "a.stl")
    write_mesh(mesh, tmp_path / "a.stl", overwrite=True)
    with pytest.raises(InputError, match="extension"):
        write_mesh(mesh, tmp_path / "a.txt")
    with pytest.raises(MeshIOError, match="empty"):
        write_mesh(vtk.vtkPolyData(), tmp_path / "e.stl")
    assert not (tmp_path / "e.stl").exists()
    with pytest.raises(MeshIOError, match="No such"):
        read_mesh(tmp_path / "nope.vtp")
    (tmp_path / "bad.stl").write_bytes(b"\x00garbage")
    with pytest.raises(MeshIOError):
        read_mesh(tmp_path / "bad.stl")
    with pytest.raises(InputError, match="frame"):
        write_mesh(mesh, tmp_path / "b.stl", frame="xyz")


def test_written_files_get_normal_permissions(tmp_path, oblique_volume):
    """Atomic writes go through mkstemp (owner-only); the final files must follow the umask like any file."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        mesh_path = write_mesh(_tetra_sheet(), tmp_path / "m.stl")
        vol_path = write_volume(oblique_volume, tmp_path / "v.nrrd")
    finally:
        os.umask(old)
    for p in (mesh_path, vol_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
