"""The module panel (Qt): shows the parameters, starts and cancels runs, shows their progress and result.

The only Qt code of the module besides the thin registration in ``NUDFSegmentation.py``. It holds no run
state: it binds the ``.ui`` to the parameter node (the binding is generated from ``Parameters.PARAMETERS`` /
``Parameters.NODES``), asks :class:`~NUDFSegmentationLib.RunController.RunController` to start or cancel, and
listens to its events. The controller and the logic are given to it (or made by it), so a run goes on and
reaches the scene when the panel is left, closed or deleted.

Sections of the panel, top to bottom, each wired by one ``_setup*Section`` method: Inputs, Options, Output
(with the Segment button, progress bar and status line), Export and Measurements (the output model measured by
:class:`~NUDFSegmentationLib.MeasurementLogic.MeasurementLogic` after each run, its ostium plane observed). To add
a section:
add a ``ctkCollapsibleButton`` after ``exportCollapsibleButton`` in ``Resources/UI/NUDFSegmentation.ui``,
declare the parameters it edits in ``Parameters.PARAMETERS`` with their widget names (bound automatically),
write ``_setupMeasurementsSection`` (called from ``__init__``) and react to results in :meth:`onRunEvent`
(a ``"done"`` event carries the model node's ID).
"""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from NUDFCore.errors import NUDFError

from .InstallLogic import TORCH_DEPENDENCY, executeInstall, missingDependencies, planInstall
from .MeasurementLogic import MeasurementLogic
from .Parameters import DISPLAY_PARAMETERS, MODULE_NAME, NODES, PARAMETERS, WIDGET_ACCESSORS, NodeSpec, NUDFParameters
from .RunController import RunController, RunEvent, panelState
from .SegmentationLogic import SegmentationLogic

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
_COMBO_CLASSES = ("QComboBox", "ctkComboBox")


class Widget(qt.QWidget):
    """The panel. ``logic``/``controller`` default to new ones on ``slicer.mrmlScene``; ``settings``
    (a QSettings) keeps the remembered options; ``showDialogs=False`` reports errors on the status line only."""

    def __init__(self, logic: SegmentationLogic | None = None, controller: RunController | None = None,
                 parent=None, settings=None, showDialogs: bool = True) -> None:
        super().__init__(parent)
        self.logic = logic or SegmentationLogic(slicer.mrmlScene)
        self.controller = controller or RunController(self.logic, processEvents=slicer.app.processEvents)
        self._settings = settings if settings is not None else qt.QSettings()
        self._showDialogs = showDialogs
        self._observations = VTKObservationMixin()
        self._parameters: NUDFParameters | None = None
        self._observedSeed = None
        self._updatingGUI = False
        self._entered = False

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(str(RESOURCES / "UI" / f"{MODULE_NAME}.ui"))
        uiWidget.setMRMLScene(slicer.mrmlScene)
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        self._setupInputsSection()
        self._setupRunSection()
        self._setupExportSection()
        self._setupMeasurementsSection()
        self._bindParameters()
        self.controller.addListener(self.onRunEvent)
        self._observations.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    # -- sections --------------------------------------------------------------------------------
    def _setupInputsSection(self) -> None:
        self.ui.seedPlaceWidget.buttonsVisible = False
        self.ui.seedPlaceWidget.placeButton().show()
        self.ui.seedPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.seedSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.seedPlaceWidget.setCurrentNode)

    def _setupRunSection(self) -> None:
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

    def _setupExportSection(self) -> None:
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

    def _setupMeasurementsSection(self) -> None:
        self.measurementLogic = MeasurementLogic(slicer.mrmlScene, onUpdate=self.onMeasured)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasureButton)
        self.ui.exportMeasurementsButton.connect("clicked(bool)", self.onExportMeasurementsButton)

    # -- generated binding: GUI <-> parameter node -----------------------------------------------
    def _boundWidgets(self):
        """(spec, widget) for each parameter and node reference shown in the .ui (from Parameters' spec)."""
        for spec in PARAMETERS:
            if spec.widget:
                yield spec, getattr(self.ui, spec.widget)
        for spec in NODES:
            yield spec, getattr(self.ui, spec.widget)

    def _bindParameters(self) -> None:
        for spec, widget in self._boundWidgets():
            if getattr(spec, "choices", None):
                for value, label in zip(spec.choices, spec.choiceLabels or spec.choices):
                    widget.addItem(label, value)
            signal = WIDGET_ACCESSORS[widget.className()][2]
            widget.connect(signal, lambda *args, spec=spec, widget=widget: self._onWidgetChanged(spec, widget))

    @staticmethod
    def _readWidget(widget):
        value = getattr(widget, WIDGET_ACCESSORS[widget.className()][0])
        return value() if callable(value) else value

    @staticmethod
    def _writeWidget(widget, value) -> None:
        className = widget.className()
        if className in _COMBO_CLASSES:
            widget.setCurrentIndex(max(0, widget.findData(value)))
        else:
            getattr(widget, WIDGET_ACCESSORS[className][1])(value)

    def _onWidgetChanged(self, spec, widget) -> None:
        p = self._parameters
        if p is None or self._updatingGUI:
            return
        value = self._readWidget(widget)
        try:
            if isinstance(spec, NodeSpec):
                p.setNode(spec.role, value)
            elif value is not None:
                p.set(spec.name, value)
                if spec.name in DISPLAY_PARAMETERS:  # e.g. color by confidence: the output model changes at once
                    self.logic.applyDisplayParameters(p)
        except NUDFError as exc:
            self.setStatus(str(exc))
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameters
        if p is None or self._updatingGUI:
            return
        self._observeSeed(p.getNode("Seed"))
        self._updatingGUI = True
        try:
            for spec, widget in self._boundWidgets():
                self._writeWidget(widget, p.getNode(spec.role) if isinstance(spec, NodeSpec) else p.get(spec.name))
            self.ui.seedPlaceWidget.setCurrentNode(p.getNode("Seed"))
            self._applyPanelState()
        finally:
            self._updatingGUI = False

    def _applyPanelState(self) -> None:
        state = panelState(self._parameters, self.controller)
        self.ui.applyButton.text = state.applyText
        self.ui.applyButton.toolTip = state.applyToolTip
        self.ui.applyButton.enabled = state.applyEnabled
        for section in (self.ui.inputsCollapsibleButton, self.ui.optionsCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = state.inputsEnabled
        self.ui.exportButton.enabled = state.exportEnabled
        self.ui.measureButton.enabled = state.exportEnabled
        model = self._parameters.getNode("OutputModel") if self._parameters is not None else None
        self.ui.exportMeasurementsButton.enabled = (
            state.exportEnabled and model is not None and self.measurementLogic.tableNode(model) is not None)
        self.ui.progressBar.setVisible(state.progressVisible)
        self.ui.progressBar.value = state.progressValue
        self.ui.progressBar.format = state.progressFormat

    def _observeSeed(self, seedNode) -> None:
        """Placing or deleting a seed point changes whether Segment is possible: watch the point list."""
        if seedNode is self._observedSeed:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)
        for event in events:
            if self._observedSeed is not None:
                self._observations.removeObserver(self._observedSeed, event, self.updateGUIFromParameterNode)
            if seedNode is not None:
                self._observations.addObserver(seedNode, event, self.updateGUIFromParameterNode)
        self._observedSeed = seedNode

    # -- parameter node and lifecycle ------------------------------------------------------------
    def _rememberedSettings(self) -> dict[str, str]:
        out = {}
        for spec in PARAMETERS:
            key = f"{MODULE_NAME}/{spec.name}"
            if spec.remember and self._settings.contains(key):
                out[spec.name] = str(self._settings.value(key))
        return out

    def _rememberSettings(self) -> None:
        for name, text in self._parameters.rememberedValues().items():
            self._settings.setValue(f"{MODULE_NAME}/{name}", text)

    def initializeParameterNode(self) -> None:
        params = NUDFParameters.getParameterNode(slicer.mrmlScene, initialValues=self._rememberedSettings())
        if params.getNode("InputVolume") is None:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                params.setNode("InputVolume", first)
        self.setParameterNode(params)

    def setParameterNode(self, params: NUDFParameters | None) -> None:
        modified = vtk.vtkCommand.ModifiedEvent
        if self._parameters is not None:
            self._observations.removeObserver(self._parameters.node, modified, self.updateGUIFromParameterNode)
        self._parameters = params
        if params is not None:
            self._observations.addObserver(params.node, modified, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def enter(self) -> None:
        self._entered = True
        self.initializeParameterNode()

    def exit(self) -> None:
        """Leaving the module only stops watching the parameters: a running segmentation goes on."""
        self._entered = False
        self.setParameterNode(None)

    def onSceneEndClose(self, caller=None, event=None) -> None:
        self.setParameterNode(None)
        if self._entered:
            self.initializeParameterNode()

    def cleanup(self) -> None:
        self.controller.removeListener(self.onRunEvent)
        self.measurementLogic.removeObservers()
        self._observations.removeObservers()
        self._parameters = None

    # -- run -------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.controller.running:
            self.controller.cancel()
            return
        if not self.ensureDependencies():
            return
        self._rememberSettings()
        try:
            self.controller.start(self._parameters)
        except NUDFError as exc:  # the user's inputs: one clear sentence, no traceback
            self._showError(str(exc))
        except Exception as exc:
            logging.exception("NUDF Segmentation could not start")
            self._showError(f"Segmentation failed to start: {exc}", traceback.format_exc())

    def onRunEvent(self, event: RunEvent) -> None:
        """Show the controller's news; a result is already in the scene when ``"done"`` arrives."""
        if event.kind == "progress":
            self._applyPanelState()
            self.setStatus(self.controller.statusText)
            return
        self.setStatus(self.controller.statusText)
        # the status line holds the warnings after the summary; its tooltip lists them one per line
        self.ui.statusLabel.toolTip = "\n".join(f"Warning: {w}" for w in event.warnings)
        self.updateGUIFromParameterNode()
        self._applyPanelState()  # also without a parameter node (the module was left)
        if event.kind == "done" and self._parameters is not None and event.modelNodeID:
            self.measureModel(slicer.mrmlScene.GetNodeByID(event.modelNodeID))
        if event.kind == "failed":
            self._showError(f"Segmentation failed:\n{event.message}", event.details)

    def _showError(self, message: str, details: str = "") -> None:
        self.setStatus(message.replace("\n", " "))
        if self._showDialogs:
            slicer.util.errorDisplay(message, detailedText=details or None)

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
            self._showError(plan.describe())
            return False
        if not slicer.util.confirmOkCancelDisplay(plan.describe() + "\n\nInstall them now? This may take several minutes."):
            self.setStatus("Python packages not installed; segmentation needs them.")
            return False

        def installTorch():
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=f">={TORCH_DEPENDENCY.minimumVersion}")

        try:
            with slicer.util.WaitCursor():
                executeInstall(plan, slicer.util.pip_install, installTorch if hasPyTorchUtils else None)
        except Exception as exc:
            self._showError(f"Installing Python packages failed: {exc}", traceback.format_exc())
            return False
        return not missingDependencies()

    # -- export ----------------------------------------------------------------------------------
    def onExportButton(self) -> None:
        p = self._parameters
        model = p.getNode("OutputModel") if p is not None else None
        if model is None:
            return
        frame = p.get("exportFrame")
        suggested = os.path.join(qt.QDir.homePath(), f"{model.GetName()}.stl")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), "Export LAA surface", suggested, "STL (*.stl);;OBJ (*.obj);;PLY (*.ply);;VTK (*.vtk *.vtp)"
        )
        if not path:
            return
        try:
            # the file dialog has already asked before replacing an existing file
            written = self.logic.exportModelToFile(model, path, frame=frame, overwrite=True)
        except NUDFError as exc:
            self._showError(f"Export failed: {exc}")
            return
        self.setStatus(f"Exported {written} ({frame.upper()}).")

    # -- measurements ----------------------------------------------------------------------------
    def onMeasureButton(self) -> None:
        model = self._parameters.getNode("OutputModel") if self._parameters is not None else None
        if model is not None:
            self.measureModel(model)

    def measureModel(self, model) -> None:
        """Measure from the surface's own rim, put the ostium plane there and re-measure when it moves."""
        try:
            self.measurementLogic.measureModel(model)
            self.measurementLogic.observeOstiumPlane(model)
        except NUDFError:
            pass  # onMeasured has shown the reason
        except Exception as exc:
            logging.exception("NUDF Segmentation could not measure")
            self.ui.measurementsTextEdit.plainText = f"Measuring failed: {exc}"
        self._applyPanelState()

    def onMeasured(self, model, measurements, error) -> None:
        """The logic's news after each (re-)measurement: the figures, or why there are none."""
        from NUDFCore.measure import format_table

        self.ui.measurementsTextEdit.plainText = (
            f"{model.GetName()}: {error}" if measurements is None else format_table(measurements, frame="ras"))

    def onExportMeasurementsButton(self) -> None:
        model = self._parameters.getNode("OutputModel") if self._parameters is not None else None
        if model is None:
            return
        suggested = os.path.join(qt.QDir.homePath(), f"{model.GetName()} measurements.json")
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export LAA measurements", suggested,
                                              "JSON (*.json);;CSV, one row (*.csv)")
        if not path:
            return
        try:  # the file dialog has already asked before replacing an existing file
            written = self.measurementLogic.exportMeasurements(model, path, overwrite=True)
        except NUDFError as exc:
            self._showError(f"Export failed: {exc}")
            return
        self.setStatus(f"Exported the measurements to {written}.")
