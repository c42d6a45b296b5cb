"""Owns a segmentation run started from the GUI: start, progress, cancel, and delivery of the result.

Qt-free, so its behaviour is tested headless on real MRML. Everything a run needs is captured when it
starts (:class:`RunRequest`, nodes by ID), so leaving the module, closing or deleting the widget, or even
removing the parameter node cannot lose a finished segmentation: the controller itself polls the worker
(through the ``scheduler`` it was given — a Qt single-shot timer inside Slicer) and puts the model into the
scene. The widget is only a listener: it shows :class:`RunEvent` s and :func:`panelState`, and calls
:meth:`RunController.start` / :meth:`RunController.cancel`. Closing the scene cancels the run.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from NUDFCore.errors import InputError, NUDFError, SegmentationCancelled, SegmentationError

from .BackgroundSegmentation import BackgroundSegmentation, summaryText
from .Parameters import NUDFParameters
from .SegmentationLogic import (
    SegmentationLogic,
    cropFromRoiNode,
    getQualityWarnings,
    inputProblems,
    volumeInputFile,
    withWarnings,
)

#: ``scheduler(delayMs, callback)``: call ``callback`` once, later, on the thread that owns the scene.
Scheduler = Callable[[int, Callable[[], None]], None]
RunListener = Callable[["RunEvent"], None]
_CLI_ERROR_PREFIX = "nudf segment: error: "


def qtSingleShot(delayMs: int, callback: Callable[[], None]) -> None:
    """The scheduler inside Slicer: a Qt single-shot timer (Qt is imported only when a run is polled)."""
    import qt

    qt.QTimer.singleShot(delayMs, callback)


@dataclass(frozen=True)
class RunEvent:
    """What the controller tells its listeners: a run started, progressed, finished, failed or was cancelled."""

    kind: str  # "started" | "progress" | "done" | "failed" | "cancelled"
    stage: str = ""
    fraction: float = 0.0
    message: str = ""  # one line for the status label: the summary (and warnings) when done, the error when failed
    details: str = ""  # worker log or traceback, for a "details" box
    modelNodeID: str | None = None
    warnings: tuple[str, ...] = ()  # the result's plain-language doubts ("the surface may be incomplete near …")


@dataclass
class RunRequest:
    """Everything one run needs, taken from the parameters when it starts (later edits do not affect it)."""

    volumeNodeID: str
    seed_ras: np.ndarray
    modelName: str
    inputFile: str | None = None
    outputModelNodeID: str | None = None
    parameterNodeID: str | None = None
    modelPath: str | None = None
    background: bool = True
    options: dict = field(default_factory=dict)  # SegmentOptions keyword arguments
    cropCenter_lps: np.ndarray | None = None
    cropSizeMm: float | None = None
    colorByConfidence: bool = True

    @classmethod
    def fromParameters(cls, params: NUDFParameters, logic: SegmentationLogic) -> "RunRequest":
        """Check the inputs (raising :class:`InputError` with every problem, one sentence each) and snapshot them."""
        volume, seed = params.getNode("InputVolume"), params.getNode("Seed")
        problems = inputProblems(volume, seed)
        if problems:
            raise InputError(" ".join(problems))
        roi = params.getNode("CropROI")
        center_lps, size = cropFromRoiNode(roi) if roi is not None else (None, None)
        output = params.getNode("OutputModel")
        return cls(
            volumeNodeID=volume.GetID(), seed_ras=logic.seedFromNode(seed), modelName=f"{volume.GetName()} LAA",
            inputFile=volumeInputFile(volume), outputModelNodeID=output.GetID() if output is not None else None,
            parameterNodeID=params.node.GetID(), modelPath=params.get("modelPath") or None,
            background=params.get("runInBackground"), options=params.segmentOptionsKwargs(),
            cropCenter_lps=center_lps, cropSizeMm=size, colorByConfidence=params.get("colorByConfidence"),
        )


class RunController:
    """One run at a time, in a worker process (default) or in-process; see the module docstring.

    ``scheduler`` polls background runs (default: :func:`qtSingleShot`; None = the caller polls with
    :meth:`poll` or :meth:`wait`). ``processEvents`` is called at each progress step of an in-process run so
    the GUI stays alive. ``workerFactory`` makes the background runner (tests give a fake worker command).
    """

    POLL_INTERVAL_MS = 100

    def __init__(
        self,
        logic: SegmentationLogic,
        scheduler: Scheduler | None = qtSingleShot,
        processEvents: Callable[[], None] | None = None,
        workerFactory: Callable[[], BackgroundSegmentation] = BackgroundSegmentation,
    ) -> None:
        self.logic = logic
        self.scene = logic.scene
        self.state = "idle"
        self.stage = ""
        self.fraction = 0.0
        self.statusText = ""
        self.request: RunRequest | None = None
        self.worker: BackgroundSegmentation | None = None
        self._scheduler = scheduler
        self._processEvents = processEvents
        self._workerFactory = workerFactory
        self._listeners: list[RunListener] = []
        self._cancelRequested = False
        self._sceneObserver = None
        if self.scene is not None:
            self._sceneObserver = self.scene.AddObserver(self.scene.StartCloseEvent, self._onSceneStartClose)

    # -- listeners -------------------------------------------------------------------------------
    def addListener(self, listener: RunListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeListener(self, listener: RunListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: RunEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener (e.g. a deleted widget) must not stop the delivery
                logging.exception("NUDF Segmentation: a run listener failed")

    def _setState(self, state: str, statusText: str, event: RunEvent) -> None:
        self.state, self.statusText = state, statusText
        self._emit(event)

    @property
    def running(self) -> bool:
        return self.state == "running"

    # -- start -----------------------------------------------------------------------------------
    def start(self, params: NUDFParameters) -> None:
        """Start a run with the parameters' inputs and options; raises :class:`InputError` (nothing started)
        when the inputs cannot be segmented. A background run returns at once; an in-process run returns
        when finished (its result or error is reported to the listeners either way)."""
        if self.running:
            raise SegmentationError("A segmentation is already running; cancel it first.")
        request = RunRequest.fromParameters(params, self.logic)
        self.request, self._cancelRequested = request, False
        self.stage, self.fraction = "starting", 0.0
        if request.background:
            self._startBackground(request)
        else:
            self._runInProcess(request)

    def _node(self, nodeID: str | None):
        return self.scene.GetNodeByID(nodeID) if nodeID and self.scene is not None else None

    def _startBackground(self, request: RunRequest) -> None:
        worker = self._workerFactory()
        worker.start(
            self._node(request.volumeNodeID), request.seed_ras, modelPath=request.modelPath,
            device=request.options.get("device", "auto"), resolutionMm=request.options.get("resolution_mm"),
            smoothing=request.options.get("smoothing"), decimate=request.options.get("decimate"),
            cropCenter_lps=request.cropCenter_lps, cropSizeMm=request.cropSizeMm,
        )
        self.worker = worker
        self._setState("running", "Starting the segmentation process…", RunEvent("started", stage="starting"))
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduler is not None:
            self._scheduler(self.POLL_INTERVAL_MS, self._onTimer)

    def _onTimer(self) -> None:
        if self.poll():
            self._schedule()

    # -- progress and delivery -------------------------------------------------------------------
    def poll(self) -> bool:
        """Drain the worker's events and deliver its result once it has finished; True while running."""
        worker = self.worker
        if worker is None:
            return False
        try:
            for ev in worker.poll():
                if ev.kind == "progress":
                    self._progress(ev.stage, ev.fraction)
                elif ev.kind in ("log", "error") and ev.text.strip():
                    logging.info(f"NUDF worker: {ev.text}")
            if worker.isRunning():
                return True
            self.worker = None
            self._finishBackground(worker)
        except Exception as exc:  # never leave a dead run marked as running
            self.worker = None
            self._fail(f"Unexpected error while finishing the segmentation: {exc}", traceback.format_exc())
        return False

    def _progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction, self.statusText = stage, fraction, f"{stage}…"
        self._emit(RunEvent("progress", stage=stage, fraction=fraction))

    def _finishBackground(self, worker: BackgroundSegmentation) -> None:
        request = self.request
        try:
            if worker.state == "done":
                model = worker.loadResult(self.scene, self._node(request.outputModelNodeID), name=request.modelName,
                                          inputFile=request.inputFile, colorByConfidence=request.colorByConfidence)
                self._deliver(model, summaryText(worker.summary))
            else:
                message = worker.errorMessage.removeprefix(_CLI_ERROR_PREFIX)
                self._fail(message, "\n".join(worker.logLines[-50:] + worker.errorLines[-50:]))
        finally:
            worker.cleanup()

    def _deliver(self, modelNode, message: str) -> None:
        """The run's model is in the scene: select it as the output (if the parameter node still exists) and
        report it, with the result's warnings (stored on the node by either kind of run) after the summary."""
        paramNode = self._node(self.request.parameterNodeID)
        if paramNode is not None:
            NUDFParameters(paramNode).setNode("OutputModel", modelNode)
        warnings = tuple(getQualityWarnings(modelNode))
        for warning in warnings:  # also in Slicer's log, where a status line does not last
            logging.warning(f"NUDF Segmentation: {modelNode.GetName()}: {warning}")
        message = withWarnings(message, warnings)
        self.stage, self.fraction = "done", 1.0
        self._setState("done", message, RunEvent("done", stage="done", fraction=1.0, message=message,
                                                 modelNodeID=modelNode.GetID(), warnings=warnings))

    def _fail(self, message: str, details: str = "") -> None:
        self._setState("failed", f"Failed: {message}", RunEvent("failed", message=message, details=details))

    def _runInProcess(self, request: RunRequest) -> None:
        """The fallback without a worker process: progress steps keep the GUI alive via ``processEvents``."""
        self._setState("running", "Segmenting…", RunEvent("started", stage="starting"))

        def progress(stage: str, fraction: float) -> None:
            self._progress(stage, fraction)
            if self._processEvents is not None:
                self._processEvents()

        try:
            options = self.logic.makeOptions(None, None, progress=progress, cancel=lambda: self._cancelRequested,
                                             **request.options)
            if request.cropCenter_lps is not None:
                options.crop_center_lps, options.crop_size_mm = request.cropCenter_lps, request.cropSizeMm
            model, result = self.logic.segmentVolumeNode(
                self._node(request.volumeNodeID), request.seed_ras, self._node(request.outputModelNodeID),
                options=options, model=request.modelPath, colorByConfidence=request.colorByConfidence,
            )
            self._deliver(model, f"Done: {result.summary()}")
        except SegmentationCancelled:
            self._setState("cancelled", "Cancelled.", RunEvent("cancelled"))
        except NUDFError as exc:
            self._fail(str(exc))
        except Exception as exc:
            self._fail(f"Unexpected error: {exc}", traceback.format_exc())

    # -- cancel ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the run now: a worker process is killed with its children; an in-process run stops at its
        next progress step. Nothing of the run reaches the scene."""
        if not self.running:
            return
        self._cancelRequested = True
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.cancel()
            self._setState("cancelled", "Cancelled.", RunEvent("cancelled"))

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Block until the run ends (scripts, tests); returns the final state. Cancels on timeout."""
        t0 = time.monotonic()
        while self.poll():
            if timeout is not None and time.monotonic() - t0 > timeout:
                self.cancel()
                break
            time.sleep(interval)
        return self.state

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel()

    def dispose(self) -> None:
        """Cancel any run and stop observing the scene (the module is being unloaded)."""
        self.cancel()
        if self._sceneObserver is not None:
            self.scene.RemoveObserver(self._sceneObserver)
            self._sceneObserver = None
        self._listeners.clear()


@dataclass(frozen=True)
class PanelState:
    """What the module panel shows for given parameters and run state (the widget only applies it)."""

    applyText: str
    applyToolTip: str
    applyEnabled: bool
    inputsEnabled: bool
    exportEnabled: bool
    progressVisible: bool
    progressValue: int
    progressFormat: str


def panelState(params: NUDFParameters | None, controller: RunController) -> PanelState:
    """The Segment/Cancel button, the input sections, export and the progress bar for this moment."""
    running = controller.running
    progress = dict(progressVisible=running, progressValue=int(round(100 * controller.fraction)),
                    progressFormat=f"{controller.stage}: %p%")
    if running:
        return PanelState("Cancel", "Stop the running segmentation.", True, False, False, **progress)
    problems = params.problems() if params is not None else ["No parameters."]
    model = params.getNode("OutputModel") if params is not None else None
    hasMesh = bool(model is not None and model.GetPolyData() is not None and model.GetPolyData().GetNumberOfPoints() > 0)
    return PanelState(
        "Segment LAA", " ".join(problems) or "Segment the left atrial appendage around the seed.", not problems,
        True, hasMesh, **progress,
    )
