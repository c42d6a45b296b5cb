"""Static checks of the Slicer extension: the .ui and the code agree (the generated GUI binding included), the
module file is a thin registration, the Lib is Qt-free except its widget file, and the MRML tier is the pinned
slicer-core. These run without the Slicer application (which is not available in CI); the CMake build is
configured for real in test_slicer_cmake.py."""
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


WIDGET_FILE = LIB_DIR / "Widget.py"


def test_every_ui_name_used_in_code_exists_in_the_ui(ui_root):
    used = _ui_names_used_in_code(WIDGET_FILE)
    assert {"applyButton", "exportButton", "progressBar", "statusLabel", "seedPlaceWidget"} <= used
    missing = used - set(_widgets(ui_root))
    assert not missing, f"self.ui.<name> used in Widget.py but absent from the .ui: {sorted(missing)}"


def test_the_generated_gui_binding_matches_the_ui(ui_root):
    """Every parameter and node reference that names a widget is bound by the widget's generated code: the
    widget exists in the .ui with a class the binding knows, combo boxes have one label per choice, and
    the remembered options are the ones the issue asks for."""
    from NUDFSegmentationLib.Parameters import NODES, PARAMETERS, WIDGET_ACCESSORS

    widgets = _widgets(ui_root)
    bound = [p for p in PARAMETERS if p.widget] + list(NODES)
    for spec in bound:
        assert spec.widget in widgets, spec
        assert widgets[spec.widget] in WIDGET_ACCESSORS, (spec.widget, widgets[spec.widget])
        if getattr(spec, "choices", None):
            assert widgets[spec.widget] in ("QComboBox", "ctkComboBox")
            assert spec.choiceLabels and len(spec.choiceLabels) == len(spec.choices)
    assert len({spec.widget for spec in bound}) == len(bound), "one widget per parameter"
    assert {p.name for p in PARAMETERS if p.remember} == {"modelPath", "device", "resolutionMm"}
    # the widget file holds no per-field sync: no parameter name appears in it as a string
    text = WIDGET_FILE.read_text(encoding="utf-8")
    for spec in PARAMETERS:
        assert f'"{spec.name}"' not in text or spec.name == "exportFrame", f"hand-written binding of {spec.name}"


def test_the_module_file_is_a_thin_registration():
    """Module + a registration Widget + Test; no Logic class, no GUI code beyond handing over to the Lib."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"NUDFSegmentation", "NUDFSegmentationWidget", "NUDFSegmentationTest"}
    bases = {name: {ast.unparse(b) for b in c.bases} for name, c in classes.items()}
    assert bases == {"NUDFSegmentation": {"ScriptedLoadableModule"},
                     "NUDFSegmentationWidget": {"ScriptedLoadableModuleWidget"},
                     "NUDFSegmentationTest": {"ScriptedLoadableModuleTest"}}
    widget = classes["NUDFSegmentationWidget"]
    assert len(ast.unparse(widget).splitlines()) < 40, "the registration widget must stay thin"
    assert "self.ui" not in ast.unparse(widget) and "import qt" not in MODULE_FILE.read_text(encoding="utf-8")
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) < 150
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "arXiv:2504.18344" in text and "synthetic" in text and '"Segmentation"' in text
    # the self-test runs the checks shared with pytest, and reads nothing outside the module
    test = ast.unparse(classes["NUDFSegmentationTest"])
    assert "checkLogicWithStubEngine" in test and "checkEngineEndToEnd" in test and "'Testing'" not in test


def test_lib_imports_no_qt_except_the_widget():
    """Only Widget.py imports Qt; RunController imports it inside qtSingleShot alone (Slicer's timer)."""
    files = sorted(LIB_DIR.glob("*.py"))
    assert len(files) >= 8
    for f in files:
        if f.name == "Widget.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        tree.body = [n for n in tree.body if getattr(n, "name", "") != "qtSingleShot"]  # its lazy `import qt`
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for m in mods:
                assert m not in FORBIDDEN_IN_LIB and m.split(".")[0] not in {"qt", "ctk", "PythonQt"}, f"{f.name} imports {m}"


def test_the_lib_imports_without_qt_at_module_import_time():
    """Importing the whole Lib (except Widget.py) in a fresh interpreter loads no Qt binding."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import NUDFSegmentationLib, NUDFSegmentationLib.SelfTest; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt', 'PyQt5', 'PySide2', 'PySide6')]; "
            "assert not bad, bad; assert 'NUDFSegmentationLib.Widget' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_mrml_tier_is_slicer_core_pinned_in_the_test_extra():
    """`make test` must run the MRML tests: slicer-core (not PyPI's unrelated `slicer`) at the pinned version."""
    import importlib.metadata
    import tomllib

    from slicer_test_support import require_slicer_core

    slicer = require_slicer_core()
    assert slicer.vtkMRMLScene().GetNumberOfNodes() >= 0
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["test"]
    pins = dict(r.split("==") for r in test_extra if "==" in r)
    assert pins["slicer-core"] == importlib.metadata.version("slicer-core")
    assert pins["vtk"] == importlib.metadata.version("vtk")
    vtk_requirement = [r for r in importlib.metadata.requires("slicer-core") if r.startswith("vtk")]
    assert all(pins["vtk"] in r or r == "vtk" for r in vtk_requirement), vtk_requirement


def test_icon_is_a_128_png():
    import vtk

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(MODULE_DIR / "Resources" / "Icons" / "NUDFSegmentation.png"))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)
    from vtk.util import numpy_support

    pixels = numpy_support.vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())
    assert pixels.std() > 10, "the icon must not be a blank tile"
