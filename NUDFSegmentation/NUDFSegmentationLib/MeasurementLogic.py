"""Qt-free LAA occlusion planning measurements in the scene (the panel's *Measurements* section).

For an LAA model node, :class:`MeasurementLogic` runs ``NUDFCore.measure`` and shows its result as MRML nodes:

- a ``vtkMRMLTableNode`` (Measurement | Value | Unit), saved with the scene;
- the ostium and landing-zone contours as locked ``vtkMRMLMarkupsClosedCurveNode`` s, the centreline as a
  locked ``vtkMRMLMarkupsCurveNode``;
- a ``vtkMRMLMarkupsPlaneNode`` on the fitted ostium. Moving it re-cuts the surface at the plane (the LAA side is
  kept) and updates every node; a plane outside the segmented surface puts the reason in the table instead.

The nodes hang off the model node by node references (roles ``ROLES``), so they are found again after a scene
reload. Markups and models are RAS in the scene; the engine works in LPS (``NUDFCore.frames`` converts).
Everything here runs inside Slicer and headless on ``slicer-core``.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import vtk

from NUDFCore.errors import InputError, NUDFError
from NUDFCore.frames import lps_to_ras, ras_to_lps
from NUDFCore.measure import DEFAULT_LANDING_DEPTHS_MM, LAAMeasurements, measure_laa, write_csv
from NUDFCore.io import check_output_path

from .SegmentationLogic import meshLpsFromModelNode

#: Node-reference roles on the model node.
TABLE_ROLE = "NUDFMeasurementTable"
PLANE_ROLE = "NUDFOstiumPlane"
OSTIUM_ROLE = "NUDFOstiumContour"
LANDING_ROLE = "NUDFLandingZoneContour"  # one reference per landing depth, in order
CENTERLINE_ROLE = "NUDFCenterline"
ROLES = (TABLE_ROLE, PLANE_ROLE, OSTIUM_ROLE, LANDING_ROLE, CENTERLINE_ROLE)
#: Table node attribute holding the measurements' JSON document (export after a scene reload).
JSON_ATTRIBUTE = "NUDF.measurements"
EXPORT_EXTENSIONS = (".json", ".csv")

OSTIUM_COLOR = (1.0, 0.85, 0.1)
LANDING_COLORS = ((0.1, 0.85, 1.0), (0.35, 0.45, 1.0), (0.8, 0.4, 1.0))
CENTERLINE_COLOR = (0.35, 1.0, 0.35)
PLANE_COLOR = (1.0, 0.6, 0.2)
CURVE_POINTS = 48  # control points per contour curve
CENTERLINE_SPACING_MM = 2.0

#: Callback after each update: (model node, measurements or None, error message or None).
UpdateCallback = Callable[[object, "LAAMeasurements | None", "str | None"], None]


def _vtkPoints(points_ras: np.ndarray) -> vtk.vtkPoints:
    pts = vtk.vtkPoints()
    for p in np.asarray(points_ras, dtype=np.float64).reshape(-1, 3):
        pts.InsertNextPoint(*p)
    return pts


def _evenly(points: np.ndarray, n: int, closed: bool) -> np.ndarray:
    """At most ``n`` points evenly spaced along a polyline (its own vertices when fewer)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) <= n:
        return p
    q = np.vstack([p, p[:1]]) if closed else p
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
    t = np.linspace(0.0, s[-1], n, endpoint=not closed)
    return np.column_stack([np.interp(t, s, q[:, k]) for k in range(3)])


class MeasurementLogic:
    """Measure LAA model nodes into MRML nodes; observe each model's ostium plane.

    Example (Slicer Python console)::

        from NUDFSegmentationLib.MeasurementLogic import MeasurementLogic
        logic = MeasurementLogic()
        m = logic.measureModel(getNode("CT LAA"))       # table, contours, centreline, plane
        logic.observeOstiumPlane(getNode("CT LAA"))     # moving the plane now re-measures
        logic.exportMeasurements(getNode("CT LAA"), "/tmp/laa_measurements.json")
    """

    def __init__(self, scene=None, landingDepthsMm=DEFAULT_LANDING_DEPTHS_MM, onUpdate: UpdateCallback | None = None):
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene
        self.landingDepthsMm = [float(d) for d in landingDepthsMm]
        self.onUpdate = onUpdate
        self.lastError: str | None = None
        self._results: dict[str, LAAMeasurements] = {}
        self._observations: list[tuple[object, int]] = []
        self._blocked = 0
        self._dragging = False

    # ------------------------------------------------------------------------------------- public
    def measureModel(self, modelNode, usePlane: bool = False) -> LAAMeasurements:
        """Measure the model's surface and update its table, curves and plane.

        ``usePlane`` re-cuts the surface at the model's ostium plane node; otherwise the surface's own boundary
        is the ostium and the plane is (re)placed on the fitted ostium. Raises ``NUDFError`` for unusable input
        (the table then shows the reason).
        """
        if modelNode is None or not modelNode.IsA("vtkMRMLModelNode"):
            raise InputError("Select the LAA model to measure.")
        plane = self.planeNode(modelNode) if usePlane else None
        if usePlane and plane is None:
            raise InputError(f"{modelNode.GetName()} has no ostium plane yet; measure it once first.")
        try:
            mesh_lps = meshLpsFromModelNode(modelNode)
            cut = None
            if plane is not None:
                origin, normal = [0.0] * 3, [0.0] * 3
                plane.GetOriginWorld(origin)
                plane.GetNormalWorld(normal)
                cut = (ras_to_lps(np.array(origin)), ras_to_lps(np.array(normal)))
            m = measure_laa(mesh_lps, ostium_plane_lps=cut, landing_depths_mm=self.landingDepthsMm)
        except NUDFError as exc:
            self.lastError = str(exc)
            self._showError(modelNode, self.lastError)
            self._notify(modelNode, None, self.lastError)
            raise
        self.lastError = None
        self._results[modelNode.GetID()] = m
        with self._blockedPlane():
            self._updateNodes(modelNode, m, placePlane=plane is None)
        self._notify(modelNode, m, None)
        return m

    def resetOstium(self, modelNode) -> LAAMeasurements:
        """Back to the surface's own ostium: measure from its boundary and put the plane on the fitted ostium."""
        return self.measureModel(modelNode, usePlane=False)

    def measurements(self, modelNode) -> LAAMeasurements | None:
        """The latest measurements of a model (None before the first, or after a failed re-cut)."""
        return self._results.get(modelNode.GetID()) if modelNode is not None else None

    def observeOstiumPlane(self, modelNode) -> None:
        """Re-measure whenever the model's ostium plane moves (once per drag, at its end)."""
        import slicer

        plane = self.planeNode(modelNode)
        if plane is None:
            raise InputError(f"{modelNode.GetName()} has no ostium plane yet; measure it once first.")
        self.removeObservers()
        events = {
            slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent: self._onDragStart,
            slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent: lambda caller, event: self._onPlaneMoved(modelNode, True),
            slicer.vtkMRMLMarkupsNode.PointModifiedEvent: lambda caller, event: self._onPlaneMoved(modelNode, False),
        }
        for event, callback in events.items():
            self._observations.append((plane, plane.AddObserver(event, callback)))

    def removeObservers(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    @contextlib.contextmanager
    def movingPlane(self, modelNode) -> Iterator[None]:
        """Move the plane in several steps (origin, then normal) and re-measure once, at the end."""
        with self._blockedPlane():
            yield
        self._onPlaneMoved(modelNode, True)

    def exportMeasurements(self, modelNode, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the latest measurements as JSON (every figure, LPS coordinates) or CSV (one row), by extension."""
        p = check_output_path(path, EXPORT_EXTENSIONS, overwrite=overwrite)
        m = self.measurements(modelNode)
        if m is None:
            table = self.tableNode(modelNode) if modelNode is not None else None
            plane = self.planeNode(modelNode) if modelNode is not None else None
            if table is None:
                raise InputError("Nothing to export: measure the LAA model first.")
            # after a scene reload: measure again, at the saved plane when the saved table came from one
            m = self.measureModel(modelNode, usePlane=plane is not None
                                  and table.GetAttribute("NUDF.ostiumSource") == "plane")
        if p.name.lower().endswith(".csv"):
            return write_csv([(modelNode.GetName(), m)], p, overwrite=overwrite)
        m.to_json(p, overwrite=overwrite)
        return p

    # ---------------------------------------------------------------------------------- node access
    def tableNode(self, modelNode):
        return modelNode.GetNodeReference(TABLE_ROLE)

    def planeNode(self, modelNode):
        return modelNode.GetNodeReference(PLANE_ROLE)

    def ostiumCurveNode(self, modelNode):
        return modelNode.GetNodeReference(OSTIUM_ROLE)

    def centerlineNode(self, modelNode):
        return modelNode.GetNodeReference(CENTERLINE_ROLE)

    def landingZoneNodes(self, modelNode) -> list:
        return [modelNode.GetNthNodeReference(LANDING_ROLE, i)
                for i in range(modelNode.GetNumberOfNodeReferences(LANDING_ROLE))]

    # ----------------------------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _blockedPlane(self) -> Iterator[None]:
        self._blocked += 1
        try:
            yield
        finally:
            self._blocked -= 1

    def _onDragStart(self, caller, event) -> None:
        self._dragging = True

    def _onPlaneMoved(self, modelNode, final: bool) -> None:
        if self._blocked or (self._dragging and not final):
            return
        self._dragging = False
        with contextlib.suppress(NUDFError):  # the reason is in the table and in lastError
            self.measureModel(modelNode, usePlane=True)

    def _notify(self, modelNode, m, error) -> None:
        if self.onUpdate is not None:
            self.onUpdate(modelNode, m, error)

    def _node(self, modelNode, role: str, className: str, name: str, index: int = 0):
        """The model's node for ``role`` (the ``index``-th), created and referenced when missing."""
        node = modelNode.GetNthNodeReference(role, index)
        if node is None:
            node = self.scene.AddNewNodeByClass(className, self.scene.GenerateUniqueName(name))
            modelNode.SetNthNodeReferenceID(role, index, node.GetID())
        return node

    def _updateNodes(self, modelNode, m: LAAMeasurements, placePlane: bool) -> None:
        name = modelNode.GetName()
        self._fillTable(self._node(modelNode, TABLE_ROLE, "vtkMRMLTableNode", f"{name} measurements"), m)
        self._setCurve(self._node(modelNode, OSTIUM_ROLE, "vtkMRMLMarkupsClosedCurveNode", f"{name} ostium"),
                       m.ostium.contour_lps, OSTIUM_COLOR, closed=True)
        for i, (depth, zone) in enumerate(zip(m.landing_depths_mm, m.landing_zones)):
            node = self._node(modelNode, LANDING_ROLE, "vtkMRMLMarkupsClosedCurveNode",
                              f"{name} landing zone {depth:g} mm", i)
            self._setCurve(node, None if zone is None else zone.contour_lps, LANDING_COLORS[i % len(LANDING_COLORS)],
                           closed=True)
        line = _evenly(m.centerline_lps, max(2, int(m.centerline_length_mm / CENTERLINE_SPACING_MM) + 1), closed=False)
        line = np.vstack([m.centerline_lps[:1], line[1:-1], m.centerline_lps[-1:]])
        self._setCurve(self._node(modelNode, CENTERLINE_ROLE, "vtkMRMLMarkupsCurveNode", f"{name} centreline"),
                       line, CENTERLINE_COLOR, closed=False)
        if placePlane:
            plane = self._node(modelNode, PLANE_ROLE, "vtkMRMLMarkupsPlaneNode", f"{name} ostium plane")
            if plane.GetDisplayNode() is None:
                plane.CreateDefaultDisplayNodes()
            plane.SetOriginWorld(*lps_to_ras(m.ostium.center_lps))
            plane.SetNormalWorld(*lps_to_ras(m.ostium.normal_lps))
            plane.SetSizeMode(plane.SizeModeAbsolute)
            side = 1.4 * m.ostium.max_diameter_mm
            plane.SetSize(side, side)
            plane.GetDisplayNode().SetSelectedColor(*PLANE_COLOR)
            plane.GetDisplayNode().SetColor(*PLANE_COLOR)

    def _setCurve(self, node, points_lps, color, closed: bool) -> None:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if points_lps is None or len(points_lps) < 2:
            node.RemoveAllControlPoints()
            display.SetVisibility(False)
            return
        pts = _evenly(points_lps, CURVE_POINTS, closed=True) if closed else np.asarray(points_lps)
        node.SetControlPointPositionsWorld(_vtkPoints(lps_to_ras(pts)))
        node.SetCurveTypeToLinear()  # the measured polygon itself, not a spline through it
        node.SetLocked(True)  # results, not handles: the ostium plane is what a user moves
        display.SetVisibility(True)
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(False)
        display.SetPropertiesLabelVisibility(False)
        display.SetGlyphScale(1.0)

    def _fillTable(self, table, m: LAAMeasurements) -> None:
        rows: list[tuple[str, float, str]] = list(m.summary_rows())
        center_ras = lps_to_ras(m.ostium.center_lps)
        rows += [(f"ostium centre {axis} (RAS)", float(v), "mm") for axis, v in zip("RAS", center_ras)]
        rows.append(("ostium from the " + ("surface boundary" if m.ostium_source == "boundary" else "ostium plane"),
                     float("nan"), ""))
        rows += [(f"warning: {w}", float("nan"), "") for w in m.warnings]
        self._writeRows(table, rows)
        table.SetAttribute(JSON_ATTRIBUTE, m.to_json())
        table.SetAttribute("NUDF.ostiumSource", m.ostium_source)

    def _showError(self, modelNode, message: str) -> None:
        """The reason in the table, stale contours hidden (the plane stays where the user put it)."""
        table = modelNode.GetNodeReference(TABLE_ROLE)
        if table is not None:
            self._writeRows(table, [(f"error: {message}", float("nan"), "")])
            table.RemoveAttribute(JSON_ATTRIBUTE)
        for node in [self.ostiumCurveNode(modelNode), self.centerlineNode(modelNode)] + self.landingZoneNodes(modelNode):
            if node is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(False)
        self._results.pop(modelNode.GetID(), None)

    @staticmethod
    def _writeRows(table, rows: list[tuple[str, float, str]]) -> None:
        names, values, units = vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray()
        names.SetName("Measurement")
        values.SetName("Value")
        units.SetName("Unit")
        for label, value, unit in rows:
            names.InsertNextValue(label)
            values.InsertNextValue(float(value) if math.isfinite(float(value)) else float("nan"))
            units.InsertNextValue(unit)
        wasModifying = table.StartModify()
        table.RemoveAllColumns()
        for column in (names, values, units):
            table.AddColumn(column)
        table.EndModify(wasModifying)


__all__ = ["MeasurementLogic", "ROLES"]
