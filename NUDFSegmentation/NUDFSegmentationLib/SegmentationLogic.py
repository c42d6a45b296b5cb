"""Qt-free bridge between MRML nodes and the NUDFCore engine.

Slicer keeps everything in RAS; the engine works in LPS. The conversions go through ``NUDFCore.frames``
/ ``NUDFCore.io`` only. Only MRML logics and storage nodes are used (no ``slicer.util.loadVolume``/
``saveNode``), so this runs inside Slicer and headless on ``slicer-core`` alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from NUDFCore.errors import InputError, MeshIOError, OutputExistsError
from NUDFCore.frames import check_frame, ras_to_lps
from NUDFCore.io import Volume, atomic_output, transform_polydata_frame

#: Appendage-like display: muted flesh red, slightly translucent so the CT shows through.
LAA_COLOR = (0.87, 0.42, 0.38)
LAA_OPACITY = 0.85
EXPORT_EXTENSIONS = (".stl", ".obj", ".ply", ".vtk", ".vtp")


def _arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _worldMatrix(node) -> np.ndarray:
    """4x4 node-to-world matrix; refuses non-linear parent transforms (the engine needs a plain grid)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"{node.GetName()} is under a non-linear transform; harden the transform first "
            "(Data module: right-click -> Harden transform)."
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _arrayFromVtkMatrix(m)


def volumeFromNode(volumeNode) -> Volume:
    """The engine's :class:`Volume` (LPS geometry) from a scalar volume node, parent transform applied."""
    if volumeNode is None:
        raise InputError("No input volume selected.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{volumeNode.GetName()} is not a scalar (CT) volume.")
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{volumeNode.GetName()} holds no voxels.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volumeNode.GetName()} has {image.GetNumberOfScalarComponents()} components; a CT is scalar.")
    dims = image.GetDimensions()  # (i, j, k)
    array_kji = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    ijkToRas = _worldMatrix(volumeNode) @ _arrayFromVtkMatrix(m)
    return Volume.from_ijk_to_ras(array_kji.copy(), ijkToRas)


def seedFromNode(markupsNode, index: int = 0) -> np.ndarray:
    """World RAS position (mm) of control point ``index`` of a markups node."""
    if markupsNode is None:
        raise InputError("No LAA seed point list selected.")
    n = markupsNode.GetNumberOfControlPoints()
    if n == 0:
        raise InputError("Place the LAA seed point first (inside the appendage).")
    if not 0 <= index < n:
        raise InputError(f"Seed index {index} out of range: {markupsNode.GetName()} has {n} point(s).")
    seed_ras = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, seed_ras)
    return np.array(seed_ras, dtype=np.float64)


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


def updateModelNode(scene, mesh_lps: vtk.vtkPolyData, outputModelNode=None, name: str = "LAA"):
    """Put an LPS mesh into a (new or given) model node, in RAS, with the LAA display."""
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


def loadModelFile(scene, path: str | os.PathLike, outputModelNode=None, name: str = "LAA"):
    """Read a mesh file into a (new or given) model node with Slicer's storage node (honours SPACE tags)."""
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
    return updateModelNode(scene, mesh_lps, outputModelNode, name)


class SegmentationLogic:
    """Run the NUDF engine on MRML nodes, in-process (scripts, tests) — see BackgroundSegmentation for the GUI.

    Example (Slicer Python console)::

        from NUDFSegmentationLib import SegmentationLogic
        model, result = SegmentationLogic().segmentVolumeNode(getNode("CT"), getNode("F"))
    """

    def __init__(self, scene=None) -> None:
        if scene is None:
            import slicer

            scene = getattr(slicer, "mrmlScene", None)
        self.scene = scene

    volumeFromNode = staticmethod(volumeFromNode)
    seedFromNode = staticmethod(seedFromNode)
    cropFromRoiNode = staticmethod(cropFromRoiNode)
    meshLpsFromModelNode = staticmethod(meshLpsFromModelNode)
    ensureDisplayNode = staticmethod(ensureDisplayNode)
    exportModelToFile = staticmethod(exportModelToFile)

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

    def segmentVolumeNode(self, volumeNode, seed, outputModelNode=None, options=None, model=None, roiNode=None):
        """Segment the LAA around ``seed`` and write the open mesh into a model node (RAS).

        Returns ``(modelNode, SegmentationResult)``; the result's ``mesh_lps`` is the engine's own mesh.
        """
        from NUDFCore.infer import segment

        scene = self.scene if self.scene is not None else (volumeNode.GetScene() if volumeNode else None)
        ct = volumeFromNode(volumeNode)
        seed_ras = self.seedRas(seed)
        opts = self.makeOptions(options, roiNode)
        result = segment(ct, seed_ras=seed_ras, model=model, options=opts)
        name = f"{volumeNode.GetName()} LAA"
        modelNode = updateModelNode(scene, result.mesh_lps, outputModelNode, name)
        return modelNode, result


__all__ = [
    "SegmentationLogic",
    "cropFromRoiNode",
    "ensureDisplayNode",
    "exportModelToFile",
    "loadModelFile",
    "meshLpsFromModelNode",
    "seedFromNode",
    "updateModelNode",
    "volumeFromNode",
]
