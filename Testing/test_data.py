"""The dataset layout: listing cases, splitting them, and estimating ostium/seed for meta-less real data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from NUDFCore import data, io, meshtools, phantom
from NUDFCore.cli import main as cli_main
from NUDFCore.errors import InputError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    # a uniformly filled lumen (no trabeculae or mixing), so the meta-less seed test can check blood HU there
    assert cli_main(["phantom", "--out", str(root), "--count", "2", "--seed", "4", "--size", "compact",
                     "--exclude-style", "trabeculae", "--exclude-style", "mixing"]) == 0
    return root


def test_cli_wrote_cases_and_refuses_to_overwrite(dataset, capsys):
    assert sorted(p.name for p in dataset.iterdir()) == ["case_0000", "case_0001"]
    for d in dataset.iterdir():
        assert sorted(p.name for p in d.iterdir()) == sorted(phantom.CASE_FILES)
    assert json.loads((dataset / "case_0001" / "meta.json").read_text())["seed"] == 5
    rc = cli_main(["phantom", "--out", str(dataset), "--count", "1", "--seed", "4", "--size", "compact"])
    assert rc == 2
    assert "--force" in capsys.readouterr().err


def test_list_cases_finds_sorted_cases_with_meta(dataset):
    cases = data.list_cases(dataset)
    assert [c.name for c in cases] == ["case_0000", "case_0001"]
    c = cases[0]
    assert c.ct_path.name == "ct.nii.gz" and c.mesh_path.name == "laa.vtp"
    assert c.meta["seed"] == 4
    vol = c.load_volume()
    assert vol.array.dtype == np.int16 and list(vol.size_ijk) == c.meta["size_ijk"]
    mesh = c.load_mesh()
    assert len(meshtools.boundary_loops(mesh)) == 1
    np.testing.assert_allclose(c.seed_lps, c.meta["seed_lps"])
    np.testing.assert_allclose(c.ostium_center_lps, c.meta["ostium_center_lps"])


def test_meta_less_real_layout_fits_ostium_and_seed(dataset, tmp_path):
    """A real-data-like case: NRRD CT, STL mesh written in RAS, no meta.json."""
    src = data.list_cases(dataset)[1]
    case_dir = tmp_path / "real" / "patient_a"
    case_dir.mkdir(parents=True)
    io.write_volume(src.load_volume(), case_dir / "ct.nrrd")
    io.write_mesh(src.load_mesh(), case_dir / "laa.stl", frame="ras")
    (case, ) = data.list_cases(tmp_path / "real")
    assert case.meta == {} and case.ct_path.name == "ct.nrrd"
    mesh = case.load_mesh()  # back in LPS
    assert np.abs(io.polydata_points(mesh).mean(axis=0) - io.polydata_points(src.load_mesh()).mean(axis=0)).max() < 1e-3
    centre, normal = case.ostium_center_lps, case.ostium_normal_lps
    assert np.linalg.norm(centre - np.array(src.meta["ostium_center_lps"])) < 1.0
    angle = np.degrees(np.arccos(np.clip(normal @ np.array(src.meta["ostium_normal_lps"]), -1, 1)))
    assert angle < 3.0
    seed = case.seed_lps
    dist, _ = meshtools.point_to_mesh_distance(mesh, seed[None])
    assert dist[0] >= 2.0 and float((seed - centre) @ normal) >= 2.0
    vol = case.load_volume()
    ijk = np.round(vol.lps_to_index(seed)).astype(int)
    defect = src.meta["filling_defect_lps"]
    if defect and np.linalg.norm(seed - np.array(defect["center"])) < defect["radius_mm"]:
        assert vol.array[ijk[2], ijk[1], ijk[0]] < 0.5 * src.meta["hu"]["blood"]  # in the unfilled tip, as drawn
    else:
        assert vol.array[ijk[2], ijk[1], ijk[0]] > 0.5 * src.meta["hu"]["blood"]


def test_split_is_by_case_and_deterministic(dataset, tmp_path):
    # ten light-weight cases (copies of one) to exercise the split
    root = tmp_path / "ten"
    src = data.list_cases(dataset)[0].case_dir
    for i in range(10):
        shutil.copytree(src, root / f"c{i:02d}")
    cases = data.list_cases(root)
    train, val = data.split_cases(cases, 0.2, seed=7)
    assert len(val) == 2 and len(train) == 8
    assert {c.name for c in train}.isdisjoint({c.name for c in val})
    assert sorted(c.name for c in train + val) == [c.name for c in cases]
    again = data.split_cases(list(reversed(cases)), 0.2, seed=7)
    assert [c.name for c in again[1]] == [c.name for c in val]
    others = {tuple(c.name for c in data.split_cases(cases, 0.2, seed=s)[1]) for s in range(8)}
    assert len(others) > 1
    assert len(data.split_cases(cases, 0.0, seed=1)[1]) == 0
    assert len(data.split_cases(cases[:2], 0.1, seed=1)[1]) == 1
    with pytest.raises(InputError, match="val_fraction"):
        data.split_cases(cases, 1.0, seed=1)


def test_bad_dataset_roots_give_clear_errors(tmp_path, dataset):
    with pytest.raises(InputError, match="does not exist"):
        data.list_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no case sub-folders"):
        data.list_cases(tmp_path / "empty")
    bad = tmp_path / "bad" / "case_x"
    bad.mkdir(parents=True)
    shutil.copy(dataset / "case_0000" / "ct.nii.gz", bad / "ct.nii.gz")
    with pytest.raises(InputError, match="lacks a mesh"):
        data.list_cases(tmp_path / "bad")
    shutil.copy(dataset / "case_0000" / "laa.stl", bad / "laa.stl")
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json"):
        data.list_cases(tmp_path / "bad")
    (bad / "meta.json").unlink()
    (case,) = data.list_cases(tmp_path / "bad")
    assert case.mesh_path.name == "laa.stl"
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        data.list_cases(f)
