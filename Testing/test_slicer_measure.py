"""The Measurements logic on real MRML (slicer-core): the table node, the ostium / landing-zone closed curves,
the centreline curve and the ostium plane in the scene; moving the plane re-cuts the surface and updates the
table; export to JSON/CSV; everything survives a scene save and reload; and the panel's Measurements section
(test_slicer_widget's PythonQt stand-in) measures after a run, follows the plane and exports.

The LAA is an analytic cone frustum (laa_shapes.py) moved by a random rigid motion, so every figure has a
known answer: the ostium and landing-zone diameters follow 2·(r0 + (r1 − r0)·d/L).
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from laa_shapes import cone_frustum, place, random_motion
from slicer_test_support import require_slicer_core, save_and_reload

slicer = require_slicer_core()  # the MRML tier must not vanish: no slicer-core is an error, not a skip

from NUDFCore.errors import InputError, OutputExistsError  # noqa: E402
from NUDFCore.frames import lps_to_ras, ras_to_lps  # noqa: E402
from NUDFSegmentationLib.MeasurementLogic import MeasurementLogic  # noqa: E402
from NUDFSegmentationLib.SegmentationLogic import updateModelNode  # noqa: E402
from NUDFSegmentationLib.SelfTest import addSeedNode, makeScene  # noqa: E402

R0, R1, LENGTH = 12.0, 6.0, 30.0  # the frustum: ostium radius, end radius, length (mm)


def _diameter(depth_mm: float) -> float:
    return 2 * (R0 + (R1 - R0) * depth_mm / LENGTH)


@pytest.fixture
def setup():
    scene = makeScene()
    rot, shift = random_motion(77)
    model = updateModelNode(scene, place(cone_frustum(R0, R1, LENGTH, 48), rot, shift), None, "CT LAA")
    updates = []
    logic = MeasurementLogic(scene, onUpdate=lambda node, m, error: updates.append((m, error)))
    return {"scene": scene, "model": model, "logic": logic, "axis_lps": rot @ [0.0, 0.0, 1.0], "shift_lps": shift,
            "updates": updates}


def _table(tableNode) -> dict[str, float]:
    t = tableNode.GetTable()
    names, values = t.GetColumnByName("Measurement"), t.GetColumnByName("Value")
    return {names.GetValue(i): values.GetValue(i) for i in range(t.GetNumberOfRows())}


def _points_ras(curveNode) -> np.ndarray:
    p = [0.0, 0.0, 0.0]
    out = []
    for i in range(curveNode.GetNumberOfControlPoints()):
        curveNode.GetNthControlPointPositionWorld(i, p)
        out.append(list(p))
    return np.array(out)


def test_measuring_a_model_fills_the_scene(setup):
    logic, model = setup["logic"], setup["model"]
    m = logic.measureModel(model)
    table = logic.tableNode(model)
    assert table.IsA("vtkMRMLTableNode") and table.GetScene() is setup["scene"]
    rows = _table(table)
    assert rows["ostium max diameter (Feret)"] == pytest.approx(_diameter(0), rel=0.01)
    assert rows["landing 10 mm: max diameter (Feret)"] == pytest.approx(_diameter(10), rel=0.02)
    assert rows["depth (ostium plane -> deepest point)"] == pytest.approx(LENGTH, rel=0.02)
    assert table.GetTable().GetColumnByName("Unit").GetValue(0) == "mm"

    # the ostium contour: a locked closed curve of RAS points on the rim circle (radius R0 around the shift)
    ostium = logic.ostiumCurveNode(model)
    assert ostium.IsA("vtkMRMLMarkupsClosedCurveNode") and ostium.GetLocked()
    rim = ras_to_lps(_points_ras(ostium))
    assert len(rim) >= 24
    np.testing.assert_allclose(np.linalg.norm(rim - setup["shift_lps"], axis=1), R0, rtol=0.01)
    # one closed curve per landing depth, each a circle of the frustum's radius at that depth
    zones = logic.landingZoneNodes(model)
    assert [z.IsA("vtkMRMLMarkupsClosedCurveNode") for z in zones] == [True, True]
    for depth, zone in zip((10.0, 12.0), zones):
        ring = ras_to_lps(_points_ras(zone))
        centre = setup["shift_lps"] + depth * setup["axis_lps"]
        np.testing.assert_allclose(np.linalg.norm(ring - centre, axis=1), _diameter(depth) / 2, rtol=0.02)
    # the centreline: a curve from the ostium centre to the apex on the flat end
    line = ras_to_lps(_points_ras(logic.centerlineNode(model)))
    assert logic.centerlineNode(model).IsA("vtkMRMLMarkupsCurveNode")
    np.testing.assert_allclose(line[0], m.ostium.center_lps, atol=1e-3)
    np.testing.assert_allclose(line[-1], setup["shift_lps"] + LENGTH * setup["axis_lps"], atol=0.5)
    # the plane sits on the fitted ostium, its normal into the LAA (RAS in the scene)
    plane = logic.planeNode(model)
    origin, normal = [0.0] * 3, [0.0] * 3
    plane.GetOriginWorld(origin)
    plane.GetNormalWorld(normal)
    np.testing.assert_allclose(ras_to_lps(np.array(origin)), setup["shift_lps"], atol=0.05)
    assert ras_to_lps(np.array(normal)) @ setup["axis_lps"] > 0.9999
    assert setup["updates"][-1][1] is None and setup["updates"][-1][0] is m


def test_moving_the_plane_recuts_and_updates_the_table(setup):
    logic, model, axis, shift = setup["logic"], setup["model"], setup["axis_lps"], setup["shift_lps"]
    logic.measureModel(model)
    logic.observeOstiumPlane(model)
    plane = logic.planeNode(model)
    before = _table(logic.tableNode(model))
    n_updates = len(setup["updates"])

    plane.SetOriginWorld(*lps_to_ras(shift + 6.0 * axis))  # one programmatic move: one re-measure
    assert len(setup["updates"]) == n_updates + 1
    after = _table(logic.tableNode(model))
    assert after["ostium max diameter (Feret)"] == pytest.approx(_diameter(6.0), rel=0.01)
    assert after["ostium max diameter (Feret)"] < before["ostium max diameter (Feret)"] - 1.5
    assert after["landing 10 mm: max diameter (Feret)"] == pytest.approx(_diameter(16.0), rel=0.02)
    assert after["depth (ostium plane -> deepest point)"] == pytest.approx(LENGTH - 6.0, rel=0.02)
    assert "ostium from the ostium plane" in after
    np.testing.assert_allclose(ras_to_lps(_points_ras(logic.ostiumCurveNode(model))).mean(0), shift + 6.0 * axis,
                               atol=0.1)

    # a drag re-measures once, when it ends; several programmatic steps once, at the end
    n_updates = len(setup["updates"])
    plane.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    plane.SetOriginWorld(*lps_to_ras(shift + 3.0 * axis))
    plane.SetOriginWorld(*lps_to_ras(shift + 4.0 * axis))
    assert len(setup["updates"]) == n_updates
    plane.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert len(setup["updates"]) == n_updates + 1
    with logic.movingPlane(model):
        plane.SetOriginWorld(*lps_to_ras(shift + 2.0 * axis))
        plane.SetNormalWorld(*lps_to_ras(axis))
    assert len(setup["updates"]) == n_updates + 2
    assert _table(logic.tableNode(model))["ostium max diameter (Feret)"] == pytest.approx(_diameter(2.0), rel=0.01)


def test_a_plane_outside_the_surface_says_so_and_recovers(setup):
    logic, model, axis, shift = setup["logic"], setup["model"], setup["axis_lps"], setup["shift_lps"]
    logic.measureModel(model)
    logic.observeOstiumPlane(model)
    plane = logic.planeNode(model)
    plane.SetOriginWorld(*lps_to_ras(shift - 5.0 * axis))  # proximal to the whole surface
    assert "outside the segmented surface" in logic.lastError
    rows = _table(logic.tableNode(model))
    assert len(rows) == 1 and next(iter(rows)).startswith("error: The ostium plane lies outside")
    assert setup["updates"][-1][0] is None and logic.measurements(model) is None
    assert not logic.ostiumCurveNode(model).GetDisplayNode().GetVisibility()
    plane.SetOriginWorld(*lps_to_ras(shift + 1.0 * axis))
    assert logic.lastError is None and logic.ostiumCurveNode(model).GetDisplayNode().GetVisibility()
    assert _table(logic.tableNode(model))["ostium max diameter (Feret)"] == pytest.approx(_diameter(1.0), rel=0.01)
    logic.resetOstium(model)  # back to the surface's own rim, the plane with it
    origin = [0.0] * 3
    plane.GetOriginWorld(origin)
    np.testing.assert_allclose(ras_to_lps(np.array(origin)), shift, atol=0.05)
    with pytest.raises(InputError):
        logic.measureModel(None)


def test_export_writes_json_and_csv_read_back(setup, tmp_path):
    logic, model = setup["logic"], setup["model"]
    m = logic.measureModel(model)
    j = logic.exportMeasurements(model, tmp_path / "m.json")
    d = json.loads(j.read_text())
    assert d["ostium"]["max_diameter_mm"] == pytest.approx(m.ostium.max_diameter_mm, abs=1e-3)
    assert [z["depth_mm"] for z in d["landing_zones"]] == [10.0, 12.0]
    c = logic.exportMeasurements(model, tmp_path / "m.csv")
    row = next(csv.DictReader(open(c, newline="")))
    assert row["case"] == "CT LAA" and float(row["landing_12mm_max_diameter_mm"]) == pytest.approx(_diameter(12), rel=0.02)
    with pytest.raises(OutputExistsError):
        logic.exportMeasurements(model, j)
    with pytest.raises(InputError):
        logic.exportMeasurements(model, tmp_path / "m.txt")
    assert logic.exportMeasurements(model, j, overwrite=True) == j


def test_measurements_survive_scene_save_and_reload(setup, tmp_path):
    logic, model, scene, axis, shift = setup["logic"], setup["model"], setup["scene"], setup["axis_lps"], setup["shift_lps"]
    logic.measureModel(model)
    logic.observeOstiumPlane(model)
    logic.planeNode(model).SetOriginWorld(*lps_to_ras(shift + 4.0 * axis))
    saved = _table(logic.tableNode(model))
    nodes = [model, logic.tableNode(model), logic.planeNode(model), logic.ostiumCurveNode(model),
             logic.centerlineNode(model)] + logic.landingZoneNodes(model)
    for node in nodes:
        node.AddDefaultStorageNode()
    reloaded = save_and_reload(scene, tmp_path, {node: f"node{i}.{node.GetStorageNode().GetDefaultWriteFileExtension()}"
                                                 for i, node in enumerate(nodes)})
    model2 = reloaded.GetFirstNodeByName("CT LAA")
    logic2 = MeasurementLogic(reloaded)
    rows = _table(logic2.tableNode(model2))
    assert rows.keys() == saved.keys()
    assert rows["ostium max diameter (Feret)"] == pytest.approx(saved["ostium max diameter (Feret)"], abs=1e-4)
    assert logic2.ostiumCurveNode(model2).GetNumberOfControlPoints() == logic.ostiumCurveNode(model).GetNumberOfControlPoints()
    assert len(logic2.landingZoneNodes(model2)) == 2 and logic2.centerlineNode(model2) is not None
    origin = [0.0] * 3
    logic2.planeNode(model2).GetOriginWorld(origin)
    np.testing.assert_allclose(ras_to_lps(np.array(origin)), shift + 4.0 * axis, atol=1e-3)
    # export after the reload re-measures at the saved plane
    d = json.loads(logic2.exportMeasurements(model2, tmp_path / "after.json").read_text())
    assert d["ostium_source"] == "plane"
    assert d["ostium"]["max_diameter_mm"] == pytest.approx(_diameter(4.0), rel=0.01)
    assert math.isclose(d["depth_mm"], LENGTH - 4.0, rel_tol=0.02)


# ---------------------------------------------------------------------------------- the panel section
from test_slicer_widget import panel  # noqa: E402,F401  (the panel on real MRML with a PythonQt stand-in)


def test_the_panel_measures_after_a_run_and_exports(panel, tmp_path):
    """Segment LAA (stub engine: an open hemisphere of radius 6 mm on the seed) fills the Measurements section."""
    ui = panel.ui
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    ui.seedSelector.setCurrentNode(addSeedNode(panel.scene, panel.case["seed_ras"]))
    ui.backgroundCheckBox.setChecked(False)
    assert not ui.measureButton.enabled and not ui.exportMeasurementsButton.enabled
    ui.applyButton.click()
    model = panel.params.getNode("OutputModel")
    logic = panel.widget.measurementLogic
    assert ui.statusLabel.text.startswith("Done:")  # the segmentation's own status line is kept
    assert "ostium max diameter (Feret)" in ui.measurementsTextEdit.plainText
    assert _table(logic.tableNode(model))["ostium max diameter (Feret)"] == pytest.approx(12.0, rel=0.02)
    assert logic.planeNode(model) is not None and ui.measureButton.enabled and ui.exportMeasurementsButton.enabled
    # the plane is observed: moving it re-measures
    origin, normal = [0.0] * 3, [0.0] * 3
    logic.planeNode(model).GetOriginWorld(origin)
    logic.planeNode(model).GetNormalWorld(normal)
    logic.planeNode(model).SetOriginWorld(*(np.array(origin) + 2.0 * np.array(normal)))
    moved = _table(logic.tableNode(model))["ostium max diameter (Feret)"]
    assert moved == pytest.approx(2 * math.sqrt(36 - 4), rel=0.02) and "the given plane" in ui.measurementsTextEdit.plainText
    out = tmp_path / "laa.csv"
    panel.saveFileName.append(str(out))
    ui.exportMeasurementsButton.click()
    row = next(csv.DictReader(open(out, newline="")))
    assert float(row["ostium_max_diameter_mm"]) == pytest.approx(moved, abs=1e-3)
    assert ui.statusLabel.text == f"Exported the measurements to {out}."
