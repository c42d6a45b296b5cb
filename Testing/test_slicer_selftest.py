"""The module's self-test checks (what ctest's ``py_NUDFSegmentation`` runs inside Slicer), run headless on
slicer-core: the logic with a stub engine, the real engine on the shipped case, and the honest skip message
where PyTorch is missing (as on the extension build machines)."""
from __future__ import annotations

import importlib.util

from slicer_test_support import require_slicer_core

slicer = require_slicer_core()  # the MRML tier must not vanish: no slicer-core is an error, not a skip

from NUDFSegmentationLib.SelfTest import (  # noqa: E402
    ENGINE_MAX_MEAN_DISTANCE_MM,
    checkEngineEndToEnd,
    checkLogicWithStubEngine,
    loadVolumeNode,
    makeScene,
)


def test_self_test_checks_the_logic_with_a_stub_engine(tmp_path):
    summary = checkLogicWithStubEngine(makeScene(), loadVolumeNode, tmp_path)
    assert "provenance, LPS export and 3 refusals checked" in summary


def test_self_test_runs_the_engine_on_the_shipped_case():
    scene = makeScene()
    summary = checkEngineEndToEnd(scene, loadVolumeNode)
    assert summary.startswith("engine run:"), summary
    distance = float(summary.rsplit("reference ", 1)[1].split(" mm")[0])
    assert distance < ENGINE_MAX_MEAN_DISTANCE_MM
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 1


def test_self_test_says_it_skipped_the_engine_without_torch(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    scene = makeScene()
    assert checkEngineEndToEnd(scene, loadVolumeNode).startswith("skipped the engine run: PyTorch is not installed")
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0  # nothing was loaded or run
