"""Helpers of the Slicer-tier and packaging tests (not a test file).

- :func:`require_slicer_core`: the MRML tier must not vanish. A missing ``slicer`` module, or PyPI's
  unrelated ``slicer`` package, is an error (the test module fails to import), never a skip.
- :func:`run_isolated_nudf`: run ``python -m NUDFCore ...`` from another copy of the engine (a wheel install,
  the installed Slicer extension) with this checkout's editable install switched off, and record which
  modules the run loaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "NUDFSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def require_slicer_core():
    """``import slicer``, checked to be Slicer's MRML (PyPI ``slicer-core``); raises ImportError otherwise."""
    try:
        import slicer
    except ImportError as exc:
        raise ImportError(
            "The Slicer test tier needs PyPI's slicer-core (pip install -e '.[test]'); `import slicer` failed: "
            f"{exc}"
        ) from exc
    for name in ("vtkMRMLScene", "vtkMRMLScalarVolumeNode", "vtkSlicerVolumesLogic", "vtkMRMLMarkupsFiducialNode"):
        if not hasattr(slicer, name):
            raise ImportError(
                f"`import slicer` found {getattr(slicer, '__file__', slicer)!r}, which lacks slicer.{name}: not "
                "Slicer's MRML (PyPI's unrelated `slicer` package?). Install slicer-core: pip install -e '.[test]'."
            )
    return slicer


def save_and_reload(scene, folder: Path, files: dict):
    """Save ``scene`` as Slicer's Save dialog does — each node of ``files`` (node -> file name) written into
    ``folder`` by its storage node (a default one where it has none), then the .mrml — and import it into a
    new scene, which is returned."""
    from NUDFSegmentationLib.SelfTest import makeScene

    scene.SetRootDirectory(str(folder))
    for node, name in files.items():
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(Path(folder) / name))
        assert node.GetStorageNode().WriteData(node), node.GetName()
    scene.SetURL(str(Path(folder) / "scene.mrml"))
    assert scene.Commit()
    reloaded = makeScene()
    reloaded.SetURL(str(Path(folder) / "scene.mrml"))
    assert reloaded.Import()
    return reloaded


#: Runs ``python -m NUDFCore <args>`` with editable installs disabled, then writes a JSON record of the
#: run's modules to $NUDF_MODULE_RECORD: NUDFCore's file, its submodules, the top-level modules loaded
#: by the run (minus those present at start-up), and those already loaded by importing the modules named in
#: $NUDF_PRELOAD first (what the engine's dependencies load by themselves, e.g. torch loads tqdm if present).
_RUNNER = r"""
import atexit, json, os, runpy, sys

def _editable(obj):
    return "__editable__" in (getattr(obj, "__module__", "") or "")

sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path_importer_cache.clear()
_startup = {m.split(".")[0] for m in sys.modules}
for _name in filter(None, os.environ.get("NUDF_PRELOAD", "").split(",")):
    __import__(_name)
_preloaded = {m.split(".")[0] for m in sys.modules} - _startup

def _record():
    import NUDFCore
    with open(os.environ["NUDF_MODULE_RECORD"], "w") as f:
        json.dump({"nudfcore_file": NUDFCore.__file__,
                   "nudfcore_modules": sorted(m for m in sys.modules if m == "NUDFCore" or m.startswith("NUDFCore.")),
                   "top_level": sorted({m.split(".")[0] for m in sys.modules} - _startup),
                   "preloaded": sorted(_preloaded)}, f)

atexit.register(_record)
sys.argv = ["nudf"] + sys.argv[1:]
runpy.run_module("NUDFCore", run_name="__main__")
"""


def run_isolated_nudf(pythonpath: Path, args: list[str], cwd: Path, record: Path, preload: tuple[str, ...] = (),
                      timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the engine found on ``pythonpath`` (not this checkout's) with ``args``; the module record goes to
    ``record``. ``$NUDF_MODEL`` is unset so the bundled model is used."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUDF_MODEL", "PYTHONPATH")}
    env.update(PYTHONPATH=str(pythonpath), NUDF_MODULE_RECORD=str(record), PYTHONNOUSERSITE="1",
               NUDF_PRELOAD=",".join(preload))
    return subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_record(record: Path) -> dict:
    return json.loads(Path(record).read_text(encoding="utf-8"))


def selftest_case() -> dict:
    """The module's shipped self-test case: paths and seed (LPS) as a ``--seed-lps=`` argument."""
    data = MODULE_DIR / "Resources" / "Testing"
    info = json.loads((data / "case.json").read_text(encoding="utf-8"))
    return {"ct": data / "ct.nrrd", "laa": data / "laa.vtp", "seed_lps": info["seed_lps"],
            "seed_arg": "--seed-lps=" + ",".join(f"{v:.6f}" for v in info["seed_lps"])}
