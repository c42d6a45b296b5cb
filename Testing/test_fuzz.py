"""Property-based fuzzing (hypothesis) of the seed/argument parsing and of ``nudf evaluate``, and fault
injection into every writer: a full disk, a permission refused, an interrupt, two writers racing for one
path. Whatever happens: one clear error (never a traceback) and no partial or temporary file left.

Faults are injected with monkeypatch where the file is made or committed: as root (this CI) chmod does
not refuse anything, and pointing VTK at /dev/full is unsafe (vtkSTLWriter aborts the process on a full
disk, and vtkPolyDataWriter deletes the file it failed to write).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import vtk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import NUDFCore.io as nio
from NUDFCore.cli import _parse_point
from NUDFCore.cli import main as cli_main
from NUDFCore.errors import InputError, NUDFError, OutputExistsError, OutputWriteError, SegmentationError
from NUDFCore.infer import MIN_SEED_EDGE_MM, SegmentationResult, check_seed_clearance, resolve_seed
from NUDFCore.io import MESH_EXTENSIONS, atomic_output, make_polydata, read_mesh, write_mesh, write_volume
from NUDFCore.metrics import surface_metrics
from NUDFCore.model import ModelConfig, NUDFNet, save_checkpoint
from test_reliability import POOL_LPS, _listing, synthetic_ct

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ct():
    return synthetic_ct()


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, ct) -> Path:
    return write_volume(ct, tmp_path_factory.mktemp("fuzz_ct") / "ct.nii.gz")


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``nudf argv`` in process: (exit code, stderr); argparse's own refusals give their SystemExit code."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _sphere(radius: float = 10.0, centre=(0.0, 0.0, 0.0)) -> vtk.vtkPolyData:
    src = vtk.vtkSphereSource()
    src.SetRadius(radius)
    src.SetCenter(*centre)
    src.SetThetaResolution(24)
    src.SetPhiResolution(24)
    src.Update()
    return src.GetOutput()


# ============================================================================================ fuzzing
_number_text = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.sampled_from(["nan", "-inf", "1e308", "1e309", "-0", " 3 ", "", "1,5", "0x10", "1_0"]),
                         st.text(max_size=6))


@FUZZ
@given(st.one_of(st.text(max_size=40), st.lists(_number_text, max_size=5).map(",".join)))
def test_parse_point_gives_three_floats_or_an_argparse_error(text):
    try:
        vals = _parse_point(text)
    except argparse.ArgumentTypeError as exc:
        assert "three comma-separated numbers" in str(exc)
    else:
        assert len(vals) == 3 and all(isinstance(v, float) for v in vals)


_coordinate = st.one_of(st.floats(-70.0, 70.0), st.floats(allow_nan=True, allow_infinity=True))


@FUZZ
@given(seed=st.tuples(_coordinate, _coordinate, _coordinate), frame=st.sampled_from(["lps", "ras"]))
def test_seed_checks_accept_only_seeds_well_inside(ct, seed, frame):
    """Any seed: accepted only inside, out of the air, ≥ 10 mm from every face; else one typed error that
    echoes the numbers as given (1e308 stays 1e+308, never inf)."""
    try:
        lps = resolve_seed(ct, **{f"seed_{frame}": seed})
        check_seed_clearance(ct, lps, lps, 70.0)
    except (InputError, SegmentationError) as exc:
        msg = str(exc)
        assert "\n" not in msg
        if all(np.isfinite(seed)):
            assert not re.search(r"\b(inf|nan)\b", msg), msg
        return
    ijk = ct.lps_to_index(lps)
    n = np.array(ct.size_ijk)
    assert np.all((ijk + 0.5) * ct.spacing >= MIN_SEED_EDGE_MM - 1e-9)
    assert np.all((n - 0.5 - ijk) * ct.spacing >= MIN_SEED_EDGE_MM - 1e-9)


@FUZZ
@given(seed=st.one_of(st.tuples(_coordinate, _coordinate, _coordinate).map(lambda t: ",".join(map(repr, t))),
                      st.lists(_number_text, max_size=4).map(",".join)),
       frame=st.sampled_from(["lps", "ras"]))
def test_segment_cli_never_tracebacks_on_any_seed(tmp_path_factory, ct_file, seed, frame):
    """``nudf segment --seed-xxx=<anything>``: exit 2 with one error line, and nothing written. (The model
    path does not exist, so an acceptable seed ends at the model: the network never runs here.)"""
    out_dir = tmp_path_factory.getbasetemp() / "fuzz_cli_out"
    out_dir.mkdir(exist_ok=True)
    code, err = _cli(["segment", str(ct_file), f"--seed-{frame}={seed}", "--out", str(out_dir / "laa.stl"),
                      "--model", str(out_dir / "no_model.pt"), "--progress-format", "none"])
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("nudf segment: error:")
    assert _listing(out_dir) == []


@st.composite
def _meshes(draw):
    """Random triangle soups: few points, any triangles (degenerate, duplicated, flat, tiny)."""
    n = draw(st.integers(3, 10))
    pts = draw(st.lists(st.tuples(*[st.floats(-30.0, 30.0, allow_subnormal=False)] * 3), min_size=n, max_size=n))
    tris = draw(st.lists(st.tuples(*[st.integers(0, n - 1)] * 3), min_size=1, max_size=12))
    return make_polydata(np.array(pts, dtype=float), np.array(tris, dtype=np.int64))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pred=_meshes(), gt=_meshes())
def test_evaluate_on_random_meshes(tmp_path_factory, pred, gt):
    """``nudf evaluate`` on random meshes: figures that make sense (exit 0) or one error line (exit 2)."""
    folder = tmp_path_factory.mktemp("fuzz_eval")
    paths = {}
    for name, mesh in (("pred", pred), ("gt", gt)):
        paths[name] = folder / f"{name}.vtp"
        write_mesh(mesh, paths[name])
    out = folder / "m.json"
    code, err = _cli(["evaluate", str(paths["pred"]), str(paths["gt"]), "--samples", "200", "--json", str(out)])
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and not out.exists(), err
        return
    assert code == 0, err
    m = json.loads(out.read_text())
    for key in ("msd_mm", "hd95_mm", "hausdorff_mm"):
        assert np.isfinite(m[key]) and m[key] >= 0.0, m
    assert m["hausdorff_mm"] >= m["hd95_mm"] - 1e-9
    same = surface_metrics(read_mesh(paths["pred"]), read_mesh(paths["pred"]), n_samples=200)
    assert same.msd_mm < 1e-6  # a mesh against itself


# ===================================================================================== fault injection
class _ShortWriter:
    """A VTK mesh writer on a full disk as vtkSTLWriter/vtkPLYWriter/vtkOBJWriter behave: half the file, and
    'success'."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Write(self) -> int:
        ok = self._real.Write()
        path = Path(self._real.GetFileName())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return ok


class _ErrnoWriter(_ShortWriter):
    """A writer that reports the OS error (as vtkXMLPolyDataWriter does on a full disk)."""

    def Write(self) -> int:
        return self._real.Write()

    def GetErrorCode(self) -> int:
        return errno.ENOSPC


def _full_disk_write_bytes(real):
    """Path.write_bytes on a disk that fills half-way: part of the data, then ENOSPC."""
    def write_bytes(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return write_bytes


_VTK_WRITES = [".stl", ".obj", ".ply"]  # VTK writes these files itself; VTP/VTK are rendered to memory
_PYTHON_WRITES = [".vtp", ".vtk", ".obj"]  # Python writes these bytes (OBJ: its frame header)


@pytest.mark.parametrize("ext,fault", [(e, "short file") for e in _VTK_WRITES]
                         + [(e, "writer errno") for e in MESH_EXTENSIONS]
                         + [(e, "python write") for e in _PYTHON_WRITES])
def test_mesh_write_failure_leaves_nothing(tmp_path, monkeypatch, ext, fault):
    real = nio._mesh_writer
    if fault == "python write":
        monkeypatch.setattr(Path, "write_bytes", _full_disk_write_bytes(Path.write_bytes))
    else:
        wrapper = _ErrnoWriter if fault == "writer errno" else _ShortWriter
        monkeypatch.setattr(nio, "_mesh_writer", lambda e: wrapper(real(e)))
    target = tmp_path / f"laa{ext}"
    expect = "incomplete" if fault == "short file" else "No space left on device"
    with pytest.raises(OutputWriteError, match=f"Cannot write {re.escape(str(target))}: .*{expect}"):
        write_mesh(_sphere(), target)
    assert _listing(tmp_path) == []


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(nio.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(OutputWriteError, match="No space left on device .*MB needed"):
        write_mesh(_sphere(), tmp_path / "laa.stl")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mhd"])
def test_volume_write_failure_leaves_nothing(tmp_path, monkeypatch, ct, name):
    def full_disk(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)  # what was written before the disk filled
        if str(path).endswith(".mhd"):
            Path(path).with_suffix(".zraw").write_bytes(b"\0" * 1000)
        raise RuntimeError("ITK ERROR: ImageFileWriter: Could not write file: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        write_volume(ct, tmp_path / name)
    assert _listing(tmp_path) == []


def test_checkpoint_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\3\4 partial zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputWriteError, match=f"{re.escape(str(tmp_path / 'm.pt'))}: No space left on device"):
        save_checkpoint(NUDFNet(ModelConfig.preset("tiny")), tmp_path / "m.pt")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_permission_refused_at_commit_leaves_nothing(tmp_path, monkeypatch, overwrite):
    target = tmp_path / "laa.stl"
    real_link, real_replace = os.link, os.replace

    def refuse(real):
        def op(src, dst, *args, **kwargs):
            if Path(dst) == target:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
            return real(src, dst, *args, **kwargs)
        return op

    monkeypatch.setattr(os, "link", refuse(real_link))
    monkeypatch.setattr(os, "replace", refuse(real_replace))
    with pytest.raises(OutputWriteError, match="Permission denied"):
        write_mesh(_sphere(), target, overwrite=overwrite)
    assert _listing(tmp_path) == []


def test_interrupt_during_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "laa.stl") as tmp:
            tmp.write_bytes(b"half a mesh")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_cli_segment_disk_full_at_the_end_is_one_line(tmp_path, monkeypatch, ct_file):
    """The network is not the point: segment() is stubbed, the mesh write hits a full disk."""
    import NUDFCore.infer as infer

    monkeypatch.setattr(infer, "segment", lambda ct, **kw: SegmentationResult(mesh_lps=_sphere(), seed_lps=POOL_LPS))
    real = nio._mesh_writer
    monkeypatch.setattr(nio, "_mesh_writer", lambda e: _ErrnoWriter(real(e)))
    out = tmp_path / "laa.stl"
    code, err = _cli(["segment", str(ct_file), f"--seed-lps={','.join(map(str, POOL_LPS))}", "--out", str(out),
                      "--progress-format", "none"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"Cannot write {out}: No space left on device" in err
    assert _listing(tmp_path) == []  # no mesh, no provenance sidecar, no temporary file


def test_two_concurrent_writers_to_one_path(tmp_path):
    """Both finish writing before either commits: without overwrite exactly one wins and the other is told
    the file exists (never a silent clobber); with overwrite the file is one writer's complete output."""
    target = tmp_path / "out.bin"
    payloads = {"a": b"A" * 100_000, "b": b"B" * 100_000}
    for overwrite in (False, True):
        target.unlink(missing_ok=True)
        barrier = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def writer(tag: str) -> None:
            try:
                with atomic_output(target, overwrite=overwrite) as tmp:
                    tmp.write_bytes(payloads[tag])
                    barrier.wait(timeout=10)
                outcome[tag] = "ok"
            except OutputExistsError as exc:
                outcome[tag] = exc

        threads = [threading.Thread(target=writer, args=(t,)) for t in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        winners = [t for t, r in outcome.items() if r == "ok"]
        assert len(winners) == (2 if overwrite else 1), outcome
        if not overwrite:
            loser = next(r for r in outcome.values() if r != "ok")
            assert "already exists" in str(loser) and "--force" in str(loser)
        assert target.read_bytes() in payloads.values()
        assert _listing(tmp_path) == ["out.bin"]


def test_two_concurrent_mesh_writers(tmp_path, monkeypatch):
    """The same race through write_mesh (real VTK writers): one complete mesh, no temporary file."""
    barrier = threading.Barrier(2)
    real_check = nio._mesh_file_complete

    def check_then_wait(*args):
        complete = real_check(*args)
        barrier.wait(timeout=10)
        return complete

    monkeypatch.setattr(nio, "_mesh_file_complete", check_then_wait)
    target = tmp_path / "laa.stl"
    errors: list[BaseException] = []

    def run(radius: float) -> None:
        try:
            write_mesh(_sphere(radius), target)
        except NUDFError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in (5.0, 9.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], OutputExistsError)
    radius = np.linalg.norm(nio.polydata_points(read_mesh(target)), axis=1)
    assert np.allclose(radius, radius[0], atol=1e-3) and min(abs(radius[0] - 5.0), abs(radius[0] - 9.0)) < 1e-3
    assert _listing(tmp_path) == ["laa.stl"]
