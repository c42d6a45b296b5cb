"""NUDF Segmentation: segment the left atrial appendage (LAA) from cardiac CT as an open surface mesh.

The module file only registers the module with Slicer: the panel is ``NUDFSegmentationLib.Widget``, the
logic ``NUDFSegmentationLib.SegmentationLogic`` and the run owner ``NUDFSegmentationLib.RunController``
(Qt-free, tested headless); the ``NUDFCore`` engine ships beside this file.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

_MODULE_DIR = Path(__file__).resolve().parent
if str(_MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(_MODULE_DIR))

from NUDFSegmentationLib import RunController, SegmentationLogic  # noqa: E402  (the Lib puts NUDFCore on sys.path)

NUDF_CITATION = (
    'K. Sørensen, O. Camara, O. de Backer, K. Kofoed, R. Paulsen, "NUDF: Neural Unsigned Distance Fields '
    'for high resolution 3D medical image segmentation", ISBI 2022, arXiv:2504.18344.'
)


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
            "The mesh appears as a model (RAS, like everything in Slicer) carrying its provenance (model, "
            "seed, options) as node attributes; <i>Export STL…</i> writes it in LPS by default, as Slicer does."
            "<br><br>The model is colored by the network's per-vertex <b>confidence</b> (red: unsure of the "
            "wall there, green: sure; untick <i>Color by confidence</i> for a plain color), and the status line "
            "shows any <b>warnings</b> about the result (e.g. a surface that may be incomplete, or a seed that "
            "does not look like it is in the appendage): check those regions against the CT."
            "<br><br><b>The bundled model is trained on synthetic cardiac CT phantoms</b>; it is a research "
            "tool, not validated on patient data and not for clinical use. Load your own checkpoint under "
            f"<i>Options</i>.<br><br>If you use this module, please cite the NUDF paper: {NUDF_CITATION}"
        )
        self.parent.acknowledgementText = (
            "The method follows NUDF by K. Sørensen et al. (ISBI 2022). The module layout follows the "
            "conventions of SlicerTotalSegmentator, MONAIAuto3DSeg and SlicerNNUnet. Built with 3D Slicer, "
            "VTK, SimpleITK and PyTorch."
        )


class NUDFSegmentationWidget(ScriptedLoadableModuleWidget):
    """Registration only: the logic and the run controller live here (for the module's lifetime, so a run
    outlives the panel) and are handed to the Lib's panel. ``self.logic`` serves ``getModuleLogic``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.controller = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from NUDFSegmentationLib.Widget import Widget

        self.logic = SegmentationLogic(slicer.mrmlScene)
        self.controller = RunController(self.logic, processEvents=slicer.app.processEvents)
        self.panel = Widget(self.logic, self.controller)
        self.layout.addWidget(self.panel)

    def enter(self) -> None:
        self.panel.enter()

    def exit(self) -> None:
        self.panel.exit()

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cleanup()
        if self.controller is not None:
            self.controller.dispose()


class NUDFSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test (ctest ``py_NUDFSegmentation``): module loading, the logic with a stub engine, and the real
    engine on the shipped phantom case when PyTorch is installed (otherwise it says it skipped the engine).
    The same checks run headless in the repository's pytest suite (``Testing/test_slicer_selftest.py``)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ModuleLoads()
        self.setUp()
        self.test_LogicWithStubEngine()
        self.setUp()
        self.test_Engine()

    @staticmethod
    def _loadVolume(scene, path, name):
        return slicer.util.loadVolume(str(path), {"name": name, "show": False})

    def test_ModuleLoads(self) -> None:
        self.assertTrue(hasattr(slicer.modules, "nudfsegmentation"))
        logic = slicer.util.getModuleLogic("NUDFSegmentation")
        self.assertIsInstance(logic, SegmentationLogic)
        self.delayDisplay("Module loaded")

    def test_LogicWithStubEngine(self) -> None:
        from NUDFSegmentationLib.SelfTest import checkLogicWithStubEngine

        with tempfile.TemporaryDirectory(prefix="NUDFSegmentationTest-") as workDir:
            self.delayDisplay(checkLogicWithStubEngine(slicer.mrmlScene, self._loadVolume, workDir))

    def test_Engine(self) -> None:
        from NUDFSegmentationLib.SelfTest import checkEngineEndToEnd

        self.delayDisplay(checkEngineEndToEnd(slicer.mrmlScene, self._loadVolume))
