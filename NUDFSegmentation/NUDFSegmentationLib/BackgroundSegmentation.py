"""Run the engine in a separate Python process so Slicer's GUI never freezes and Cancel really stops it.

Protocol (``python -m NUDFCore segment ... --progress-format json``): stdout lines starting with ``{`` are
JSON, either ``{"stage": ..., "fraction": ...}`` or, last, ``{"done": true, "summary": {...}}``; other
lines are log text; errors go to stderr with a non-zero exit code. The CT goes out as NRRD, the mesh comes
back as VTP (tagged RAS, with its ``distance_mm`` and ``confidence`` point arrays) with its provenance sidecar
(``laa.json``) and is loaded with Slicer's model storage node; the summary's ``quality`` (warnings included)
goes onto the model node as in an in-process run.

Plain Python (subprocess, threads, queue, psutil): :class:`~NUDFSegmentationLib.RunController` drains
:meth:`poll` on a timer; scripts and tests can call :meth:`run`, which blocks.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from NUDFCore.errors import InputError, SegmentationError
from NUDFCore.frames import lps_to_ras
from NUDFCore.provenance import read_provenance, sidecar_path

from .SegmentationLogic import (
    loadModelFile,
    setProvenance,
    setQualityReport,
    volumeFromNode,
    volumeInputFile,
    volumeProblem,
)


@dataclass(frozen=True)
class ProgressEvent:
    """One message from the worker: a progress step, a log line, an error line or the final summary."""

    kind: str  # "progress" | "log" | "error" | "done"
    stage: str = ""
    fraction: float = 0.0
    text: str = ""
    summary: dict | None = None


def engineRoot() -> Path:
    """The folder that contains the ``NUDFCore`` package (put on the worker's PYTHONPATH)."""
    import NUDFCore

    return Path(NUDFCore.__file__).resolve().parent.parent


def defaultPythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` inside the application (its ``sys.executable`` may be the GUI app)."""
    try:
        import slicer

        insideSlicerApp = hasattr(slicer, "app")
    except ImportError:  # pragma: no cover - slicer is always there for this module
        insideSlicerApp = False
    if insideSlicerApp:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def _triple(values: Sequence[float]) -> str:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError(f"Expected 3 finite coordinates; got {values!r}.")
    return ",".join(f"{v:.6f}" for v in arr)


def cliCommand(
    pythonExecutable: str,
    ctPath: Path,
    seed_ras: Sequence[float],
    outPath: Path,
    modelPath: str | None = None,
    device: str = "auto",
    resolutionMm: float | None = None,
    smoothing: float | None = None,
    decimate: float | None = None,
    cropCenter_ras: Sequence[float] | None = None,
    cropSizeMm: float | None = None,
) -> list[str]:
    """The worker's command line. ``--opt=value`` form so negative coordinates are not taken for options."""
    cmd = [
        pythonExecutable, "-m", "NUDFCore", "segment", str(ctPath),
        f"--seed-ras={_triple(seed_ras)}", "--out", str(outPath), "--frame", "ras",
        "--device", device, "--force", "--progress-format", "json",
    ]
    if modelPath:
        cmd += ["--model", str(modelPath)]
    if resolutionMm is not None:
        cmd += ["--resolution", f"{float(resolutionMm)}"]
    if smoothing:
        cmd += ["--smoothing", f"{float(smoothing)}"]
    if decimate:
        cmd += ["--decimate", f"{float(decimate)}"]
    if cropCenter_ras is not None:
        cmd += [f"--crop-center-ras={_triple(cropCenter_ras)}"]
    if cropSizeMm is not None:
        cmd += ["--crop-size", f"{float(cropSizeMm)}"]
    return cmd


def cliSupports(option: str, command: str = "segment") -> bool:
    """Whether this engine's CLI ``command`` accepts ``option`` (checked on the parser, nothing runs)."""
    import argparse

    from NUDFCore.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return option in action.choices[command]._option_string_actions
    return False


def summaryText(summary: dict | None) -> str:
    """One line for the status label from the worker's final summary (the warnings are added by the caller,
    from the model node: ``SegmentationLogic.withWarnings``)."""
    if not summary:
        return "Done."
    q = summary.get("quality", {}) or {}
    t = (summary.get("timings", {}) or {}).get("total")
    parts = []
    if t is not None:
        parts.append(f"{float(t):.1f} s")
    if "n_faces" in q:
        parts.append(f"{q['n_faces']} faces")
    if "boundary_loops" in q:
        parts.append(f"{q['boundary_loops']} boundary loop(s)")
    if "mean_predicted_distance_mm" in q:
        parts.append(f"mean predicted distance {float(q['mean_predicted_distance_mm']):.2f} mm")
    if q.get("mean_confidence") is not None:
        parts.append(f"mean confidence {float(q['mean_confidence']):.2f}")
    return "Done: " + ", ".join(parts) if parts else "Done."


def parseLine(line: str, stream: str = "stdout") -> ProgressEvent:
    """Turn one output line into an event (non-JSON or malformed JSON lines are log text)."""
    text = line.rstrip("\r\n")
    if stream == "stderr":
        return ProgressEvent("error", text=text)
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return ProgressEvent("log", text=text)
        if obj.get("done"):
            return ProgressEvent("done", stage="done", fraction=1.0, summary=obj.get("summary") or {})
        if "stage" in obj:
            try:
                fraction = min(max(float(obj.get("fraction", 0.0)), 0.0), 1.0)
            except (TypeError, ValueError):
                fraction = 0.0
            return ProgressEvent("progress", stage=str(obj["stage"]), fraction=fraction)
    return ProgressEvent("log", text=text)


def killProcessTree(pid: int, timeout: float = 5.0) -> None:
    """Kill a process and all its descendants (torch may spawn workers), then reap them."""
    try:
        import psutil
    except ImportError:  # no psutil: the worker leads its own session/process group, kill that
        _killProcessGroup(pid)
        return
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def _killProcessGroup(pid: int) -> None:
    import signal

    try:
        if os.name == "nt":  # pragma: no cover - Windows
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        else:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class BackgroundSegmentation:
    """One segmentation run in a worker process: start, poll, cancel, load the result.

    States: ``idle`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``.
    """

    def __init__(self, pythonExecutable: str | None = None, workDir: str | os.PathLike | None = None) -> None:
        self.pythonExecutable = pythonExecutable or defaultPythonExecutable()
        self._ownWorkDir = workDir is None
        self.workDir = Path(workDir) if workDir is not None else None
        self.process: subprocess.Popen | None = None
        self.state = "idle"
        self.stage = ""
        self.fraction = 0.0
        self.summary: dict | None = None
        self.logLines: list[str] = []
        self.errorLines: list[str] = []
        self.command: list[str] = []
        self._queue: "queue.Queue[ProgressEvent | None]" = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._openStreams = 0

    # -- paths -----------------------------------------------------------------------------------
    @property
    def inputPath(self) -> Path:
        return self.workDir / "ct.nrrd"

    @property
    def outputPath(self) -> Path:
        return self.workDir / "laa.vtp"

    # -- start -----------------------------------------------------------------------------------
    def writeInputVolume(self, volumeNode) -> Path:
        """Write the CT as NRRD with Slicer's storage node (engine writer if under a linear transform)."""
        import slicer

        if volumeNode is None:
            raise InputError("No input volume selected.")
        if volumeNode.GetParentTransformNode() is not None:
            from NUDFCore.io import write_volume

            write_volume(volumeFromNode(volumeNode), self.inputPath, overwrite=True)
            return self.inputPath
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(self.inputPath))
        storage.SetUseCompression(False)  # speed: the file lives only for this run
        if not storage.WriteData(volumeNode) or not self.inputPath.is_file():
            raise SegmentationError(f"Could not write the CT to {self.inputPath} for the worker.")
        return self.inputPath

    def start(
        self,
        volumeNode,
        seed_ras: Sequence[float],
        *,
        modelPath: str | None = None,
        device: str = "auto",
        resolutionMm: float | None = None,
        smoothing: float | None = None,
        decimate: float | None = None,
        cropCenter_lps: Sequence[float] | None = None,
        cropSizeMm: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Export the CT and launch the worker; returns at once."""
        if self.state == "running":
            raise SegmentationError("A segmentation is already running; cancel it first.")
        problem = volumeProblem(volumeNode)
        if problem:  # refuse before writing anything
            raise InputError(problem)
        if self._ownWorkDir:
            self.workDir = Path(tempfile.mkdtemp(prefix="NUDFSegmentation-"))
        self.workDir.mkdir(parents=True, exist_ok=True)
        self.writeInputVolume(volumeNode)
        cropCenter_ras = lps_to_ras(np.asarray(cropCenter_lps, float)) if cropCenter_lps is not None else None
        if (cropCenter_ras is not None or cropSizeMm is not None) and not cliSupports("--crop-center-ras"):
            raise InputError(
                "This engine version cannot crop to an ROI in a background process; clear the ROI or "
                "untick 'Run in background process'."
            )
        self.command = cliCommand(
            self.pythonExecutable, self.inputPath, seed_ras, self.outputPath, modelPath, device,
            resolutionMm, smoothing, decimate, cropCenter_ras, cropSizeMm,
        )
        self.startCommand(self.command, env)

    def startCommand(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Launch ``command`` as the worker (separate so other commands can be driven the same way)."""
        runEnv = dict(os.environ if env is None else env)
        root = str(engineRoot())
        runEnv["PYTHONPATH"] = root + (os.pathsep + runEnv["PYTHONPATH"] if runEnv.get("PYTHONPATH") else "")
        runEnv["PYTHONUNBUFFERED"] = "1"
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self.state, self.stage, self.fraction, self.summary = "running", "starting", 0.0, None
        self.logLines, self.errorLines = [], []
        self._queue = queue.Queue()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=runEnv, cwd=str(self.workDir), **kwargs,
        )
        self._openStreams = 2
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, name: str) -> None:
        try:
            for line in stream:
                self._queue.put(parseLine(line, name))
        except (OSError, ValueError):
            pass  # stream closed by a kill
        finally:
            self._queue.put(None)

    # -- progress --------------------------------------------------------------------------------
    def poll(self) -> list[ProgressEvent]:
        """Drain pending events without blocking; updates state when the worker has finished."""
        events: list[ProgressEvent] = []
        while True:
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                break
            if ev is None:
                self._openStreams -= 1
                continue
            events.append(ev)
            self._apply(ev)
        if self.state == "running" and self._openStreams <= 0 and self.process is not None:
            rc = self.process.wait()
            ok = rc == 0 and self.outputPath.is_file()
            self.state = "done" if ok else "failed"
            if ok:
                self.stage, self.fraction = "done", 1.0
        return events

    def _apply(self, ev: ProgressEvent) -> None:
        if ev.kind == "progress":
            self.stage, self.fraction = ev.stage, ev.fraction
        elif ev.kind == "done":
            self.summary = ev.summary
        elif ev.kind == "log":
            self.logLines.append(ev.text)
        elif ev.kind == "error" and ev.text.strip():
            self.errorLines.append(ev.text)

    def isRunning(self) -> bool:
        return self.state == "running"

    @property
    def errorMessage(self) -> str:
        """The worker's last meaningful stderr line (the CLI prints typed errors as one line)."""
        lines = [ln for ln in self.errorLines if ln.strip()]
        if not lines:
            rc = self.process.returncode if self.process is not None else None
            return f"The segmentation process ended with exit code {rc} and no output mesh."
        return lines[-1]

    # -- cancel / finish -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Kill the worker and its children now; removes partial outputs."""
        if self.process is not None and self.process.poll() is None:
            killProcessTree(self.process.pid)
        if self.process is not None:
            self.process.wait()
        for t in self._readers:
            t.join(timeout=2)
        self.state = "cancelled"
        self.cleanup()

    def loadResult(self, scene, outputModelNode=None, name: str = "LAA", inputFile: str | None = None,
                   colorByConfidence: bool = True):
        """Load the finished mesh into a model node (RAS) with the LAA display; raises on failure.

        The VTP's point arrays come along (the model is coloured by confidence when ``colorByConfidence``).
        The worker's provenance sidecar becomes the node's ``NUDF.*`` attributes, its ``input_file`` replaced
        by ``inputFile`` (the worker only saw a temporary copy of the CT); the summary's quality report (its
        warnings) the ``NUDFQuality.*`` ones.
        """
        if self.state != "done":
            raise SegmentationError(
                self.errorMessage if self.state == "failed" else f"No result to load (state: {self.state})."
            )
        node = loadModelFile(scene, self.outputPath, outputModelNode, name, colorByConfidence)
        setQualityReport(node, (self.summary or {}).get("quality"))
        sidecar = sidecar_path(self.outputPath)
        if sidecar.is_file():
            record = read_provenance(sidecar)
            record["input_file"] = inputFile
            setProvenance(node, record)
        return node

    def cleanup(self) -> None:
        """Remove the temporary folder (only one this runner created)."""
        if self._ownWorkDir and self.workDir is not None and self.workDir.exists():
            shutil.rmtree(self.workDir, ignore_errors=True)

    def run(
        self,
        volumeNode,
        seed_ras: Sequence[float],
        scene=None,
        outputModelNode=None,
        onEvent: Callable[[ProgressEvent], None] | None = None,
        shouldCancel: Callable[[], bool] | None = None,
        pollInterval: float = 0.05,
        **options,
    ):
        """Blocking convenience for scripts: start, pump events, load the model; returns it (None if cancelled)."""
        self.start(volumeNode, seed_ras, **options)
        try:
            while self.isRunning():
                for ev in self.poll():
                    if onEvent is not None:
                        onEvent(ev)
                if shouldCancel is not None and shouldCancel():
                    self.cancel()
                    return None
                time.sleep(pollInterval)
            scene = scene if scene is not None else volumeNode.GetScene()
            return self.loadResult(scene, outputModelNode, name=f"{volumeNode.GetName()} LAA",
                                   inputFile=volumeInputFile(volumeNode))
        finally:
            if self.state != "running":
                self.cleanup()
