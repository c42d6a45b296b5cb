"""Static checks of the Slicer extension: the .ui and the code agree, the Lib is Qt-free, the build lists
every file. These run without the Slicer application (which is not available in CI)."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "NUDFSegmentation"
MODULE_FILE = MODULE_DIR / "NUDFSegmentation.py"
LIB_DIR = MODULE_DIR / "NUDFSegmentationLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "NUDFSegmentation.ui"

#: Widget classes that exist in Slicer 5.x (Qt, CTK, MRML widgets, Markups module widgets).
ALLOWED_WIDGET_CLASSES = {
    "QWidget", "QLabel", "QPushButton", "QToolButton", "QComboBox", "QCheckBox", "QRadioButton",
    "QProgressBar", "QDoubleSpinBox", "QSpinBox", "QLineEdit", "QGroupBox", "QFrame", "QTextEdit",
    "QPlainTextEdit",
    "ctkCollapsibleButton", "ctkCollapsibleGroupBox", "ctkPathLineEdit", "ctkDoubleSpinBox",
    "ctkSliderWidget", "ctkCheckBox", "ctkComboBox",
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox",
    "qSlicerWidget", "qSlicerMarkupsPlaceWidget",
}
ALLOWED_LAYOUT_CLASSES = {"QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout"}
#: MRML-aware widgets need the scene: each must receive the root's mrmlSceneChanged signal.
SCENE_WIDGETS = {"qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget", "qMRMLSliderWidget", "qMRMLSpinBox"}
FORBIDDEN_IN_LIB = {"qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6", "slicer.ScriptedLoadableModule"}


@pytest.fixture(scope="module")
def ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()  # raises on invalid XML


def _widgets(root: ET.Element) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _ui_names_used_in_code(path: Path) -> set[str]:
    """``X`` of every ``self.ui.X`` in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def test_ui_root_is_qmrmlwidget(ui_root):
    top = ui_root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert top.get("name") == "NUDFSegmentation"
    assert ui_root.findtext("class") == "NUDFSegmentation"


def test_ui_widget_and_layout_classes_exist_in_slicer(ui_root):
    widgets = _widgets(ui_root)
    unknown = {n: c for n, c in widgets.items() if c not in ALLOWED_WIDGET_CLASSES}
    assert not unknown, f"widget classes not in Slicer/CTK/Qt: {unknown}"
    layouts = {lay.get("class") for lay in ui_root.iter("layout")}
    assert layouts <= ALLOWED_LAYOUT_CLASSES
    # every non-Qt class is declared as a custom widget (uic needs the header)
    declared = {c.findtext("class") for c in ui_root.iter("customwidget")}
    custom_used = {c for c in widgets.values() if not c.startswith("Q")}
    assert custom_used <= declared, f"undeclared custom widgets: {custom_used - declared}"
    assert len(set(widgets)) == len(list(ui_root.iter("widget"))), "widget names must be unique"


def test_every_mrml_widget_gets_the_scene(ui_root):
    widgets = _widgets(ui_root)
    needing = {n for n, c in widgets.items() if c in SCENE_WIDGETS}
    assert {"inputVolumeSelector", "seedSelector", "seedPlaceWidget", "roiSelector", "outputModelSelector"} <= needing
    wired = {
        c.findtext("receiver")
        for c in ui_root.iter("connection")
        if c.findtext("sender") == "NUDFSegmentation"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert needing <= wired, f"not connected to mrmlSceneChanged: {needing - wired}"


def test_selectors_accept_the_node_classes_the_parameters_reference(ui_root):
    import sys

    sys.path.insert(0, str(MODULE_DIR))
    from NUDFSegmentationLib.Parameters import REFERENCES

    roles = {"inputVolumeSelector": "InputVolume", "seedSelector": "Seed", "roiSelector": "CropROI",
             "outputModelSelector": "OutputModel"}
    for w in ui_root.iter("widget"):
        if w.get("name") in roles:
            types = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert types == [REFERENCES[roles[w.get("name")]]], w.get("name")


def test_every_ui_name_used_in_code_exists_in_the_ui(ui_root):
    used = _ui_names_used_in_code(MODULE_FILE)
    assert {"applyButton", "exportButton", "progressBar", "statusLabel", "seedPlaceWidget"} <= used
    missing = used - set(_widgets(ui_root))
    assert not missing, f"self.ui.<name> used in NUDFSegmentation.py but absent from the .ui: {sorted(missing)}"


def test_module_file_has_the_four_slicer_classes():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    bases = {
        n.name: {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in n.bases}
        for n in tree.body if isinstance(n, ast.ClassDef)
    }
    assert "ScriptedLoadableModule" in bases["NUDFSegmentation"]
    assert "ScriptedLoadableModuleWidget" in bases["NUDFSegmentationWidget"]
    assert "VTKObservationMixin" in bases["NUDFSegmentationWidget"]
    assert {"ScriptedLoadableModuleLogic", "SegmentationLogic"} <= bases["NUDFSegmentationLogic"]
    assert "ScriptedLoadableModuleTest" in bases["NUDFSegmentationTest"]
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "arXiv:2504.18344" in text and "synthetic" in text and '"Segmentation"' in text


def test_lib_imports_no_qt():
    files = sorted(LIB_DIR.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for m in mods:
                assert m not in FORBIDDEN_IN_LIB and m.split(".")[0] not in {"qt", "ctk", "PythonQt"}, f"{f.name} imports {m}"


def test_cmake_lists_every_module_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\$\{MODULE_NAME\}(Lib/\w+\.py|\.py)", cmake))
    on_disk = {"Lib/" + f.name for f in LIB_DIR.glob("*.py")} | {".py"}
    assert listed == on_disk
    for res in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/Models/nudf_laa.pt"):
        assert res.replace("${MODULE_NAME}", "NUDFSegmentation") in cmake.replace("${MODULE_NAME}", "NUDFSegmentation")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "../NUDFCore/*.py" in cmake and "WITH_GENERIC_TESTS" in cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    for needle in ('EXTENSION_CATEGORY "Segmentation"', "find_package(Slicer REQUIRED)", "add_subdirectory(NUDFSegmentation)",
                   "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert needle in top, needle


def test_icon_is_a_128_png():
    import vtk

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(MODULE_DIR / "Resources" / "Icons" / "NUDFSegmentation.png"))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)
    from vtk.util import numpy_support

    pixels = numpy_support.vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())
    assert pixels.std() > 10, "the icon must not be a blank tile"
