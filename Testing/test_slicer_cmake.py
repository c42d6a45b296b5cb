"""The Slicer extension's CMake build, really configured and installed, and the installed tree really run.

PyPI's ``slicer-core-sdk`` cannot configure a scripted-module extension: it is the CMake SDK of Slicer Core's
C++ VTK modules (``find_package(Slicer)`` works, then fails on VTK's CMake package, which no wheel ships) and
it defines none of ``Slicer_USE_FILE``, ``slicerMacroBuildScriptedModule``, ``ctkMacroCompilePythonScript``,
``slicer_add_python_unittest`` or the extension packaging. So CMake runs the extension's own CMakeLists.txt
against ``Testing/slicer_cmake_stub`` (those variables and macros, with the file handling of Slicer's and
CTK's macros): every path the CMake files name must exist, and the install tree is checked and executed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slicer_test_support import MODULE_DIR, ROOT, read_record, run_isolated_nudf, selftest_case

STUB = ROOT / "Testing" / "slicer_cmake_stub"
#: Engine parts that are development tools: never installed into Slicer.
DEV_ONLY = ("phantom", "train", "sampling", "data", "report", "demo", "metrics", "batch", "prepare")
#: Imports inside run-time modules that only development paths execute (module -> packages, with why).
DEV_PATH_IMPORTS: dict[str, set[str]] = {}  # none today (meshing's table generator left with mc_table.py)


def _cmake() -> str | None:
    return shutil.which("cmake", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


def _have_compilers() -> bool:
    return bool((shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
                and (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")))


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    """Configure (BUILD_TESTING on) and install the extension; returns the build and install folders."""
    cmake = _cmake()
    assert cmake, "cmake not found: the test extra installs it (pip install -e '.[test]')"
    if not _have_compilers():
        pytest.skip("no C/C++ compiler: CMake's project() cannot enable the languages a Slicer extension build uses")
    base = tmp_path_factory.mktemp("cmake")
    b, prefix = base / "build", base / "install"
    configure = subprocess.run([cmake, "-S", str(ROOT), "-B", str(b), f"-DSlicer_DIR={STUB}", "-DBUILD_TESTING=ON"],
                               capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    install = subprocess.run([cmake, "--install", str(b), "--prefix", str(prefix)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    tree = next(prefix.glob("lib/Slicer-*/qt-scripted-modules"))
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    return {"build": b, "tree": tree, "files": files}


def test_configure_registers_the_self_test(build):
    tests = (build["build"] / "slicer_python_unittests.txt").read_text(encoding="utf-8").splitlines()
    assert tests == [f"py_NUDFSegmentation|{MODULE_DIR / 'NUDFSegmentation.py'}"]


def test_the_extension_installs_the_module_its_resources_and_only_the_runtime_engine(build):
    files = build["files"]
    lib = {f"NUDFSegmentationLib/{p.name}" for p in (MODULE_DIR / "NUDFSegmentationLib").glob("*.py")}
    assert lib | {"NUDFSegmentation.py"} <= files, "a Lib file on disk is not listed in the module's CMakeLists.txt"
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                 if p.is_file() and "Screenshots" not in p.parts}
    assert resources <= files
    engine = {f for f in files if f.startswith("NUDFCore/")}
    assert {"NUDFCore/models/nudf_laa.pt", "NUDFCore/models/MODEL_CARD.md", "NUDFCore/__main__.py"} <= engine
    leaked = sorted(f for f in engine if re.match(rf"NUDFCore/({'|'.join(DEV_ONLY)})(\.py|/)", f))
    assert not leaked, f"development code installed into the clinical extension: {leaked}"
    for f in files:  # installed copies are the sources, byte for byte
        src = (ROOT / f) if f.startswith("NUDFCore/") else (MODULE_DIR / f)
        assert hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256((build["tree"] / f).read_bytes()).digest(), f


def test_the_installed_engine_segments_with_its_bundled_model_and_imports_only_the_runtime_set(build, tmp_path):
    """``python -m NUDFCore segment`` (what the module's worker runs) from the install tree, without --model
    and with this checkout's engine hidden: it must succeed, find the model inside the tree, and need exactly
    the declared run-time packages: the engine modules it loads import exactly ``RUNTIME_REQUIREMENTS``,
    and nothing else gets loaded beyond what those packages load themselves."""
    from NUDFCore import CLI_REQUIREMENTS, RUNTIME_REQUIREMENTS
    from NUDFCore.provenance import model_sha256_prefix

    case = selftest_case()
    record = tmp_path / "modules.json"
    out = tmp_path / "laa.vtp"
    declared_modules = tuple(module for module, _, _ in RUNTIME_REQUIREMENTS)
    run = run_isolated_nudf(build["tree"], ["segment", str(case["ct"]), case["seed_arg"], "--out", str(out),
                                            "--resolution", "1.0", "--device", "cpu", "--progress-format", "json"],
                            cwd=tmp_path, record=record, preload=declared_modules)
    assert run.returncode == 0, run.stderr[-3000:]
    modules = read_record(record)
    assert Path(modules["nudfcore_file"]).is_relative_to(build["tree"])
    shipped = {f[:-3].replace("/", ".").removesuffix(".__init__") for f in build["files"]
               if f.startswith("NUDFCore/") and f.endswith(".py")}
    assert set(modules["nudfcore_modules"]) <= shipped
    sidecar = _read_json(out.with_suffix(".json"))
    assert sidecar["model_file"] == "nudf_laa.pt"
    assert sidecar["model_sha256"] == model_sha256_prefix(ROOT / "NUDFCore" / "models" / "nudf_laa.pt")

    imported = set()
    for name in modules["nudfcore_modules"]:
        path = build["tree"] / (name.replace(".", "/") + ".py")
        path = path if path.is_file() else path.with_suffix("") / "__init__.py"
        allowed = DEV_PATH_IMPORTS.get(name.split(".")[-1], set()) | (
            {m for m, _, _ in CLI_REQUIREMENTS} if name == "NUDFCore.cli" else set())
        imported |= _third_party_imports(path) - allowed
    assert imported == set(declared_modules), (
        f"the engine's run-time modules import {sorted(imported)}; NUDFCore.RUNTIME_REQUIREMENTS declares "
        f"{sorted(declared_modules)}")
    declared = {_norm(dist) for _, dist, _ in RUNTIME_REQUIREMENTS}
    extra = _distributions_of(sorted(set(modules["top_level"]) - set(modules["preloaded"]))) - {"nudfcore"}
    undeclared = extra - _requirement_closure(declared)
    assert not undeclared, f"segmentation loads packages that are not declared run-time requirements: {undeclared}"


def test_the_installed_module_logic_passes_its_self_test_headless(build, tmp_path):
    """The installed Lib finds the engine beside it and its self-test data inside the tree."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from NUDFSegmentationLib.SelfTest import TEST_DATA_DIR, checkLogicWithStubEngine, loadVolumeNode, makeScene;"
        "import NUDFCore; assert NUDFCore.__file__.startswith(sys.argv[1]), NUDFCore.__file__;"
        "assert str(TEST_DATA_DIR).startswith(sys.argv[1]) and (TEST_DATA_DIR / 'ct.nrrd').is_file();"
        "print(checkLogicWithStubEngine(makeScene(), loadVolumeNode, sys.argv[2]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code, str(build["tree"]), str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "refusals checked" in run.stdout


def test_every_path_the_cmake_files_name_exists():
    """Static companion of the configure test (runs without cmake): paths named in both CMakeLists.txt."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "NUDFSegmentation")
    named = set(re.findall(r"^\s+((?:NUDFSegmentation|Resources|NUDFCore)[\w./-]*\.\w+)\s*$", text, re.M))
    assert len(named) >= 20
    for rel in named:
        path = (ROOT / rel) if rel.startswith("NUDFCore/") else (MODULE_DIR / rel)
        assert path.is_file(), rel
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(NUDFSegmentation)" in top and (ROOT / "LICENSE").is_file()


# ------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-standard-library modules a source file imports (anywhere in it)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "NUDFCore"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions_of(top_level_modules: list[str]) -> set[str]:
    """Installed distributions providing these top-level modules (runtime-made modules have none)."""
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    return {_norm(d) for m in top_level_modules for d in owners.get(m, [])}


def _requirement_closure(names: set[str]) -> set[str]:
    """The distributions and everything they require, transitively (extras excluded; markers ignored,
    which can only widen the set)."""
    from importlib.metadata import PackageNotFoundError, distribution

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req.replace(" ", " "):
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
            if match:
                todo.append(_norm(match.group(1)))
    return seen
