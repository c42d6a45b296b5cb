"""The module's parameters, declared once, stored in a ``vtkMRMLScriptedModuleNode`` (saved with the scene).

One declarative spec (:data:`PARAMETERS`, :data:`NODES`) says, per parameter, its type, default, range, the
``.ui`` widget that shows it and whether the widget remembers it across sessions; the widget generates its
GUI binding from it (no hand-written per-field sync). Slicer's ``parameterNodeWrapper`` would do the binding
too, but it needs Slicer's Qt-based ``slicer.parameterNodeWrapper`` package, which the headless MRML used by
the tests (PyPI ``slicer-core``) does not have; this module stays Qt-free so scripts and tests read and write
the same state the GUI shows. Scalars are stored as strings (``SetParameter``), inputs/outputs as node
references (so they survive scene save/reload with remapped IDs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from NUDFCore.errors import InputError

MODULE_NAME = "NUDFSegmentation"
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
FRAMES: tuple[str, ...] = ("lps", "ras")


@dataclass(frozen=True)
class ParameterSpec:
    """One scalar parameter: type, default, allowed values, and how the GUI shows it."""

    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    #: Object name of the ``.ui`` widget bound to it (None: not shown).
    widget: str | None = None
    #: Labels of ``choices`` in a combo box (same order).
    choiceLabels: tuple[str, ...] | None = None
    #: The widget stores the last value in QSettings and offers it in the next session's new scenes.
    remember: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """One node reference of the parameter node: its role, the MRML class it must have, its selector."""

    role: str
    mrmlClass: str
    widget: str
    description: str


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("modelPath", str, "", "Model checkpoint (.pt); empty = the bundled model",
                  widget="modelPathLineEdit", remember=True),
    ParameterSpec("device", str, "auto", "Where the network runs", choices=DEVICES, widget="deviceComboBox",
                  choiceLabels=("Auto (GPU if available)", "CPU", "GPU (CUDA)"), remember=True),
    ParameterSpec("resolutionMm", float, 0.25, "Output mesh grid resolution (mm)", 0.1, 2.0,
                  widget="resolutionSpinBox", remember=True),
    ParameterSpec("smoothing", float, 0.0, "Mesh smoothing strength (0 = off)", 0.0, 1.0,
                  widget="smoothingSliderWidget"),
    ParameterSpec("decimate", float, 0.0, "Fraction of triangles to remove (0 = off)", 0.0, 0.9),
    ParameterSpec("runInBackground", bool, True, "Run the engine in a separate process (GUI stays responsive)",
                  widget="backgroundCheckBox"),
    ParameterSpec("colorByConfidence", bool, True,
                  "Color the LAA model by the network's per-vertex confidence (red: unsure, green: sure); "
                  "off: one plain color", widget="colorByConfidenceCheckBox"),
    ParameterSpec("exportFrame", str, "lps", "Coordinate frame of exported STL files", choices=FRAMES,
                  widget="exportFrameComboBox", choiceLabels=("LPS (Slicer default)", "RAS")),
)
_SPECS = {p.name: p for p in PARAMETERS}
#: Parameters that only change how the output model is shown: applied to it at once, no new run needed
#: (``SegmentationLogic.applyDisplayParameters``).
DISPLAY_PARAMETERS: tuple[str, ...] = ("colorByConfidence",)

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("InputVolume", "vtkMRMLScalarVolumeNode", "inputVolumeSelector", "Contrast-enhanced cardiac CT"),
    NodeSpec("Seed", "vtkMRMLMarkupsFiducialNode", "seedSelector", "One point inside the LAA"),
    NodeSpec("CropROI", "vtkMRMLMarkupsROINode", "roiSelector", "Optional crop box"),
    NodeSpec("OutputModel", "vtkMRMLModelNode", "outputModelSelector", "Model receiving the LAA surface"),
)
#: Node reference roles -> required MRML class.
REFERENCES: dict[str, str] = {n.role: n.mrmlClass for n in NODES}

#: How the widget reads, writes and watches each kind of ``.ui`` widget: class -> (value property or
#: getter, setter method, change signal). Combo boxes bound to ``choices`` use item data instead.
WIDGET_ACCESSORS: dict[str, tuple[str, str, str]] = {
    "ctkPathLineEdit": ("currentPath", "setCurrentPath", "currentPathChanged(QString)"),
    "QDoubleSpinBox": ("value", "setValue", "valueChanged(double)"),
    "ctkDoubleSpinBox": ("value", "setValue", "valueChanged(double)"),
    "ctkSliderWidget": ("value", "setValue", "valueChanged(double)"),
    "QCheckBox": ("checked", "setChecked", "toggled(bool)"),
    "ctkCheckBox": ("checked", "setChecked", "toggled(bool)"),
    "QComboBox": ("currentData", "setCurrentIndex", "currentIndexChanged(int)"),
    "ctkComboBox": ("currentData", "setCurrentIndex", "currentIndexChanged(int)"),
    "qMRMLNodeComboBox": ("currentNode", "setCurrentNode", "currentNodeChanged(vtkMRMLNode*)"),
}


def parseValue(spec: ParameterSpec, text: str | None) -> Any:
    """A stored string as the spec's type (the default when empty or unreadable)."""
    if text is None or text == "":
        return spec.default
    if spec.type is bool:
        return str(text).lower() in ("1", "true", "yes", "on")
    try:
        return spec.type(text)
    except (TypeError, ValueError):
        return spec.default


def checkedValue(spec: ParameterSpec, value: Any) -> Any:
    """``value`` converted to the spec's type; raises InputError when outside its type, range or choices."""
    if spec.type is bool:
        return bool(value)
    try:
        value = spec.type(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{spec.name} must be a {spec.type.__name__}; got {value!r}.") from exc
    if spec.choices is not None and value not in spec.choices:
        raise InputError(f"{spec.name} must be one of {', '.join(spec.choices)}; got {value!r}.")
    if spec.minimum is not None and value < spec.minimum:
        raise InputError(f"{spec.name} must be at least {spec.minimum}; got {value}.")
    if spec.maximum is not None and value > spec.maximum:
        raise InputError(f"{spec.name} must be at most {spec.maximum}; got {value}.")
    return value


def _text(spec: ParameterSpec, value: Any) -> str:
    return ("true" if value else "false") if spec.type is bool else str(value)


class NUDFParameters:
    """Typed access to the module's parameter node (one per scene, a singleton)."""

    def __init__(self, parameterNode) -> None:
        self.node = parameterNode

    @classmethod
    def getParameterNode(
        cls, scene, create: bool = True, initialValues: Mapping[str, Any] | None = None
    ) -> "NUDFParameters | None":
        """The scene's parameter node, created with defaults when missing.

        ``initialValues`` (e.g. the widget's remembered settings) fill a *new* node only: a node loaded with
        a scene keeps its saved values. Invalid initial values are ignored (settings may be stale).
        """
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        created = node is None
        if created:
            if not create:
                return None
            import slicer

            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(f"{MODULE_NAME}Parameters")
            node.SetModuleName(MODULE_NAME)
            node.SetSingletonTag(MODULE_NAME)
            node.HideFromEditorsOn()
            node = scene.AddNode(node)
        params = cls(node)
        if created and initialValues:
            for name, value in initialValues.items():
                if name in _SPECS:
                    try:
                        params.set(name, parseValue(_SPECS[name], value) if isinstance(value, str) else value)
                    except InputError:
                        pass
        params.setDefaults()
        return params

    # -- scalars ---------------------------------------------------------------------------------
    def setDefaults(self) -> None:
        """Fill in parameters that are not set yet (keeps existing values, e.g. after scene reload)."""
        for spec in PARAMETERS:
            if not self.node.GetParameter(spec.name):
                self.node.SetParameter(spec.name, _text(spec, spec.default))

    def get(self, name: str) -> Any:
        return parseValue(self._spec(name), self.node.GetParameter(name))

    def set(self, name: str, value: Any) -> None:
        """Set a scalar after checking it against its spec; raises InputError for invalid values."""
        spec = self._spec(name)
        text = _text(spec, checkedValue(spec, value))
        if self.node.GetParameter(name) != text:
            self.node.SetParameter(name, text)

    @staticmethod
    def _spec(name: str) -> ParameterSpec:
        if name not in _SPECS:
            raise InputError(f"Unknown NUDFSegmentation parameter {name!r}.")
        return _SPECS[name]

    # -- node references -------------------------------------------------------------------------
    def getNode(self, role: str):
        if role not in REFERENCES:
            raise InputError(f"Unknown node role {role!r}; use one of {', '.join(REFERENCES)}.")
        return self.node.GetNodeReference(role)

    def setNode(self, role: str, mrmlNode) -> None:
        if role not in REFERENCES:
            raise InputError(f"Unknown node role {role!r}; use one of {', '.join(REFERENCES)}.")
        if mrmlNode is not None and not mrmlNode.IsA(REFERENCES[role]):
            raise InputError(f"{role} must be a {REFERENCES[role]}; got a {mrmlNode.GetClassName()}.")
        newId = mrmlNode.GetID() if mrmlNode is not None else None
        if self.node.GetNodeReferenceID(role) != newId:
            self.node.SetNodeReferenceID(role, newId)

    # -- derived ---------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why segmentation cannot start yet (empty when it can): drives the Segment button's state."""
        from .SegmentationLogic import inputProblems

        return inputProblems(self.getNode("InputVolume"), self.getNode("Seed"))

    def segmentOptionsKwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``NUDFCore.infer.SegmentOptions`` (engine imported lazily by the caller)."""
        return {
            "resolution_mm": self.get("resolutionMm"),
            "device": self.get("device"),
            "smoothing": self.get("smoothing"),
            "decimate": self.get("decimate"),
        }

    def rememberedValues(self) -> dict[str, str]:
        """The values the widget keeps across sessions (spec ``remember``), as stored strings."""
        return {spec.name: self.node.GetParameter(spec.name) for spec in PARAMETERS if spec.remember}
