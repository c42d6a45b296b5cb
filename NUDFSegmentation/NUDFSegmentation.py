"""NUDF Segmentation: segment the left atrial appendage (LAA) from cardiac CT as an open surface mesh.

A thin Slicer module over ``NUDFSegmentationLib`` (Qt-free logic, testable headless) and the bundled
``NUDFCore`` engine. The engine runs in a background process by default so the GUI never freezes and
Cancel stops it at once.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_MODULE_DIR = Path(__file__).resolve().parent
if str(_MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(_MODULE_DIR))

from NUDFSegmentationLib import (  # noqa: E402  (the Lib also puts NUDFCore on sys.path)
    DEVICES,
    BackgroundSegmentation,
    NUDFParameters,
    SegmentationLogic,
    missingDependencies,
    planInstall,
)
from NUDFSegmentationLib.BackgroundSegmentation import summaryText  # noqa: E402
from NUDFSegmentationLib.InstallLogic import executeInstall  # noqa: E402

NUDF_CITATION = (
    'K. Sørensen, O. Camara, O. de Backer, K. Kofoed, R. Paulsen, "NUDF: Neural Unsigned Distance Fields '
    'for high resolution 3D medical image segmentation", ISBI 2022, arXiv:2504.18344.'
)
_DEVICE_LABELS = {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}
_FRAME_LABELS = {"lps": "LPS (Slicer default)", "ras": "RAS"}


# ------------------------------------------------------------------------------------------------ Module
class NUDFSegmentation(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NUDF Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["NUDF Segmentation contributors"]
        self.parent.helpText = (
            "Segments the <b>left atrial appendage (LAA)</b> from a contrast-enhanced cardiac CT as an "
            "<b>open surface mesh</b> (cut at the ostium), by learning a Neural Unsigned Distance Field "
            "(NUDF) and meshing it.<br><br>"
            "Select the CT, place one seed point inside the appendage and click <i>Segment LAA</i>. "
            "The mesh appears as a model (RAS, like everything in Slicer); <i>Export STL…</i> writes it in "
            "LPS by default, as Slicer does.<br><br>"
            "<b>The bundled model is trained on synthetic cardiac CT phantoms</b>; it is a research tool, "
            "not validated on patient data and not for clinical use. Load your own checkpoint under "
            "<i>Options</i>.<br><br>"
            f"If you use this module, please cite the NUDF paper: {NUDF_CITATION}"
        )
        self.parent.acknowledgementText = (
            "The method follows NUDF by K. Sørensen et al. (ISBI 2022). The module layout follows the "
            "conventions of SlicerTotalSegmentator, MONAIAuto3DSeg and SlicerNNUnet. Built with 3D Slicer, "
            "VTK, SimpleITK and PyTorch."
        )


# ------------------------------------------------------------------------------------------------ Widget
class NUDFSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: binds the .ui to the parameter node and drives a background worker from a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameters: NUDFParameters | None = None
        self._updatingGUI = False
        self._worker: BackgroundSegmentation | None = None
        self._inProcessCancel = False
        self._running = False
        self._pollTimer = None
        self._observedSeed = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NUDFSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NUDFSegmentationLogic()

        for device in DEVICES:
            self.ui.deviceComboBox.addItem(_DEVICE_LABELS[device], device)
        for frame, label in _FRAME_LABELS.items():
            self.ui.exportFrameComboBox.addItem(label, frame)
        self.ui.seedPlaceWidget.buttonsVisible = False
        self.ui.seedPlaceWidget.placeButton().show()
        self.ui.seedPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for selector in (self.ui.inputVolumeSelector, self.ui.seedSelector, self.ui.roiSelector, self.ui.outputModelSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.seedSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.seedPlaceWidget.setCurrentNode)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.exportFrameComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.resolutionSpinBox.connect("valueChanged(double)", self.updateParameterNodeFromGUI)
        self.ui.smoothingSliderWidget.connect("valueChanged(double)", self.updateParameterNodeFromGUI)
        self.ui.backgroundCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollWorker)
        self.initializeParameterNode()

    # -- lifecycle -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        params = self.logic.getParameters()
        if params.getNode("InputVolume") is None:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                params.setNode("InputVolume", first)
        self.setParameterNode(params)

    def setParameterNode(self, params: NUDFParameters | None) -> None:
        if self._parameters is not None:
            self.removeObserver(self._parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameters = params
        if params is not None:
            self.addObserver(params.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    # -- GUI <-> parameter node ------------------------------------------------------------------
    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameters
        if p is None or self.ui is None or self._updatingGUI:
            return
        self._observeSeed(p.getNode("Seed"))
        self._updatingGUI = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(p.getNode("InputVolume"))
            self.ui.seedSelector.setCurrentNode(p.getNode("Seed"))
            self.ui.seedPlaceWidget.setCurrentNode(p.getNode("Seed"))
            self.ui.roiSelector.setCurrentNode(p.getNode("CropROI"))
            self.ui.outputModelSelector.setCurrentNode(p.getNode("OutputModel"))
            self.ui.modelPathLineEdit.currentPath = p.get("modelPath")
            self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findData(p.get("device"))))
            self.ui.exportFrameComboBox.setCurrentIndex(max(0, self.ui.exportFrameComboBox.findData(p.get("exportFrame"))))
            self.ui.resolutionSpinBox.value = p.get("resolutionMm")
            self.ui.smoothingSliderWidget.value = p.get("smoothing")
            self.ui.backgroundCheckBox.checked = p.get("runInBackground")
            problems = p.problems()
            if self._running:
                self.ui.applyButton.text = "Cancel"
                self.ui.applyButton.toolTip = "Stop the running segmentation."
                self.ui.applyButton.enabled = True
            else:
                self.ui.applyButton.text = "Segment LAA"
                self.ui.applyButton.toolTip = " ".join(problems) or "Segment the left atrial appendage around the seed."
                self.ui.applyButton.enabled = not problems
            model = p.getNode("OutputModel")
            self.ui.exportButton.enabled = bool(
                not self._running and model is not None and model.GetPolyData() is not None
                and model.GetPolyData().GetNumberOfPoints() > 0
            )
        finally:
            self._updatingGUI = False

    def _observeSeed(self, seedNode) -> None:
        """Placing or deleting the seed point changes whether Segment is possible: watch the point list."""
        if seedNode is self._observedSeed:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)
        if self._observedSeed is not None:
            for event in events:
                self.removeObserver(self._observedSeed, event, self.updateGUIFromParameterNode)
        self._observedSeed = seedNode
        if seedNode is not None:
            for event in events:
                self.addObserver(seedNode, event, self.updateGUIFromParameterNode)

    def updateParameterNodeFromGUI(self, *args) -> None:
        p = self._parameters
        if p is None or self._updatingGUI:
            return
        wasModifying = p.node.StartModify()
        try:
            p.setNode("InputVolume", self.ui.inputVolumeSelector.currentNode())
            p.setNode("Seed", self.ui.seedSelector.currentNode())
            p.setNode("CropROI", self.ui.roiSelector.currentNode())
            p.setNode("OutputModel", self.ui.outputModelSelector.currentNode())
            p.set("modelPath", self.ui.modelPathLineEdit.currentPath)
            p.set("device", self.ui.deviceComboBox.currentData or "auto")
            p.set("exportFrame", self.ui.exportFrameComboBox.currentData or "lps")
            p.set("resolutionMm", self.ui.resolutionSpinBox.value)
            p.set("smoothing", self.ui.smoothingSliderWidget.value)
            p.set("runInBackground", self.ui.backgroundCheckBox.checked)
        finally:
            p.node.EndModify(wasModifying)

    # -- run -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._running:
            self.cancelRun()
            self.setStatus("Cancelled.")
            return
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Segmentation failed to start.", waitCursor=True):
            if self._parameters.get("runInBackground"):
                self._worker = self.logic.startBackground(self._parameters)
                self.setRunning(True)
                self.setStatus("Starting the segmentation process…")
                self._pollTimer.start()
            else:
                self.runInProcess()

    def runInProcess(self) -> None:
        """Fallback without a worker process: keeps the GUI alive by processing events at each progress step."""
        self._inProcessCancel = False
        self.setRunning(True)

        def progress(stage: str, fraction: float) -> None:
            self.showProgress(stage, fraction)
            slicer.app.processEvents()

        try:
            modelNode, result = self.logic.segmentFromParameters(
                self._parameters, progress=progress, cancel=lambda: self._inProcessCancel
            )
            self._parameters.setNode("OutputModel", modelNode)
            self.setStatus(f"Done: {result.summary()}")
            self.updateGUIFromParameterNode()
        except Exception as exc:
            if type(exc).__name__ == "SegmentationCancelled":
                self.setStatus("Cancelled.")
            else:
                raise
        finally:
            self.setRunning(False)

    def onPollWorker(self) -> None:
        worker = self._worker
        if worker is None:
            self._pollTimer.stop()
            return
        for ev in worker.poll():
            if ev.kind == "progress":
                self.showProgress(ev.stage, ev.fraction)
            elif ev.kind in ("log", "error") and ev.text.strip():
                logging.info(f"NUDF worker: {ev.text}")
        if worker.isRunning():
            return
        self._pollTimer.stop()
        self._worker = None
        self.setRunning(False)
        try:
            if worker.state == "done":
                p = self._parameters
                volume = p.getNode("InputVolume")
                name = f"{volume.GetName()} LAA" if volume is not None else "LAA"
                modelNode = worker.loadResult(slicer.mrmlScene, p.getNode("OutputModel"), name=name)
                p.setNode("OutputModel", modelNode)
                self.setStatus(summaryText(worker.summary))
                self.updateGUIFromParameterNode()
            elif worker.state == "failed":
                self.setStatus(f"Failed: {worker.errorMessage}")
                slicer.util.errorDisplay(f"Segmentation failed:\n{worker.errorMessage}", detailedText="\n".join(worker.logLines[-50:] + worker.errorLines[-50:]))
        finally:
            worker.cleanup()

    def cancelRun(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._inProcessCancel = True
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._running:
            self.setRunning(False)

    def setRunning(self, running: bool) -> None:
        self._running = running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.value = 0
        for w in (self.ui.inputsCollapsibleButton, self.ui.optionsCollapsibleButton, self.ui.outputsCollapsibleButton):
            w.enabled = not running
        self.updateGUIFromParameterNode()

    def showProgress(self, stage: str, fraction: float) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"{stage}: %p%"
        self.setStatus(f"{stage}…")

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(text, 3000)

    # -- dependencies ----------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        """On first use: say what is missing, ask, then install (PyTorch Utils for torch when present)."""
        missing = missingDependencies()
        if not missing:
            return True
        hasPyTorchUtils = hasattr(slicer.modules, "pytorchutils")
        plan = planInstall(missing, hasPyTorchUtils)
        if plan.blocked and not (plan.pipRequirements or plan.torchViaPip or plan.torchViaPyTorchUtils):
            slicer.util.errorDisplay(plan.describe())
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.describe() + "\n\nInstall them now? This may take several minutes."):
            self.setStatus("Python packages not installed; segmentation needs them.")
            return False

        def installTorch():
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.2")

        with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
            executeInstall(plan, slicer.util.pip_install, installTorch if hasPyTorchUtils else None)
            return not missingDependencies()
        return False

    # -- export ----------------------------------------------------------------------------------
    def onExportButton(self) -> None:
        p = self._parameters
        model = p.getNode("OutputModel")
        frame = p.get("exportFrame")
        suggested = os.path.join(qt.QDir.homePath(), f"{model.GetName()}.stl")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), "Export LAA surface", suggested, "STL (*.stl);;OBJ (*.obj);;PLY (*.ply);;VTK (*.vtk *.vtp)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            # the file dialog has already asked before replacing an existing file
            written = self.logic.exportModelToFile(model, path, frame=frame, overwrite=True)
            self.setStatus(f"Exported {written} ({frame.upper()}).")


# ------------------------------------------------------------------------------------------------ Logic
class NUDFSegmentationLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """Slicer-facing logic: the Lib's Qt-free SegmentationLogic bound to ``slicer.mrmlScene``.

    Usable from the Python console, e.g.::

        logic = slicer.util.getModuleLogic("NUDFSegmentation")
        model, result = logic.segmentVolumeNode(getNode("CT"), getNode("LAA seed"))
        logic.exportModelToFile(model, "/tmp/laa.stl")          # LPS, as Slicer
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, slicer.mrmlScene)

    def getParameters(self) -> NUDFParameters:
        return NUDFParameters.getParameterNode(slicer.mrmlScene)

    def segmentFromParameters(self, params: NUDFParameters, progress=None, cancel=None):
        """Run in-process with the GUI's settings; returns ``(modelNode, SegmentationResult)``."""
        options = self.makeOptions(None, params.getNode("CropROI"), progress=progress, cancel=cancel, **params.segmentOptionsKwargs())
        return self.segmentVolumeNode(
            params.getNode("InputVolume"), params.getNode("Seed"), params.getNode("OutputModel"),
            options=options, model=params.get("modelPath") or None,
        )

    def startBackground(self, params: NUDFParameters) -> BackgroundSegmentation:
        """Start a worker process with the GUI's settings; the caller polls it."""
        roi = params.getNode("CropROI")
        crop = self.cropFromRoiNode(roi) if roi is not None else (None, None)
        worker = BackgroundSegmentation()
        kwargs = params.segmentOptionsKwargs()
        worker.start(
            params.getNode("InputVolume"), self.seedFromNode(params.getNode("Seed")),
            modelPath=params.get("modelPath") or None, device=kwargs["device"], resolutionMm=kwargs["resolution_mm"],
            smoothing=kwargs["smoothing"], decimate=kwargs["decimate"], cropCenter_lps=crop[0], cropSizeMm=crop[1],
        )
        return worker


# ------------------------------------------------------------------------------------------------ Test
class NUDFSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test. From a source checkout with pytest available it runs the same pytest files as CI
    (``Testing/test_slicer_*.py``); otherwise a compact end-to-end check on a synthetic phantom."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        testFiles = sorted((_MODULE_DIR.parent / "Testing").glob("test_slicer_*.py"))
        try:
            import pytest
        except ImportError:
            pytest = None
        if pytest is not None and testFiles:
            self.test_Pytest(pytest, testFiles)
        else:
            self.test_EndToEnd()

    def test_Pytest(self, pytest, testFiles) -> None:
        self.delayDisplay(f"Running {len(testFiles)} pytest file(s)")
        rc = pytest.main([str(f) for f in testFiles] + ["-q", "-p", "no:cacheprovider"])
        self.assertEqual(int(rc), 0, "pytest reported failures (see the Python console)")
        self.delayDisplay("pytest passed")

    def test_EndToEnd(self) -> None:
        """Phantom CT -> scalar volume node -> seed -> logic -> open mesh near the phantom's ground truth."""
        import tempfile

        import numpy as np
        from NUDFCore import meshtools
        from NUDFCore.io import polydata_points, read_mesh

        from NUDFSegmentationLib.SelfTest import makePhantomCase

        self.delayDisplay("Building a phantom CT")
        workDir = Path(tempfile.mkdtemp(prefix="NUDFSegmentationTest-"))
        case = makePhantomCase(workDir)
        volumesLogic = slicer.modules.volumes.logic()
        volumeNode = volumesLogic.AddArchetypeVolume(str(case["ct"]), "PhantomCT", 0, None)
        seedNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "LAA seed")
        seedNode.AddControlPoint(*case["seed_ras"])

        self.delayDisplay("Segmenting")
        logic = NUDFSegmentationLogic()
        modelNode, result = logic.segmentVolumeNode(volumeNode, seedNode)
        self.assertIsNotNone(modelNode.GetDisplayNode())
        self.assertGreater(result.quality["boundary_loops"], 0, "the LAA surface must be open")
        gt = read_mesh(case["laa"])
        d = meshtools.point_to_mesh_distance(gt, polydata_points(result.mesh_lps))[0]
        self.assertLess(float(np.mean(d)), 2.0, "mean distance to the ground truth too large")
        self.delayDisplay(f"Test passed: {result.summary()}, mean distance to GT {np.mean(d):.2f} mm")
