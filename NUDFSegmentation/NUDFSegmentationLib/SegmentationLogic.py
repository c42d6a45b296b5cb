"""Qt-free bridge between MRML nodes and the NUDFCore engine.

Slicer keeps everything in RAS; the engine works in LPS. The conversions go through ``NUDFCore.frames``
/ ``NUDFCore.io`` only. Only MRML logics and storage nodes are used (no ``slicer.util.loadVolume``/
``saveNode``), so this runs inside Slicer and headless on ``slicer-core`` alike.

The engine's mesh carries two point arrays, ``distance_mm`` (the network's distance at each vertex) and
``confidence`` (0-1, see ``NUDFCore.quality``); they reach the model node unchanged, and the model is coloured
by ``confidence`` (:func:`showConfidence`: fixed 0-1 range, red = unsure, green = sure, a colour legend). The
result's plain-language warnings (``result.quality["warnings"]``) are stored on the node as
``NUDFQuality.*`` attributes (:func:`setQualityReport`), so a run in a worker process reports them the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from NUDFCore.errors import InputError, MeshIOError, OutputExistsError
from NUDFCore.frames import check_frame, ras_to_lps
from NUDFCore.io import Volume, atomic_output, transform_polydata_frame
from NUDFCore.meshing import DISTANCE_ARRAY
from NUDFCore.provenance import ATTRIBUTE_PREFIX, segmentation_provenance, to_attributes
from NUDFCore.quality import CONFIDENCE_ARRAY, message_in_frame

#: Appendage-like display: muted flesh red, slightly translucent so the CT shows through.
LAA_COLOR = (0.87, 0.42, 0.38)
LAA_OPACITY = 0.85
EXPORT_EXTENSIONS = (".stl", ".obj", ".ply", ".vtk", ".vtp")

#: The confidence colour map, a procedural colour node the logic adds to the scene once (a singleton, so a
#: saved scene keeps it and every LAA model shares it): red where the network is unsure of the wall, through
#: yellow, to green where it is sure. Slicer's default colour tables have no red-to-green map (``Red``,
#: ``Green`` are single-hue ramps; ``RedGreenBlue`` ends in blue), hence our own.
CONFIDENCE_COLOR_NODE_NAME = "NUDF confidence"
CONFIDENCE_COLOR_SINGLETON_TAG = "NUDFConfidence"
CONFIDENCE_COLORS: tuple[tuple[float, tuple[float, float, float]], ...] = (
    (0.0, (0.84, 0.13, 0.11)),
    (0.5, (0.99, 0.80, 0.20)),
    (1.0, (0.18, 0.65, 0.30)),
)
#: The scalar range of the colouring: fixed, so 0.6 has the same colour on every run (an automatic range
#: would stretch the colours over whatever a mesh holds and make an unsure surface look sure).
CONFIDENCE_RANGE = (0.0, 1.0)
CONFIDENCE_LEGEND_TITLE = "Confidence"
#: Attribute prefix of a result's quality report on its model node (``NUDF.*`` is the provenance record).
QUALITY_ATTRIBUTE_PREFIX = "NUDFQuality."
#: The quality figures kept on the node besides the warnings (keys of ``SegmentationResult.quality``).
QUALITY_KEYS = ("mean_confidence", "low_confidence_area")


def _arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _nonLinearTransformProblem(node, what: str) -> str | None:
    parent = node.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        return (
            f"{what} {node.GetName()} is under a non-linear transform ({parent.GetName()}); harden the transform "
            "first (Data module: right-click the volume -> Harden transform)."
        )
    return None


def _worldMatrix(node) -> np.ndarray:
    """4x4 node-to-world matrix; refuses non-linear parent transforms (the engine needs a plain grid)."""
    problem = _nonLinearTransformProblem(node, "The volume")
    if problem:
        raise InputError(problem)
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _arrayFromVtkMatrix(m)


def volumeProblem(volumeNode) -> str | None:
    """Why a node cannot be segmented as a CT (None when it can): one sentence naming the node."""
    if volumeNode is None:
        return "Select a CT volume."
    name = volumeNode.GetName()
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        kind = "a label map" if volumeNode.IsA("vtkMRMLLabelMapVolumeNode") else f"a {volumeNode.GetClassName()}"
        return f"{name} is {kind}, not a scalar (CT) volume; select the CT image."
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or volumeNode.IsA("vtkMRMLTensorVolumeNode"):
        return f"{name} is a vector/tensor (e.g. RGB) volume, not a scalar (CT) volume; select the CT image."
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return f"{name} holds no voxels."
    if image.GetNumberOfScalarComponents() != 1:
        return f"{name} has {image.GetNumberOfScalarComponents()} components per voxel; a CT is scalar (1 component)."
    return _nonLinearTransformProblem(volumeNode, "The volume")


def seedProblem(markupsNode) -> str | None:
    """Why a point list cannot serve as the seed (None when it can): it must hold exactly one placed point."""
    if markupsNode is None:
        return "Place the LAA seed point inside the appendage."
    n = markupsNode.GetNumberOfDefinedControlPoints()
    if n == 0:
        return f"Place the LAA seed point inside the appendage (the point list {markupsNode.GetName()} is empty)."
    if n > 1:
        return (
            f"The point list {markupsNode.GetName()} holds {n} points; the seed must be exactly one point inside "
            "the LAA: delete the others or pick another list."
        )
    return None


def inputProblems(volumeNode, seedNode) -> list[str]:
    """Every reason the inputs cannot be segmented yet (empty when they can), one sentence each."""
    return [p for p in (volumeProblem(volumeNode), seedProblem(seedNode)) if p]


def volumeFromNode(volumeNode) -> Volume:
    """The engine's :class:`Volume` (LPS geometry) from a scalar volume node, parent transform applied."""
    problem = volumeProblem(volumeNode)
    if problem:
        raise InputError(problem if volumeNode is not None else "No input volume selected.")
    image = volumeNode.GetImageData()
    dims = image.GetDimensions()  # (i, j, k)
    array_kji = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    ijkToRas = _worldMatrix(volumeNode) @ _arrayFromVtkMatrix(m)
    return Volume.from_ijk_to_ras(array_kji.copy(), ijkToRas)


def seedFromNode(markupsNode) -> np.ndarray:
    """World RAS position (mm) of the one placed point of a markups node; refuses empty or multi-point lists."""
    if markupsNode is None:
        raise InputError("No LAA seed point list selected.")
    problem = seedProblem(markupsNode)
    if problem:
        raise InputError(problem)
    index = next(i for i in range(markupsNode.GetNumberOfControlPoints())
                 if markupsNode.GetNthControlPointPositionStatus(i) == markupsNode.PositionDefined)
    seed_ras = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, seed_ras)
    return np.array(seed_ras, dtype=np.float64)


def volumeInputFile(volumeNode) -> str | None:
    """The file a volume node was loaded from (for provenance), or None for a volume made in the scene."""
    storage = volumeNode.GetStorageNode() if volumeNode is not None else None
    name = storage.GetFileName() if storage is not None else None
    return name or None


def setProvenance(modelNode, record: dict) -> None:
    """Store a provenance record as ``NUDF.*`` attributes of a node (replacing any earlier record)."""
    for name in list(modelNode.GetAttributeNames() or ()):
        if name.startswith(ATTRIBUTE_PREFIX):
            modelNode.RemoveAttribute(name)
    for name, value in to_attributes(record).items():
        modelNode.SetAttribute(name, value)


def getProvenance(modelNode) -> dict:
    """The provenance record stored on a node by :func:`setProvenance` (empty when there is none)."""
    from NUDFCore.provenance import from_attributes

    return from_attributes({n: modelNode.GetAttribute(n) for n in (modelNode.GetAttributeNames() or ())})


def cropFromRoiNode(roiNode) -> tuple[np.ndarray, float]:
    """Crop centre (LPS) and edge length (mm, the ROI's largest side) from a markups ROI."""
    if roiNode is None:
        raise InputError("No ROI given.")
    center_ras = [0.0, 0.0, 0.0]
    roiNode.GetCenterWorld(center_ras)
    size = [0.0, 0.0, 0.0]
    roiNode.GetSizeWorld(size)
    edge = float(max(size))
    if edge <= 0:
        raise InputError(f"The ROI {roiNode.GetName()} has zero size.")
    return ras_to_lps(np.array(center_ras)), edge


def meshLpsFromModelNode(modelNode) -> vtk.vtkPolyData:
    """The model's polydata mapped from the scene's RAS to LPS (a copy)."""
    if modelNode is None or modelNode.GetPolyData() is None or modelNode.GetPolyData().GetNumberOfPoints() == 0:
        raise MeshIOError("The model holds no mesh.")
    return transform_polydata_frame(modelNode.GetPolyData(), "ras", "lps")


def ensureDisplayNode(modelNode):
    """Give a model a display suited to an open LAA surface: both sides lit, slice intersections on."""
    display = modelNode.GetDisplayNode()
    if display is None:
        modelNode.CreateDefaultDisplayNodes()
        display = modelNode.GetDisplayNode()
    display.SetColor(*LAA_COLOR)
    display.SetOpacity(LAA_OPACITY)
    display.SetBackfaceCulling(False)  # an open surface is seen from both sides
    display.SetVisibility(True)
    display.SetVisibility2D(True)  # slice intersections
    display.SetSliceIntersectionThickness(2)
    return display


def confidenceColorNode(scene):
    """The scene's confidence colour node (:data:`CONFIDENCE_COLORS`), added on first use."""
    node = scene.GetSingletonNode(CONFIDENCE_COLOR_SINGLETON_TAG, "vtkMRMLProceduralColorNode")
    if node is not None:
        return node
    import slicer

    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(CONFIDENCE_COLOR_NODE_NAME)
    node.SetSingletonTag(CONFIDENCE_COLOR_SINGLETON_TAG)
    node.SetAttribute("Category", "NUDF Segmentation")  # how the Colors module groups colour nodes
    node.SetDescription("Per-vertex confidence of an NUDF LAA surface: 0 red (unsure), 0.5 yellow, 1 green (sure).")
    ctf = node.GetColorTransferFunction()
    ctf.RemoveAllPoints()
    for value, rgb in CONFIDENCE_COLORS:
        ctf.AddRGBPoint(value, *rgb)
    return scene.AddNode(node)


def hasConfidence(modelNode) -> bool:
    """Whether a model's mesh carries the engine's per-vertex ``confidence`` array."""
    poly = modelNode.GetPolyData() if modelNode is not None else None
    return poly is not None and poly.GetPointData().GetArray(CONFIDENCE_ARRAY) is not None


def confidenceLegend(modelNode, create: bool = False):
    """The colour legend of a model's display (None when there is none and ``create`` is False).

    ``vtkSlicerColorLogic``'s legend helpers are static and need only MRML, so this works headless on
    slicer-core too; a Slicer older than 5.0 has no colour legend, and then nothing is shown (None).
    """
    import slicer

    colorLogic = getattr(slicer, "vtkSlicerColorLogic", None)
    if colorLogic is None or not hasattr(colorLogic, "GetColorLegendDisplayNode"):
        return None
    legend = colorLogic.GetColorLegendDisplayNode(modelNode)
    if legend is None and create and modelNode.GetScene() is not None:
        legend = colorLogic.AddDefaultColorLegendDisplayNode(modelNode)
    return legend


def showConfidence(modelNode, enabled: bool = True) -> bool:
    """Colour a model by its ``confidence`` array (True), or show it in the plain LAA colour (False).

    Colouring needs the array: a mesh without it (an older engine, a loaded file) is shown plainly whatever
    ``enabled`` says. With it: active scalar ``confidence`` (point data), the :func:`confidenceColorNode` map
    over the fixed range 0-1, scalar visibility on and a colour legend titled "Confidence". Returns whether
    the model is now coloured by confidence.
    """
    display = modelNode.GetDisplayNode() or ensureDisplayNode(modelNode)
    scene = modelNode.GetScene()
    colored = bool(enabled and scene is not None and hasConfidence(modelNode))
    legend = confidenceLegend(modelNode, create=colored)
    if not colored:
        display.SetScalarVisibility(False)
        if legend is not None:
            legend.SetVisibility(False)
        return False
    wasModifying = display.StartModify()
    display.SetActiveScalar(CONFIDENCE_ARRAY, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(confidenceColorNode(scene).GetID())
    display.SetScalarRangeFlag(display.UseManualScalarRange)  # before the range: "auto" would overwrite it
    display.SetScalarRange(*CONFIDENCE_RANGE)
    display.SetScalarVisibility(True)
    display.EndModify(wasModifying)
    if legend is not None:
        legend.SetTitleText(CONFIDENCE_LEGEND_TITLE)
        legend.SetLabelFormat("%.1f")
        legend.SetVisibility(True)
    return True


def isShowingConfidence(modelNode) -> bool:
    """Whether a model is shown coloured by its confidence (the setup of :func:`showConfidence`)."""
    display = modelNode.GetDisplayNode() if modelNode is not None else None
    return bool(display is not None and display.GetScalarVisibility() and hasConfidence(modelNode)
                and display.GetActiveScalarName() == CONFIDENCE_ARRAY)


# ------------------------------------------------------------------------------------- quality report
def setQualityReport(modelNode, quality: dict | None) -> None:
    """Keep a result's warnings (and mean confidence, low-confidence share) on its model node as
    ``NUDFQuality.*`` attributes, replacing any earlier report (an empty/None ``quality`` clears it)."""
    for name in list(modelNode.GetAttributeNames() or ()):
        if name.startswith(QUALITY_ATTRIBUTE_PREFIX):
            modelNode.RemoveAttribute(name)
    if not quality:
        return
    modelNode.SetAttribute(QUALITY_ATTRIBUTE_PREFIX + "warnings", json.dumps(warningsInRAS(quality)))
    codes = quality.get("warning_codes")
    if codes is not None:
        modelNode.SetAttribute(QUALITY_ATTRIBUTE_PREFIX + "warning_codes", json.dumps([str(c) for c in codes]))
    for key in QUALITY_KEYS:
        value = quality.get(key)
        if value is not None and np.isfinite(float(value)):
            modelNode.SetAttribute(QUALITY_ATTRIBUTE_PREFIX + key, json.dumps(float(value)))


def warningsInRAS(quality: dict) -> list[str]:
    """The result's warnings with the points they name in RAS, the frame Slicer shows (the engine writes LPS)."""
    warnings = [str(w) for w in quality.get("warnings", [])]
    locations = quality.get("warning_locations_lps")
    if not isinstance(locations, list) or len(locations) != len(warnings):
        return warnings  # a report without locations (an older worker): leave the text as written
    return [message_in_frame(w, loc, "RAS") for w, loc in zip(warnings, locations)]


def getQualityReport(modelNode) -> dict:
    """The report stored by :func:`setQualityReport` (empty when there is none)."""
    out = {}
    for name in modelNode.GetAttributeNames() or ():
        if name.startswith(QUALITY_ATTRIBUTE_PREFIX):
            try:
                out[name[len(QUALITY_ATTRIBUTE_PREFIX):]] = json.loads(modelNode.GetAttribute(name))
            except (TypeError, ValueError):
                pass  # an edited attribute: ignore, never fail a delivery over it
    return out


def getQualityWarnings(modelNode) -> list[str]:
    """The plain-language warnings of the result a model holds (empty when none or unknown)."""
    warnings = getQualityReport(modelNode).get("warnings") if modelNode is not None else None
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


def warningsText(warnings) -> str:
    """The warnings for a status line: ``1 warning: …`` / ``2 warnings: (1) …; (2) …`` (empty when none)."""
    warnings = [str(w).strip() for w in warnings or () if str(w).strip()]
    if not warnings:
        return ""
    if len(warnings) == 1:
        return f"1 warning: {warnings[0]}"
    return f"{len(warnings)} warnings: " + " ".join(f"({i}) {w}" for i, w in enumerate(warnings, 1))


def withWarnings(message: str, warnings) -> str:
    """``message`` followed by :func:`warningsText` (``"Done: … — 1 warning: …"``)."""
    text = warningsText(warnings)
    return f"{message} — {text}" if text else message


def updateModelNode(scene, mesh_lps: vtk.vtkPolyData, outputModelNode=None, name: str = "LAA",
                    colorByConfidence: bool = True):
    """Put an LPS mesh into a (new or given) model node, in RAS, with the LAA display.

    The mesh's point arrays (``distance_mm``, ``confidence``) come along; the model is coloured by confidence
    when ``colorByConfidence`` and the mesh has it (:func:`showConfidence`). An earlier run's quality report
    on the node is cleared: it described another mesh.
    """
    if scene is None:
        raise InputError("A MRML scene is needed to hold the output model.")
    mesh_ras = transform_polydata_frame(mesh_lps, "lps", "ras")
    if outputModelNode is None:
        outputModelNode = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(name))
    elif not outputModelNode.IsA("vtkMRMLModelNode"):
        raise InputError(f"The output {outputModelNode.GetName()} is not a model node.")
    if outputModelNode.GetParentTransformNode() is not None:
        outputModelNode.SetAndObserveTransformNodeID(None)  # the mesh is in world coordinates
    outputModelNode.SetAndObservePolyData(mesh_ras)
    ensureDisplayNode(outputModelNode)
    showConfidence(outputModelNode, colorByConfidence)
    setQualityReport(outputModelNode, None)
    return outputModelNode


def exportModelToFile(modelNode, path: str | os.PathLike, frame: str = "lps", overwrite: bool = False) -> Path:
    """Write a model to STL/OBJ/PLY/VTK/VTP with Slicer's storage node, LPS by default (as Slicer).

    The file is tagged with its frame (``SPACE=LPS``/``SPACE=RAS``) and appears only once fully written.
    """
    import slicer

    frame = check_frame(frame)
    p = Path(path)
    if modelNode is None or modelNode.GetPolyData() is None or modelNode.GetPolyData().GetNumberOfPoints() == 0:
        raise MeshIOError("Nothing to export: the model holds no mesh.")
    ext = next((e for e in EXPORT_EXTENSIONS if p.name.lower().endswith(e)), None)
    if ext is None:
        raise InputError(f"Unsupported mesh file type {p.name!r}: use one of {', '.join(EXPORT_EXTENSIONS)}.")
    if not p.parent.is_dir():
        raise InputError(f"The folder {p.parent} does not exist.")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; choose another name or allow overwriting.")
    storage = slicer.vtkMRMLModelStorageNode()  # not added to the scene: export must not change it
    storage.SetCoordinateSystem(
        slicer.vtkMRMLStorageNode.CoordinateSystemRAS if frame == "ras" else slicer.vtkMRMLStorageNode.CoordinateSystemLPS
    )
    with atomic_output(p, suffix=ext) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(modelNode) or tmp.stat().st_size == 0:
            raise MeshIOError(f"Slicer could not write {p}.")
    return p


def loadModelFile(scene, path: str | os.PathLike, outputModelNode=None, name: str = "LAA",
                  colorByConfidence: bool = True):
    """Read a mesh file into a (new or given) model node with Slicer's storage node (honours SPACE tags).

    Point arrays in the file (a VTP/VTK from the engine: ``distance_mm``, ``confidence``) are kept."""
    import slicer

    p = Path(path)
    if not p.is_file():
        raise MeshIOError(f"No such mesh file: {p}")
    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(p))
    tmpNode = slicer.vtkMRMLModelNode()
    if not storage.ReadData(tmpNode) or tmpNode.GetPolyData() is None or tmpNode.GetPolyData().GetNumberOfPoints() == 0:
        raise MeshIOError(f"Slicer could not read a mesh from {p}.")
    mesh_lps = transform_polydata_frame(tmpNode.GetPolyData(), "ras", "lps")
    return updateModelNode(scene, mesh_lps, outputModelNode, name, colorByConfidence)


class SegmentationLogic:
    """Run the NUDF engine on MRML nodes, in-process (scripts, tests) — see RunController for the GUI's runs.

    ``segmentFunction`` replaces ``NUDFCore.infer.segment`` (same signature): the self-test uses a stub
    engine where PyTorch is not installed. Example (Slicer Python console)::

        from NUDFSegmentationLib import SegmentationLogic
        model, result = SegmentationLogic().segmentVolumeNode(getNode("CT"), getNode("F"))
    """

    #: Colour new models by their per-vertex confidence (the ``colorByConfidence`` parameter in the GUI).
    colorByConfidence = True

    def __init__(self, scene=None, segmentFunction=None) -> None:
        if scene is None:
            import slicer

            scene = getattr(slicer, "mrmlScene", None)
        self.scene = scene
        self.segmentFunction = segmentFunction

    volumeFromNode = staticmethod(volumeFromNode)
    seedFromNode = staticmethod(seedFromNode)
    cropFromRoiNode = staticmethod(cropFromRoiNode)
    meshLpsFromModelNode = staticmethod(meshLpsFromModelNode)
    ensureDisplayNode = staticmethod(ensureDisplayNode)
    exportModelToFile = staticmethod(exportModelToFile)
    inputProblems = staticmethod(inputProblems)
    getProvenance = staticmethod(getProvenance)
    showConfidence = staticmethod(showConfidence)
    getQualityWarnings = staticmethod(getQualityWarnings)

    def applyDisplayParameters(self, params) -> None:
        """Show the parameters' output model as they say (colour by confidence or not), without a new run."""
        model = params.getNode("OutputModel")
        if model is not None and model.GetPolyData() is not None:
            showConfidence(model, params.get("colorByConfidence"))

    def seedRas(self, seed: Any) -> np.ndarray:
        """Accept a markups node or an RAS triple."""
        if seed is not None and hasattr(seed, "GetNumberOfControlPoints"):
            return seedFromNode(seed)
        arr = np.asarray(seed, dtype=np.float64).reshape(-1)
        if arr.shape != (3,) or not np.all(np.isfinite(arr)):
            raise InputError(f"The seed must be a markups node or 3 finite RAS coordinates; got {seed!r}.")
        return arr

    def makeOptions(self, options=None, roiNode=None, **kwargs):
        """A ``SegmentOptions`` from an existing one or keyword arguments, with an optional ROI crop."""
        from NUDFCore.infer import SegmentOptions

        if options is None:
            options = SegmentOptions(**kwargs)
        if roiNode is not None:
            options.crop_center_lps, options.crop_size_mm = cropFromRoiNode(roiNode)
        return options

    def segmentVolumeNode(self, volumeNode, seed, outputModelNode=None, options=None, model=None, roiNode=None,
                          colorByConfidence: bool | None = None):
        """Segment the LAA around ``seed`` and write the open mesh into a model node (RAS).

        Returns ``(modelNode, SegmentationResult)``; the result's ``mesh_lps`` is the engine's own mesh and
        ``result.warnings`` its plain-language doubts. The node carries the mesh's ``distance_mm`` and
        ``confidence`` point arrays, is coloured by confidence (``colorByConfidence``, default
        :attr:`colorByConfidence`), and holds the run's provenance as ``NUDF.*`` attributes (see
        ``NUDFCore.provenance``) and its warnings as ``NUDFQuality.*`` ones (:func:`getQualityWarnings`).
        """
        if self.segmentFunction is None:
            from NUDFCore.infer import segment
        else:
            segment = self.segmentFunction

        scene = self.scene if self.scene is not None else (volumeNode.GetScene() if volumeNode else None)
        ct = volumeFromNode(volumeNode)
        seed_ras = self.seedRas(seed)
        opts = self.makeOptions(options, roiNode)
        result = segment(ct, seed_ras=seed_ras, model=model, options=opts)
        seed_lps = result.seed_lps if result.seed_lps is not None else ras_to_lps(seed_ras)
        record = segmentation_provenance(seed_lps=seed_lps, options=opts, model=model,
                                         input_file=volumeInputFile(volumeNode))
        if colorByConfidence is None:
            colorByConfidence = self.colorByConfidence
        modelNode = updateModelNode(scene, result.mesh_lps, outputModelNode, f"{volumeNode.GetName()} LAA",
                                    colorByConfidence)
        setProvenance(modelNode, record)
        setQualityReport(modelNode, result.quality)
        return modelNode, result


__all__ = [
    "CONFIDENCE_ARRAY",
    "DISTANCE_ARRAY",
    "SegmentationLogic",
    "confidenceColorNode",
    "confidenceLegend",
    "cropFromRoiNode",
    "ensureDisplayNode",
    "exportModelToFile",
    "getProvenance",
    "getQualityReport",
    "getQualityWarnings",
    "hasConfidence",
    "inputProblems",
    "isShowingConfidence",
    "loadModelFile",
    "meshLpsFromModelNode",
    "seedFromNode",
    "seedProblem",
    "setProvenance",
    "setQualityReport",
    "showConfidence",
    "updateModelNode",
    "volumeFromNode",
    "volumeInputFile",
    "volumeProblem",
    "warningsText",
    "withWarnings",
]
