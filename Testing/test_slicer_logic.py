"""The Slicer Logic on real MRML (slicer-core): volume/seed conversion, model output, STL export frames,
parameter node save/reload, install planning and the background runner's process handling.

These need no trained model; the end-to-end runs are in test_slicer_segment.py.
"""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NUDFSegmentation"))

slicer = pytest.importorskip("slicer")

from NUDFCore.errors import InputError, MeshIOError, OutputExistsError, SegmentationError  # noqa: E402
from NUDFCore.frames import lps_to_ras  # noqa: E402
from NUDFCore.io import make_polydata, polydata_points, read_volume  # noqa: E402
from NUDFSegmentationLib import (  # noqa: E402
    BackgroundSegmentation,
    NUDFParameters,
    SegmentationLogic,
    cliCommand,
    exportModelToFile,
    missingDependencies,
    planInstall,
)
from NUDFSegmentationLib.BackgroundSegmentation import parseLine, summaryText  # noqa: E402
from NUDFSegmentationLib.InstallLogic import ENGINE_DEPENDENCIES, Dependency, executeInstall  # noqa: E402
from NUDFSegmentationLib.SegmentationLogic import loadModelFile, updateModelNode, volumeFromNode  # noqa: E402
from NUDFSegmentationLib.SelfTest import addSeedNode, loadVolumeNode, makeScene  # noqa: E402

# An oblique, anisotropic CT: any slip in axis order, direction or LPS/RAS shows up in the numbers.
DIRECTION = np.array([[0.0, 1.0, 0.0], [0.8, 0.0, 0.6], [0.6, 0.0, -0.8]])
SPACING = (0.7, 0.5, 1.25)
ORIGIN_LPS = (-40.0, 25.0, 110.0)


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    arr = (rng.normal(0, 30, size=(12, 16, 20)) - 100).astype(np.int16)  # [k, j, i]
    arr[6, 8, 10] = 1500  # a landmark voxel at (i, j, k) = (10, 8, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN_LPS)
    img.SetDirection(tuple(DIRECTION.ravel()))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def scene():
    return makeScene()


def _sphere_lps(center=(10.0, -20.0, 30.0), radius=8.0) -> vtk.vtkPolyData:
    src = vtk.vtkSphereSource()
    src.SetCenter(*center)
    src.SetRadius(radius)
    src.SetThetaResolution(16)
    src.SetPhiResolution(12)
    src.Update()
    return src.GetOutput()


# ------------------------------------------------------------------------------------- volume & seed
def test_volume_from_node_matches_the_file_geometry(scene, ct_file):
    node = loadVolumeNode(scene, ct_file)
    vol = volumeFromNode(node)
    ref = read_volume(ct_file)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(vol.origin_lps, ORIGIN_LPS, atol=1e-6)
    np.testing.assert_allclose(vol.direction_lps, DIRECTION, atol=1e-6)
    # the landmark voxel sits where Slicer's IJKToRAS puts it
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    landmark_ras = np.array(m.MultiplyPoint((10, 8, 6, 1))[:3])
    np.testing.assert_allclose(lps_to_ras(vol.index_to_lps(np.array([10, 8, 6]))), landmark_ras, atol=1e-6)
    assert vol.array[6, 8, 10] == 1500


def test_volume_under_a_linear_transform_is_moved_to_world(scene, ct_file):
    node = loadVolumeNode(scene, ct_file)
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 5.0)  # +5 mm along R
    tnode.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    moved = volumeFromNode(node)
    np.testing.assert_allclose(moved.origin_lps, np.array(ORIGIN_LPS) + [-5.0, 0, 0], atol=1e-6)


def test_volume_and_seed_errors_are_typed(scene, ct_file):
    with pytest.raises(InputError):
        volumeFromNode(None)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="not a scalar"):
        volumeFromNode(label)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    with pytest.raises(InputError, match="Place the LAA seed"):
        SegmentationLogic(scene).seedFromNode(empty)
    with pytest.raises(InputError):
        SegmentationLogic(scene).seedRas([1.0, float("nan"), 2.0])


def test_seed_from_node_is_world_ras(scene):
    seed = addSeedNode(scene, (-12.5, 30.0, 88.0))
    np.testing.assert_allclose(SegmentationLogic(scene).seedFromNode(seed), [-12.5, 30.0, 88.0])
    np.testing.assert_allclose(SegmentationLogic(scene).seedRas([1, 2, 3]), [1, 2, 3])


def test_crop_from_roi_node(scene):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(10.0, -20.0, 30.0)
    roi.SetSize(40.0, 60.0, 50.0)
    center_lps, edge = SegmentationLogic(scene).cropFromRoiNode(roi)
    np.testing.assert_allclose(center_lps, [-10.0, 20.0, 30.0])
    assert edge == pytest.approx(60.0)


# ------------------------------------------------------------------------------------- model output
def test_model_node_holds_the_mesh_in_ras_with_an_laa_display(scene):
    mesh_lps = _sphere_lps()
    node = updateModelNode(scene, mesh_lps, None, "CT LAA")
    assert node.IsA("vtkMRMLModelNode") and node.GetName().startswith("CT LAA")
    np.testing.assert_allclose(polydata_points(node.GetPolyData()), lps_to_ras(polydata_points(mesh_lps)), atol=1e-9)
    back_lps = SegmentationLogic(scene).meshLpsFromModelNode(node)
    np.testing.assert_allclose(polydata_points(back_lps), polydata_points(mesh_lps), atol=1e-9)
    disp = node.GetDisplayNode()
    assert disp is not None and disp.GetVisibility() and disp.GetVisibility2D()
    assert not disp.GetBackfaceCulling()
    assert 0.5 < disp.GetOpacity() < 1.0
    r, g, b = disp.GetColor()
    assert r > g and r > b  # reddish, appendage-like
    # overwrite the same node: no new node appears
    n_models = scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    again = updateModelNode(scene, _sphere_lps(radius=3.0), node)
    assert again is node and scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == n_models
    assert node.GetPolyData().GetNumberOfPoints() == _sphere_lps(radius=3.0).GetNumberOfPoints()


# ------------------------------------------------------------------------------------- export
def _stl_points(path: Path) -> np.ndarray:
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return polydata_points(reader.GetOutput())


def _bounds(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


@pytest.mark.parametrize("frame", ["lps", "ras"])
def test_export_stl_frame_read_back_by_plain_vtk(scene, tmp_path, frame):
    mesh_lps = _sphere_lps()
    node = updateModelNode(scene, mesh_lps)
    out = exportModelToFile(node, tmp_path / f"laa_{frame}.stl", frame=frame)
    pts = _stl_points(out)  # plain vtk: no frame handling at all
    expected = polydata_points(mesh_lps) if frame == "lps" else lps_to_ras(polydata_points(mesh_lps))
    # STL duplicates vertices per triangle; compare bounds and nearest-point distances (STL stores float32)
    np.testing.assert_allclose(_bounds(pts), _bounds(expected), atol=1e-4)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(expected).query(pts)
    assert d.max() < 1e-4
    header = out.read_bytes()[:80]
    assert f"SPACE={frame.upper()}".encode() in header
    # the scene is untouched by an export (no storage node added)
    assert node.GetStorageNode() is None
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def test_export_refuses_overwrite_bad_extension_and_empty(scene, tmp_path):
    node = updateModelNode(scene, _sphere_lps())
    out = exportModelToFile(node, tmp_path / "laa.stl")
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        exportModelToFile(node, out)
    assert out.read_bytes() == before
    exportModelToFile(node, out, frame="ras", overwrite=True)
    assert out.read_bytes() != before
    with pytest.raises(InputError, match="Unsupported"):
        exportModelToFile(node, tmp_path / "laa.txt")
    with pytest.raises(InputError, match="does not exist"):
        exportModelToFile(node, tmp_path / "nope" / "laa.stl")
    with pytest.raises(InputError):
        exportModelToFile(node, tmp_path / "laa2.stl", frame="xyz")
    empty = scene.AddNewNodeByClass("vtkMRMLModelNode")
    with pytest.raises(MeshIOError):
        exportModelToFile(empty, tmp_path / "empty.stl")
    assert not (tmp_path / "empty.stl").exists()


def test_load_model_file_honours_the_space_tag(scene, tmp_path):
    from NUDFCore.io import write_mesh

    mesh_lps = _sphere_lps()
    for frame in ("lps", "ras"):
        path = write_mesh(mesh_lps, tmp_path / f"m_{frame}.vtp", frame=frame)
        node = loadModelFile(scene, path)
        np.testing.assert_allclose(polydata_points(node.GetPolyData()), lps_to_ras(polydata_points(mesh_lps)), atol=1e-6)


# ------------------------------------------------------------------------------------- parameters
def test_parameter_node_survives_scene_save_and_reload(scene, ct_file, tmp_path):
    params = NUDFParameters.getParameterNode(scene)
    assert params.get("resolutionMm") == 0.25 and params.get("device") == "auto" and params.get("runInBackground") is True
    assert params.problems()  # nothing selected yet
    volume = loadVolumeNode(scene, ct_file, "MyCT")
    seed = addSeedNode(scene, (1.0, 2.0, 3.0))
    model = updateModelNode(scene, _sphere_lps(), None, "MyLAA")
    params.setNode("InputVolume", volume)
    params.setNode("Seed", seed)
    params.setNode("OutputModel", model)
    params.set("device", "cpu")
    params.set("resolutionMm", 0.5)
    params.set("smoothing", 0.3)
    params.set("runInBackground", False)
    params.set("exportFrame", "ras")
    assert params.problems() == []
    with pytest.raises(InputError):
        params.set("device", "tpu")
    with pytest.raises(InputError):
        params.set("resolutionMm", -1)
    with pytest.raises(InputError):
        params.setNode("Seed", volume)
    # a singleton: asking again gives the same node
    assert NUDFParameters.getParameterNode(scene).node is params.node

    scene.SetRootDirectory(str(tmp_path))
    for n in (volume, model):  # write node data next to the scene, as Slicer's Save dialog does
        n.AddDefaultStorageNode()
        sn = n.GetStorageNode()
        sn.SetFileName(str(tmp_path / (n.GetName() + (".nrrd" if n is volume else ".vtp"))))
        assert sn.WriteData(n)
    seedStorage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    seed.SetAndObserveStorageNodeID(seedStorage.GetID())
    seedStorage.SetFileName(str(tmp_path / "seed.mrk.json"))
    assert seedStorage.WriteData(seed)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    reloaded = makeScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Import()
    p2 = NUDFParameters.getParameterNode(reloaded, create=False)
    assert p2 is not None
    assert p2.get("device") == "cpu" and p2.get("resolutionMm") == 0.5 and p2.get("smoothing") == 0.3
    assert p2.get("runInBackground") is False and p2.get("exportFrame") == "ras"
    assert p2.getNode("InputVolume").GetName() == "MyCT"
    assert p2.getNode("OutputModel").GetName() == "MyLAA"
    np.testing.assert_allclose(SegmentationLogic(reloaded).seedFromNode(p2.getNode("Seed")), [1.0, 2.0, 3.0], atol=1e-6)
    assert p2.problems() == []


# ------------------------------------------------------------------------------------- dependencies
def test_install_plan_never_touches_slicer_packages():
    missing = [Dependency("torch", "torch", "2.2"), Dependency("skimage", "scikit-image", "0.21"),
               Dependency("numpy", "numpy", "1.24")]
    plan = planInstall(missing, pytorchUtilsAvailable=True)
    assert plan.torchViaPyTorchUtils and not plan.torchViaPip
    assert plan.pipRequirements == ["scikit-image>=0.21"]
    assert plan.blocked == ["numpy>=1.24"]
    assert "PyTorch Utils" in plan.describe() and "will not be modified" in plan.describe()
    plan2 = planInstall(missing[:2], pytorchUtilsAvailable=False)
    assert plan2.torchViaPip and not plan2.torchViaPyTorchUtils and not plan2.blocked
    installed: list[str] = []
    executeInstall(plan2, installed.append)
    assert installed == ["torch>=2.2", "scikit-image>=0.21"]
    with pytest.raises(RuntimeError, match="too old"):
        executeInstall(plan, installed.append, installTorchWithPyTorchUtils=lambda: object())
    assert planInstall([], True).empty


def test_missing_dependencies_detects_absent_and_old_versions():
    assert missingDependencies() == []  # this environment has the engine's dependencies
    fake = (Dependency("torch", "torch", "2.2"), Dependency("skimage", "scikit-image", "0.21"),
            Dependency("vtk", "vtk", "9.3"))
    versions = {"torch": "1.13.1+cu117", "skimage": None, "vtk": "0"}
    missing = missingDependencies(fake, lambda d: versions[d.module])
    assert [d.module for d in missing] == ["torch", "skimage"]  # vtk bundled without metadata counts as present
    assert {d.module for d in ENGINE_DEPENDENCIES} >= {"torch", "skimage"}


# ------------------------------------------------------------------------------------- worker protocol
def test_parse_lines_and_command():
    assert parseLine('{"stage": "encode", "fraction": 0.42}\n') .kind == "progress"
    ev = parseLine('{"stage": "encode", "fraction": 1.7}')
    assert (ev.stage, ev.fraction) == ("encode", 1.0)
    done = parseLine('{"done": true, "summary": {"quality": {"n_faces": 10, "boundary_loops": 1}, "timings": {"total": 2.5}}}')
    assert done.kind == "done" and done.summary["quality"]["n_faces"] == 10
    assert summaryText(done.summary) == "Done: 2.5 s, 10 faces, 1 boundary loop(s)"
    assert parseLine("{not json").kind == "log"
    assert parseLine("loading model").kind == "log"
    assert parseLine("nudf segment: error: bad", "stderr").kind == "error"
    cmd = cliCommand("py", Path("/t/ct.nrrd"), (-12.5, 30, 88), Path("/t/o.vtp"), device="cpu", resolutionMm=0.5)
    assert "--seed-ras=-12.500000,30.000000,88.000000" in cmd  # '=' form: a negative x is not an option
    assert cmd[cmd.index("--frame") + 1] == "ras" and cmd[cmd.index("--progress-format") + 1] == "json"
    assert cmd[cmd.index("--resolution") + 1] == "0.5"
    # the engine's own parser accepts this command line
    from NUDFCore.cli import build_parser

    args = build_parser().parse_args(cmd[3:])
    assert args.seed_ras == [-12.5, 30.0, 88.0] and args.device == "cpu" and args.frame == "ras"


FAKE_WORKER = textwrap.dedent(
    """
    import json, subprocess, sys, time
    # a child process, as torch may spawn: cancel must kill it too
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"pid_child": child.pid}), flush=True)
    for i in range(1000):
        print(json.dumps({"stage": "surface", "fraction": i / 1000}), flush=True)
        time.sleep(0.05)
    """
)


def test_background_cancel_kills_the_process_tree(tmp_path, scene, ct_file):
    import json

    import psutil

    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    worker = BackgroundSegmentation()
    worker.workDir = tmp_path / "work"
    worker.workDir.mkdir()
    worker.startCommand([sys.executable, str(script)])
    assert worker.isRunning()
    progress, child_pid, t0 = [], None, time.time()
    while len(progress) < 3 and time.time() - t0 < 30:
        for ev in worker.poll():
            if ev.kind == "progress":
                progress.append(ev.fraction)
            elif ev.kind == "log" and "pid_child" in ev.text:
                child_pid = json.loads(ev.text)["pid_child"]
        time.sleep(0.02)
    assert len(progress) >= 3 and progress == sorted(progress) and worker.stage == "surface"
    assert child_pid is not None and psutil.pid_exists(child_pid)
    parent_pid = worker.process.pid
    worker.cancel()
    assert worker.state == "cancelled" and not worker.isRunning()
    assert worker.process.poll() is not None
    for pid in (parent_pid, child_pid):
        gone = not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert gone, f"process {pid} survived cancel"
    with pytest.raises(SegmentationError):
        worker.loadResult(scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0


def test_background_failure_reports_the_engine_error(tmp_path, scene, ct_file):
    volume = loadVolumeNode(scene, ct_file)
    worker = BackgroundSegmentation()
    # an implausible CT (noise, no air/contrast) and a broken model: the CLI must fail with a typed error
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    with pytest.raises(SegmentationError) as err:
        worker.run(volume, (0.0, 0.0, 0.0), modelPath=str(bad_model), device="cpu")
    assert worker.state == "failed"
    assert str(err.value).startswith("nudf segment: error:")  # the engine's typed one-line error
    assert not worker.workDir.exists()  # temporary NRRD removed
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0
