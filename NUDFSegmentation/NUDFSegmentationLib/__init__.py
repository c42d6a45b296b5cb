"""Qt-free logic of the NUDF Segmentation Slicer module.

Everything here works in the Slicer Python console, in Slicer scripts and headless with the
``slicer-core`` package (real MRML, no application), which is how the tests exercise it. The widget in
``NUDFSegmentation.py`` is a thin layer over these classes.
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

from .Parameters import PARAMETERS, DEVICES, NUDFParameters, ParameterSpec  # noqa: E402
from .InstallLogic import Dependency, InstallPlan, missingDependencies, planInstall  # noqa: E402
from .SegmentationLogic import SegmentationLogic, exportModelToFile  # noqa: E402
from .BackgroundSegmentation import BackgroundSegmentation, ProgressEvent, cliCommand  # noqa: E402

__all__ = [
    "BackgroundSegmentation",
    "DEVICES",
    "Dependency",
    "InstallPlan",
    "NUDFParameters",
    "PARAMETERS",
    "ParameterSpec",
    "ProgressEvent",
    "SegmentationLogic",
    "cliCommand",
    "ensureEngineImportable",
    "exportModelToFile",
    "missingDependencies",
    "planInstall",
]
