"""Hostile and damaged inputs, output problems and interruptions: every one ends in one clear line and
leaves no file behind.

Most cases must fail before the network runs, so they use a small synthetic chest-like CT (96 mm cube,
air, lung, tissue and a contrast pool; written once per module) and a tiny untrained model; the network is
never the point here. Each CLI case asserts the exit code, a one-line message on stderr (no traceback) and
that the output folder holds exactly what it held before. Property-based fuzzing (hypothesis) and fault
injection (disk full, permission denied, interrupted writes) are in ``test_fuzz.py``.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from NUDFCore.cli import main as cli_main
from NUDFCore.errors import ImageReadError, InputError, SegmentationError
from NUDFCore.infer import MIN_SEED_EDGE_MM, SegmentOptions, check_seed_clearance, segment
from NUDFCore.io import Volume, read_volume, write_volume
from NUDFCore.model import ModelConfig, NUDFNet, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

#: The synthetic CT: 64 x 64 x 48 voxels of 1.5 x 1.5 x 2 mm centred on LPS (0, 0, 0).
SHAPE_KJI = (48, 64, 64)
SPACING = np.array([1.5, 1.5, 2.0])
ORIGIN_LPS = -(np.array(SHAPE_KJI[::-1]) - 1) / 2.0 * SPACING
POOL_LPS = np.zeros(3)  # centre of the contrast pool: a seed the input checks accept
LUNG_LPS = np.array([38.0, 38.0, 0.0])  # in the lung corner (x, y > 25 mm)


def synthetic_ct(seed: int = 0) -> Volume:
    """A chest-like CT in HU: tissue everywhere (the borders too), a lung corner, an air rim on one side, an
    18 mm contrast pool at the centre, and noise in every voxel (a real CT has no blank slice)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(SHAPE_KJI)
    x, y, z = (ORIGIN_LPS[0] + i * SPACING[0], ORIGIN_LPS[1] + j * SPACING[1], ORIGIN_LPS[2] + k * SPACING[2])
    hu = np.full(SHAPE_KJI, 40.0)
    hu[(x > 25) & (y > 25)] = -850.0  # lung
    hu[y < -40] = -1000.0  # air in front of the chest
    hu[x**2 + y**2 + z**2 < 18.0**2] = 400.0  # contrast-filled blood pool
    hu += rng.normal(0.0, 12.0, SHAPE_KJI)
    return Volume(np.round(hu).astype(np.int16), SPACING, ORIGIN_LPS)


@pytest.fixture(scope="module")
def ct() -> Volume:
    return synthetic_ct()


@pytest.fixture(scope="module")
def files(tmp_path_factory, ct):
    """The synthetic CT as .nii.gz/.nii/.mha/.mhd and a tiny untrained model (seeded)."""
    root = tmp_path_factory.mktemp("reliability_inputs")
    paths = {ext: write_volume(ct, root / f"ct{ext}") for ext in (".nii.gz", ".nii", ".mha", ".mhd")}
    torch.manual_seed(0)
    paths["model"] = save_checkpoint(NUDFNet(ModelConfig.preset("tiny")), root / "tiny.pt")
    return paths


def _point(p) -> str:
    return ",".join(repr(float(v)) for v in p)


def _listing(folder: Path) -> list[str]:
    """Every name under ``folder`` (hidden temporary files too)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _expect_refusal(capsys, argv: list[str], folder: Path, *needles: str, code: int = 2) -> str:
    """Run ``nudf argv``: the exit code, exactly one line on stderr holding each needle, and ``folder``
    unchanged (no output, no temporary file)."""
    before = _listing(folder)
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert _listing(folder) == before
    return err


def _segment_argv(ct_path, out, seed_lps=POOL_LPS, model=None, extra: tuple[str, ...] = ()) -> list[str]:
    argv = ["segment", str(ct_path), f"--seed-lps={_point(seed_lps)}", "--out", str(out), "--device", "cpu",
            "--resolution", "0.5", "--progress-format", "none", *extra]
    return argv + (["--model", str(model)] if model is not None else [])


# ========================================================================= the four failures of issue 14
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("fraction", [0.85, 0.3])
def test_truncated_volume_file_is_refused_naming_it(tmp_path, capsys, files, ext, fraction):
    """SimpleITK zero-fills a truncated NIfTI silently (issue: 85 % of a .nii.gz segmented with exit 0)."""
    bad = tmp_path / f"cut{ext}"
    raw = files[ext].read_bytes()
    bad.write_bytes(raw[: int(len(raw) * fraction)])
    err = _expect_refusal(capsys, _segment_argv(bad, tmp_path / "laa.stl", model=files["model"]), tmp_path,
                          str(bad), "truncated")
    assert re.search(r"\d+ %", err)  # how much of the data is there


def test_truncated_detached_metaimage_names_its_data_file(tmp_path, files):
    header = tmp_path / "ct.mhd"
    header.write_text(files[".mhd"].read_text())
    data_name = re.search(r"ElementDataFile = (\S+)", header.read_text()).group(1)
    raw = (files[".mhd"].parent / data_name).read_bytes()
    (tmp_path / data_name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match=f"{re.escape(str(header))}.*data file {re.escape(data_name)}"):
        read_volume(header)


def test_complete_files_still_read_exactly(files, ct):
    for ext in (".nii.gz", ".nii", ".mha", ".mhd"):
        back = read_volume(files[ext])
        assert np.array_equal(back.array, ct.array) and np.allclose(back.spacing, ct.spacing)


def test_zero_filled_end_slices_are_refused_by_the_engine(ct, files):
    """A truncated file loaded elsewhere (Slicer reads through ITK too) arrives zero-filled in memory."""
    arr = ct.array.copy()
    arr[-7:] = 0
    with pytest.raises(SegmentationError, match=r"last 7 of the 48 slices .* truncated"):
        segment(Volume(arr, ct.spacing, ct.origin_lps), seed_lps=POOL_LPS, model=files["model"],
                options=SegmentOptions(device="cpu"))


def test_seed_on_the_volume_edge_is_refused_with_its_distance(tmp_path, capsys, files, ct):
    """Issue: a seed at the centre of the i = 0 face wrote a 6 mm² shred 50 mm away, exit 0."""
    face_centre = ct.index_to_lps(np.array([0.0, 31.5, 23.5]))
    err = _expect_refusal(capsys, _segment_argv(files[".nii.gz"], tmp_path / "laa.stl", face_centre, files["model"]),
                          tmp_path, "seed is 0.8 mm from the edge", "i = 0 face (right)")
    assert f"{MIN_SEED_EDGE_MM:.0f} mm inside" in err


def test_seed_clearance_thresholds(ct):
    inside = ct.index_to_lps(np.array([31.5, 31.5, 23.5]))
    check_seed_clearance(ct, inside, inside, 70.0)  # the centre: accepted
    near = inside + np.array([0.0, 0.0, 48.0 - 6.0])  # 6 mm below the top (k = last) face
    with pytest.raises(InputError, match=r"6\.0 mm from the edge .*k = 47 face \(superior\)"):
        check_seed_clearance(ct, near, near, 70.0)
    corner = ct.index_to_lps(np.array([0.0, 0.0, 0.0])) + 12.0 * np.array([1.0, 1.0, 1.0]) - 0.5 * SPACING
    with pytest.raises(InputError, match=r"12\.0 mm from the edge.* 3\d % of the 70 mm cube"):
        check_seed_clearance(ct, corner, corner, 70.0)  # 12 mm clear, but most of the crop is outside


@pytest.mark.parametrize("fmt", ["mhd", "nii"])
def test_negative_header_spacing_is_refused(tmp_path, capsys, files, fmt):
    """Issue: ElementSpacing < 0 → SimpleITK mirrors the axis → a partial mesh (36 % of the LAA), no word."""
    if fmt == "mhd":
        bad = tmp_path / "flip.mhd"
        text = files[".mhd"].read_text()
        data_name = re.search(r"ElementDataFile = (\S+)", text).group(1)
        (tmp_path / data_name).write_bytes((files[".mhd"].parent / data_name).read_bytes())
        bad.write_text(re.sub(r"ElementSpacing = (\S+)", r"ElementSpacing = -\1", text))
        assert sitk.ReadImage(str(bad)).GetDirection()[0] == -1.0  # what SimpleITK makes of it
    else:
        bad = tmp_path / "flip.nii"
        raw = bytearray(files[".nii"].read_bytes())
        struct.pack_into("<f", raw, 80, -SPACING[0])  # pixdim[1]
        bad.write_bytes(bytes(raw))
    _expect_refusal(capsys, _segment_argv(bad, tmp_path / "laa.stl", model=files["model"]), tmp_path,
                    str(bad), "negative voxel spacing", "mirrored i axis")


def _readonly(monkeypatch, folder: Path) -> None:
    """Make ``folder`` refuse new files (root ignores chmod, so the refusal is injected where files are made)."""
    import tempfile

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", str(Path(dir) / "tmp"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("case", ["read-only folder", "/proc", "folder as --out", "folder as --out --force",
                                  "missing folder", "file as folder", "exists"])
def test_output_problems_are_refused_before_any_work(tmp_path, capsys, monkeypatch, files, case):
    """Issue: each surfaced after ~13 s of work as a 19-line traceback (exit 1). Here the CT path does not
    even exist: the output is refused first, at once."""
    extra: tuple[str, ...] = ()
    expect = []
    if case == "read-only folder":
        (tmp_path / "ro").mkdir()
        _readonly(monkeypatch, tmp_path / "ro")
        out, expect = tmp_path / "ro" / "laa.stl", ["does not accept new files", "Permission denied"]
    elif case == "/proc":
        out, expect = Path("/proc/laa.stl"), ["/proc/laa.stl", "does not accept new files"]
    elif case.startswith("folder as --out"):
        out, expect = tmp_path / "laa.stl", ["is a folder"]
        out.mkdir()
        extra = ("--force",) if case.endswith("--force") else ()
    elif case == "missing folder":
        out, expect = tmp_path / "nope" / "laa.stl", ["does not exist"]
    elif case == "file as folder":
        (tmp_path / "afile").write_text("x")
        out, expect = tmp_path / "afile" / "laa.stl", ["is not a folder"]
    else:
        out = tmp_path / "laa.stl"
        out.write_bytes(b"precious")
        expect = ["already exists", "--force"]
    t0 = time.perf_counter()
    _expect_refusal(capsys, _segment_argv(tmp_path / "no_such_ct.nii.gz", out, model=files["model"], extra=extra),
                    tmp_path, *expect)
    assert time.perf_counter() - t0 < 2.0
    if case == "exists":
        assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("command", ["train", "phantom", "evaluate"])
def test_other_commands_check_their_outputs_first(tmp_path, capsys, monkeypatch, command):
    (tmp_path / "ro").mkdir()
    _readonly(monkeypatch, tmp_path / "ro")
    if command == "train":
        argv = ["train", "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "ro" / "m.pt")]
    elif command == "phantom":
        argv = ["phantom", "--out", str(tmp_path / "ro" / "cases"), "--count", "1", "--size", "compact"]
    else:
        argv = ["evaluate", str(tmp_path / "no_pred.stl"), str(tmp_path / "no_gt.stl"), "--json",
                str(tmp_path / "ro" / "m.json")]
    _expect_refusal(capsys, argv, tmp_path, "does not accept new files")
    if command == "train":
        (tmp_path / "m.pt").mkdir()
        _expect_refusal(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt")], tmp_path,
                        "is a folder")


# ================================================================================ cases that already held
def _write_image(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _volume_file(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    return write_volume(Volume(array, SPACING, ORIGIN_LPS), tmp_path / name)


@pytest.mark.parametrize("case", ["missing", "corrupt", "2D", "4D", "RGB", "NaN", "all NaN", "blank", "MR-like",
                                  "uint8", "sheared"])
def test_unusable_images(tmp_path, capsys, files, ct, case):
    """Each is refused with one line before the network runs."""
    a = ct.array.astype(np.float32)
    if case == "missing":
        path, expect = tmp_path / "absent.nii.gz", "No such file"
    elif case == "corrupt":
        path, expect = tmp_path / "corrupt.nii.gz", "Cannot read"
        path.write_bytes(b"not an image at all " * 64)
    elif case == "2D":
        path, expect = _write_image(tmp_path / "slice.nrrd", sitk.Image(32, 32, sitk.sitkInt16)), "2D"
    elif case == "4D":
        path, expect = _write_image(tmp_path / "cine.nii.gz", sitk.Image([8, 8, 8, 3], sitk.sitkInt16)), "4D"
    elif case == "RGB":
        path, expect = _write_image(tmp_path / "rgb.nrrd", sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)), "components"
    elif case == "NaN":
        a[20:24, 30:34, 30:34] = np.nan
        path, expect = _volume_file(tmp_path, "nan.nrrd", a), "NaN or infinite"
    elif case == "all NaN":
        path, expect = _volume_file(tmp_path, "allnan.nrrd", np.full_like(a, np.nan)), "Every voxel"
    elif case == "blank":
        path, expect = _volume_file(tmp_path, "blank.nrrd", np.zeros_like(a)), "blank"
    elif case == "MR-like":
        path, expect = _volume_file(tmp_path, "mr.nrrd", (a + 1024.0) * 0.8), "does not look like a CT"
    elif case == "uint8":
        path, expect = _volume_file(tmp_path, "u8.nrrd", np.clip(a, 0, 255).astype(np.uint8)), "does not look like a CT"
    else:  # a NRRD whose axes are not perpendicular (a gantry tilt): ITK keeps the shear
        path, expect = tmp_path / "sheared.nrrd", "sheared voxel axes"
        header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 64 64 48\n"
                  "space directions: (1.5,0,0) (0.5,1.4,0) (0,0,2)\nkinds: domain domain domain\nendian: little\n"
                  "encoding: raw\nspace origin: (0,0,0)\n\n")
        path.write_bytes(header.encode() + ct.array.astype("<i2").tobytes())
    err = _expect_refusal(capsys, _segment_argv(path, tmp_path / "laa.stl", model=files["model"]), tmp_path, expect)
    if case not in ("NaN", "all NaN", "blank", "MR-like", "uint8"):
        assert path.name in err  # the message names the file
    if case == "all NaN":
        assert "0/0" not in err


@pytest.mark.parametrize("case", ["outside", "NaN", "inf", "1e308", "air", "two frames", "two values"])
def test_unusable_seeds(tmp_path, capsys, files, case):
    seed = f"--seed-lps={_point(POOL_LPS)}"
    expect = []
    argv_seed = [seed]
    if case == "outside":
        argv_seed, expect = ["--seed-lps=0,0,500"], ["outside the CT volume"]
    elif case == "NaN":
        argv_seed, expect = ["--seed-lps=nan,0,0"], ["must be finite"]
    elif case == "inf":
        argv_seed, expect = ["--seed-ras=0,-inf,0"], ["must be finite"]
    elif case == "1e308":
        argv_seed, expect = ["--seed-lps=1e308,0,0"], ["1e+308", "outside"]
    elif case == "air":
        argv_seed, expect = [f"--seed-lps={_point(LUNG_LPS)}"], ["air or lung"]
    out = tmp_path / "laa.stl"
    argv = ["segment", str(files[".nii.gz"]), *argv_seed, "--out", str(out), "--model", str(files["model"]),
            "--progress-format", "none"]
    if case in ("two frames", "two values"):  # argparse refuses: usage + one error line, exit 2
        bad = [seed, "--seed-ras=0,0,0"] if case == "two frames" else ["--seed-lps=1,2"]
        with pytest.raises(SystemExit) as exc:
            cli_main(["segment", str(files[".nii.gz"]), *bad, "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("nudf segment: error: argument")
        assert not out.exists()
        return
    err = _expect_refusal(capsys, argv, tmp_path, *expect)
    if case != "inf":
        assert not re.search(r"\binf\b", err)


def test_malicious_checkpoint_never_runs(tmp_path, capsys, files):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"nudf_checkpoint": 1, "config": {}, "state_dict": {}, "x": Payload()}, evil)
    _expect_refusal(capsys, _segment_argv(files[".nii.gz"], tmp_path / "laa.stl", model=evil), tmp_path,
                    "not a plain-weights checkpoint; refusing to run code from it", "system")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["state_dict only", "other torch file", "html", "truncated", "directory"])
def test_foreign_checkpoints(tmp_path, capsys, files, case):
    bad = tmp_path / "m.pt"
    if case == "state_dict only":
        torch.save(NUDFNet(ModelConfig.preset("tiny")).state_dict(), bad)
        expect = "not a NUDF model checkpoint"
    elif case == "other torch file":
        torch.save({"weights": torch.zeros(3)}, bad)
        expect = "not a NUDF model checkpoint"
    elif case == "html":
        bad.write_text("<html><body>404 Not Found</body></html>")
        expect = "not a readable model checkpoint"
    elif case == "truncated":
        raw = files["model"].read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
        expect = "not a readable model checkpoint"
    else:
        bad.mkdir()
        expect = "not a file"
    err = _expect_refusal(capsys, _segment_argv(files[".nii.gz"], tmp_path / "laa.stl", model=bad), tmp_path, expect)
    assert len(err) < 300 and not err.endswith(("-", " "))  # not torch's page-long text cut mid-word


# ============================================================================ interruptions mid-run
def test_ctrl_c_mid_run_leaves_nothing(tmp_path, capsys, monkeypatch, files):
    """In process: KeyboardInterrupt raised when the network starts encoding."""
    import NUDFCore.cli as cli

    def progress(stage: str, fraction: float) -> None:
        if stage == "encode":
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_json_progress", progress)
    argv = _segment_argv(files[".nii.gz"], tmp_path / "laa.stl", model=files["model"])
    argv[argv.index("--progress-format") + 1] = "json"
    _expect_refusal(capsys, argv, tmp_path, "nudf: interrupted", code=130)


def _run_and_signal(argv: list[str], sig: signal.Signals, cwd: Path) -> tuple[int, str]:
    """Start ``nudf argv`` in a new process, send ``sig`` once the model is loading; (exit code, stderr)."""
    # as from a terminal: Ctrl-C is not ignored in the child even if something in this test process ignores it
    # (an ignored SIGINT is inherited across exec, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "NUDFCore", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if '"stage": "load model"' in line:
            proc.send_signal(sig)
            break
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_signals_mid_run_leave_nothing(tmp_path, files):
    """Real processes: SIGINT (Ctrl-C) and SIGTERM while the model loads, both at once to save time."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = {}
    with ThreadPoolExecutor(2) as pool:
        for sig in (signal.SIGINT, signal.SIGTERM):
            folder = tmp_path / sig.name
            folder.mkdir()
            # the bundled model, not the tiny one: with it the run after loading takes seconds, not a fraction of
            # one, so the signal cannot arrive after the run has already ended on a loaded machine
            argv = _segment_argv(files[".nii.gz"], folder / "laa.stl")
            argv[argv.index("--progress-format") + 1] = "json"
            jobs[sig] = (folder, pool.submit(_run_and_signal, argv, sig, folder))
    for sig, (folder, job) in jobs.items():
        code, err = job.result()
        expected = (130, "nudf: interrupted") if sig == signal.SIGINT else (143, "nudf: terminated")
        assert (code, err.strip().splitlines()[-1] if err.strip() else "") == expected, err
        assert "Traceback" not in err
        assert _listing(folder) == []
