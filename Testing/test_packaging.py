"""Packaging of the engine: a wheel install segments with its bundled model (package data), the metadata
declares exactly the run-time requirements and the licence, and ``nudf segment`` writes its provenance
sidecar (the Slicer install tree is checked in test_slicer_cmake.py)."""
from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from slicer_test_support import ROOT, read_record, run_isolated_nudf, selftest_case

from NUDFCore import CLI_REQUIREMENTS, RUNTIME_REQUIREMENTS
from NUDFCore.provenance import FIELDS, model_sha256_prefix

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MODEL = ROOT / "NUDFCore" / "models" / "nudf_laa.pt"


def test_license_file_and_licence_metadata():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text, not a stub
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    # a PEP 639 licence expression needs setuptools >= 77: the build requirement must say so
    setuptools_req = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools_req == ["setuptools>=77"]


def test_base_dependencies_are_the_declared_runtime_set():
    """One declaration (NUDFCore.RUNTIME_REQUIREMENTS + CLI_REQUIREMENTS); phantoms/training in [dev]."""
    expected = [f"{dist}>={version}" for _, dist, version in RUNTIME_REQUIREMENTS + CLI_REQUIREMENTS]
    assert PYPROJECT["project"]["dependencies"] == expected
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "scikit-image>=0.21" in extras["dev"]
    assert not any(r.startswith("scikit-image") for r in PYPROJECT["project"]["dependencies"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the checkout gets no build/ or egg-info folders)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "NUDFCore", src / "NUDFCore", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(base / "dist"), str(src)], cwd=base, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (whl,) = (base / "dist").glob("*.whl")
    return whl


def test_the_wheel_holds_every_package_the_model_and_the_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(meta_name).decode())
        assert z.read("NUDFCore/models/nudf_laa.pt") == MODEL.read_bytes()
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "NUDFCore").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names, "a sub-package is missing from pyproject's packages"
    assert "NUDFCore/models/MODEL_CARD.md" in names
    assert any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names)
    assert meta["License-Expression"] == "Apache-2.0"
    requires = sorted(r for r in meta.get_all("Requires-Dist") if "extra ==" not in r)
    assert requires == sorted(f"{dist}>={version}" for _, dist, version in RUNTIME_REQUIREMENTS + CLI_REQUIREMENTS)


def test_a_wheel_install_segments_without_a_model_argument(wheel, tmp_path):
    """``pip install`` of the wheel (not editable; this checkout's engine hidden), then ``nudf segment`` without
    ``--model``: the bundled model is found as package data, the mesh and its provenance sidecar are written."""
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    case = selftest_case()
    out = tmp_path / "out" / "laa.stl"
    out.parent.mkdir()
    record = tmp_path / "modules.json"
    run = run_isolated_nudf(site, ["segment", str(case["ct"]), case["seed_arg"], "--out", str(out), "--resolution", "1.0",
                                   "--device", "cpu", "--progress-format", "none"], cwd=tmp_path, record=record)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(read_record(record)["nudfcore_file"]).is_relative_to(site)
    assert out.stat().st_size > 10_000 and run.stdout.startswith(f"Wrote {out}")
    sidecar = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert tuple(sidecar) == FIELDS
    assert sidecar["model_file"] == "nudf_laa.pt" and sidecar["model_sha256"] == model_sha256_prefix(MODEL)
    np.testing.assert_allclose(sidecar["seed_lps"], case["seed_lps"], atol=1e-5)
    np.testing.assert_allclose(sidecar["seed_ras"], np.array(case["seed_lps"]) * [-1, -1, 1], atol=1e-5)
    assert sidecar["resolution_mm"] == 1.0 and sidecar["options"]["device"] == "cpu"
    assert sidecar["input_file"] == str(case["ct"].resolve()) and sidecar["engine_version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sidecar["created_utc"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["laa.json", "laa.stl"]  # no temporary files left


def test_segment_refuses_an_existing_sidecar_before_the_work(tmp_path, capsys):
    """``x.json`` is an output like the mesh: without --force an existing one stops the run at once."""
    from NUDFCore.cli import main

    case = selftest_case()
    out = tmp_path / "laa.stl"
    out.with_suffix(".json").write_text("{}")
    rc = main(["segment", str(case["ct"]), case["seed_arg"], "--out", str(out), "--progress-format", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "laa.json" in err and "--force" in err
    assert not out.exists() and out.with_suffix(".json").read_text(encoding="utf-8") == "{}"
