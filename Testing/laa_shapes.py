"""Analytic open "LAA" surfaces with known measurements (test helpers for test_measure / test_slicer_measure).

Each shape is a tube swept from an open rim (the ostium, in the plane z = 0, the LAA towards +z) to a closed
tip, built ring by ring at a chosen resolution (``n_around`` vertices per ring, rings about as far apart as
the vertices on a ring). :func:`place` moves a shape by a random rigid motion.
"""
from __future__ import annotations

import math

import numpy as np
import vtk
from scipy.spatial.transform import Rotation

from NUDFCore.io import make_polydata


def tube_from_rings(rings: list[np.ndarray], tip: np.ndarray) -> vtk.vtkPolyData:
    """Triangles between consecutive closed rings (same vertex count), the last ring fanned to ``tip``;
    the first ring stays open. Winding: normals point out of the tube for rings running counter-clockwise
    about the sweep direction."""
    m = len(rings[0])
    pts = np.vstack(rings + [np.asarray(tip, float)[None]])
    tris = []
    j = np.arange(m)
    k = (j + 1) % m
    for r in range(len(rings) - 1):
        a, b = r * m + j, (r + 1) * m + j
        c, d = r * m + k, (r + 1) * m + k
        tris.append(np.column_stack([a, c, d]))
        tris.append(np.column_stack([a, d, b]))
    last = (len(rings) - 1) * m
    tris.append(np.column_stack([last + j, last + k, np.full(m, len(pts) - 1)]))
    return make_polydata(pts, np.vstack(tris))


def _theta(n: int) -> np.ndarray:
    return np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ramanujan's (first) approximation of an ellipse's perimeter."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def elliptic_tube(a: float, b: float, length: float, cap: float, n_around: int) -> vtk.vtkPolyData:
    """Elliptic cylinder (semi-axes a, b) from z = 0 to ``length``, closed by a half ellipsoid of height ``cap``.

    Depth = length + cap; volume = πab·length + (2/3)πab·cap.
    """
    th = _theta(n_around)
    step = ramanujan_perimeter(a, b) / n_around
    rings = [np.column_stack([a * np.cos(th), b * np.sin(th), np.full(n_around, z)])
             for z in np.linspace(0.0, length, max(2, int(round(length / step)) + 1))]
    n_cap = max(3, int(round(0.5 * math.pi * max(a, b, cap) / step)))
    for phi in np.linspace(0.0, 0.5 * np.pi, n_cap + 1)[1:-1]:
        rings.append(np.column_stack([a * np.cos(phi) * np.cos(th), b * np.cos(phi) * np.sin(th),
                                      np.full(n_around, length + cap * np.sin(phi))]))
    return tube_from_rings(rings, [0.0, 0.0, length + cap])


def saddle_tube(radius: float, amplitude: float, height: float, n_around: int) -> vtk.vtkPolyData:
    """A circular tube whose open rim is the saddle z = amplitude·cos 2θ, closed by a flat end at ``height``."""
    th = _theta(n_around)
    step = 2 * math.pi * radius / n_around
    rings = []
    for t in np.linspace(0.0, 1.0, max(2, int(round(height / step)) + 1)):
        z = amplitude * np.cos(2 * th) * (1 - t) + height * t
        rings.append(np.column_stack([radius * np.cos(th), radius * np.sin(th), z]))
    for s in np.linspace(1.0, 0.0, max(2, int(round(radius / step)) + 1))[1:-1]:
        rings.append(np.column_stack([s * radius * np.cos(th), s * radius * np.sin(th), np.full(n_around, height)]))
    return tube_from_rings(rings, [0.0, 0.0, height])


def cone_frustum(r0: float, r1: float, length: float, n_around: int) -> vtk.vtkPolyData:
    """A circular cone frustum, radius r0 at the ostium (z = 0) to r1 at z = ``length``, flat closed end.

    The cross-section at depth d has the diameter 2·(r0 + (r1 − r0)·d/length).
    """
    th = _theta(n_around)
    step = 2 * math.pi * max(r0, r1) / n_around
    rings = []
    for z in np.linspace(0.0, length, max(2, int(round(length / step)) + 1)):
        r = r0 + (r1 - r0) * z / length
        rings.append(np.column_stack([r * np.cos(th), r * np.sin(th), np.full(n_around, z)]))
    for s in np.linspace(1.0, 0.0, max(2, int(round(r1 / step)) + 1))[1:-1]:
        rings.append(np.column_stack([s * r1 * np.cos(th), s * r1 * np.sin(th), np.full(n_around, length)]))
    return tube_from_rings(rings, [0.0, 0.0, length])


def torus_segment(bend_radius: float, tube_radius: float, angle_rad: float, n_around: int) -> vtk.vtkPolyData:
    """A tube of radius r swept along a circular arc (radius R, angle φ) from the ostium, closed by a
    hemisphere centred on the arc's end.

    The arc starts at the origin heading +z and bends towards +x (centre of curvature (R, 0, 0)). The medial
    axis is the arc (length Rφ) followed by the hemisphere's radius to the apex; the bend angle is φ.
    """
    big, r = bend_radius, tube_radius
    th = _theta(n_around)
    step = 2 * math.pi * r / n_around

    def frame(alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = np.array([big * (1 - math.cos(alpha)), 0.0, big * math.sin(alpha)])
        tangent = np.array([math.sin(alpha), 0.0, math.cos(alpha)])
        outward = np.array([-math.cos(alpha), 0.0, math.sin(alpha)])  # away from the centre of curvature
        return centre, tangent, outward

    side = np.array([0.0, 1.0, 0.0])
    rings = []
    for alpha in np.linspace(0.0, angle_rad, max(2, int(round(big * angle_rad / step)) + 1)):
        c, _, o = frame(alpha)
        rings.append(c + r * (np.cos(th)[:, None] * o + np.sin(th)[:, None] * side))
    c, t, o = frame(angle_rad)
    n_cap = max(3, int(round(0.5 * math.pi * r / step)))
    for psi in np.linspace(0.0, 0.5 * np.pi, n_cap + 1)[1:-1]:
        rings.append(c + r * math.cos(psi) * (np.cos(th)[:, None] * o + np.sin(th)[:, None] * side)
                     + r * math.sin(psi) * t)
    return tube_from_rings(rings, c + r * t)


def torus_arc_end(bend_radius: float, angle_rad: float) -> np.ndarray:
    """The end of the torus segment's arc (the centre of its tip hemisphere), before :func:`place`."""
    return np.array([bend_radius * (1 - math.cos(angle_rad)), 0.0, bend_radius * math.sin(angle_rad)])


def random_motion(seed: int, max_shift_mm: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """A random rotation matrix and translation (mm), from ``seed``."""
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=rng).as_matrix()
    return rot, rng.uniform(-max_shift_mm, max_shift_mm, 3)


def place(mesh: vtk.vtkPolyData, rot: np.ndarray, shift: np.ndarray) -> vtk.vtkPolyData:
    """The mesh moved rigidly: p → rot·p + shift."""
    from NUDFCore.io import polydata_points, polydata_triangles

    return make_polydata(polydata_points(mesh) @ rot.T + shift, polydata_triangles(mesh))
