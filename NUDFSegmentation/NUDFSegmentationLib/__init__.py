"""The NUDF Segmentation Slicer module's code, beside the thin module file ``NUDFSegmentation.py``.

Everything here except ``Widget.py`` is Qt-free: it works in the Slicer Python console, in Slicer scripts and
headless with the ``slicer-core`` package (real MRML, no application), which is how the tests exercise it.
``Parameters`` (the declarative parameter spec), ``SegmentationLogic`` (MRML <-> engine), ``BackgroundSegmentation``
(the worker process), ``RunController`` (owns a GUI run and delivers its result), ``InstallLogic`` (run-time
packages), ``SelfTest`` (checks shared by the self-test and pytest). ``Widget`` (Qt) is imported on demand:
``from NUDFSegmentationLib.Widget import Widget``.
"""
from __future__ import annotations

import sys
from pathlib import Path


def ensureEngineImportable() -> None:
    """Make ``import NUDFCore`` work when the module is run from a source checkout.

    An installed extension ships NUDFCore beside the module script (already on ``sys.path``); a source
    checkout added via Application Settings -> Modules has it one folder above the module folder.
    """
    try:
        import NUDFCore  # noqa: F401
        return
    except ImportError:
        pass
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "NUDFCore" / "__init__.py").is_file():
            sys.path.insert(0, str(candidate))
            return


ensureEngineImportable()

from .Parameters import DEVICES, NODES, PARAMETERS, NodeSpec, NUDFParameters, ParameterSpec  # noqa: E402
from .InstallLogic import Dependency, InstallPlan, missingDependencies, planInstall  # noqa: E402
from .SegmentationLogic import SegmentationLogic, exportModelToFile, inputProblems  # noqa: E402
from .BackgroundSegmentation import BackgroundSegmentation, ProgressEvent, cliCommand  # noqa: E402
from .RunController import PanelState, RunController, RunEvent, RunRequest, panelState  # noqa: E402

__all__ = [
    "BackgroundSegmentation",
    "DEVICES",
    "Dependency",
    "InstallPlan",
    "NODES",
    "NUDFParameters",
    "NodeSpec",
    "PARAMETERS",
    "PanelState",
    "ParameterSpec",
    "ProgressEvent",
    "RunController",
    "RunEvent",
    "RunRequest",
    "SegmentationLogic",
    "cliCommand",
    "ensureEngineImportable",
    "exportModelToFile",
    "inputProblems",
    "missingDependencies",
    "panelState",
    "planInstall",
]
