"""The Slicer Logic on real MRML (slicer-core): volume/seed conversion and the refusal of unusable inputs,
model output (its confidence arrays and colouring, the result's warnings), STL export frames, parameter node
save/reload, install planning, the background runner's process handling and the run controller (delivery,
cancel, scene close, in-process runs).

These need no trained model (a stub engine or a fake worker stands in); the end-to-end runs are in
test_slicer_segment.py.
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

from slicer_test_support import require_slicer_core, save_and_reload

slicer = require_slicer_core()  # the MRML tier must not vanish: no slicer-core is an error, not a skip

from NUDFCore.errors import InputError, MeshIOError, OutputExistsError, SegmentationError  # noqa: E402
from NUDFCore.frames import lps_to_ras  # noqa: E402
from NUDFCore.io import polydata_points, read_volume  # noqa: E402
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
from NUDFSegmentationLib.InstallLogic import (  # noqa: E402
    ENGINE_DEPENDENCIES,
    PROTECTED_PACKAGES,
    Dependency,
    executeInstall,
    protectedPins,
)
from NUDFSegmentationLib.RunController import RunController, panelState  # noqa: E402
from NUDFSegmentationLib.SegmentationLogic import (  # noqa: E402
    CONFIDENCE_COLOR_NODE_NAME,
    confidenceColorNode,
    confidenceLegend,
    getProvenance,
    getQualityReport,
    getQualityWarnings,
    isShowingConfidence,
    loadModelFile,
    setQualityReport,
    showConfidence,
    updateModelNode,
    volumeFromNode,
    warningsText,
    withWarnings,
)
from NUDFSegmentationLib.SelfTest import addSeedNode, loadVolumeNode, makeScene, stubSegment  # noqa: E402

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


def _vector_volume(scene, ct_file):
    """An RGB-like 3-component volume node with the CT's geometry (what a screenshot or colour map gives)."""
    from vtk.util import numpy_support

    ct = loadVolumeNode(scene, ct_file)
    image = vtk.vtkImageData()
    image.SetDimensions(ct.GetImageData().GetDimensions())
    scalars = numpy_support.numpy_to_vtk(np.zeros((image.GetNumberOfPoints(), 3), np.uint8), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB")
    node.SetAndObserveImageData(image)
    return node


def test_unusable_inputs_are_refused_with_one_clear_sentence_and_nothing_runs(scene, ct_file):
    """Issue 14: not a scalar volume, a non-linear parent transform, an empty seed list or one with several
    points: the logic, the parameters (Segment button tooltip) and the controller all refuse with the
    same sentence, before any work (no worker, no model node)."""
    ct = loadVolumeNode(scene, ct_file, "CT")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Warp")
    warped = loadVolumeNode(scene, ct_file, "Warped CT")
    warped.SetAndObserveTransformNodeID(grid.GetID())
    one = addSeedNode(scene, lps_to_ras(read_volume(ct_file).index_to_lps(np.array([10, 8, 6]))))
    two = addSeedNode(scene, (0.0, 0.0, 0.0), "Two points")
    two.AddControlPoint(1.0, 2.0, 3.0)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Empty")
    cases = [
        (_vector_volume(scene, ct_file), one, "RGB is a vector/tensor (e.g. RGB) volume, not a scalar (CT) volume"),
        (warped, one, "under a non-linear transform (Warp); harden the transform first"),
        (ct, empty, "the point list Empty is empty"),
        (ct, two, "The point list Two points holds 2 points; the seed must be exactly one point"),
    ]
    logic = SegmentationLogic(scene, segmentFunction=stubSegment)
    params = NUDFParameters.getParameterNode(scene)
    params.set("runInBackground", True)
    controller = RunController(logic, scheduler=None)
    for volume, seed, expected in cases:
        with pytest.raises(InputError) as err:
            logic.segmentVolumeNode(volume, seed)
        assert expected in str(err.value) and "\n" not in str(err.value)
        params.setNode("InputVolume", volume)
        params.setNode("Seed", seed)
        assert any(expected in p for p in params.problems())
        state = panelState(params, controller)
        assert not state.applyEnabled and expected in state.applyToolTip
        with pytest.raises(InputError) as err:
            controller.start(params)
        assert expected in str(err.value)
        assert controller.state == "idle" and controller.worker is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0
    # the same inputs, fixed, are accepted
    params.setNode("InputVolume", ct)
    params.setNode("Seed", one)
    assert params.problems() == [] and panelState(params, controller).applyEnabled


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


# ------------------------------------------------------------------------------------- confidence
#: What the engine puts on a mesh whose surface it doubts (NUDFCore.quality's wording).
INCOMPLETE = "the surface may be incomplete near LPS (12.0, -20.0, 30.0): it has a hole about 6 mm across besides the ostium."
NOT_LAA = "this does not look like a left atrial appendage: its area is 1.2 cm² (an LAA: 3–80 cm²)."


def _with_confidence(mesh: vtk.vtkPolyData, low: float = 0.1, high: float = 0.95) -> vtk.vtkPolyData:
    """The mesh with the engine's point arrays: confidence rising from ``low`` to ``high`` along the points."""
    from NUDFCore.quality import CONFIDENCE_ARRAY, set_point_array
    from NUDFCore.meshing import DISTANCE_ARRAY

    out = vtk.vtkPolyData()
    out.DeepCopy(mesh)
    confidence = np.linspace(low, high, out.GetNumberOfPoints())
    set_point_array(out, CONFIDENCE_ARRAY, confidence)
    set_point_array(out, DISTANCE_ARRAY, 0.5 * (1.0 - confidence))
    return out


def _point_array(node, name: str) -> np.ndarray:
    from vtk.util import numpy_support

    array = node.GetPolyData().GetPointData().GetArray(name)
    assert array is not None, f"{node.GetName()} has no {name!r} point array"
    return numpy_support.vtk_to_numpy(array).astype(np.float64)


def _assert_coloured_by_confidence(node) -> None:
    display = node.GetDisplayNode()
    assert display.GetActiveScalarName() == "confidence" and display.GetScalarVisibility()
    assert display.GetActiveAttributeLocation() == vtk.vtkAssignAttribute.POINT_DATA
    assert tuple(display.GetScalarRange()) == (0.0, 1.0)
    assert display.GetScalarRangeFlag() == display.UseManualScalarRange
    assert display.GetColorNode().GetName() == CONFIDENCE_COLOR_NODE_NAME
    legend = confidenceLegend(node)
    assert legend is not None and legend.GetVisibility() and legend.GetTitleText() == "Confidence"
    assert isShowingConfidence(node)


def test_model_node_keeps_the_point_arrays_and_is_coloured_by_confidence(scene):
    mesh_lps = _with_confidence(_sphere_lps(), 0.3, 0.6)
    node = updateModelNode(scene, mesh_lps, None, "CT LAA")
    np.testing.assert_array_equal(_point_array(node, "confidence"), np.linspace(0.3, 0.6, mesh_lps.GetNumberOfPoints()))
    np.testing.assert_array_equal(_point_array(node, "distance_mm"), 0.5 * (1.0 - np.linspace(0.3, 0.6, mesh_lps.GetNumberOfPoints())))
    _assert_coloured_by_confidence(node)  # fixed 0-1 although this mesh only spans 0.3-0.6
    display = node.GetDisplayNode()
    display.UpdateScalarRange()  # what MRML does when the data change: a manual range stays
    assert tuple(display.GetScalarRange()) == (0.0, 1.0)
    # the colour map: red where the network is unsure, yellow half-way, green where it is sure
    colors = display.GetColorNode().GetColorTransferFunction()
    r, g, b = colors.GetColor(0.0)
    assert r > 0.7 and g < 0.3 and b < 0.3
    r, g, b = colors.GetColor(0.5)
    assert r > 0.8 and g > 0.7 and b < 0.4
    r, g, b = colors.GetColor(1.0)
    assert g > 0.5 and r < 0.3 and b < 0.4
    # a second model shares the scene's one confidence colour node and gets its own legend
    other = updateModelNode(scene, _with_confidence(_sphere_lps(radius=3.0)), None, "CT LAA")
    assert other.GetDisplayNode().GetColorNodeID() == display.GetColorNodeID() == confidenceColorNode(scene).GetID()
    colorNodes = [scene.GetNthNodeByClass(i, "vtkMRMLColorNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode"))]
    assert [n.GetName() for n in colorNodes].count(CONFIDENCE_COLOR_NODE_NAME) == 1
    assert confidenceLegend(other) is not confidenceLegend(node)


def test_confidence_colouring_can_be_switched_off_and_needs_the_array(scene):
    node = updateModelNode(scene, _with_confidence(_sphere_lps()), None, "CT LAA", colorByConfidence=False)
    display = node.GetDisplayNode()
    assert not display.GetScalarVisibility() and not isShowingConfidence(node)
    assert confidenceLegend(node) is None  # no legend made for a plain model
    assert _point_array(node, "confidence").size  # the arrays are there all the same
    assert showConfidence(node, True)
    _assert_coloured_by_confidence(node)
    assert not showConfidence(node, False)
    assert not display.GetScalarVisibility() and not confidenceLegend(node).GetVisibility()
    r, g, b = display.GetColor()
    assert r > g and r > b  # back to the plain appendage colour
    # a mesh without the array (an older engine, a loaded STL) is shown plainly, whatever is asked
    assert not showConfidence(updateModelNode(scene, _sphere_lps(), node), True)
    assert not display.GetScalarVisibility() and not confidenceLegend(node).GetVisibility()


def test_loaded_vtp_keeps_its_arrays_and_colouring_survives_scene_save_and_reload(scene, tmp_path):
    from NUDFCore.io import write_mesh

    mesh_lps = _with_confidence(_sphere_lps())
    path = write_mesh(mesh_lps, tmp_path / "laa.vtp", frame="ras")  # what the background worker writes
    node = loadModelFile(scene, path, name="LAA")
    np.testing.assert_allclose(_point_array(node, "confidence"), np.linspace(0.1, 0.95, mesh_lps.GetNumberOfPoints()))
    assert np.all(np.isfinite(_point_array(node, "distance_mm")))
    _assert_coloured_by_confidence(node)
    setQualityReport(node, {"warnings": [INCOMPLETE], "warning_codes": ["holes"], "mean_confidence": 0.52})

    colors = confidenceColorNode(scene)
    reloaded = save_and_reload(scene, tmp_path, {node: f"saved_{node.GetID()}.vtp",
                                                  colors: f"saved_{colors.GetID()}.txt"})
    again = reloaded.GetFirstNodeByName("LAA")
    np.testing.assert_allclose(_point_array(again, "confidence"), _point_array(node, "confidence"))
    _assert_coloured_by_confidence(again)
    assert confidenceColorNode(reloaded) is again.GetDisplayNode().GetColorNode()  # reused, not duplicated
    assert getQualityWarnings(again) == [INCOMPLETE]
    assert getQualityReport(again)["mean_confidence"] == 0.52 and getQualityReport(again)["warning_codes"] == ["holes"]
    assert set(getProvenance(again)) == set()  # the quality report is not mistaken for provenance


def test_warnings_text_for_the_status_line():
    assert warningsText([]) == "" and withWarnings("Done: 2 s", []) == "Done: 2 s"
    assert withWarnings("Done: 2 s", [INCOMPLETE]) == f"Done: 2 s — 1 warning: {INCOMPLETE}"
    assert warningsText([INCOMPLETE, NOT_LAA]) == f"2 warnings: (1) {INCOMPLETE} (2) {NOT_LAA}"


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

    seedStorage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    seed.SetAndObserveStorageNodeID(seedStorage.GetID())
    reloaded = save_and_reload(scene, tmp_path, {volume: volume.GetName() + ".nrrd",
                                                  model: model.GetName() + ".vtp", seed: "seed.mrk.json"})
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
    missing = [Dependency("torch", "torch", "2.2"), Dependency("psutil", "psutil", "5.9"),
               Dependency("numpy", "numpy", "1.24"), Dependency("scipy", "scipy", "1.10")]
    plan = planInstall(missing, pytorchUtilsAvailable=True, constraints=["numpy==1.26.4", "scipy==1.11.1"])
    assert plan.torchViaPyTorchUtils and not plan.torchViaPip
    assert plan.pipRequirements == ["psutil>=5.9"]
    assert plan.blocked == ["numpy>=1.24", "scipy>=1.10"]  # Slicer's own: never installed by us
    assert "PyTorch Utils" in plan.describe() and "will not be modified" in plan.describe()
    plan2 = planInstall(missing[:2], pytorchUtilsAvailable=False, constraints=["numpy==1.26.4", "scipy==1.11.1"])
    assert plan2.torchViaPip and not plan2.torchViaPyTorchUtils and not plan2.blocked
    calls: list[tuple[list[str], str]] = []
    executeInstall(plan2, lambda args: calls.append((args, Path(args[2]).read_text())))
    # each pip call carries a constraints file holding Slicer's packages at their installed versions
    assert [args[:2] for args, _ in calls] == [["torch>=2.2", "--constraint"], ["psutil>=5.9", "--constraint"]]
    assert all(text == "numpy==1.26.4\nscipy==1.11.1\n" for _, text in calls)
    assert not Path(calls[0][0][2]).exists()  # the temporary constraints file is removed
    with pytest.raises(RuntimeError, match="too old"):
        executeInstall(plan, lambda args: None, installTorchWithPyTorchUtils=lambda: object())
    assert planInstall([], True).empty


def test_protected_pins_cover_every_slicer_package_installed_here():
    pins = dict(p.split("==") for p in protectedPins())
    import importlib.metadata as md

    for name in ("numpy", "scipy", "SimpleITK", "vtk"):
        assert name in PROTECTED_PACKAGES and pins[name] == md.version(name)


def test_the_module_installs_exactly_the_engine_runtime_requirements():
    """Mirrors NUDFCore.RUNTIME_REQUIREMENTS (what segmentation imports, checked in test_slicer_cmake.py):
    no phantom, training, report or terminal packages go into Slicer."""
    from NUDFCore import RUNTIME_REQUIREMENTS

    assert [(d.module, d.distribution, d.minimumVersion) for d in ENGINE_DEPENDENCIES] == list(RUNTIME_REQUIREMENTS)
    assert not {d.module for d in ENGINE_DEPENDENCIES} & {"skimage", "tqdm", "monai", "dask"}


def test_missing_dependencies_detects_absent_and_old_versions():
    assert missingDependencies() == []  # this environment has the engine's dependencies
    fake = (Dependency("torch", "torch", "2.2"), Dependency("psutil", "psutil", "5.9"),
            Dependency("vtk", "vtk", "9.3"))
    versions = {"torch": "1.13.1+cu117", "psutil": None, "vtk": "0"}
    missing = missingDependencies(fake, lambda d: versions[d.module])
    assert [d.module for d in missing] == ["torch", "psutil"]  # vtk bundled without metadata counts as present


# ------------------------------------------------------------------------------------- worker protocol
def test_parse_lines_and_command():
    assert parseLine('{"stage": "encode", "fraction": 0.42}\n') .kind == "progress"
    ev = parseLine('{"stage": "encode", "fraction": 1.7}')
    assert (ev.stage, ev.fraction) == ("encode", 1.0)
    done = parseLine('{"done": true, "summary": {"quality": {"n_faces": 10, "boundary_loops": 1}, "timings": {"total": 2.5}}}')
    assert done.kind == "done" and done.summary["quality"]["n_faces"] == 10
    assert summaryText(done.summary) == "Done: 2.5 s, 10 faces, 1 boundary loop(s)"
    done.summary["quality"]["mean_confidence"] = 0.834
    assert summaryText(done.summary) == "Done: 2.5 s, 10 faces, 1 boundary loop(s), mean confidence 0.83"
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


# ------------------------------------------------------------------------------------- run controller
class _FakeWorker(BackgroundSegmentation):
    """The real runner driving FAKE_WORKER (a child process, progress lines) instead of the engine."""

    script: Path = Path()

    def start(self, volumeNode, seed_ras, **options) -> None:
        import tempfile

        self.workDir = Path(tempfile.mkdtemp(prefix="NUDFSegmentation-"))
        self.startCommand([sys.executable, str(self.script)])


def _ready_parameters(scene, ct_file, **values) -> NUDFParameters:
    params = NUDFParameters.getParameterNode(scene)
    volume = loadVolumeNode(scene, ct_file, "CT")
    params.setNode("InputVolume", volume)
    params.setNode("Seed", addSeedNode(scene, lps_to_ras(read_volume(ct_file).index_to_lps(np.array([10, 8, 6])))))
    for name, value in values.items():
        params.set(name, value)
    return params


def _fake_run(tmp_path, scene, ct_file):
    """A controller running FAKE_WORKER with a manual scheduler; returns (controller, events, polls, params)."""
    _FakeWorker.script = tmp_path / "fake_worker.py"
    _FakeWorker.script.write_text(FAKE_WORKER)
    params = _ready_parameters(scene, ct_file)
    polls: list = []
    controller = RunController(SegmentationLogic(scene), scheduler=lambda ms, cb: polls.append(cb), workerFactory=_FakeWorker)
    events: list = []
    controller.addListener(events.append)
    controller.start(params)
    return controller, events, polls, params


def _pump(polls, until, timeout=30.0) -> None:
    """Run the scheduled polls (what Qt's timer does in Slicer) until ``until()`` holds."""
    t0 = time.time()
    while polls and not until() and time.time() - t0 < timeout:
        polls.pop(0)()
        time.sleep(0.02)


def test_controller_cancel_kills_the_process_tree_and_delivers_nothing(tmp_path, scene, ct_file):
    import json

    import psutil

    controller, events, polls, params = _fake_run(tmp_path, scene, ct_file)
    assert controller.running and events[0].kind == "started" and len(polls) == 1
    assert panelState(params, controller).applyText == "Cancel"
    worker = controller.worker
    _pump(polls, lambda: sum(e.kind == "progress" for e in events) >= 3 and worker.logLines)
    child_pid = json.loads(worker.logLines[0])["pid_child"]
    state = panelState(params, controller)
    assert state.progressVisible and state.progressFormat == "surface: %p%" and not state.inputsEnabled
    parent_pid, work = worker.process.pid, worker.workDir
    controller.cancel()
    assert controller.state == "cancelled" and events[-1].kind == "cancelled" and controller.statusText == "Cancelled."
    for pid in (parent_pid, child_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"{pid} survived"
    assert not work.exists()
    _pump(polls, lambda: False)  # a timer still pending after the cancel finds nothing to do
    assert not polls and scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0
    assert panelState(params, controller).applyText == "Segment LAA"


def test_closing_the_scene_cancels_the_run(tmp_path, scene, ct_file):
    import psutil

    controller, events, polls, params = _fake_run(tmp_path, scene, ct_file)
    pid = controller.worker.process.pid
    scene.Clear(0)
    assert controller.state == "cancelled" and events[-1].kind == "cancelled"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_in_process_run_delivers_to_the_scene_and_cancels_at_a_progress_step(scene, ct_file):
    from NUDFCore.errors import SegmentationCancelled

    def steppingStub(ct, *, options=None, **kw):
        for i in range(4):
            options.progress("surface", i / 4)
            if options.cancel():
                raise SegmentationCancelled("Segmentation cancelled.")
        return stubSegment(ct, options=options, **kw)

    params = _ready_parameters(scene, ct_file, runInBackground=False, resolutionMm=0.5)
    pumped: list[int] = []
    controller = RunController(SegmentationLogic(scene, segmentFunction=steppingStub), scheduler=None,
                               processEvents=lambda: pumped.append(1))
    events: list = []
    controller.addListener(events.append)
    controller.start(params)
    assert [e.kind for e in events] == ["started"] + ["progress"] * 4 + ["done"] and len(pumped) == 4
    model = scene.GetNodeByID(events[-1].modelNodeID)
    assert params.getNode("OutputModel") is model and model.GetName() == "CT LAA"
    assert getProvenance(model)["resolution_mm"] == 0.5 and panelState(params, controller).exportEnabled

    events.clear()
    params.setNode("OutputModel", None)
    controller.addListener(lambda e: controller.cancel() if e.kind == "progress" else None)
    controller.start(params)
    assert [e.kind for e in events] == ["started", "progress", "cancelled"] and controller.state == "cancelled"
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 1  # only the first run's model


def test_a_failing_listener_does_not_stop_delivery(scene, ct_file):
    params = _ready_parameters(scene, ct_file, runInBackground=False)
    controller = RunController(SegmentationLogic(scene, segmentFunction=stubSegment), scheduler=None)

    def brokenPanel(event):  # e.g. a panel whose Qt widgets were deleted
        raise RuntimeError("underlying C++ object has been deleted")

    controller.addListener(brokenPanel)
    controller.start(params)
    assert controller.state == "done" and params.getNode("OutputModel") is not None


def _doubting_stub(ct, **kw):
    """The stub engine's surface (with its confidence arrays) and two warnings, as the engine reports them."""
    result = stubSegment(ct, **kw)
    result.quality.update(warnings=[INCOMPLETE, NOT_LAA], warning_codes=["holes", "area"])
    return result


def test_in_process_run_reports_the_warnings_and_colours_the_model(scene, ct_file):
    params = _ready_parameters(scene, ct_file, runInBackground=False)
    controller = RunController(SegmentationLogic(scene, segmentFunction=_doubting_stub), scheduler=None)
    events: list = []
    controller.addListener(events.append)
    controller.start(params)
    done = events[-1]
    assert done.kind == "done" and done.warnings == (INCOMPLETE, NOT_LAA)
    assert controller.statusText == done.message and controller.statusText.startswith("Done: ")
    assert controller.statusText.endswith(f" — 2 warnings: (1) {INCOMPLETE} (2) {NOT_LAA}")
    assert "mean confidence" in controller.statusText  # SegmentationResult.summary()
    model = params.getNode("OutputModel")
    assert getQualityWarnings(model) == [INCOMPLETE, NOT_LAA]  # kept with the result
    assert getQualityReport(model)["warning_codes"] == ["holes", "area"]
    _assert_coloured_by_confidence(model)
    conf = _point_array(model, "confidence")
    assert np.all(np.isfinite(conf)) and conf.min() >= 0.0 and conf.max() <= 1.0

    # the option off: the next run's model is shown plainly; switching it on recolours without a new run
    params.set("colorByConfidence", False)
    controller.start(params)
    assert controller.state == "done" and not isShowingConfidence(model)
    params.set("colorByConfidence", True)
    controller.logic.applyDisplayParameters(params)
    _assert_coloured_by_confidence(model)
    # a run without doubts says nothing more than its summary, and clears the earlier warnings
    controller.logic.segmentFunction = stubSegment
    controller.start(params)
    assert events[-1].warnings == () and "warning" not in controller.statusText
    assert getQualityWarnings(model) == []


class _DoubtfulWorker(BackgroundSegmentation):
    """A real worker process that ends at once with what ``nudf segment --progress-format json`` leaves: a VTP
    (RAS, with the confidence arrays) and a final summary whose quality holds a warning."""

    def start(self, volumeNode, seed_ras, **options) -> None:
        import json
        import tempfile

        from NUDFCore.io import write_mesh

        self.workDir = Path(tempfile.mkdtemp(prefix="NUDFSegmentation-"))
        ct = SegmentationLogic.volumeFromNode(volumeNode)
        write_mesh(stubSegment(ct, seed_ras=seed_ras).mesh_lps, self.outputPath, frame="ras")
        summary = {"timings": {"total": 3.0}, "quality": {"n_faces": 10, "mean_confidence": 0.61,
                                                          "warnings": [INCOMPLETE], "warning_codes": ["holes"]}}
        line = json.dumps({"done": True, "summary": summary})
        self.startCommand([sys.executable, "-c", f"print({line!r})"])


def test_background_run_brings_the_arrays_and_warnings_through_the_worker_files(scene, ct_file):
    params = _ready_parameters(scene, ct_file)
    controller = RunController(SegmentationLogic(scene), scheduler=None, workerFactory=_DoubtfulWorker)
    events: list = []
    controller.addListener(events.append)
    controller.start(params)
    assert controller.wait(timeout=60) == "done", controller.statusText
    assert controller.statusText == f"Done: 3.0 s, 10 faces, mean confidence 0.61 — 1 warning: {INCOMPLETE}"
    assert events[-1].warnings == (INCOMPLETE,)
    model = params.getNode("OutputModel")
    assert getQualityWarnings(model) == [INCOMPLETE]
    conf, dist = _point_array(model, "confidence"), _point_array(model, "distance_mm")
    assert len(conf) == len(dist) == model.GetPolyData().GetNumberOfPoints()
    assert np.all(np.isfinite(dist)) and conf.min() >= 0.0 and conf.max() <= 1.0 and conf.max() > conf.min()
    _assert_coloured_by_confidence(model)


def test_background_failure_reports_the_engine_error(tmp_path, scene, ct_file):
    """An implausible CT (noise) and a broken model: the real engine process fails with its typed one-line
    error, which the controller reports without the CLI prefix; nothing reaches the scene, temporary files
    are gone."""
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    params = _ready_parameters(scene, ct_file, modelPath=str(bad_model), device="cpu")
    workers: list[BackgroundSegmentation] = []

    def factory() -> BackgroundSegmentation:
        workers.append(BackgroundSegmentation())
        return workers[-1]

    controller = RunController(SegmentationLogic(scene), scheduler=None, workerFactory=factory)
    events: list = []
    controller.addListener(events.append)
    controller.start(params)
    assert controller.wait(timeout=120) == "failed"
    failed = events[-1]
    assert failed.kind == "failed" and not failed.message.startswith("nudf") and "\n" not in failed.message
    assert "does not look like a CT" in failed.message  # the engine's first check: this noise is no CT
    assert controller.statusText == f"Failed: {failed.message}"
    assert not workers[0].workDir.exists()  # temporary NRRD removed
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0
