"""The module's parameters, stored in a ``vtkMRMLScriptedModuleNode`` so they are saved with the scene.

Kept Qt-free so scripts and tests can read and write the same state the GUI shows. Scalars are stored as
strings (``SetParameter``), inputs/outputs as node references (so they survive scene save/reload with
remapped IDs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from NUDFCore.errors import InputError

MODULE_NAME = "NUDFSegmentation"
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
FRAMES: tuple[str, ...] = ("lps", "ras")


@dataclass(frozen=True)
class ParameterSpec:
    """One scalar parameter: its type and default, and the range a user may choose from."""

    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("modelPath", str, "", "Model checkpoint (.pt); empty = the bundled model"),
    ParameterSpec("device", str, "auto", "Where the network runs", choices=DEVICES),
    ParameterSpec("resolutionMm", float, 0.25, "Output mesh grid resolution (mm)", 0.1, 2.0),
    ParameterSpec("smoothing", float, 0.0, "Mesh smoothing strength (0 = off)", 0.0, 1.0),
    ParameterSpec("decimate", float, 0.0, "Fraction of triangles to remove (0 = off)", 0.0, 0.9),
    ParameterSpec("runInBackground", bool, True, "Run the engine in a separate process (GUI stays responsive)"),
    ParameterSpec("exportFrame", str, "lps", "Coordinate frame of exported STL files", choices=FRAMES),
)
_SPECS = {p.name: p for p in PARAMETERS}

#: Node reference roles -> required MRML class.
REFERENCES: dict[str, str] = {
    "InputVolume": "vtkMRMLScalarVolumeNode",
    "Seed": "vtkMRMLMarkupsFiducialNode",
    "CropROI": "vtkMRMLMarkupsROINode",
    "OutputModel": "vtkMRMLModelNode",
}


def _parse(spec: ParameterSpec, text: str | None) -> Any:
    if text is None or text == "":
        return spec.default
    if spec.type is bool:
        return text.lower() in ("1", "true", "yes", "on")
    try:
        return spec.type(text)
    except ValueError:
        return spec.default


class NUDFParameters:
    """Typed access to the module's parameter node (one per scene, a singleton)."""

    def __init__(self, parameterNode) -> None:
        self.node = parameterNode

    @classmethod
    def getParameterNode(cls, scene, create: bool = True) -> "NUDFParameters | None":
        """The scene's NUDFSegmentation parameter node, created with defaults when missing."""
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
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
        params.setDefaults()
        return params

    # -- scalars ---------------------------------------------------------------------------------
    def setDefaults(self) -> None:
        """Fill in parameters that are not set yet (keeps existing values, e.g. after scene reload)."""
        for spec in PARAMETERS:
            if not self.node.GetParameter(spec.name):
                self.node.SetParameter(spec.name, str(spec.default))

    def get(self, name: str) -> Any:
        spec = self._spec(name)
        return _parse(spec, self.node.GetParameter(name))

    def set(self, name: str, value: Any) -> None:
        """Set a scalar after checking it against its spec; raises InputError for invalid values."""
        spec = self._spec(name)
        if spec.type is bool:
            value = bool(value)
        else:
            try:
                value = spec.type(value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name} must be a {spec.type.__name__}; got {value!r}.") from exc
        if spec.choices is not None and value not in spec.choices:
            raise InputError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}.")
        if spec.minimum is not None and value < spec.minimum:
            raise InputError(f"{name} must be at least {spec.minimum}; got {value}.")
        if spec.maximum is not None and value > spec.maximum:
            raise InputError(f"{name} must be at most {spec.maximum}; got {value}.")
        text = ("true" if value else "false") if spec.type is bool else str(value)
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
        out = []
        if self.getNode("InputVolume") is None:
            out.append("Select a CT volume.")
        seed = self.getNode("Seed")
        if seed is None or seed.GetNumberOfControlPoints() == 0:
            out.append("Place the LAA seed point inside the appendage.")
        return out

    def segmentOptionsKwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``NUDFCore.infer.SegmentOptions`` (engine imported lazily by the caller)."""
        return {
            "resolution_mm": self.get("resolutionMm"),
            "device": self.get("device"),
            "smoothing": self.get("smoothing"),
            "decimate": self.get("decimate"),
        }
