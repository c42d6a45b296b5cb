"""The module panel (``NUDFSegmentationLib/Widget.py``) on real MRML, with the real logic and run controller,
the real ``.ui`` file and a small stand-in for Slicer's PythonQt widgets (no Qt in CI).

The stand-in builds one object per ``<widget>`` of ``Resources/UI/NUDFSegmentation.ui`` with its class name,
and gives them the PythonQt behaviour the panel uses: properties, setters that emit their change signal
(only when the value changes, as Qt does), ``connect(signature, callable)`` (a slot gets only as many of the
signal's arguments as it takes, as in PythonQt), combo-box item data. What is
checked is the panel's own code: the binding generated from the parameter spec (both ways), the remembered
settings, the Segment button's state and tooltip, a refused input shown as one sentence (no traceback), a
run's result and status, export, and a background run that outlives the panel.
"""
from __future__ import annotations

import importlib
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import vtk
from slicer_test_support import MODULE_DIR, require_slicer_core

slicer = require_slicer_core()  # the MRML tier must not vanish: no slicer-core is an error, not a skip

from NUDFCore.frames import lps_to_ras  # noqa: E402
from NUDFCore.io import polydata_points, write_mesh  # noqa: E402
from NUDFSegmentationLib import BackgroundSegmentation, NUDFParameters, RunController, SegmentationLogic  # noqa: E402
from NUDFSegmentationLib.SegmentationLogic import getProvenance  # noqa: E402
from NUDFSegmentationLib.SelfTest import addSeedNode, makeScene, stubSegment, writeSyntheticCT  # noqa: E402

UI_FILE = MODULE_DIR / "Resources" / "UI" / "NUDFSegmentation.ui"

# ------------------------------------------------------------------------------ a PythonQt stand-in
_CHANGE = {  # property -> the signal its setter emits
    "value": "valueChanged(double)", "checked": "toggled(bool)", "currentPath": "currentPathChanged(QString)",
    "currentIndex": "currentIndexChanged(int)", "node": "currentNodeChanged(vtkMRMLNode*)",
}


class FakeWidget:
    def __init__(self, name: str, className: str) -> None:
        self._name, self._class, self._slots = name, className, {}
        self.text, self.toolTip, self.enabled, self.visible, self.format = "", "", True, True, ""
        self.value, self.checked, self.currentPath, self.currentIndex, self.node = 0.0, False, "", -1, None
        self.items: list[tuple[str, object]] = []
        self.buttonsVisible, self.placeMultipleMarkups = True, None

    def className(self) -> str:
        return self._class

    def connect(self, signal: str, slot) -> None:
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str, *args) -> None:
        import inspect

        for slot in self._slots.get(signal, []):
            params = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:  # PythonQt passes a slot only as many arguments as it takes
                slot(*args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
                                   for p in params)])

    def _set(self, prop: str, value) -> None:
        if getattr(self, prop) != value:
            setattr(self, prop, value)
            self.emit(_CHANGE[prop], value)

    setValue = lambda self, v: self._set("value", float(v))  # noqa: E731
    setChecked = lambda self, v: self._set("checked", bool(v))  # noqa: E731
    setCurrentPath = lambda self, v: self._set("currentPath", str(v))  # noqa: E731
    setCurrentIndex = lambda self, i: self._set("currentIndex", int(i))  # noqa: E731

    def setCurrentNode(self, node) -> None:
        self._set("node", node)

    def currentNode(self):
        return self.node

    def addItem(self, label: str, data) -> None:
        self.items.append((label, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def findData(self, data) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def click(self) -> None:
        self.emit("clicked(bool)", False)

    def setRange(self, *a) -> None: ...
    def setMRMLScene(self, scene) -> None: ...
    def hide(self) -> None: self.visible = False  # noqa: E704
    def show(self) -> None: self.visible = True  # noqa: E704
    def setVisible(self, v: bool) -> None: self.visible = bool(v)  # noqa: E704
    def placeButton(self): return self  # noqa: E704


class FakeSettings:
    def __init__(self, values: dict | None = None) -> None:
        self.values = dict(values or {})

    def contains(self, key: str) -> bool:
        return key in self.values

    def value(self, key: str):
        return self.values[key]

    def setValue(self, key: str, value) -> None:
        self.values[key] = value


def _fake_qt(saveFileName: list[str]) -> types.ModuleType:
    qt = types.ModuleType("qt")

    class QWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent

    class QVBoxLayout:
        def __init__(self, widget) -> None:
            self.widgets = []

        def setContentsMargins(self, *a) -> None: ...

        def addWidget(self, w) -> None:
            self.widgets.append(w)

    qt.QWidget, qt.QVBoxLayout, qt.QSettings = QWidget, QVBoxLayout, FakeSettings
    qt.QDir = types.SimpleNamespace(homePath=lambda: "/home/user")
    qt.QFileDialog = types.SimpleNamespace(getSaveFileName=lambda *a: saveFileName.pop(0) if saveFileName else "")
    return qt


@pytest.fixture
def panel(monkeypatch, tmp_path):
    """The panel on a fresh scene, with a stub engine; yields a namespace of what the tests need."""
    scene = makeScene()
    ui_root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): FakeWidget(w.get("name"), w.get("class")) for w in ui_root.iter("widget")}
    shown: dict[str, list] = {"errors": [], "status": []}
    saveFileName: list[str] = []
    monkeypatch.setitem(sys.modules, "qt", _fake_qt(saveFileName))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", types.SimpleNamespace(ForcePlaceSingleMarkup=2), raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: widgets[ui_root.find("widget").get("name")])
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda root: types.SimpleNamespace(**widgets))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown["errors"].append((text, kw)))
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, *a: shown["status"].append(text))
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    sys.modules.pop("NUDFSegmentationLib.Widget", None)
    Widget = importlib.import_module("NUDFSegmentationLib.Widget").Widget

    timers: list = []
    logic = SegmentationLogic(scene, segmentFunction=stubSegment)
    controller = RunController(logic, scheduler=lambda ms, callback: timers.append(callback))
    settings = FakeSettings({"NUDFSegmentation/resolutionMm": "0.5", "NUDFSegmentation/device": "tpu"})
    w = Widget(logic, controller, settings=settings)
    w.enter()
    case = writeSyntheticCT(tmp_path / "ct.nrrd")
    from NUDFSegmentationLib.SelfTest import loadVolumeNode

    volume = loadVolumeNode(scene, case["path"], "CT")
    yield types.SimpleNamespace(widget=w, ui=types.SimpleNamespace(**widgets), scene=scene, controller=controller,
                                settings=settings, shown=shown, timers=timers, case=case, volume=volume,
                                saveFileName=saveFileName, params=NUDFParameters.getParameterNode(scene))
    sys.modules.pop("NUDFSegmentationLib.Widget", None)


def test_the_generated_binding_works_both_ways_and_remembers_settings(panel):
    ui, params = panel.ui, panel.params
    assert [d for _, d in ui.deviceComboBox.items] == ["auto", "cpu", "cuda"]
    # a new parameter node took the remembered resolution; the stale device setting was ignored
    assert params.get("resolutionMm") == 0.5 and ui.resolutionSpinBox.value == 0.5
    assert params.get("device") == "auto" and ui.deviceComboBox.currentData == "auto"
    # GUI -> parameter node, for every kind of bound widget
    ui.resolutionSpinBox.setValue(0.75)
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.modelPathLineEdit.setCurrentPath("/models/my.pt")
    ui.backgroundCheckBox.setChecked(False)
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    assert (params.get("resolutionMm"), params.get("device"), params.get("modelPath")) == (0.75, "cpu", "/models/my.pt")
    assert params.get("runInBackground") is False and params.getNode("InputVolume") is panel.volume
    # parameter node -> GUI
    params.set("smoothing", 0.3)
    params.set("exportFrame", "ras")
    assert ui.smoothingSliderWidget.value == 0.3 and ui.exportFrameComboBox.currentData == "ras"
    # an out-of-range value from the GUI is refused with a status line, and the GUI shows the stored value
    ui.resolutionSpinBox.setValue(9.0)
    assert params.get("resolutionMm") == 0.75 and ui.resolutionSpinBox.value == 0.75
    assert "resolutionMm must be at most" in ui.statusLabel.text


def test_refused_inputs_disable_segment_and_show_one_sentence(panel):
    ui = panel.ui
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    assert not ui.applyButton.enabled and "Place the LAA seed" in ui.applyButton.toolTip
    seed = addSeedNode(panel.scene, panel.case["seed_ras"])
    seed.AddControlPoint(1.0, 2.0, 3.0)
    ui.seedSelector.setCurrentNode(seed)
    assert not ui.applyButton.enabled and "exactly one point" in ui.applyButton.toolTip
    ui.applyButton.click()  # e.g. through a keyboard shortcut despite the disabled button
    (text, kw), = panel.shown["errors"]
    assert "holds 2 points" in text and "\n" not in text and not kw.get("detailedText")  # no traceback
    assert panel.controller.state == "idle" and panel.scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 0
    seed.RemoveNthControlPoint(1)  # the panel watches the point list
    assert ui.applyButton.enabled and ui.applyButton.text == "Segment LAA"


def test_an_in_process_run_shows_its_result_and_exports(panel, tmp_path):
    ui = panel.ui
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    ui.seedSelector.setCurrentNode(addSeedNode(panel.scene, panel.case["seed_ras"]))
    ui.backgroundCheckBox.setChecked(False)
    ui.resolutionSpinBox.setValue(0.75)
    assert not ui.exportButton.enabled
    ui.applyButton.click()
    model = panel.params.getNode("OutputModel")
    assert model is not None and ui.outputModelSelector.currentNode() is model
    assert ui.statusLabel.text.startswith("Done:") and ui.exportButton.enabled and not ui.progressBar.visible
    assert getProvenance(model)["resolution_mm"] == 0.75
    assert panel.settings.values["NUDFSegmentation/resolutionMm"] == "0.75"  # remembered for the next session
    out = tmp_path / "laa.stl"
    panel.saveFileName.append(str(out))
    ui.exportButton.click()
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(out))
    reader.Update()
    lps = polydata_points(reader.GetOutput())
    model_lps = lps_to_ras(polydata_points(model.GetPolyData()))
    np.testing.assert_allclose(lps.min(0), model_lps.min(0), atol=1e-3)
    assert ui.statusLabel.text == f"Exported {out} (LPS)."


def test_the_status_line_shows_the_warnings_and_the_model_is_coloured_by_confidence(panel):
    incomplete = "the surface may be incomplete near LPS (1.0, 2.0, 3.0): it has a hole about 5 mm across besides the ostium."

    def doubtingStub(ct, **kw):
        result = stubSegment(ct, **kw)
        result.quality.update(warnings=[incomplete], warning_codes=["holes"])
        return result

    ui = panel.ui
    panel.widget.logic.segmentFunction = doubtingStub
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    ui.seedSelector.setCurrentNode(addSeedNode(panel.scene, panel.case["seed_ras"]))
    ui.backgroundCheckBox.setChecked(False)
    assert ui.colorByConfidenceCheckBox.checked and panel.params.get("colorByConfidence") is True
    ui.applyButton.click()
    assert ui.statusLabel.text.startswith("Done:") and ui.statusLabel.text.endswith(f" — 1 warning: {incomplete}")
    assert ui.statusLabel.toolTip == f"Warning: {incomplete}"
    model = panel.params.getNode("OutputModel")
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == "confidence" and display.GetScalarVisibility()
    assert tuple(display.GetScalarRange()) == (0.0, 1.0)
    # unticking the box shows the model in its plain colour at once (no new run), ticking it colours it again
    ui.colorByConfidenceCheckBox.setChecked(False)
    assert panel.params.get("colorByConfidence") is False and not display.GetScalarVisibility()
    ui.colorByConfidenceCheckBox.setChecked(True)
    assert display.GetScalarVisibility() and display.GetActiveScalarName() == "confidence"
    # a run without warnings clears them from the status line and its tooltip
    panel.widget.logic.segmentFunction = stubSegment
    ui.applyButton.click()
    assert "warning" not in ui.statusLabel.text and ui.statusLabel.toolTip == ""


class _FinishedWorker(BackgroundSegmentation):
    """A real worker process that ends at once with a finished mesh (what the engine leaves behind)."""

    def start(self, volumeNode, seed_ras, **options) -> None:
        import tempfile

        self.workDir = Path(tempfile.mkdtemp(prefix="NUDFSegmentation-"))
        ct = SegmentationLogic.volumeFromNode(volumeNode)
        write_mesh(stubSegment(ct, seed_ras=seed_ras).mesh_lps, self.outputPath, frame="ras")
        self.startCommand([sys.executable, "-c", "print('{\"stage\": \"encode\", \"fraction\": 1.0}'); "
                                                 "print('{\"done\": true, \"summary\": {}}')"])


def test_a_background_run_outlives_the_panel(panel):
    ui = panel.ui
    ui.inputVolumeSelector.setCurrentNode(panel.volume)
    ui.seedSelector.setCurrentNode(addSeedNode(panel.scene, panel.case["seed_ras"]))
    panel.controller._workerFactory = _FinishedWorker
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and ui.progressBar.visible and not ui.inputsCollapsibleButton.enabled
    panel.widget.exit()  # the user switches to another module...
    panel.widget.cleanup()  # ...and the panel is torn down
    t0 = time.time()
    while panel.timers and time.time() - t0 < 60:
        panel.timers.pop(0)()
        time.sleep(0.02)
    assert panel.controller.state == "done"
    models = panel.scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    assert models == 1 and panel.params.getNode("OutputModel").GetName() == "CT LAA"
    assert ui.applyButton.text == "Cancel"  # the torn-down panel was not touched any more
