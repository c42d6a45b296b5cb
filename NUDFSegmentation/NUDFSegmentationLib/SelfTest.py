"""Helpers shared by the pytest files and the module's self-test: a scene with the logics Slicer would
have registered, volumes loaded the way Slicer loads them, and a phantom case on disk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def makeScene():
    """A fresh ``vtkMRMLScene`` with an application logic and colour logic (as the Slicer app sets up)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = slicer.vtkSlicerColorLogic()
    colorLogic.SetMRMLApplicationLogic(appLogic)
    colorLogic.SetMRMLScene(scene)
    appLogic.SetModuleLogic("Colors", colorLogic)
    markupsLogic = slicer.vtkSlicerMarkupsLogic()  # registers the markups storage node classes
    markupsLogic.SetMRMLApplicationLogic(appLogic)
    markupsLogic.SetMRMLScene(scene)
    scene._nudfKeepAlive = (appLogic, colorLogic, markupsLogic)  # the logics must outlive this function
    return scene


def loadVolumeNode(scene, path: str | Path, name: str = "CT"):
    """Load a CT file into a scalar volume node with Slicer's volumes logic (reader + storage node)."""
    import slicer

    volumesLogic = slicer.vtkSlicerVolumesLogic()
    volumesLogic.SetMRMLScene(scene)
    volumesLogic.SetMRMLApplicationLogic(scene._nudfKeepAlive[0])
    node = volumesLogic.AddArchetypeVolume(str(path), name, 0, None)
    if node is None:
        raise RuntimeError(f"Slicer could not load {path} as a volume.")
    return node


def addSeedNode(scene, seed_ras, name: str = "LAA seed"):
    """A markups point list holding one control point at ``seed_ras``."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(*[float(v) for v in np.asarray(seed_ras).reshape(3)])
    return node


def makePhantomCase(folder: str | Path, seed: int = 0) -> dict:
    """Write one compact synthetic case (ct.nii.gz, laa.vtp, meta.json) with the engine's phantom generator.

    Returns ``{"ct": Path, "laa": Path, "seed_ras": array, "seed_lps": array}``.
    """
    from NUDFCore import phantom

    caseDir = Path(phantom.write_case(phantom.generate_case(seed, size="compact"), Path(folder) / "case", overwrite=True))
    meta = json.loads((caseDir / "meta.json").read_text())
    return {
        "ct": caseDir / "ct.nii.gz",
        "laa": caseDir / "laa.vtp",
        "seed_ras": np.asarray(meta["seed_ras"], float),
        "seed_lps": np.asarray(meta["seed_lps"], float),
    }
